"""Give a compressed model the exact structure of a saved state dict before loading it.

A model rebuilt for loading is compressed afresh (``compress`` in the module's ``__init__``), and a fresh
TT-SVD need not give the saved ranks: another device (``model.device=auto`` on a GPU), another random init of
a tiny model, another library version. The saved tensors are the truth: :func:`match_state` reads every
compressed layer's ranks, kept-value count and SVD rank from the state dict and replaces the layers that
differ by empty ones of the saved structure (:meth:`SatenLinear.from_spec`), which the state dict then fills.

>>> from saten.reload import load_state_exact
>>> load_state_exact(module, torch.load("last.ckpt")["state_dict"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from saten.embedding import SatenEmbedding
from saten.errors import ConfigError
from saten.layers import SatenLinear
from saten.lowrank import SVDLinear

__all__ = ["load_checkpoint", "load_state_exact", "match_state", "saved_spec"]


def saved_spec(layer: nn.Module, state: Mapping[str, torch.Tensor], key: str) -> dict:
    """``layer.spec()`` with the ranks / nnz / SVD rank that the state dict holds under ``key.``."""
    spec = layer.spec()
    if isinstance(layer, SVDLinear):
        spec["rank"] = int(state[f"{key}left"].shape[1])
        return spec
    cores = [state[f"{key}cores.{k}"] for k in range(len(layer.cores))]
    if f"{key}cores.{len(layer.cores)}" in state or [c.shape[1] for c in cores] != list(layer.shape.modes):
        saved = [tuple(c.shape) for c in cores]
        raise ConfigError(f"tt_shape: the saved layer {key[:-1]} has cores {saved}, not of the configured "
                          f"shape {layer.shape.as_list()}; use the run's tt_shape")
    spec["ranks"] = [1] + [int(c.shape[2]) for c in cores]
    spec["nnz"] = int(state[f"{key}values"].numel())
    if isinstance(layer, SatenLinear):  # activation-aware layers carry their input scales
        spec["input_scale"] = f"{key}input_scale" in state
    return spec


def match_state(model: nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Replace the compressed layers of ``model`` whose structure differs from ``state``'s; return the names.

    Parameters
    ----------
    model : nn.Module
        A compressed model (``SatenLinear``, ``SVDLinear``, ``SatenEmbedding`` layers).
    state : mapping
        A state dict of the same model (a Lightning checkpoint's ``state_dict``, a safetensors file).
    prefix : str
        Prefix of the model's keys in ``state`` (``"model."`` for a LightningModule's ``model``).
    """
    rebuilt = []
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, (SatenLinear, SVDLinear, SatenEmbedding)):
            continue
        key = f"{prefix}{name}."
        if not any(k.startswith(key) for k in state):
            continue
        spec = saved_spec(layer, state, key)
        if spec == layer.spec():
            continue
        first = next(iter(layer.parameters()))
        new = type(layer).from_spec(spec, dtype=first.dtype, device=first.device)
        new.train(layer.training)
        new.requires_grad_(first.requires_grad)
        _replace(model, name, layer, new)
        rebuilt.append(name)
    return rebuilt


def _replace(model: nn.Module, name: str, old: nn.Module, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    for module in model.modules():  # a tied LM head reads the embedding it holds (SatenTiedHead)
        held = getattr(module, "embedding", None)
        if isinstance(held, list) and held and held[0] is old:
            held[0] = new


def load_state_exact(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "") -> list[str]:
    """:func:`match_state`, then a strict ``load_state_dict``; returns the rebuilt layer names."""
    rebuilt = match_state(module, state, prefix)
    module.load_state_dict(dict(state), strict=True)
    return rebuilt


def load_checkpoint(path, map_location: str = "cpu"):
    """A LightningModule from a Lightning ``.ckpt``, with the checkpoint's compressed structure, in eval mode.

    Like ``load_from_checkpoint``, but the layers are first rebuilt with the saved ranks (:func:`match_state`)
    """
    from saten.families import module_class, task_kind

    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    hparams = dict(checkpoint["hyper_parameters"])
    module = module_class(task_kind(hparams["task"]))(**hparams)
    load_state_exact(module, checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.eval()
