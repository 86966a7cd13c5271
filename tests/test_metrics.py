"""GLUE metrics agree with scipy / sklearn and accumulate correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from saten.data.metrics import GlueMetric, glue_metrics, metric_keys

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 200)
PREDS = np.where(RNG.random(200) < 0.8, LABELS, 1 - LABELS)  # ~80% right
SCORES = RNG.uniform(0, 5, 200)
REGRESSED = SCORES + RNG.normal(0, 1.0, 200)


def test_classification_metrics_equal_sklearn():
    expected = {"matthews": matthews_corrcoef(LABELS, PREDS)}
    assert glue_metrics("cola", PREDS, LABELS) == pytest.approx(expected)
    f1, acc = f1_score(LABELS, PREDS), accuracy_score(LABELS, PREDS)
    for task in ("mrpc", "qqp"):
        assert glue_metrics(task, PREDS, LABELS) == pytest.approx({"f1": f1, "accuracy": acc,
                                                                   "combined": (f1 + acc) / 2})
    for task in ("sst2", "qnli", "rte", "wnli"):
        assert glue_metrics(task, torch.from_numpy(PREDS), torch.from_numpy(LABELS)) == {"accuracy": acc}


def test_stsb_correlations_equal_scipy():
    pearson, spearman = pearsonr(REGRESSED, SCORES)[0], spearmanr(REGRESSED, SCORES)[0]
    result = glue_metrics("stsb", torch.tensor(REGRESSED).reshape(-1, 1).float(), SCORES)
    assert result == pytest.approx({"pearson": pearson, "spearmanr": spearman,
                                    "combined": (pearson + spearman) / 2}, abs=1e-6)
    assert glue_metrics("stsb", np.ones(5), np.arange(5.0))["pearson"] == 0.0  # constant: no correlation


def test_mnli_keys_per_split_and_logits():
    labels = RNG.integers(0, 3, 50)
    logits = RNG.normal(size=(50, 3))
    expected = accuracy_score(labels, logits.argmax(1))
    assert glue_metrics("mnli", logits, labels, split="validation_matched") == {"accuracy_m": expected}
    assert glue_metrics("mnli", logits, labels, split="validation_mismatched") == {"accuracy_mm": expected}
    assert metric_keys("mnli", "validation_mismatched") == ["accuracy_mm"]
    assert metric_keys("stsb") == ["pearson", "spearmanr", "combined"]


def test_values_are_fractions():
    for task in ("cola", "mrpc", "sst2"):
        assert all(-1.0 <= v <= 1.0 for v in glue_metrics(task, PREDS, LABELS).values())
    assert glue_metrics("rte", LABELS, LABELS) == {"accuracy": 1.0}


def test_bad_inputs():
    with pytest.raises(ValueError, match="as many"):
        glue_metrics("rte", [0, 1], [0])
    with pytest.raises(ValueError, match="-1"):
        glue_metrics("rte", [0, 1], [-1, -1])
    with pytest.raises(ValueError, match="MNLI split"):
        glue_metrics("mnli", [0], [0], split="validation")


@pytest.mark.parametrize(("task", "preds", "labels"), [("mrpc", PREDS, LABELS), ("stsb", REGRESSED, SCORES),
                                                       ("cola", PREDS, LABELS)])
def test_accumulated_metric_equals_one_shot(task, preds, labels):
    metric = GlueMetric(task)
    for start in range(0, len(labels), 64):
        metric.update(torch.tensor(preds[start: start + 64]), torch.tensor(labels[start: start + 64]))
    assert metric.compute() == pytest.approx(glue_metrics(task, preds, labels), abs=1e-6)
    assert list(metric.compute()) == metric.keys
    metric.reset()
    metric.update(torch.tensor(labels[:10]), torch.tensor(labels[:10]))
    assert metric.compute()[metric.keys[0]] == pytest.approx(1.0)


def test_accumulated_mnli_logits():
    metric = GlueMetric("mnli", split="validation_mismatched")
    metric.update(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]), torch.tensor([1, 2]))
    assert metric.compute() == {"accuracy_mm": 0.5}
