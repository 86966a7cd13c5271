"""Compression wall time: all MiniLM encoder Linears and all SmolLM2 decoder Linears, fast path vs plain.

``python benchmarks/compress.py [--repeats 3] [--models minilm smollm2_135m]`` writes
``results/benchmarks/compress.md`` and ``compress.csv``. The fast path is what :func:`saten.compress` runs
(Gram-matrix TT-SVD steps, sampled-bound top-k); the plain path is the textbook computation of the same
algorithm (full-spectrum thin SVD at every step, top-k over every entry). Both must give the same ranks and
the same masks; the script checks that.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from saten.compress import compress, find_targets
from saten.models import load_model
from saten.sparse import select_positions
from saten.tt import balanced_shape, tt_svd_matrix, tt_to_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_lines  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "minilm": {"name": "minilm", "source": "package_minilm", "arch": "bert", "dtype": "float32"},
    "smollm2_135m": {"name": "smollm2_135m", "source": "gguf_smollm2", "arch": "llama", "dtype": "float32",
                     "cache_dir": str(REPO / ".cache" / "models" / "smollm2_135m")},
}
SETTINGS = [("saten_u eps 0.8 density 0.1", {"eps": 0.8, "density": 0.1, "nm": None}),
            ("saten_24 eps 1.0 2:4", {"eps": 1.0, "density": None, "sparsity": "nm", "nm": [2, 4]})]


def fast(model, eps, density=0.0, sparsity="unstructured", nm=None):
    """``saten.compress`` on a copy of ``model``; returns the new layers."""
    model = copy.deepcopy(model)
    start = time.perf_counter()
    cfg = {"method": "saten", "eps": eps, "density": density, "sparsity": sparsity, "nm": nm}
    names = compress(model, cfg)
    seconds = time.perf_counter() - start
    return seconds, [model.get_submodule(name) for name in names]


def plain(linears, eps, density=0.0, sparsity="unstructured", nm=None):
    """The same algorithm computed the plain way; returns (ranks, positions) per layer."""
    out = []
    for lin in linears:
        w = lin.weight.detach()
        shape = balanced_shape(lin.in_features, lin.out_features)
        cores = tt_svd_matrix(w.T, shape, eps, algorithm="svd")
        residual = w - tt_to_matrix(cores, shape).T
        if sparsity == "nm":
            positions = select_positions(residual, sparsity="nm", nm=nm)
        else:
            k = round(density * residual.numel() + 0.5 - 1e-9)
            positions = torch.topk(residual.reshape(-1).abs(), k, sorted=False).indices.sort().values
        out.append(([1] + [c.shape[2] for c in cores], positions))
    return out


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args()
    rows = []
    for name in args.models:
        model = load_model(MODELS[name], head="base")
        linears = [model.get_submodule(n) for n in find_targets(model)]
        for label, kw in SETTINGS:
            runs = [fast(model, **kw) for _ in range(args.repeats)]
            fast_times, layers = [seconds for seconds, _ in runs], runs[-1][1]
            plain_times, reference = timed(lambda kw=kw, lin=linears: plain(lin, **kw), args.repeats)
            pairs = list(zip(layers, reference, strict=True))
            same_ranks = all(layer.ranks == ranks for layer, (ranks, _) in pairs)
            shared = sum(int(torch.isin(layer.positions, pos).sum()) for layer, (_, pos) in pairs)
            kept = sum(pos.numel() for _, (_, pos) in pairs)
            rows.append({"model": name, "layers": len(linears), "setting": label,
                         "fast_s_min": min(fast_times), "fast_s_median": statistics.median(fast_times),
                         "plain_s_min": min(plain_times), "plain_s_median": statistics.median(plain_times),
                         "fast_over_plain": min(fast_times) / min(plain_times), "same_ranks": same_ranks,
                         "mask_agreement": shared / kept if kept else 1.0})
            print(rows[-1], flush=True)
    write(rows, Path(args.out), args)


def write(rows, out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compress.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = f"python benchmarks/compress.py --repeats {args.repeats} --models {' '.join(args.models)}"
    lines = ["# Compression wall time", "", *machine_lines(command), "",
             "Fast = `saten.compress`'s path (Gram-matrix TT-SVD steps, sampled-bound exact top-k); plain =",
             "the same algorithm, full-spectrum SVD at every step and top-k over every entry. Times are",
             f"the minimum (median) over {args.repeats} repeats, in seconds, for all targeted layers.", "",
             "Ranks must be identical; masks may differ only where two residual entries tie to float32",
             "noise (mask agreement = shared kept positions / kept positions).", "",
             "| model | layers | setting | fast s | plain s | fast / plain | same ranks | mask agreement |",
             "|---|---:|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layers']} | {r['setting']} | {r['fast_s_min']:.3f} "
                     f"({r['fast_s_median']:.3f}) | {r['plain_s_min']:.3f} ({r['plain_s_median']:.3f}) "
                     f"| {r['fast_over_plain']:.2f} | {r['same_ranks']} | {r['mask_agreement']:.6f} |")
    (out / "compress.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'compress.md'}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
