"""Tokenized GLUE splits: a ragged in-memory dataset and its on-disk cache (safetensors).

The cache key is (task, split, tokenizer fingerprint, max_seq_length, data source signature), so a second run
with the same tokenizer and data skips reading and tokenizing; editing a TSV file (size/mtime) or changing the
tokenizer or ``max_seq_length`` makes a new cache file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from saten.data.glue_reader import read_split, source_signature
from saten.data.glue_tasks import GlueTask

CACHE_FORMAT = 1
_TOKENIZE_CHUNK = 2048
_PROBE = ("A probe sentence, with punctuation!", "And a second segment: 123 tokens?")


class TokenizedSplit(Dataset):
    """Tokenized examples of one split, stored as flat tensors plus offsets (no padding).

    ``dataset[i]`` is a dict of int lists (``input_ids``, ``attention_mask``, ``token_type_ids`` when the
    tokenizer makes them) and, for labelled splits, ``labels`` (int, or float for STS-B), ready for
    :class:`transformers.DataCollatorWithPadding`.

    Parameters
    ----------
    features : dict of str to list of list of int
        Tokenizer output per example.
    labels : torch.Tensor
        Shape ``(n,)``; int64 (float32 for regression); -1 in test splits.
    idx : torch.Tensor
        Shape ``(n,)``; the examples' ``idx`` in the source split.
    labelled : bool
        Whether items carry ``labels``.
    """

    def __init__(self, features: dict[str, Sequence[Sequence[int]]] | None, labels: torch.Tensor,
                 idx: torch.Tensor, labelled: bool = True, *, flat: dict[str, torch.Tensor] | None = None):
        self.labels, self.idx, self.labelled = labels, idx, labelled
        if flat is None:
            flat = {}
            for key, rows in (features or {}).items():
                lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
                flat[f"{key}.offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
                flat[f"{key}.values"] = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
        self.flat = flat
        self.keys = sorted(k[: -len(".values")] for k in flat if k.endswith(".values"))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict:
        item = {}
        for key in self.keys:
            offsets = self.flat[f"{key}.offsets"]
            item[key] = self.flat[f"{key}.values"][offsets[i]: offsets[i + 1]].tolist()
        if self.labelled:
            item["labels"] = self.labels[i].item()
        return item

    def lengths(self) -> torch.Tensor:
        """Number of tokens of each example, shape ``(n,)``."""
        offsets = self.flat["input_ids.offsets"]
        return offsets[1:] - offsets[:-1]

    def save(self, path: str | os.PathLike, metadata: dict[str, str]) -> None:
        """Write to ``path`` (safetensors) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tensors = {**self.flat, "labels": self.labels.contiguous(), "idx": self.idx.contiguous()}
        save_file(tensors, str(tmp), metadata={**metadata, "labelled": str(int(self.labelled))})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenizedSplit:
        """Read a file written by :meth:`save`."""
        with safe_open(str(path), framework="pt") as handle:
            labelled = handle.metadata().get("labelled", "1") == "1"
        tensors = load_file(str(path))
        labels, idx = tensors.pop("labels"), tensors.pop("idx")
        return cls(None, labels, idx, labelled, flat=tensors)


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides a tokenizer's output: class, name, vocab, special tokens, a probe encoding."""
    digest = hashlib.sha256()
    vocab = sorted(tokenizer.get_vocab().items())
    probe = tokenizer(*_PROBE)
    parts = [type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), len(tokenizer),
             getattr(tokenizer, "truncation_side", "right"), sorted(map(str, tokenizer.all_special_tokens)),
             {k: list(v) for k, v in probe.items()}, vocab]
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def tokenize_examples(examples: Sequence[dict], text_keys: Sequence[str], tokenizer,
                      max_seq_length: int) -> dict[str, list[list[int]]]:
    """Tokenize sentences or sentence pairs, truncating (longest first) to ``max_seq_length`` tokens."""
    features: dict[str, list[list[int]]] = {}
    for start in range(0, len(examples), _TOKENIZE_CHUNK):
        chunk = examples[start: start + _TOKENIZE_CHUNK]
        texts = [[ex[k] for ex in chunk] for k in text_keys]
        encoded = tokenizer(*texts, truncation=True, max_length=max_seq_length)
        for key, rows in encoded.items():
            features.setdefault(key, []).extend(rows)
    return features


def build_split(task: GlueTask, split: str, tokenizer, max_seq_length: int,
                glue_dir: str | os.PathLike | None = None) -> TokenizedSplit:
    """Read and tokenize one split (no caching)."""
    examples = read_split(task, split, glue_dir)
    labelled = split not in task.test_splits
    features = tokenize_examples(examples, task.text_keys, tokenizer, max_seq_length)
    dtype = torch.float32 if task.is_regression else torch.int64
    labels = torch.tensor([ex["label"] for ex in examples], dtype=dtype)
    idx = torch.tensor([ex["idx"] for ex in examples], dtype=torch.int64)
    return TokenizedSplit(features, labels, idx, labelled)


def cache_path(cache_dir: str | os.PathLike, task: GlueTask, split: str, tokenizer, max_seq_length: int,
               glue_dir: str | os.PathLike | None = None) -> tuple[Path, dict[str, str]]:
    """Cache file for a tokenized split and the metadata its key is made of."""
    metadata = {"format": str(CACHE_FORMAT), "task": task.name, "split": split,
                "tokenizer": tokenizer_fingerprint(tokenizer), "max_seq_length": str(max_seq_length),
                "source": source_signature(task, split, glue_dir)}
    key = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "glue" / f"{task.name}-{split}-{key}.safetensors", metadata


def load_or_build_split(task: GlueTask, split: str, tokenizer, max_seq_length: int,
                        glue_dir: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None) -> TokenizedSplit:
    """Tokenized split from ``cache_dir`` when cached, else built (and saved when ``cache_dir`` is set)."""
    if cache_dir is None:
        return build_split(task, split, tokenizer, max_seq_length, glue_dir)
    path, metadata = cache_path(cache_dir, task, split, tokenizer, max_seq_length, glue_dir)
    if path.is_file():
        try:
            return TokenizedSplit.load(path)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError):
            pass  # unreadable (e.g. truncated) cache file: rebuild it
    tokenized = build_split(task, split, tokenizer, max_seq_length, glue_dir)
    tokenized.save(path, metadata)
    return tokenized
