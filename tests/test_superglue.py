"""SuperGLUE with a causal LM: the JSONL reader on real files, the metric, one batch per task; GLUE RTE."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from test_pipeline import compose_config, shrink_overrides

from saten.data.superglue import TASKS, SuperGlueMetric, read_jsonl_split
from saten.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")
# rows per split and label counts (by hub label id) of the official files, from super_glue/SOURCES.md
COUNTS = {
    ("cb", "train"): (250, {0: 115, 1: 119, 2: 16}), ("cb", "validation"): (56, {0: 23, 1: 28, 2: 5}),
    ("wsc", "train"): (554, {1: 259, 0: 295}), ("wsc", "validation"): (104, {1: 38, 0: 66}),
    ("copa", "train"): (400, {0: 195, 1: 205}), ("copa", "validation"): (100, {0: 55, 1: 45}),
    ("wic", "train"): (5428, {1: 2714, 0: 2714}), ("wic", "validation"): (638, {1: 319, 0: 319}),
    ("superglue_rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("superglue_rte", "validation"): (277, {0: 146, 1: 131}),
    ("boolq", "validation"): (3270, {1: 2033, 0: 1237}),
    ("cb", "test"): (250, {-1: 250}), ("copa", "test"): (500, {-1: 500}),
    ("boolq", "test"): (3245, {-1: 3245}),
}


@pytest.mark.parametrize(("task", "split"), list(COUNTS))
def test_reader_parses_the_official_files(task, split, data_dir):
    rows = read_jsonl_split(task, split, data_dir / "super_glue")
    size, labels = COUNTS[(task, split)]
    assert len(rows) == size and Counter(r["label"] for r in rows) == labels
    assert [r["idx"] for r in rows] == list(range(size))
    assert all(r["text_a"] and r["text_b"] for r in rows)


def test_pair_templates_and_missing_boolq_train(data_dir):
    copa = read_jsonl_split("copa", "validation", data_dir / "super_glue")[0]
    assert copa["text_a"].endswith("What was the cause?") or copa["text_a"].endswith("What was the effect?")
    assert copa["text_b"].startswith("1: ") and " 2: " in copa["text_b"]
    wsc = read_jsonl_split("wsc", "validation", data_dir / "super_glue")[0]
    assert wsc["text_b"].startswith("Does \"") and wsc["text_b"].endswith("\"?")
    with pytest.raises(ConfigError, match="BoolQ/train.jsonl is missing"):
        read_jsonl_split("boolq", "train", data_dir / "super_glue")


def test_metric_accuracy_and_cb_macro_f1():
    from sklearn.metrics import f1_score

    preds, labels = torch.tensor([0, 1, 2, 1, 0, 2]), torch.tensor([0, 1, 1, 1, 2, 2])
    metric = SuperGlueMetric("cb")
    metric.update(preds[:3], labels[:3])
    metric.update(preds[3:], labels[3:])
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert out["combined"] == pytest.approx((out["accuracy"] + out["f1_macro"]) / 2)
    copa = SuperGlueMetric("copa")
    copa.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert copa.compute() == {"accuracy": 0.5} and TASKS["copa"].metric_keys == ["accuracy"]


@pytest.mark.parametrize("task", ["cb", "wsc", "copa", "wic", "superglue_rte"])
def test_every_superglue_task_trains_one_batch_on_tiny_llama(task, data_dir, tmp_path):
    from saten.train import run

    overrides = [f"task={task}", "model=tiny_llama", "saten=saten_u", "logger=none", "data.batch_size=4",
                 "data.eval_batch_size=4", "data.max_seq_length=64", "trainer.fast_dev_run=1",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    summary = run(compose_config(overrides, tmp_path))
    assert summary["task"] == task and math.isfinite(summary["best/accuracy"]) and summary["layers"] == 14


def test_boolq_evaluates_without_a_train_split(data_dir, tmp_path):
    from saten.train import run

    overrides = ["task=boolq", "model=tiny_llama", "saten=tt", "logger=none", "trainer.max_epochs=0",
                 "data.eval_limit=8", "data.max_seq_length=64", "trainer.enable_progress_bar=false"]
    summary = run(compose_config(overrides, tmp_path))
    assert summary["trained"] is False and 0 <= summary["val/accuracy"] <= 1


def test_glue_rte_with_tiny_llama_uses_the_glue_classifier(mini_glue, tmp_path):  # noqa: F811
    from saten.train import run

    overrides = [*shrink_overrides(mini_glue, "rte", "saten_24"), "model=tiny_llama",
                 "trainer.fast_dev_run=1"]
    cfg = compose_config(overrides, tmp_path)
    assert cfg.task.kind == "glue" and cfg.data._target_.endswith("GlueDataModule")
    summary = run(cfg)
    assert summary["task"] == "rte" and math.isfinite(summary["best/accuracy"]) and summary["layers"] == 14


def test_superglue_task_with_glue_data_is_a_config_error(data_dir, tmp_path):
    from saten.train import run

    with pytest.raises(ConfigError, match="needs SuperGlueDataModule"):
        run(compose_config(["task=cb", "data=glue", "model=tiny_llama", "logger=none"], tmp_path))
