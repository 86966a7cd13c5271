"""Progressive tightening (``schedule=progressive``): start looser, reach the target structure in training.

The model starts compressed at a smaller ε (higher TT ranks) and, for unstructured Saten, optionally a
higher density. At ``schedule.steps`` evenly spaced optimizer steps up to ``schedule.end`` of training,
every compressed layer is re-truncated towards the *target structure*: the ranks and kept-value counts
that the run's own ``saten`` config gives on the pretrained weights (so a progressive run ends with
exactly the parameters of the plain run it is compared with). A re-truncation is a fixed-rank TT-SVD of
the layer's current effective weight (TT + residual) followed by a new mask of the largest entries of
the new TT error — the mask is fixed again from the last step on. Re-truncated parameters keep their
identity; their optimizer moments restart. Validation before the last step sees a larger model, so the
best-checkpoint bookkeeping is reset when the target is reached.

>>> # python run.py task=mrpc saten=saten_u schedule=progressive schedule.start_eps=0.5
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from saten.errors import ConfigError
from saten.layers import SatenLinear, _work_dtype
from saten.sparse import scatter_into, select_positions
from saten.tt import tt_svd_matrix, tt_to_matrix

__all__ = ["ProgressiveTightening", "compress_for_training", "retruncate", "schedule_enabled"]
log = logging.getLogger(__name__)


def schedule_enabled(schedule: Mapping | None) -> bool:
    return bool(schedule and schedule.get("progressive"))


def check_schedule_config(schedule: Mapping | None, saten: Mapping, strategy=None, lora=None) -> None:
    """One-line errors for ``schedule`` values that cannot work (before any model is loaded)."""
    if not schedule_enabled(schedule):
        return
    method = saten.get("method")
    if method not in ("saten", "tt"):
        raise ConfigError(f"schedule=progressive with saten.method={method}: tightening re-truncates TT "
                          f"layers; use saten=saten_u, saten_24 or tt, or schedule=none")
    for key, why in (("embeddings", "the embedding is compressed once"), ("freeze", "frozen layers")):
        if saten.get(key):
            raise ConfigError(f"saten.{key}=true with schedule=progressive: {why}; set saten.{key}=false or "
                              f"schedule=none")
    if lora and lora.get("r"):
        raise ConfigError("lora with schedule=progressive: LoRA trains on a fixed compressed model; use "
                          "schedule=none")
    if strategy is not None and any(k in str(strategy) for k in ("ddp", "fsdp")):
        raise ConfigError(f"trainer.strategy={strategy} with schedule=progressive: re-truncation resizes "
                          f"parameters, which DDP/FSDP cannot follow; train on one device or schedule=none")
    steps, end, start_eps = schedule.get("steps"), schedule.get("end"), schedule.get("start_eps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"schedule.steps={steps}: must be a whole number >= 1 (e.g. 4)")
    if not isinstance(end, (int, float)) or not 0 < end < 1:
        raise ConfigError(f"schedule.end={end}: the fraction of training by which the target is reached "
                          f"must lie in (0, 1), e.g. 0.5, so that validation sees the target model")
    if not isinstance(start_eps, (int, float)) or start_eps < 0:
        raise ConfigError(f"schedule.start_eps={start_eps}: must be a number >= 0, below saten.eps")
    density = schedule.get("start_density")
    if density is not None and (not isinstance(density, (int, float)) or not 0 <= density <= 1):
        raise ConfigError(f"schedule.start_density={density}: must lie in [0, 1] or be null (the target "
                          f"density)")


def start_plan(plan: Mapping, schedule: Mapping) -> dict:
    """The looser ``saten`` config the model starts from: every ε at most ``start_eps``, every density at
    least ``start_density`` (unstructured Saten only); no ratio target (the target structure holds it)."""
    start_eps = float(schedule["start_eps"])
    density = schedule.get("start_density")
    unstructured = plan.get("method") == "saten" and plan.get("sparsity", "unstructured") == "unstructured"

    def loosen(knobs: Mapping, fitted: bool = False) -> dict:
        out = dict(knobs)
        if out.get("eps") is not None or fitted:
            out["eps"] = start_eps if fitted else min(float(out["eps"]), start_eps)
        if density is not None and unstructured and out.get("density") is not None:
            out["density"] = max(float(out["density"]), float(density))
        return out

    start = loosen(plan, fitted=plan.get("target_ratio") is not None) | {"target_ratio": None}
    if plan.get("overrides"):
        start["overrides"] = {name: loosen(knobs) for name, knobs in plan["overrides"].items()}
    return start


def structure(layer: nn.Module) -> dict:
    """``{"ranks": [...], "nnz": n}`` of a compressed layer."""
    return {"ranks": list(layer.ranks), "nnz": int(layer.nnz)}


def compress_for_training(model: nn.Module, saten: Mapping, tt_shape: Mapping | None,
                          calibration: Mapping | None, batches, schedule: Mapping | None = None,
                          fisher_model: nn.Module | None = None):
    """Plan (calibration), compress ``model`` in place and, with a progressive schedule, start looser.

    ``fisher_model``: the teacher whose Fisher ranks the layers for a sensitivity budget
    (``calibration.fisher=teacher``; default ``model`` itself).

    Returns
    -------
    (list of str, dict or None)
        The replaced module names, and for a progressive schedule ``{"start": ..., "target": ...}``, each
        mapping a replaced name to its :func:`structure`.
    """
    from saten import compress
    from saten.calibration import plan_compression

    plan, scales, budget = plan_compression(model, saten, tt_shape, calibration, batches, fisher_model)
    stages = None
    if not schedule_enabled(schedule):
        replaced = list(compress(model, plan, tt_shape=tt_shape, channel_scales=scales))
    else:
        check_schedule_config(schedule, saten)
        shadow = copy.deepcopy(model)  # the target structure, from the same weights and scales
        replaced = list(compress(shadow, plan, tt_shape=tt_shape, channel_scales=scales))
        target = {name: structure(shadow.get_submodule(name)) for name in replaced}
        info = shadow.saten_info
        del shadow
        compress(model, start_plan(plan, schedule), tt_shape=tt_shape, channel_scales=scales)
        stages = {"start": {name: structure(model.get_submodule(name)) for name in replaced},
                  "target": target}
        model.saten_info = info | {"progressive": {"start_config": model.saten_info["config"],
                                                   **{k: schedule.get(k) for k in ("steps", "end")}}}
    if budget is not None:
        model.saten_info["budget"] = budget
    return replaced, stages


def interpolate(start: Mapping, target: Mapping, fraction: float) -> tuple[list[int], int]:
    """Ranks and kept count a ``fraction`` of the way from ``start`` to ``target`` (1 gives the target)."""
    ranks = [round(a + (b - a) * fraction) for a, b in zip(start["ranks"], target["ranks"], strict=True)]
    return ranks, round(start["nnz"] + (target["nnz"] - start["nnz"]) * fraction)


@torch.no_grad()
def retruncate(layer: SatenLinear, ranks: list[int], nnz: int) -> list[nn.Parameter]:
    """Re-compress ``layer``'s effective weight to TT ``ranks`` plus ``nnz`` kept values, in place.

    Works in the layer's own (activation-scaled) space; the ``input_scale`` buffer is unchanged. The
    cores and values keep their ``nn.Parameter`` objects (so the optimizer still holds them); the
    returned parameters changed shape or meaning and need fresh optimizer state.
    """
    weight = scatter_into(layer.tt_weight(), layer.positions, layer.values)
    work = weight.to(_work_dtype(weight.dtype))
    cores = tt_svd_matrix(work.T, layer.shape, 0.0, list(ranks[1:-1]))
    residual = work - tt_to_matrix(cores, layer.shape).T
    if layer.sparsity == "nm":
        positions = select_positions(residual, 0.0, "nm", layer.nm)
    else:
        positions = select_positions(residual, nnz / residual.numel())
    for param, core in zip(layer.cores, cores, strict=True):
        param.data = core.to(param.dtype).contiguous()
    layer.values.data = residual.reshape(-1)[positions].to(layer.values.dtype)
    layer.positions = positions
    layer.record_errors(work, residual, layer.values.detach())
    return [*layer.cores, layer.values]


def forget_best(trainer, pl_module) -> None:
    """Drop the best-epoch record and best checkpoint, which describe a larger model than the target."""
    pl_module.best = {}
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) is None:
            continue
        if trainer.is_global_zero and callback.best_model_path:
            Path(callback.best_model_path).unlink(missing_ok=True)
        callback.best_k_models, callback.kth_best_model_path = {}, ""
        callback.best_model_score, callback.best_model_path = None, ""
        callback.kth_value = torch.tensor(math.inf if callback.mode == "min" else -math.inf)


class ProgressiveTightening(Callback):
    """Re-truncate every compressed layer ``steps`` times, reaching the target at ``end`` of training.

    Parameters
    ----------
    steps : int
        Number of tightening events, evenly spaced in optimizer steps; the last one gives the target.
    end : float
        Fraction of all optimizer steps after which the model has its target structure.
    """

    def __init__(self, steps: int = 4, end: float = 0.5):
        self.steps, self.end = int(steps), float(end)
        self.event_steps: list[int] = []
        self.applied = 0

    def on_train_start(self, trainer, pl_module) -> None:
        if getattr(pl_module, "progressive", None) is None:
            raise ConfigError("schedule=progressive: the module was built without a schedule; build it from "
                              "the same config (saten.lit.build_module)")
        last = max(1, math.ceil(self.end * int(trainer.estimated_stepping_batches)))
        self.event_steps = [max(1, round(k * last / self.steps)) for k in range(1, self.steps + 1)]
        # an event fires at the start of the batch whose global step reaches it; a checkpoint saved at
        # step g already holds every event before g
        self.applied = sum(step < trainer.global_step for step in self.event_steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        while self.applied < len(self.event_steps) and trainer.global_step >= self.event_steps[self.applied]:
            self.applied += 1
            self.tighten(trainer, pl_module, self.applied / self.steps)

    def tighten(self, trainer, pl_module, fraction: float) -> None:
        stages = pl_module.progressive
        model = getattr(pl_module.model, "_orig_mod", pl_module.model)
        for name, target in stages["target"].items():
            ranks, nnz = interpolate(stages["start"][name], target, fraction)
            for param in retruncate(model.get_submodule(name), ranks, nnz):
                param.grad = None
                for optimizer in trainer.optimizers:
                    optimizer.state.pop(param, None)
        pl_module.compression_report = None  # the cached report describes the previous structure
        if fraction >= 1:
            forget_best(trainer, pl_module)
            from saten.callbacks import CompressionStats

            for callback in trainer.callbacks:  # report.json and the loggers get the target model
                if isinstance(callback, CompressionStats):
                    callback.logged = False
                    callback.log_report(trainer, pl_module)
        log.info("progressive tightening %d/%d at step %d", self.applied, self.steps, trainer.global_step)
