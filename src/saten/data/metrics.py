"""The official GLUE metrics (as fractions in [0, 1]; correlations in [-1, 1]).

=====================  ======================================================
task                   keys (first one is the task's main metric)
=====================  ======================================================
cola                   matthews
stsb                   pearson, spearmanr, combined (mean of the two)
mrpc, qqp              f1 (positive class 1), accuracy, combined (mean)
mnli                   accuracy_m (validation_matched), accuracy_mm (mismatched)
sst2, qnli, rte, wnli  accuracy
=====================  ======================================================
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from saten.data.glue_tasks import get_task

_SPLIT_SUFFIX = {"validation_matched": "_m", "test_matched": "_m",
                 "validation_mismatched": "_mm", "test_mismatched": "_mm"}


def metric_keys(task_name: str, split: str | None = None) -> list[str]:
    """Keys that :func:`glue_metrics` returns for a task (and MNLI split), main metric first."""
    name = get_task(task_name).name
    if name == "cola":
        return ["matthews"]
    if name == "stsb":
        return ["pearson", "spearmanr", "combined"]
    if name in ("mrpc", "qqp"):
        return ["f1", "accuracy", "combined"]
    return ["accuracy" + _split_suffix(name, split)]


def _split_suffix(name: str, split: str | None) -> str:
    if name != "mnli" or split is None:
        return ""
    if split not in _SPLIT_SUFFIX:
        raise ValueError(f"split={split}: not an MNLI split; use validation_matched or validation_mismatched")
    return _SPLIT_SUFFIX[split]


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()
    return np.asarray(values)


def _correlation(fn, preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson/Spearman correlation; 0.0 when a side is constant (undefined correlation, as sklearn's MCC)."""
    if np.all(preds == preds[0]) or np.all(labels == labels[0]):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(preds, labels)[0])


def glue_metrics(task_name: str, preds, labels, split: str | None = None) -> dict[str, float]:
    """Compute a task's GLUE metrics.

    Parameters
    ----------
    task_name : str
        GLUE task (``"mrpc"``).
    preds : array-like or torch.Tensor
        Class ids, shape ``(n,)`` (logits of shape ``(n, num_labels)`` are arg-maxed); STS-B: raw scores of
        shape ``(n,)`` or ``(n, 1)``.
    labels : array-like or torch.Tensor
        Gold labels, shape ``(n,)``.
    split : str, optional
        MNLI only: ``validation_matched`` gives ``accuracy_m``, ``validation_mismatched`` gives
        ``accuracy_mm``; without it MNLI gives ``accuracy``.

    Returns
    -------
    dict of str to float
        See the module table; main metric first.
    """
    task = get_task(task_name)
    preds, labels = _as_numpy(preds), _as_numpy(labels).reshape(-1)
    if task.is_regression:
        preds = preds.reshape(-1).astype(np.float64)
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    preds = preds.reshape(-1)
    if preds.shape != labels.shape or labels.size == 0:
        raise ValueError(f"{task.name}: need as many predictions as labels (>0), got {preds.shape} and "
                         f"{labels.shape}")
    if task.is_regression:
        labels = labels.astype(np.float64)
        pearson, spearman = _correlation(pearsonr, preds, labels), _correlation(spearmanr, preds, labels)
        return {"pearson": pearson, "spearmanr": spearman, "combined": (pearson + spearman) / 2}
    preds, labels = preds.astype(np.int64), labels.astype(np.int64)
    if (labels < 0).any():
        raise ValueError(f"{task.name}: labels contain -1 (an unlabelled test split has no metrics)")
    if task.name == "cola":
        return {"matthews": float(matthews_corrcoef(labels, preds))}
    accuracy = float(accuracy_score(labels, preds))
    if task.name in ("mrpc", "qqp"):
        f1 = float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))
        return {"f1": f1, "accuracy": accuracy, "combined": (f1 + accuracy) / 2}
    return {"accuracy" + _split_suffix(task.name, split): accuracy}


class GlueMetric(Metric):
    """Accumulating GLUE metric (torchmetrics; predictions and labels are gathered across processes).

    Parameters
    ----------
    task_name : str
        GLUE task.
    split : str, optional
        MNLI evaluation split (see :func:`glue_metrics`).

    Examples
    --------
    >>> metric = GlueMetric("mrpc")
    >>> metric.update(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]))
    >>> sorted(metric.compute())
    ['accuracy', 'combined', 'f1']
    """

    full_state_update = False

    def __init__(self, task_name: str, split: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.task = get_task(task_name)
        self.split = split
        _split_suffix(self.task.name, split)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    @property
    def keys(self) -> list[str]:
        """Keys of :meth:`compute`'s result, main metric first."""
        return metric_keys(self.task.name, self.split)

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: class ids (or logits, arg-maxed here) or STS-B scores, and gold labels."""
        preds, labels = torch.as_tensor(preds).detach(), torch.as_tensor(labels).detach()
        if self.task.is_regression:
            preds = preds.float().reshape(-1)
        elif preds.ndim == 2:
            preds = preds.argmax(dim=-1)
        self.preds.append(preds.reshape(-1))
        self.labels.append(labels.reshape(-1))

    def compute(self) -> dict[str, float]:
        """Metrics over everything seen since the last reset."""
        if isinstance(self.preds, list) and not self.preds:
            raise ValueError(f"{self.task.name}: GlueMetric.compute() called before update()")
        return glue_metrics(self.task.name, dim_zero_cat(self.preds), dim_zero_cat(self.labels), self.split)
