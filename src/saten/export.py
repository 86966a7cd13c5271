"""Export a compressed model for inference: each compressed layer becomes a deployable layer.

``export(model, format="auto")`` replaces every :class:`~saten.layers.SatenLinear` (and a Saten(e)
:class:`~saten.embedding.SatenEmbedding` with its tied head) by one of the formats of
:mod:`saten.inference_layers` / :mod:`saten.inference_embedding`. With ``format="auto"`` the candidates
are timed on the layer's own tensors at the given token count and the fastest is kept, per layer.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from saten.compress import SatenTiedHead, _set_module
from saten.embedding import SatenEmbedding
from saten.inference_embedding import FactorizedEmbedding, FactorizedTiedHead, merged_embedding
from saten.inference_layers import (
    KERNELS,
    FactorizedTTLinear,
    MergedLinear,
    SemiStructuredLinear,
    semi_structured_available,
)
from saten.layers import SatenLinear

__all__ = ["FORMATS", "export"]

FORMATS = ("auto", "merged", "factorized", "semi_structured")


def _candidates(layer: SatenLinear, format: str, kernel: str) -> dict[str, nn.Module]:
    """Inference layers to choose from, keyed ``merged``, ``factorized:<kernel>`` or ``semi_structured``."""
    kernels = list(KERNELS) if kernel == "auto" else [kernel]
    if layer.nnz == 0:
        kernels = kernels[:1]
    out: dict[str, nn.Module] = {}
    if format in ("auto", "merged"):
        out["merged"] = MergedLinear.from_saten(layer)
    if format in ("auto", "factorized"):
        out.update({f"factorized:{k}": FactorizedTTLinear.from_saten(layer, k) for k in kernels})
    semi_ok = layer.sparsity == "nm" and tuple(layer.nm or ()) == (2, 4)
    if format == "semi_structured" or (
        format == "auto" and semi_ok and semi_structured_available(layer.values.device) is None
    ):
        out["semi_structured"] = SemiStructuredLinear.from_saten(layer)
    return out


def time_call(fn, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``fn(x)`` over ``repeats`` calls after two warm-up calls (no autograd)."""
    with torch.inference_mode():
        for _ in range(2):
            fn(x)
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pick(candidates: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> tuple[str, dict]:
    if len(candidates) == 1:
        return next(iter(candidates)), {}
    timings = {key: time_call(module, x, repeats) for key, module in candidates.items()}
    return min(timings, key=timings.get), timings


def _format_of(key: str) -> str:
    return key.split(":")[0]


def _check(format: str, kernel: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {', '.join(FORMATS)}")
    if kernel not in ("auto", *KERNELS):
        raise ValueError(f"kernel={kernel!r}: use 'auto', {', '.join(map(repr, KERNELS))}")


def export(
    model: nn.Module, format: str = "auto", *, tokens: int = 1, repeats: int = 20, kernel: str = "auto"
) -> list[str]:
    """Replace the compressed layers of ``model`` by inference layers, in place; return the replaced names.

    Parameters
    ----------
    model : nn.Module
        A model compressed by :func:`saten.compress`.
    format : {"auto", "merged", "factorized", "semi_structured"}
        ``merged``: dense weight; ``factorized``: TT factors + sparse residual; ``semi_structured``: TT
        factors + 2:4 residual on CUDA sm80+ (2:4 layers only); ``auto``: per layer, the fastest candidate
        measured at ``tokens`` tokens.
    tokens : int
        Rows of the input the candidates are timed on (1 for batch-1 decoding).
    repeats : int
        Timed calls per candidate (median).
    kernel : {"auto", "csr", "gather"}
        Sparse residual kernel of the factorized format; ``auto`` times both.

    Returns
    -------
    list of str
        Replaced module names. ``model.saten_export`` maps each to its format (``merged``, ``factorized``
        or ``semi_structured``); ``model.saten_export_timings`` holds the measured seconds per candidate
        where there was a choice.
    """
    _check(format, kernel)
    choices: dict[str, str] = {}
    timings: dict[str, dict] = {}
    names = [(n, m) for n, m in model.named_modules() if isinstance(m, SatenLinear)]
    for name, layer in names:
        x = torch.randn(tokens, layer.in_features, dtype=layer.values.dtype, device=layer.values.device)
        candidates = _candidates(layer, format, kernel)
        key, timed = _pick(candidates, x, repeats)
        _set_module(model, name, candidates[key])
        choices[name] = _format_of(key)
        if timed:
            timings[name] = timed
    embedding_names = _export_embedding(model, format, tokens, repeats, choices, timings)
    model.saten_export = choices
    model.saten_export_timings = timings
    return [name for name, _ in names] + embedding_names


def _export_embedding(model, format, tokens, repeats, choices, timings) -> list[str]:
    """Export a Saten(e) input embedding and its tied head; returns ``[name]`` or ``[]``."""
    if not hasattr(model, "get_input_embeddings"):
        return []
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, SatenEmbedding):
        return []
    if format == "semi_structured":
        raise ValueError("format='semi_structured' has no embedding form; use format='auto' (the "
                         "embedding then gets the faster of merged and factorized)")
    name = next(n for n, m in model.named_modules() if m is embedding)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = isinstance(head, SatenTiedHead) and head.embedding[0] is embedding
    bias = head.bias if tied else None
    with torch.no_grad():
        factorized = FactorizedEmbedding.from_saten(embedding)
        fact_head = FactorizedTiedHead(factorized, bias) if tied else None
        merged, merged_head = merged_embedding(embedding, bias, tied)
    key = "merged" if format == "merged" else "factorized"
    if format == "auto":
        dim = embedding.embedding_dim
        if tied:  # the head reads the whole table every token: it dominates
            x = torch.randn(tokens, dim, dtype=embedding.values.dtype, device=embedding.values.device)
            options = {"merged": merged_head, "factorized": fact_head}
        else:
            x = torch.randint(0, embedding.num_embeddings, (tokens,), device=embedding.values.device)
            options = {"merged": merged, "factorized": factorized}
        key, timings[name] = _pick(options, x, repeats)
    new_emb, new_head = (merged, merged_head) if key == "merged" else (factorized, fact_head)
    model.set_input_embeddings(new_emb)
    if tied:
        model.set_output_embeddings(new_head)
    choices[name] = key
    return [name]
