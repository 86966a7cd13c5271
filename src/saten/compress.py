"""Model surgery: choose modules by name (PEFT-style), replace them, report what changed."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from saten.config import SatenConfig, TTShapeConfig
from saten.embedding import SatenEmbedding
from saten.errors import ConfigError
from saten.layers import SatenLinear
from saten.lowrank import SVDLinear
from saten.tt import TTShape, balanced_shape

__all__ = ["DEFAULT_TARGETS", "SatenTiedHead", "compress", "find_targets", "parameter_groups"]

# Transformer-block Linears per architecture: attention q/k/v/o and the FFN; never pooler, heads or lm_head.
DEFAULT_TARGETS = {
    "bert": r"(.*\.)?encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)",
    "llama": r"(.*\.)?layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)",
}
HEAD_NAMES = ("classifier", "score", "lm_head", "pooler", "qa_outputs", "cls")


def _matches(name: str, pattern) -> bool:
    """Regex full-match for a string pattern, suffix match (``name == s`` or ``….s``) for a list."""
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == s or name.endswith("." + s) for s in pattern)


def _is_head(name: str) -> bool:
    return any(part in HEAD_NAMES for part in name.split("."))


def find_targets(model: nn.Module, targets=None, exclude=None) -> list[str]:
    """Names of the ``nn.Linear`` modules that ``targets`` selects, minus ``exclude``.

    Parameters
    ----------
    targets : None | str | list of str
        ``None``: the architecture default (:data:`DEFAULT_TARGETS`, else all Linears outside the heads);
        ``"all-linear"``: every Linear outside the heads; another string: regex full-match; a list: suffixes.
    exclude : None | str | list of str
        Same forms (``"all-linear"`` excepted).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if targets is None:
        targets = DEFAULT_TARGETS.get(model_type, "all-linear")
    linears = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    if targets == "all-linear":
        chosen = [name for name in linears if not _is_head(name)]
    else:
        try:
            chosen = [name for name in linears if _matches(name, targets)]
        except re.error as err:
            raise ConfigError(
                f"saten.targets={targets}: not a valid regex ({err}); fix the pattern"
            ) from None
    chosen = [name for name in chosen if not _matches(name, exclude)]
    if not chosen:
        example = ", ".join(linears[:3]) or "none"
        raise ConfigError(
            f"saten.targets={targets} (exclude={exclude}) matches no Linear module of this "
            f"{model_type or type(model).__name__} model; names look like: {example}"
        )
    return chosen


def _override_for(name: str, overrides: Mapping | None) -> dict:
    for pattern, values in (overrides or {}).items():
        if _matches(name, pattern) or _matches(name, [pattern]):
            return dict(values)
    return {}


def _shape_for(name: str, linear: nn.Linear, shape_cfg: TTShapeConfig) -> TTShape:
    for pattern, factors in (shape_cfg.shapes or {}).items():
        if _matches(name, pattern) or _matches(name, [pattern]):
            shape = TTShape(tuple(factors[0]), tuple(factors[1]), shape_cfg.layout)
            if (shape.n_in, shape.n_out) != (linear.in_features, linear.out_features):
                raise ConfigError(
                    f"tt_shape.shapes.{pattern}={factors}: products {shape.n_in}x{shape.n_out} do "
                    f"not match {name} ({linear.in_features}->{linear.out_features}); fix the factors"
                )
            return shape
    return balanced_shape(
        linear.in_features, linear.out_features, shape_cfg.in_order, shape_cfg.out_order, shape_cfg.layout
    )


def _compress_linear(
    name: str, linear: nn.Linear, cfg: SatenConfig, shape_cfg: TTShapeConfig, channel_scale=None
) -> nn.Module:
    override = _override_for(name, cfg.overrides)
    if override:
        cfg = cfg.for_layer(**override)
    if cfg.method == "svd":
        return SVDLinear.from_linear(linear, cfg.svd_ratio)
    if cfg.sparsity == "nm" and linear.in_features % cfg.nm[1]:
        raise ConfigError(
            f"saten.nm={cfg.nm}: {name} has {linear.in_features} inputs, not divisible by "
            f"M={cfg.nm[1]}; exclude the layer or pick another M"
        )
    density = cfg.density if cfg.method == "saten" and cfg.sparsity == "unstructured" else 0.0
    sparsity = cfg.sparsity if cfg.method == "saten" else "unstructured"
    return SatenLinear.from_linear(
        linear,
        cfg.eps,
        density or 0.0,
        sparsity=sparsity,
        nm=cfg.nm,
        max_rank=cfg.max_rank,
        shape=_shape_for(name, linear, shape_cfg),
        channel_scale=channel_scale,
    )


class SatenTiedHead(nn.Module):
    """Output head tied to a compressed input embedding: ``logits = x · tableᵀ`` with no weight of its own."""

    def __init__(self, embedding: SatenEmbedding, bias: torch.Tensor | None = None):
        super().__init__()
        self.embedding = [embedding]  # a list keeps it out of this module's children (no double counting)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embedding[0].weight, self.bias)


def _compress_embeddings(model: nn.Module, cfg: SatenConfig) -> list[str]:
    embedding = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is embedding)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and getattr(head, "weight", None) is embedding.weight
    density = cfg.density if cfg.method == "saten" and cfg.sparsity == "unstructured" else 0.0
    compressed = SatenEmbedding.from_embedding(embedding, cfg.eps, density or 0.0, max_rank=cfg.max_rank)
    model.set_input_embeddings(compressed)
    if tied:
        model.set_output_embeddings(SatenTiedHead(compressed, getattr(head, "bias", None)))
    return [name]


def _scaled(linear: nn.Linear, scale: torch.Tensor) -> nn.Linear:
    """A weight-only copy of ``linear`` with its input channels scaled (``W·diag(s)``)."""
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    copy.weight = nn.Parameter(linear.weight.detach() * scale.to(linear.weight)[None, :], requires_grad=False)
    copy.bias = linear.bias
    return copy


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def compress(
    model: nn.Module,
    config: SatenConfig | Mapping | None = None,
    *,
    tt_shape=None,
    progress: bool = False,
    channel_scales: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Replace the targeted modules of ``model`` in place; return the replaced names.

    Parameters
    ----------
    model : nn.Module
        Usually a transformers model (BERT, LLaMA, …).
    config : SatenConfig or mapping
        The ``saten`` config (method, eps, density, sparsity, nm, targets, exclude, embeddings, …).
    tt_shape : TTShapeConfig or mapping, optional
        The ``tt_shape`` config (orders, layout, explicit shapes).
    progress : bool
        Show a progress bar.
    channel_scales : mapping of str to torch.Tensor, optional
        Activation-aware compression: per-input-channel scales of each targeted Linear (by name), from
        :func:`saten.calibration.activation_scales` (saten and tt methods).

    Returns
    -------
    list of str
        Module names replaced, in module order (embedding last when ``embeddings`` is set). The model gets a
        ``saten_info`` dict with the config and the compression wall time in seconds.
    """
    cfg = SatenConfig.from_any(config)
    shape_cfg = TTShapeConfig.from_any(tt_shape)
    start = time.perf_counter()
    replaced: list[str] = []
    budget = None
    if cfg.method != "dense":
        names = find_targets(model, cfg.targets, cfg.exclude)
        if cfg.target_ratio is not None:  # global budget: choose eps (and density) first
            from saten.budget import fit_budget

            linears = [model.get_submodule(name) for name in names]
            shapes = [_shape_for(n, lin, shape_cfg) for n, lin in zip(names, linears)]
            extra = 0
            if channel_scales:  # the budget sees the weights that will be compressed, and the scales' cost
                linears = [_scaled(lin, channel_scales[n]) for n, lin in zip(names, linears)]
                extra = sum(channel_scales[n].numel() for n in names)
            cfg, budget = fit_budget(linears, shapes, cfg, extra)
        with torch.no_grad():
            if channel_scales is not None and cfg.method == "svd":
                raise ConfigError("calibration.samples>0 with saten.method=svd: activation-aware compression "
                                  "applies to saten and tt; set calibration=none for the SVD baseline")
            modules = _compress_all(model, names, cfg, shape_cfg, progress, channel_scales or {})
            for name, module in zip(names, modules, strict=True):
                _set_module(model, name, module)
                replaced.append(name)
            if cfg.embeddings:
                replaced += _compress_embeddings(model, cfg)
        if cfg.freeze:
            for name in replaced:
                model.get_submodule(name).requires_grad_(False)
    model.saten_info = {
        "config": cfg.as_dict(),
        "tt_shape": vars(shape_cfg).copy(),
        "replaced": replaced,
        "seconds": time.perf_counter() - start,
    }
    if budget is not None:
        model.saten_info["budget"] = budget
    return replaced


def _compress_all(model, names, cfg, shape_cfg, progress: bool, scales: Mapping) -> list[nn.Module]:
    """Compressed replacements for ``names``, in order.

    On CPU the layers are independent small decompositions that use one core poorly, so they run on a
    thread pool (one per intra-op thread) with single-threaded ops: about 1.4x faster on 2 cores.
    """
    linears = [model.get_submodule(name) for name in names]
    workers = torch.get_num_threads() if all(lin.weight.device.type == "cpu" for lin in linears) else 1
    with _progress(len(names), progress) as bar:
        if workers <= 1 or len(names) == 1:
            return [_tick(bar, _compress_linear(n, lin, cfg, shape_cfg, scales.get(n)))
                    for n, lin in zip(names, linears)]
        with _intra_op_threads(1), ThreadPoolExecutor(workers) as pool:
            jobs = [pool.submit(_compress_linear, n, lin, cfg, shape_cfg, scales.get(n))
                    for n, lin in zip(names, linears)]
            return [_tick(bar, job.result()) for job in jobs]


@contextmanager
def _intra_op_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _tick(bar, item):
    if bar is not None:
        bar.update(1)
    return item


@contextmanager
def _progress(total: int, enabled: bool):
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="compressing", unit="layer") as bar:
        yield bar


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters as ``cores`` (TT cores, SVD factors), ``sparse`` (kept values) and ``rest``."""
    cores, sparse = set(), set()
    for module in model.modules():
        if isinstance(module, (SatenLinear, SatenEmbedding)):
            cores.update(id(p) for p in module.cores)
            sparse.add(id(module.values))
        elif isinstance(module, SVDLinear):
            cores.update((id(module.left), id(module.right)))
    groups: dict[str, list[nn.Parameter]] = {"cores": [], "sparse": [], "rest": []}
    for param in model.parameters():  # deduplicated, so tied weights appear once
        if param.requires_grad:
            key = "cores" if id(param) in cores else "sparse" if id(param) in sparse else "rest"
            groups[key].append(param)
    return groups
