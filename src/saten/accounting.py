"""Exact parameter, index-storage and MAC accounting (method.md §5) and the per-layer report rows."""

from __future__ import annotations

import math

from torch import nn

from saten.embedding import SatenEmbedding
from saten.layers import SatenLinear
from saten.lowrank import SVDLinear

__all__ = ["COMPRESSED_TYPES", "compressed_modules", "layer_counts", "layer_row", "model_report"]

COMPRESSED_TYPES = (SatenLinear, SVDLinear, SatenEmbedding)


def _bias(module) -> int:
    return module.bias.numel() if getattr(module, "bias", None) is not None else 0


def _csr_bytes(nnz: int, rows: int) -> int:
    """int32 column indices plus int32 row pointers."""
    return 4 * nnz + 4 * (rows + 1) if nnz else 0


def _tt_macs(layer: SatenLinear) -> int:
    """MACs per token of the TT part.

    Plain layout: two factors ``A₁ = G₁⋯G_p`` (N × r_p) and ``A₂`` (r_p × M), cost ``r_p (N + M)``.
    Matrix layout: contracting the input with one core after another,
    ``Σ_k (m_<k) r_{k-1} n_k m_k r_k (n_>k)``.
    """
    shape, ranks = layer.shape, layer.ranks
    if shape.layout == "plain":
        r_p = ranks[len(shape.in_factors)]
        return r_p * (shape.n_in + shape.n_out)
    total = 0
    for k, (n_k, m_k) in enumerate(zip(shape.in_factors, shape.out_factors, strict=True)):
        done_out = math.prod(shape.out_factors[:k])
        left_in = math.prod(shape.in_factors[k + 1 :])
        total += done_out * ranks[k] * n_k * m_k * ranks[k + 1] * left_in
    return total


def layer_counts(module: nn.Module) -> dict:
    """Parameters, dense parameters, MACs per token and sparse index bytes of one compressed module."""
    if isinstance(module, SatenLinear):
        n, m = module.in_features, module.out_features
        core_params = sum(c.numel() for c in module.cores)
        index = math.ceil(module.nnz / 4) if module.sparsity == "nm" else _csr_bytes(module.nnz, m)
        scale = n if module.input_scale is not None else 0  # activation-aware: a fixed per-channel scale
        return {
            "params": core_params + module.nnz + _bias(module) + scale,
            "dense_params": n * m + _bias(module),
            "macs": _tt_macs(module) + module.nnz + scale,
            "dense_macs": n * m,
            "index_bytes": index,
        }
    if isinstance(module, SVDLinear):
        n, m, r = module.in_features, module.out_features, module.rank
        return {
            "params": r * (n + m) + _bias(module),
            "dense_params": n * m + _bias(module),
            "macs": r * (n + m),
            "dense_macs": n * m,
            "index_bytes": 0,
        }
    if isinstance(module, SatenEmbedding):
        ranks, p = module.ranks, len(module.shape.in_factors)
        row_cost = sum(ranks[k] * ranks[k + 1] for k in range(1, p)) + ranks[p] * module.embedding_dim
        return {
            "params": sum(c.numel() for c in module.cores) + module.nnz,
            "dense_params": module.num_embeddings * module.embedding_dim,
            "macs": row_cost,
            "dense_macs": 0,
            "index_bytes": _csr_bytes(module.nnz, module.num_embeddings),
        }
    raise TypeError(f"{type(module).__name__} is not a compressed module")


def layer_row(name: str, module: nn.Module) -> dict:
    """One ``layers`` entry of the report JSON."""
    counts = layer_counts(module)
    if isinstance(module, SVDLinear):
        n, m, shape, ranks, nnz = module.in_features, module.out_features, None, [1, module.rank, 1], 0
    elif isinstance(module, SatenEmbedding):
        n, m, shape, ranks, nnz = (
            module.num_embeddings,
            module.embedding_dim,
            module.shape.as_list(),
            module.ranks,
            module.nnz,
        )
    else:
        n, m, shape, ranks, nnz = (
            module.in_features,
            module.out_features,
            module.shape.as_list(),
            module.ranks,
            module.nnz,
        )
    return {
        "name": name,
        "in_features": n,
        "out_features": m,
        "shape": shape,
        "ranks": ranks,
        "nnz": nnz,
        "params": counts["params"],
        "dense_params": counts["dense_params"],
        "rel_error_tt": getattr(module, "rel_error_tt", None),
        "rel_error": module.rel_error,
        "macs": counts["macs"],
        "index_bytes": counts["index_bytes"],
        "activation_aware": getattr(module, "input_scale", None) is not None,
    }


def compressed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every compressed module of ``model``, in module order."""
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, COMPRESSED_TYPES)]


def _ratio(num: int, den: int) -> float:
    return num / den if den else 1.0


def model_report(
    model: nn.Module,
    replaced: list[str] | None = None,
    cfg=None,
    seconds: float | None = None,
    model_name: str | None = None,
) -> dict:
    """The compression report (issue 2's JSON schema) for a compressed ``model``.

    ``ratio`` is the targeted ratio (replaced layers only); ``model_ratio`` divides all parameters of the
    compressed model by all parameters of the dense one. ``macs``/``dense_macs`` are per token over the
    replaced layers; sparse index bytes are reported per layer, not counted as parameters.
    """
    modules = dict(compressed_modules(model))
    names = list(modules) if replaced is None else list(replaced)
    layers = [layer_row(name, modules[name]) for name in names]
    params = sum(row["params"] for row in layers)
    dense_params = sum(row["dense_params"] for row in layers)
    scaled = [m for m in modules.values() if getattr(m, "input_scale", None) is not None]
    scales = sum(m.input_scale.numel() for m in scaled)
    model_params = sum(p.numel() for p in model.parameters()) + scales  # stored scales count as parameters
    dense_model_params = model_params - params + dense_params
    counts = [layer_counts(modules[name]) for name in names]
    info = getattr(model, "saten_info", {}) or {}
    cfg = cfg if cfg is not None else info.get("config")
    get = (
        (lambda key: cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None))
        if cfg is not None
        else (lambda key: None)
    )
    report = {
        "model": model_name
        or getattr(getattr(model, "config", None), "_name_or_path", None)
        or type(model).__name__,
        "method": get("method"),
        "eps": get("eps"),
        "density": get("density"),
        "sparsity": get("sparsity"),
        "seconds": seconds if seconds is not None else info.get("seconds"),
        "layers": layers,
        "total": {
            "params": params,
            "dense_params": dense_params,
            "ratio": _ratio(params, dense_params),
            "model_params": model_params,
            "dense_model_params": dense_model_params,
            "model_ratio": _ratio(model_params, dense_model_params),
            "macs": sum(c["macs"] for c in counts),
            "dense_macs": sum(c["dense_macs"] for c in counts),
            "index_bytes": sum(c["index_bytes"] for c in counts),
        },
    }
    if info.get("budget"):  # saten.target_ratio: what the global or sensitivity budget chose
        report["budget"] = info["budget"]
    return report
