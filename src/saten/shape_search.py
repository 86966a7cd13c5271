"""Training-free TT-shape proxy: ``python -m saten.shape_search model=minilm [--layers-per-type 1]``.

For every layer type (the targeted Linears with the layer index masked, e.g.
``…layer.\\d+.intermediate.dense``) enumerate candidate factorizations — orders 2+2 and 3+3, plain vs
interleaved (``matrix``) layout, balanced (min-sum) vs skewed factors — and score each on the real weights:
TT-SVD over a grid of ε gives a curve of (parameters, relative error ‖W − TT‖/‖W‖); the score is the error of
that curve at the parameter count the reference shape (balanced, plain, 2+2: what Saten uses) reaches at
``--eps`` (log-linear interpolation), i.e. reconstruction error at equal parameters (lower is better; 1.0 if
the candidate cannot get that small). Writes ``results/shape_search/<model>.{md,csv}``,
``<model>_points.csv``, ``<model>_pareto.png`` and the top candidates as
``conf/tt_shape/proxy_<model>_<layout>_<k>.yaml`` (see :mod:`saten.shape_report`).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from saten.tt import TTShape, balanced_factors, ordered_factorizations, tt_svd_matrix, tt_to_matrix

__all__ = ["Candidate", "candidates", "curve", "error_at", "layer_types", "macs_at", "score", "search"]

# around the reference ε 0.85: enough to interpolate at the budget; widen (--eps-grid) for fuller plots
EPS_GRID = (0.7, 0.85, 1.0)


@dataclass(frozen=True)
class Candidate:
    """One shape: a label (``o2_plain_balanced``), the order and the factorization."""

    label: str
    shape: TTShape


def _kinds(n: int, order: int) -> dict[str, tuple[int, ...]]:
    """Representative factorizations of ``n``: balanced (largest first / ascending) and skewed ones."""
    bal = balanced_factors(n, order)
    multisets = {tuple(sorted(f, reverse=True)) for f in ordered_factorizations(n, order) if min(f) >= 2}
    kinds = {"balanced": bal, "balanced_asc": tuple(reversed(bal))}
    for name, spread in (("skew4", 4.0), ("skew16", 16.0)):
        if multisets:
            kinds[name] = min(multisets, key=lambda f: (abs(math.log(f[0] / f[-1] / spread)), sum(f)))
    return kinds


def candidates(n_in: int, n_out: int, orders: tuple[int, ...] = (2, 3)) -> list[Candidate]:
    """Candidate shapes of an ``(in, out)`` layer: per order and layout, the same kind of factors each side,
    plus ``mixed`` (input balanced largest-first, output ascending: a different pairing for ``matrix``)."""
    out: dict[tuple, Candidate] = {}
    for order in orders:
        ins, outs = _kinds(n_in, order), _kinds(n_out, order)
        pairs = {k: (ins[k], outs[k]) for k in ins if k in outs}
        pairs["mixed"] = (ins["balanced"], outs["balanced_asc"])
        for layout in ("plain", "matrix"):
            for kind, (f_in, f_out) in pairs.items():
                shape = TTShape(f_in, f_out, layout)
                out.setdefault((shape.in_factors, shape.out_factors, layout),
                               Candidate(f"o{order}_{layout}_{kind}", shape))
    return list(out.values())


def curve(a: torch.Tensor, shape: TTShape, eps_grid=EPS_GRID) -> list[tuple[float, int, float, int]]:
    """``(eps, params, relative error, MACs per token)`` of the TT part of ``a`` (``(N, M) = Wᵀ``) per ε."""
    from saten.accounting import _tt_macs  # the report's MAC count; it reads only .shape and .ranks

    norm = torch.linalg.vector_norm(a).item()
    points = []
    for eps in eps_grid:
        cores = tt_svd_matrix(a, shape, eps)
        error = torch.linalg.vector_norm(a - tt_to_matrix(cores, shape)).item() / norm
        macs = _tt_macs(SimpleNamespace(shape=shape, ranks=[1] + [c.shape[2] for c in cores]))
        points.append((eps, sum(c.numel() for c in cores), error, macs))
    return points


def error_at(points: list[tuple[float, int, float]], budget: float) -> float:
    """Error of the (params, error) curve at ``budget`` parameters: log-linear interpolation of the lower
    envelope; 1.0 (nothing kept) when every point needs more parameters than the budget."""
    pairs = sorted((p, e) for _, p, e, *_ in points)
    if budget < pairs[0][0]:
        return 1.0
    envelope, best = [], math.inf
    for params, err in pairs:
        best = min(best, err)
        envelope.append((math.log(params), best))
    xs, ys = zip(*envelope)
    return float(np.interp(math.log(budget), xs, ys))


def macs_at(points: list[tuple], budget: float) -> int:
    """MACs per token of the curve's point nearest to ``budget`` parameters (in log scale)."""
    return min(points, key=lambda pt: abs(math.log(pt[1] / budget)))[3]


def score(a: torch.Tensor, shape: TTShape, budget: float, eps_grid=EPS_GRID) -> tuple[float, list]:
    """Reconstruction error of ``shape`` on ``a`` at ``budget`` TT parameters (lower is better)."""
    points = curve(a, shape, eps_grid)
    return error_at(points, budget), points


def layer_types(names: list[str]) -> dict[str, list[str]]:
    """``{regex: names}``: module names grouped with their layer index masked (a ``tt_shape.shapes`` key)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = r"\.\d+\.".join(re.escape(part) for part in re.split(r"\.\d+\.", name))
        groups.setdefault(key, []).append(name)
    return groups


def _sample(names: list[str], count: int) -> list[str]:
    if count <= 0 or count >= len(names):
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def search(model, names: list[str], layers_per_type: int = 1, ref_eps: float = 0.85,
           eps_grid=EPS_GRID, orders=(2, 3)) -> tuple[list[dict], list[dict]]:
    """Score every candidate on ``layers_per_type`` layers of each type.

    Returns
    -------
    rows : list of dict
        One per (type, candidate): ``score`` (mean error at the reference budget), ``rank`` within the type.
    points : list of dict
        Every (type, candidate, layer, ε, params, error) measured, for the Pareto plot.
    """
    rows, points = [], []
    for pattern, members in layer_types(names).items():
        chosen = _sample(members, layers_per_type)
        weights = [model.get_submodule(n).weight.detach().float().T.contiguous() for n in chosen]
        n_in, n_out = weights[0].shape
        reference = TTShape(balanced_factors(n_in, 2), balanced_factors(n_out, 2))
        ref_points = [curve(a, reference, (ref_eps,))[0] for a in weights]
        budgets = [pt[1] for pt in ref_points]
        found = []
        for cand in candidates(n_in, n_out, orders):
            errors, macs = [], []
            for name, a, budget, ref in zip(chosen, weights, budgets, ref_points):
                err, pts = score(a, cand.shape, budget, eps_grid)
                errors.append(err)
                macs.append(macs_at(pts, budget) / ref[3])
                points += [{"type": pattern, "candidate": cand.label, "layer": name, "eps": e, "params": p,
                            "ratio": p / a.numel(), "error": r, "macs": m} for e, p, r, m in pts]
            found.append({"type": pattern, "in": n_in, "out": n_out, "candidate": cand.label,
                          "layout": cand.shape.layout, "in_factors": list(cand.shape.in_factors),
                          "out_factors": list(cand.shape.out_factors), "layers": len(chosen),
                          "budget_params": float(np.mean(budgets)), "score": float(np.mean(errors)),
                          "macs_vs_reference": float(np.mean(macs)),
                          "is_reference": cand.shape == reference})
        found.sort(key=lambda r: r["score"])
        rows += [r | {"rank": k + 1} for k, r in enumerate(found)]
    return rows, points


def main(argv: list[str] | None = None) -> int:
    from saten.compress import find_targets
    from saten.errors import ConfigError
    from saten.report import compose
    from saten.shape_report import write_outputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers-per-type", type=int, default=1, help="layers scored per type (0 = all)")
    parser.add_argument("--eps", type=float, default=0.85, help="ε at which the reference sets the budget")
    parser.add_argument("--eps-grid", type=float, nargs="+", default=list(EPS_GRID),
                        help="ε values of each candidate's (params, error) curve")
    parser.add_argument("--top", type=int, default=2, help="proxy configs written per layout")
    parser.add_argument("--max-macs", type=float, default=None,
                        help="proxy configs only from candidates with at most this many times the "
                             "reference's MACs per token near the budget (e.g. 1.0)")
    parser.add_argument("--out", type=Path, default=Path("results/shape_search"))
    parser.add_argument("--conf", type=Path, default=Path("conf/tt_shape"), help="where proxy configs go")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose(overrides)
        from saten.models import load_model

        model = load_model(cfg.model, head="sequence_classification" if cfg.model.arch == "bert"
                           else "causal_lm", num_labels=2 if cfg.model.arch == "bert" else None)
        names = find_targets(model, cfg.saten.targets, cfg.saten.exclude)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with torch.no_grad():
        rows, points = search(model, names, args.layers_per_type, args.eps, tuple(args.eps_grid))
    command = "python -m saten.shape_search " + " ".join(sys.argv[1:] if argv is None else argv)
    for path in write_outputs(str(cfg.model.name), rows, points, args, command):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
