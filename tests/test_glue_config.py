"""conf/task/*.yaml and conf/data/glue.yaml agree with the task registry and build a GlueDataModule."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import saten.data  # noqa: F401  (registers the saten.glue_dir resolver)
from saten.data.glue import TASKS, GlueDataModule
from saten.data.metrics import metric_keys

CONF = Path(__file__).resolve().parents[1] / "conf"
from conftest import FIXTURE_GLUE  # noqa: E402


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_config_matches_registry(name):
    cfg = OmegaConf.load(CONF / "task" / f"{name}.yaml")
    spec = TASKS[name]
    assert cfg.name == name and cfg.kind == "glue"
    assert cfg.num_labels == spec.num_labels
    assert cfg.metric == spec.metric == metric_keys(name, spec.eval_splits[0])[0]


def compose(data_dir, cache_dir, task="rte", **data_overrides):
    """The root config's pieces that the data group reads: paths, task, seed."""
    cfg = OmegaConf.create({"paths": {"data_dir": data_dir, "cache_dir": str(cache_dir)}, "seed": 7,
                            "task": OmegaConf.load(CONF / "task" / f"{task}.yaml"),
                            "data": OmegaConf.load(CONF / "data" / "glue.yaml")})
    cfg.data.merge_with(data_overrides)
    return cfg


def test_data_config_resolves_glue_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    cfg = compose(str(tmp_path), tmp_path / "cache")
    assert cfg.data.glue_dir == str(tmp_path / "glue")
    assert cfg.data.cache_dir == str(tmp_path / "cache" / "data")
    assert cfg.data.task == "rte" and cfg.data.seed == 7 and cfg.data.max_seq_length == 128
    assert compose(None, tmp_path).data.glue_dir is None  # -> hub
    monkeypatch.setenv("GLUE_DIR", str(FIXTURE_GLUE))
    assert compose(str(tmp_path), tmp_path).data.glue_dir == str(FIXTURE_GLUE)


def test_data_config_instantiates_datamodule(monkeypatch, tmp_path):
    from hydra.utils import instantiate
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "?", "."]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    monkeypatch.setenv("GLUE_DIR", str(FIXTURE_GLUE))
    cfg = compose(None, tmp_path / "cache", task="mnli", batch_size=2, eval_limit=2)
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm, GlueDataModule) and dm.glue_dir == FIXTURE_GLUE and dm.seed == 7
    assert dm.task.name == "mnli" and dm.batch_size == 2
    assert [len(next(iter(loader))["labels"]) for loader in dm.val_dataloader()] == [2, 2]
    assert any((tmp_path / "cache" / "data" / "glue").iterdir())
    same = GlueDataModule.from_config(cfg.data, tokenizer, task="qnli")
    assert same.task.name == "qnli" and same.eval_limit == 2
