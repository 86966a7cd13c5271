"""Optimizer and learning-rate schedule for fine-tuning a compressed model.

Three parameter families, as returned by :func:`saten.parameter_groups`, each get their own learning
rate: TT cores (``optim.lr_cores``), sparse residual values (``optim.lr_sparse``) and everything
else (``optim.lr``). Weight decay applies to weights, never to biases or normalization parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from hydra.utils import instantiate
from torch import nn

from saten.errors import ConfigError

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True}
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "constant")


def check_optim_config(optim: Mapping) -> None:
    """Raise :class:`ConfigError` for an optim value that cannot work (one line naming key and fix)."""
    for key in ("lr", "lr_cores", "lr_sparse"):
        value = optim.get(key)
        if value is None and key != "lr":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"optim.{key}={value}: must be a positive number (e.g. 1e-4)"
                              + ("" if key == "lr" else " or null for optim.lr"))
    weight_decay = optim.get("weight_decay", 0.0)
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={weight_decay}: must be a number >= 0 (e.g. 0.01)")
    ratio = optim.get("warmup_ratio", 0.0)
    if not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(f"optim.warmup_ratio={ratio}: must lie in [0, 1] (e.g. 0.1)")
    steps = optim.get("warmup_steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise ConfigError(f"optim.warmup_steps={steps}: must be an integer >= 0 or null (use warmup_ratio)")
    scheduler = optim.get("scheduler", "linear")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"optim.scheduler={scheduler}: unknown schedule; choose one of "
                          f"{', '.join(SCHEDULERS)}")


def no_decay_parameters(model: nn.Module) -> set[int]:
    """``id``s of the parameters that get no weight decay: biases and normalization weights."""
    ids = set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if is_norm or name == "bias" or name.endswith("_bias"):
                ids.add(id(param))
    return ids


def parameter_groups_with_lr(model: nn.Module, optim: Mapping) -> list[dict]:
    """Optimizer parameter groups: (cores | sparse | rest) x (decay | no decay), empty ones dropped.

    Each group is a dict with ``params``, ``lr``, ``weight_decay`` and ``name`` (``cores``,
    ``cores_no_decay``, ``sparse``, ``rest``, ``rest_no_decay`` ...; the LR monitor logs them by name).
    """
    from saten import parameter_groups

    lr = float(optim["lr"])
    lrs = {"cores": optim.get("lr_cores") or lr, "sparse": optim.get("lr_sparse") or lr, "rest": lr}
    weight_decay = float(optim.get("weight_decay", 0.0))
    skip = no_decay_parameters(model)
    groups = []
    for family, params in parameter_groups(model).items():
        decay = [p for p in params if id(p) not in skip]
        plain = [p for p in params if id(p) in skip]
        for suffix, members, wd in (("", decay, weight_decay), ("_no_decay", plain, 0.0)):
            if members:
                groups.append({"params": members, "lr": float(lrs[family]), "weight_decay": wd,
                               "name": family + suffix})
    return groups


def warmup_steps(optim: Mapping, total_steps: int) -> int:
    """Warm-up length: ``optim.warmup_steps`` when set, else ``ceil(warmup_ratio * total_steps)``."""
    if optim.get("warmup_steps") is not None:
        return int(optim["warmup_steps"])
    return int(math.ceil(float(optim.get("warmup_ratio", 0.0)) * total_steps))


def build_optimizer(model: nn.Module, optim: Mapping, total_steps: int):
    """Build the optimizer and the per-step schedule for ``total_steps`` optimizer steps.

    Parameters
    ----------
    model : nn.Module
        The (compressed) model.
    optim : Mapping
        The ``optim`` config group: ``optimizer`` (a partial ``_target_`` config, default AdamW), ``lr``,
        ``lr_cores``, ``lr_sparse``, ``weight_decay``, ``scheduler``, ``warmup_ratio``, ``warmup_steps``.
    total_steps : int
        Number of optimizer steps of the whole run (``trainer.estimated_stepping_batches``).

    Returns
    -------
    tuple
        ``(optimizer, scheduler)``; the scheduler steps once per optimizer step.
    """
    from transformers import get_scheduler

    check_optim_config(optim)
    groups = parameter_groups_with_lr(model, optim)
    optimizer_cfg = dict(optim.get("optimizer") or DEFAULT_OPTIMIZER)
    optimizer_cfg.setdefault("_partial_", True)
    optimizer_cfg.setdefault("_convert_", "all")
    optimizer = instantiate(optimizer_cfg)(groups, lr=float(optim["lr"]))
    total_steps = max(int(total_steps), 1)
    scheduler = get_scheduler(optim.get("scheduler", "linear"), optimizer,
                              num_warmup_steps=min(warmup_steps(optim, total_steps), total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


class TrainingHooks:
    """LightningModule hooks shared by every task family (mixed in before ``L.LightningModule``).

    The best validation metrics (``self.best``) survive checkpoints, so a resumed run keeps its best epoch;
    the optimizer is AdamW over :func:`parameter_groups_with_lr` with the schedule of ``self.hparams.optim``.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["saten_best"] = dict(self.best)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best = dict(checkpoint.get("saten_best", {}))

    def configure_optimizers(self):
        if self.hparams.optim is None:
            raise ConfigError("optim=None: training needs the optim config group; add optim=adamw")
        optimizer, scheduler = build_optimizer(self.model, self.hparams.optim,
                                               int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
