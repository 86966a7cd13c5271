"""Sensitivity-aware budget: per-layer ε under a global target ratio, from a measured loss sensitivity.

One global ε treats every layer alike. Here each layer ``l`` gets its own ε from a grid, chosen to
minimize the predicted loss increase under the parameter budget ``target_ratio``:

- the loss increase of replacing ``W_l`` by ``Ŵ_l(ε)`` is estimated to second order with the diagonal
  empirical Fisher ``F_l = mean over calibration batches of (∂loss/∂W_l)²``:
  ``cost_l(ε) = ½ Σ F_l ⊙ (W_l − Ŵ_l(ε))²`` (as in Fisher-weighted low-rank/ pruning criteria);
- ``Σ_l cost_l(ε_l)`` is minimized subject to ``Σ_l params_l(ε_l) ≤ target·dense`` by the Lagrangian
  relaxation: for a price ``λ`` every layer picks ``argmin_ε cost_l(ε) + λ·params_l(ε)``, and bisection on
  ``λ`` finds the largest ratio under the target; a greedy pass then spends what the relaxation leaves
  under the budget. The density (or N:M) stays the configured one.

The result is a ``saten.overrides`` mapping ``{layer name: {"eps": ε_l}}`` plus a record for the report.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping

import torch
from torch import nn

from saten.config import SatenConfig
from saten.errors import ConfigError

__all__ = ["allocate", "eps_by_block", "fisher_diagonals", "layer_options", "sensitivity_overrides"]

log = logging.getLogger(__name__)


def fisher_diagonals(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the loss w.r.t. each named Linear's weight over the calibration batches.

    The batches must carry ``labels`` (the model then returns its own loss).
    """
    weights = {name: model.get_submodule(name).weight for name in names}
    flags = {name: w.requires_grad for name, w in weights.items()}
    sums = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model that will be compressed
    device = next(model.parameters()).device
    try:
        for weight in weights.values():
            weight.requires_grad_(True)
        for batch in batches:
            if "labels" not in batch:
                raise ConfigError("calibration.sensitivity=true: the calibration batches carry no labels")
            model.zero_grad(set_to_none=True)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            for name, weight in weights.items():
                sums[name] += weight.grad.float().square()
    finally:
        model.zero_grad(set_to_none=True)
        for name, weight in weights.items():
            weight.requires_grad_(flags[name])
        model.train(was_training)
    return {name: total / max(len(batches), 1) for name, total in sums.items()}


def layer_options(linear: nn.Linear, fisher: torch.Tensor, cfg: SatenConfig, build, grid) -> list[dict]:
    """``{"eps", "params", "cost"}`` of compressing ``linear`` at every ε of ``grid``.

    ``build(eps)`` returns the compressed layer (a :class:`saten.layers.SatenLinear`) at that ε.
    """
    from saten.accounting import layer_counts

    weight = linear.weight.detach().float()
    options, seen = [], {}
    for eps in grid:
        layer = build(eps)
        key = (tuple(layer.ranks), layer.nnz)
        if key in seen:  # same ranks as a smaller ε: the smaller ε is no worse
            continue
        with torch.no_grad():
            error = weight - layer.weight.float()
            cost = 0.5 * float((fisher * error.square()).sum())
        seen[key] = eps
        options.append({"eps": float(eps), "params": layer_counts(layer)["params"], "cost": cost})
    return options


def allocate(options: Mapping[str, list[dict]], dense: int, target: float) -> tuple[dict[str, dict], float]:
    """Per-layer choice minimizing the summed cost with ``Σ params ≤ target·dense`` (Lagrangian bisection).

    Returns the chosen option per layer and the reached ratio.
    """
    budget = target * dense

    def pick(price: float) -> dict[str, dict]:
        return {name: min(opts, key=lambda o: (o["cost"] + price * o["params"], o["params"]))
                for name, opts in options.items()}

    def params(choice):
        return sum(o["params"] for o in choice.values())

    cheapest = {name: min(opts, key=lambda o: o["params"]) for name, opts in options.items()}
    if params(cheapest) > budget:
        raise ConfigError(f"saten.target_ratio={target}: below the smallest ratio the ε grid reaches "
                          f"({params(cheapest) / dense:.4f}); raise the target or lower saten.density")
    lo, hi = 0.0, 1.0
    while params(pick(hi)) > budget:
        hi *= 4
    if params(pick(lo)) <= budget:
        hi = lo
    for _ in range(60):  # invariant: pick(hi) fits, pick(lo) does not
        if hi - lo <= 1e-12 * max(hi, 1e-30):
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if params(pick(mid)) <= budget else (mid, hi)
    choice = pick(hi)
    choice = _spend_leftover(choice, options, budget - params(choice))
    return choice, params(choice) / dense


def _spend_leftover(choice: dict[str, dict], options: Mapping[str, list[dict]], left: float) -> dict:
    """Upgrade layers while the budget allows, best cost decrease per added parameter first.

    The Lagrangian solution only reaches points on the convex hull of the summed (params, cost) curve, and
    with a coarse ε grid the hull's nearest point under the target can leave much of the budget unused
    (17 % on MiniLM / SST-2); this greedy pass spends it.
    """
    choice = dict(choice)
    while True:
        upgrades = [((choice[name]["cost"] - o["cost"]) / (o["params"] - choice[name]["params"]), name, o)
                    for name, opts in options.items() for o in opts
                    if 0 < o["params"] - choice[name]["params"] <= left and o["cost"] < choice[name]["cost"]]
        if not upgrades:
            return choice
        _, name, option = max(upgrades, key=lambda u: u[0])
        left -= option["params"] - choice[name]["params"]
        choice[name] = option


def _check_same_layers(teacher: nn.Module, model: nn.Module, names: list[str]) -> None:
    for name in names:
        try:
            shape = tuple(teacher.get_submodule(name).weight.shape)
        except AttributeError:
            shape = None
        if shape != tuple(model.get_submodule(name).weight.shape):
            raise ConfigError(f"calibration.fisher=teacher: the teacher has no {name} of the student's "
                              f"shape; pass a distill.teacher run of the same model")


def sensitivity_overrides(
    model: nn.Module, names: list[str], cfg: SatenConfig, batches, build_for, grid=None,
    fisher_model: nn.Module | None = None,
) -> tuple[dict, dict]:
    """``saten.overrides`` with a per-layer ε for ``cfg.target_ratio``, and the record of the allocation.

    ``build_for(name, eps)`` compresses the layer ``name`` at ``eps`` (with the run's shape, density and
    scales). ``fisher_model`` (same architecture, e.g. the dense fine-tuned teacher) supplies the Fisher
    in place of ``model``; the errors are always those of ``model``'s own weights.
    """
    if cfg.target_ratio is None:
        raise ConfigError("calibration.sensitivity=true: needs saten.target_ratio (e.g. 0.33) to allocate")
    grid = grid or [round(0.2 + 0.05 * i, 3) for i in range(21)]  # ε from 0.2 to 1.2
    if fisher_model is not None:
        _check_same_layers(fisher_model, model, names)
    fisher = fisher_diagonals(fisher_model if fisher_model is not None else model, names, batches)
    options, dense = {}, 0
    for name in names:
        linear = model.get_submodule(name)
        options[name] = layer_options(linear, fisher[name], cfg, lambda eps, n=name: build_for(n, eps), grid)
        dense += linear.weight.numel() + (linear.bias.numel() if linear.bias is not None else 0)
    choice, ratio = allocate(options, dense, float(cfg.target_ratio))
    overrides = {re.escape(name): {"eps": opt["eps"]} for name, opt in choice.items()}
    eps_values = [opt["eps"] for opt in choice.values()]
    record = {"target_ratio": float(cfg.target_ratio), "ratio": ratio,
              "relative_miss": ratio / cfg.target_ratio - 1, "allocation": "sensitivity",
              "fisher": "model" if fisher_model is None else "teacher",
              "eps_min": min(eps_values), "eps_max": max(eps_values),
              "eps_mean": sum(eps_values) / len(eps_values),
              "predicted_cost": sum(opt["cost"] for opt in choice.values()), "grid_points": len(grid)}
    if not math.isfinite(record["predicted_cost"]):
        raise ConfigError("calibration.sensitivity=true: the Fisher estimate is not finite; check the data")
    log.info("sensitivity budget %.4g: eps %.3g..%.3g -> targeted ratio %.4f", cfg.target_ratio,
             record["eps_min"], record["eps_max"], ratio)
    return overrides, record


def eps_by_block(overrides: Mapping[str, Mapping]) -> dict[int, float]:
    """Mean allocated ε per transformer block (``layer.<i>`` / ``layers.<i>`` in the layer names) of a
    run's ``saten.overrides`` (``report.json["config"]["overrides"]``)."""
    by_block: dict[int, list[float]] = {}
    for pattern, override in overrides.items():
        found = re.search(r"layers?\\?\.(\d+)", pattern)
        if found and "eps" in override:
            by_block.setdefault(int(found.group(1)), []).append(float(override["eps"]))
    return {block: sum(values) / len(values) for block, values in sorted(by_block.items())}


def main(argv: list[str] | None = None) -> None:
    """``python -m saten.sensitivity <run dir> ...``: each run's mean allocated ε per block."""
    import json
    import sys
    from pathlib import Path

    for run_dir in argv if argv is not None else sys.argv[1:]:
        report = Path(run_dir) / "report.json"
        if not report.is_file():
            raise SystemExit(f"{run_dir}: no report.json; pass the dir of a run with calibration=sensitivity")
        blocks = eps_by_block(json.loads(report.read_text())["config"].get("overrides") or {})
        if not blocks:
            raise SystemExit(f"{run_dir}: no per-layer ε in report.json; not a sensitivity-budget run")
        print(run_dir, " ".join(f"{block}:{eps:.2f}" for block, eps in blocks.items()))


if __name__ == "__main__":
    main()
