"""What recovery (:mod:`saten.recover`) feeds the models: padded token rows from a text corpus or from the
run's own training examples.

Both are an :data:`Inputs` dict of ``(n, length)`` tensors (``input_ids``, ``attention_mask`` and, for
BERT, ``token_type_ids``): text comes as full-length chunks (mask all ones), task examples padded to the
longest. :func:`rows` takes a batch and drops the columns that are padding in every row of it, so short
task examples cost short sequences.
"""

from __future__ import annotations

import torch

Inputs = dict[str, torch.Tensor]

TASK_CORPUS = "task"  # recover.corpus value: the run's training examples, labels dropped


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (BERT: [CLS] / [SEP]; LLaMA: BOS / none)."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next(i for i in range(len(full) - len(body) + 1) if full[i:i + len(body)] == body)
    return full[:start], full[start + len(body):]


def text_chunks(tokenizer, text: str, seq_len: int, cache_dir=None, name: str = "recover") -> torch.Tensor:
    """Non-overlapping chunks of ``text`` wrapped in the tokenizer's special tokens: ``(n, seq_len)``."""
    from saten.data.lm import tokenize_stream

    ids = tokenize_stream(text, tokenizer, cache_dir, name=name)
    prefix, suffix = special_tokens(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    chunks = ids[: len(ids) // body * body].view(-1, body)
    n = len(chunks)
    return torch.cat([torch.tensor([prefix] * n, dtype=torch.int64).view(n, -1), chunks,
                      torch.tensor([suffix] * n, dtype=torch.int64).view(n, -1)], dim=1)


def text_inputs(tokenizer, text: str, seq_len: int, cache_dir=None) -> Inputs:
    """:func:`text_chunks` as inputs (no padding)."""
    chunks = text_chunks(tokenizer, text, seq_len, cache_dir)
    return {"input_ids": chunks, "attention_mask": torch.ones_like(chunks)}


def task_inputs(datamodule) -> Inputs:
    """The training examples a GLUE datamodule fine-tunes on (after ``data.train_limit``), in its order,
    labels dropped, padded to the longest: in-domain text that no evaluated split contributes to."""
    dataset = datamodule.train_dataset()
    examples = [{k: v for k, v in dataset[i].items() if k != "labels"} for i in range(len(dataset))]
    padded = datamodule.tokenizer.pad(examples, padding="longest", return_tensors="pt")
    return {key: value.to(torch.int64) for key, value in padded.items()}


def rows(inputs: Inputs, index: torch.Tensor | slice) -> Inputs:
    """Rows ``index`` of ``inputs`` without the columns that are padding in all of them."""
    batch = {key: value[index] for key, value in inputs.items()}
    keep = batch["attention_mask"].bool().any(0)
    return {key: value[:, keep] for key, value in batch.items()}


def count(inputs: Inputs) -> int:
    """Number of rows."""
    return len(inputs["input_ids"])
