"""Export a compressed model for inference: each compressed layer becomes a deployable layer.

``export(model, format="auto")`` replaces every :class:`~saten.layers.SatenLinear` (and a Saten(e)
:class:`~saten.embedding.SatenEmbedding` with its tied head) by one of the formats of
:mod:`saten.inference_layers` / :mod:`saten.inference_embedding`. With ``format="auto"`` the candidates
are timed on the layer's own tensors at the given token count, in passes over all layers in model order
(as a forward pass reads them), and the fastest is kept, per layer.
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
    PATHS,
    FactorizedTTLinear,
    MergedLinear,
    SemiStructuredLinear,
    semi_structured_available,
)
from saten.layers import SatenLinear

__all__ = ["FORMATS", "export"]

FORMATS = ("auto", "merged", "factorized", "semi_structured")
GATHER_LIMIT = 2**25  # values in the gather kernel's temporary above which auto does not try it


def _candidates(layer: SatenLinear, format: str, kernel: str, tokens: int, tt_path: str = "auto"
                ) -> dict[str, nn.Module]:
    """Inference layers to choose from, keyed ``merged``, ``factorized:<kernel>:<path>`` or
    ``semi_structured``."""
    kernels = list(KERNELS) if kernel == "auto" else [kernel]
    if layer.nnz == 0 or (kernel == "auto" and tokens * layer.nnz > GATHER_LIMIT):
        kernels = kernels[:1]  # the gather kernel's tokens x nnz temporary would be too large to try
    out: dict[str, nn.Module] = {}
    if format in ("auto", "merged"):
        out["merged"] = MergedLinear.from_saten(layer)
    if format in ("auto", "factorized"):
        # the matrix layout has only the core-by-core form, whatever tt_path asks for
        paths = ["cores"] if layer.shape.layout != "plain" else PATHS if tt_path == "auto" else [tt_path]
        error = None
        for k in kernels:
            for path in paths:
                try:
                    out[f"factorized:{k}:{path}"] = FactorizedTTLinear.from_saten(layer, k, path)
                except ValueError as err:  # an activation-aware input scale folds into the pair only
                    error = err
        if format == "factorized" and len(out) == 0:
            raise error
    semi_ok = layer.sparsity == "nm" and tuple(layer.nm or ()) == (2, 4)
    if format == "semi_structured":
        out["semi_structured"] = SemiStructuredLinear.from_saten(layer)
    elif format == "auto" and semi_ok and semi_structured_available(layer.values.device) is None:
        try:  # a candidate only where torch's kernels take this shape and dtype
            out["semi_structured"] = SemiStructuredLinear.from_saten(layer)
        except ValueError:
            pass
    return out


def time_in_order(entries: list[tuple[str, dict, torch.Tensor]], repeats: int) -> dict[str, dict]:
    """Median seconds of every candidate of every entry, measured in passes over all entries in order.

    One pass calls, for one candidate key, that candidate of each entry in model order, as a forward pass
    would: a layer's tensors then come from wherever the pass leaves them (cache or memory), not from the
    cache warmed by calling one layer repeatedly. Entries with a single candidate are not timed.

    Parameters
    ----------
    entries : list of (name, {key: module}, input)
    repeats : int
        Timed passes per key (after one warm-up pass).
    """
    timed = [(name, cands, x) for name, cands, x in entries if len(cands) > 1]
    keys = list(dict.fromkeys(key for _, cands, _ in timed for key in cands))
    samples: dict[str, dict[str, list]] = {name: {key: [] for key in cands} for name, cands, _ in timed}
    with torch.inference_mode():
        for key in keys:
            for rep in range(repeats + 1):
                for name, cands, x in timed:
                    if key not in cands:
                        continue
                    _sync(x)
                    start = time.perf_counter()
                    cands[key](x)
                    _sync(x)
                    if rep:
                        samples[name][key].append(time.perf_counter() - start)
    return {name: {key: statistics.median(v) for key, v in per.items()} for name, per in samples.items()}


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def _format_of(key: str) -> str:
    return key.split(":")[0]


def _check(format: str, kernel: str, tt_path: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {', '.join(FORMATS)}")
    if kernel not in ("auto", *KERNELS):
        raise ValueError(f"kernel={kernel!r}: use 'auto', {', '.join(map(repr, KERNELS))}")
    if tt_path not in ("auto", *PATHS):
        raise ValueError(f"tt_path={tt_path!r}: use 'auto', {', '.join(map(repr, PATHS))}")


def export(
    model: nn.Module, format: str = "auto", *, tokens: int = 1, repeats: int = 10, kernel: str = "auto",
    tt_path: str = "auto",
) -> list[str]:
    """Replace the compressed layers of ``model`` by inference layers, in place; return the replaced names.

    Parameters
    ----------
    model : nn.Module
        A model compressed by :func:`saten.compress`.
    format : {"auto", "merged", "factorized", "semi_structured"}
        ``merged``: dense weight; ``factorized``: TT factors + sparse residual; ``semi_structured``: TT
        factors + 2:4 residual on CUDA sm80+ (2:4 layers only); ``auto``: per layer, the fastest candidate
        measured at ``tokens`` tokens, in passes over all layers in model order (see
        :func:`time_in_order`), so that weights come from memory or cache as in a forward pass.
    tokens : int
        Rows of the input the candidates are timed on (1 for batch-1 decoding).
    repeats : int
        Timed passes per candidate (median).
    kernel : {"auto", "csr", "gather"}
        Sparse residual kernel of the factorized format; ``auto`` times both (the gather kernel is not
        tried where its ``tokens × nnz`` temporary would exceed ``GATHER_LIMIT`` values).
    tt_path : {"auto", "pair", "cores"}
        TT part of a factorized plain-layout layer: the contracted pair ``A₁``, ``A₂``, the cores one by
        one, or ``auto``: both timed (an activation-aware layer's input scale folds into the pair only).

    Returns
    -------
    list of str
        Replaced module names. ``model.saten_export`` maps each to its format (``merged``, ``factorized``
        or ``semi_structured``); ``model.saten_export_timings`` holds the measured seconds per candidate
        where there was a choice.
    """
    _check(format, kernel, tt_path)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SatenLinear)]
    entries = []
    for name, layer in layers:
        x = torch.randn(tokens, layer.in_features, dtype=layer.values.dtype, device=layer.values.device)
        entries.append((name, _candidates(layer, format, kernel, tokens, tt_path), x))
    embedding = _embedding_entry(model, format, tokens)
    timed_entries = entries + ([embedding[:3]] if embedding else [])
    timings = time_in_order(timed_entries, repeats)
    choices: dict[str, str] = {}
    for name, candidates, _ in entries:
        key = min(timings[name], key=timings[name].get) if name in timings else next(iter(candidates))
        _set_module(model, name, candidates[key])
        choices[name] = _format_of(key)
    if embedding:
        name, candidates, _, install = embedding
        key = min(timings[name], key=timings[name].get) if name in timings else next(iter(candidates))
        install(key)
        choices[name] = key
    model.saten_export = choices
    model.saten_export_timings = timings
    return list(choices)


def _embedding_entry(model, format: str, tokens: int):
    """``(name, candidates, input, install)`` for a Saten(e) input embedding (and its tied head), or
    ``None``. The timed candidates are the heads when tied (the head reads the whole table every token and
    dominates), else the lookups; ``install(key)`` puts the chosen pair into the model."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embedding, SatenEmbedding):
        return None
    if format == "semi_structured":
        raise ValueError("format='semi_structured' has no embedding form; use format='auto' (the "
                         "embedding then gets the faster of merged and factorized)")
    name = next(n for n, m in model.named_modules() if m is embedding)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = isinstance(head, SatenTiedHead) and head.embedding[0] is embedding
    bias = head.bias if tied else None
    with torch.no_grad():
        factorized = FactorizedEmbedding.from_saten(embedding)
        pairs = {"factorized": (factorized, FactorizedTiedHead(factorized, bias) if tied else None),
                 "merged": merged_embedding(embedding, bias, tied)}
    if format != "auto":
        pairs = {format: pairs[format]}
    device = embedding.values.device
    if tied:
        x = torch.randn(tokens, embedding.embedding_dim, dtype=embedding.values.dtype, device=device)
    else:
        x = torch.randint(0, embedding.num_embeddings, (tokens,), device=device)
    candidates = {key: pair[1] if tied else pair[0] for key, pair in pairs.items()}

    def install(key: str) -> None:
        model.set_input_embeddings(pairs[key][0])
        if tied:
            model.set_output_embeddings(pairs[key][1])

    return name, candidates, x, install
