"""Write test-set predictions in the GLUE leaderboard submission format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from saten.data.glue_tasks import GlueTask, get_task
from saten.errors import ConfigError

# tasks whose submission file holds label names instead of label ids
_NAMED_LABELS = {"mnli", "qnli", "rte"}


def write_glue_predictions(task: str | GlueTask, preds, path: str | os.PathLike, split: str | None = None,
                           indices: Sequence[int] | None = None) -> Path:
    """Write one GLUE submission file (``index<TAB>prediction``) into the folder ``path``.

    Parameters
    ----------
    task : str or GlueTask
        GLUE task.
    preds : array-like or torch.Tensor
        Class ids of shape ``(n,)`` (logits ``(n, num_labels)`` are arg-maxed); STS-B: scores, clipped to
        [0, 5] and written with 3 decimals.
    path : path
        Output folder (created); the file name is GLUE's (``MRPC.tsv``, ``MNLI-m.tsv``, ...).
    split : str, optional
        Test split; required for MNLI (``test_matched`` -> ``MNLI-m.tsv``,
        ``test_mismatched`` -> ``MNLI-mm.tsv``).
    indices : sequence of int, optional
        The examples' ``idx``; defaults to ``0..n-1`` (the order of the test loader).

    Returns
    -------
    Path
        The written file. RTE, QNLI and MNLI get label names (``entailment``), the others label ids.
    """
    spec = get_task(task)
    if split is None:
        if len(spec.test_splits) != 1:
            raise ConfigError(f"split=None: {spec.name} has several test splits; pass one of "
                              f"{list(spec.test_splits)}")
        split = spec.test_splits[0]
    if split not in spec.submission_files:
        raise ConfigError(f"split={split}: not a test split of {spec.name}; use one of {spec.test_splits}")
    values = preds.detach().float().cpu().numpy() if isinstance(preds, torch.Tensor) else np.asarray(preds)
    if spec.is_regression:
        lines = [f"{v:.3f}" for v in np.clip(values.reshape(-1).astype(np.float64), 0.0, 5.0)]
    else:
        ids = (values.argmax(axis=-1) if values.ndim == 2 else values.reshape(-1)).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= spec.num_labels):
            raise ValueError(f"{spec.name}: prediction ids must lie in 0..{spec.num_labels - 1}")
        lines = [spec.label_names[i] if spec.name in _NAMED_LABELS else str(i) for i in ids.tolist()]
    index = list(range(len(lines))) if indices is None else [int(i) for i in indices]
    if len(index) != len(lines):
        raise ValueError(f"{spec.name}: {len(lines)} predictions but {len(index)} indices")
    out = Path(path) / spec.submission_files[split]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in zip(index, lines)))
    return out
