"""Global budget: ``saten.target_ratio=0.33`` picks ε (and the density) to hit a targeted ratio.

The targeted ratio is the report's ``ratio``: parameters of the compressed Linears (TT cores + kept values
+ bias) over their dense count. First version of the allocation (one global ε, no per-layer search):

1. bisection on ε (the TT parameter count falls as ε grows) for the smallest ε whose ratio, with the
   configured density as a floor, does not exceed the target; only TT ranks are computed, no residual;
2. unstructured Saten: the budget left below the target is spent on the residual, by raising the density
   until the ratio meets the target (more kept entries only lower the error); TT-only and N:M have no
   continuous knob, so they take whichever of the two ε bracketing the target lands closer.

Smaller ε means a smaller TT error, so the smallest feasible ε at the given density floor is the
lowest-error global-ε choice. The chosen values replace ``eps``/``density`` in the config (so the report,
``summary.json`` and W&B show them) and ``model.saten_info["budget"]`` records the search.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from saten.config import SatenConfig
from saten.errors import ConfigError
from saten.layers import _work_dtype
from saten.sparse import kept_count
from saten.tt import TTShape, tt_svd_matrix

__all__ = ["fit_budget", "tt_params"]

log = logging.getLogger(__name__)
TOLERANCE = 0.01  # relative
STEPS = 18


def tt_params(linear: nn.Linear, shape: TTShape, eps: float, max_rank: int | None = None) -> int:
    """Parameters of the ε-bounded TT part of ``linear`` (the cores :meth:`SatenLinear.from_linear` keeps)."""
    weight = linear.weight.detach()
    cores = tt_svd_matrix(weight.to(_work_dtype(weight.dtype)).T, shape, eps, max_rank)
    return sum(core.numel() for core in cores)


class _Budget:
    """Ratio of the targeted layers as a function of (ε, density), with the TT counts cached per ε."""

    def __init__(self, linears: list[nn.Linear], shapes: list[TTShape], cfg: SatenConfig, extra: int = 0):
        self.linears, self.shapes, self.cfg = linears, shapes, cfg
        self.sizes = [lin.in_features * lin.out_features for lin in linears]
        # biases and the fixed extras (activation-aware input scales) cost the same whatever ε is
        self.biases = sum(lin.bias.numel() for lin in linears if lin.bias is not None) + extra
        self.dense_biases = self.biases - extra
        self.dense = sum(self.sizes) + self.dense_biases
        self.cache: dict[float, int] = {}

    def tt(self, eps: float) -> int:
        if eps not in self.cache:
            with torch.no_grad():
                self.cache[eps] = sum(tt_params(lin, shape, eps, self.cfg.max_rank)
                                      for lin, shape in zip(self.linears, self.shapes))
        return self.cache[eps]

    def kept(self, density: float) -> int:
        if self.cfg.method != "saten":
            return 0
        if self.cfg.sparsity == "nm":
            n, m = self.cfg.nm
            return sum(size * n // m for size in self.sizes)
        return sum(kept_count(density, size) for size in self.sizes)

    def ratio(self, eps: float, density: float) -> float:
        return (self.tt(eps) + self.kept(density) + self.biases) / self.dense


def fit_budget(
    linears: list[nn.Linear], shapes: list[TTShape], cfg: SatenConfig, extra: int = 0
) -> tuple[SatenConfig, dict]:
    """The config with ε (and the density) chosen for ``cfg.target_ratio``, and a record of the choice.

    ``linears`` are the weights as they will be compressed (activation-aware: already scaled) and
    ``extra`` counts the fixed parameters the compressed layers add (their input scales).

    Raises
    ------
    ConfigError
        When the target lies below what the sparse part alone costs at the configured density (or N:M),
        plus rank-1 TT cores.
    """
    target = float(cfg.target_ratio)
    floor = float(cfg.density or 0.0) if cfg.method == "saten" and cfg.sparsity == "unstructured" else 0.0
    budget = _Budget(linears, shapes, cfg, extra)
    lo, hi = 0.0, math.sqrt(max(len(s.modes) for s in shapes) - 1) + 1e-3  # ε at hi: every rank is 1
    least = budget.ratio(hi, floor)
    if least > target:
        fix = "lower saten.density" if floor > 0 else "use fewer/other targets or a larger target_ratio"
        raise ConfigError(f"saten.target_ratio={target}: below the smallest reachable ratio {least:.4f} "
                          f"(rank-1 TT cores plus the sparse part); {fix}")
    if budget.ratio(lo, floor) <= target:
        hi = lo
    for _ in range(STEPS):  # invariant: ratio(hi) <= target < ratio(lo)
        if hi - lo < 1e-4:
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if budget.ratio(mid, floor) <= target else (mid, hi)
    eps, density = round(hi, 5), floor
    if cfg.method == "saten" and cfg.sparsity == "unstructured":
        density = _top_up(budget, eps, floor, target)
    elif hi > 0 and abs(budget.ratio(lo, floor) - target) < abs(budget.ratio(hi, floor) - target):
        eps = round(lo, 5)
    reached = budget.ratio(eps, density)
    unstructured = cfg.method == "saten" and cfg.sparsity == "unstructured"
    record = {"target_ratio": target, "eps": eps, "density": density if unstructured else None,
              "ratio": reached, "relative_miss": reached / target - 1, "evaluations": len(budget.cache)}
    level = logging.INFO if abs(record["relative_miss"]) <= TOLERANCE else logging.WARNING
    log.log(level, "target_ratio %.4g: eps %.5g, density %s -> targeted ratio %.4f (%+.2f%%)", target, eps,
            record["density"], reached, 100 * record["relative_miss"])
    chosen = {"eps": eps} | ({"density": density} if unstructured else {})
    return cfg.for_layer(**chosen), record


def _top_up(budget: _Budget, eps: float, floor: float, target: float) -> float:
    """The largest density >= ``floor`` (to 1e-6) with ``ratio(eps, density) <= target``."""
    lo, hi = floor, 1.0
    if budget.ratio(eps, hi) <= target:
        return hi
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if budget.ratio(eps, mid) <= target else (lo, mid)
    return round(lo, 6)
