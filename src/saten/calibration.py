"""Activation-aware compression: per-input-channel scales measured on calibration data.

Saten's TT-SVD and residual mask minimize the weight error ``‖W − Ŵ‖``; what matters downstream is the
output error ``‖(W − Ŵ)X‖`` on the layer's real inputs ``X``. Full whitening (SVD-LLM) replaces ``W`` by
``W·L`` with ``XXᵀ = LLᵀ``; mapping the compressed ``W·L`` back needs ``L⁻¹``, a dense ``in × in``
matrix that destroys the TT structure. The diagonal part of it keeps the structure: with
``s_j = rms(x_j)^α`` (ASVD's input scaling), compress ``W·diag(s)`` and apply ``x / s`` before the
layer. The ε-bounded TT part then bounds the error weighted by the channels' activation energy, and the
top-|E| mask on the scaled residual ranks entries by ``|E_ij|·s_j`` (Wanda's score for ``α = 1``).
The layer keeps ``1/s`` as a fixed buffer (``in`` extra stored values, counted in its parameters).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["activation_scales", "calibrated_scales", "calibration_batches", "fisher_from_teacher",
           "input_channel_rms", "plan_compression"]

FISHER_SOURCES = ("model", "teacher")


def fisher_from_teacher(calibration: Mapping | None) -> bool:
    """Whether the sensitivity budget ranks layers by the Fisher of the dense fine-tuned teacher
    (``calibration.fisher=teacher``) rather than of the model being compressed, whose task head is still
    untrained at that point."""
    calibration = calibration or {}
    return bool(calibration.get("samples") and calibration.get("sensitivity")
                and calibration.get("fisher", "model") == "teacher")


def calibration_batches(datamodule, calibration: Mapping | None) -> list[dict[str, torch.Tensor]] | None:
    """The first batches of the datamodule's (seeded, shuffled) training loader, ``calibration.samples``
    examples in all; ``None`` when calibration is off.

    Calibration reads the training split only, never an evaluated one.
    """
    samples = int((calibration or {}).get("samples") or 0)
    if samples <= 0:
        return None
    datamodule.setup("fit")
    batches, seen = [], 0
    for batch in datamodule.train_dataloader():
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}  # labels: for the Fisher
        batches.append(batch)
        seen += len(next(iter(batch.values())))
        if seen >= samples:
            break
    return batches


@torch.no_grad()
def input_channel_rms(
    model: nn.Module, names: Iterable[str], batches: Iterable[Mapping]
) -> dict[str, torch.Tensor]:
    """Root-mean-square of every input channel of the Linears ``names`` over the calibration batches.

    Padding positions (``attention_mask == 0``) are left out.
    """
    names = list(names)
    sums = {name: None for name in names}
    counts = dict.fromkeys(names, 0)
    mask_holder: dict[str, torch.Tensor | None] = {"mask": None}

    def hook_for(name):
        def hook(_module, args):
            x = args[0].detach().float()
            mask = mask_holder["mask"]
            x = x.reshape(-1, x.shape[-1])
            if mask is not None and mask.numel() == x.shape[0]:
                x = x[mask.reshape(-1).bool()]
            squares = x.square().sum(0)
            sums[name] = squares if sums[name] is None else sums[name] + squares
            counts[name] += x.shape[0]

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in names]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask_holder["mask"] = batch.get("attention_mask")
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in names if not counts[name]]
    if missing:
        raise RuntimeError(f"calibration saw no input for {missing[:3]}: the batches never reached them")
    return {name: (sums[name] / counts[name]).sqrt() for name in names}


def activation_scales(rms: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = rms^α``, normalized to mean 1; dead channels get the smallest positive scale, not 0."""
    floor = rms[rms > 0].min() if bool((rms > 0).any()) else rms.new_tensor(1.0)
    scales = rms.clamp_min(floor).pow(alpha)
    return scales / scales.mean()


def calibrated_scales(model: nn.Module, saten: Mapping, calibration: Mapping | None, batches) -> dict | None:
    """Per-Linear input scales for :func:`saten.compress` (``channel_scales``), or ``None`` when off.

    Parameters
    ----------
    model : nn.Module
        The dense model, before compression.
    saten : mapping
        The ``saten`` config (targets, exclude, method).
    calibration : mapping, optional
        The ``calibration`` config: ``samples`` (0 = off) and ``alpha``.
    batches : list of dict, optional
        Calibration batches (:func:`calibration_batches`); ``None`` when the model is rebuilt from a
        saved run, whose state dict then supplies the scales.
    """
    from saten.compress import find_targets

    samples = int((calibration or {}).get("samples") or 0)
    if samples <= 0 or batches is None or saten.get("method") in ("dense", None):
        return None
    if not calibration.get("activation_aware", True):
        return None
    names = find_targets(model, saten.get("targets"), saten.get("exclude"))
    rms = input_channel_rms(model, names, batches)
    alpha = float(calibration.get("alpha", 0.5))
    return {name: activation_scales(value, alpha) for name, value in rms.items()}


def plan_compression(model: nn.Module, saten: Mapping, tt_shape: Mapping | None, calibration: Mapping | None,
                     batches, fisher_model: nn.Module | None = None
                     ) -> tuple[Mapping, dict | None, dict | None]:
    """What :func:`saten.compress` gets from calibration: the ``saten`` config, channel scales, a record.

    ``calibration.activation_aware`` gives per-channel scales; ``calibration.sensitivity`` (with
    ``saten.target_ratio``) replaces the global ε by per-layer ε (:mod:`saten.sensitivity`), returned as
    ``saten.overrides`` with the budget record for ``model.saten_info["budget"]``; its Fisher comes from
    ``fisher_model`` (the teacher, same architecture) when given, else from ``model``.
    """
    scales = calibrated_scales(model, saten, calibration, batches)
    calibration = calibration or {}
    if not calibration.get("sensitivity") or batches is None or saten.get("method") in ("dense", None):
        return saten, scales, None
    from saten.compress import _compress_linear, find_targets
    from saten.config import SatenConfig, TTShapeConfig
    from saten.sensitivity import sensitivity_overrides

    check_calibration_config(calibration, saten)  # the same checks as up front, for direct library calls
    cfg = SatenConfig.from_any(saten, warn=False)
    shape_cfg = TTShapeConfig.from_any(tt_shape)
    names = find_targets(model, cfg.targets, cfg.exclude)
    base = cfg.for_layer(target_ratio=None)
    scales_or_none = scales or {}

    def build_for(name, eps):
        return _compress_linear(name, model.get_submodule(name), base.for_layer(eps=eps), shape_cfg,
                                scales_or_none.get(name))

    overrides, record = sensitivity_overrides(model, names, cfg, batches, build_for,
                                              fisher_model=fisher_model)
    return base.as_dict() | {"overrides": overrides}, scales, record


def check_calibration_config(calibration: Mapping | None, saten: Mapping) -> None:
    """One-line errors for bad ``calibration`` values (before any model is loaded)."""
    from saten.errors import ConfigError

    calibration = calibration or {}
    samples = calibration.get("samples") or 0
    if not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"calibration.samples={samples}: use a whole number of examples >= 0 (0 = off)")
    alpha = calibration.get("alpha", 0.5)
    if alpha is None or not 0 < float(alpha) <= 2:
        raise ConfigError(f"calibration.alpha={alpha}: use a value in (0, 2]; 0.5 (ASVD) or 1.0 (Wanda)")
    if samples == 0 and (calibration.get("activation_aware") or calibration.get("sensitivity")):
        raise ConfigError("calibration.samples=0: activation_aware/sensitivity need calibration data; set "
                          "calibration.samples=128")
    method = saten.get("method")
    if calibration.get("activation_aware") and samples and method == "svd":
        raise ConfigError("calibration.activation_aware=true with saten.method=svd: activation-aware "
                          "compression applies to saten and tt; use calibration=none for the SVD baseline")
    fisher = calibration.get("fisher", "model")
    if fisher not in FISHER_SOURCES:
        raise ConfigError(f"calibration.fisher={fisher}: use model (the model being compressed) or teacher "
                          f"(the dense fine-tuned run of distill.teacher)")
    if calibration.get("sensitivity") and samples:
        if method not in ("saten", "tt"):
            raise ConfigError(f"calibration.sensitivity=true with saten.method={method}: per-layer ε "
                              f"applies to saten and tt; set calibration.sensitivity=false")
        if saten.get("target_ratio") is None:
            raise ConfigError("calibration.sensitivity=true: needs saten.target_ratio (e.g. 0.33) to "
                              "allocate a per-layer ε")
