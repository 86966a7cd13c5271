"""Per-layer inference time: dense GEMM vs the exported formats of a Saten layer, on real model shapes.

``python benchmarks/inference.py [--tokens 1 128 4096] [--min-time 0.3]`` writes
``results/benchmarks/inference.md`` and ``inference.csv``.

Layers: the Linear shapes of BERT-base, LLaMA-3.2-1B and SmolLM2-135M. Each Saten layer has the repo's
default structure (plain 2+2 balanced TT shape, unstructured residual at density 0.1) with the middle rank
chosen so that the targeted ratio (cores + kept values) is about 1/3, and random values: the time of
these kernels depends on the shapes, ranks and nnz only, not on the values. Formats:

- dense: ``F.linear`` with the dense weight (a merged export runs exactly this);
- factorized csr: ``x A₁ A₂`` plus the residual as a torch CSR matrix (``torch.mv`` for one token,
  ``torch.sparse.mm`` otherwise), with its two parts also timed alone (TT, CSR);
- factorized gather: the residual by an index gather of the input and a scatter-add (skipped where the
  gathered ``tokens × nnz`` temporary would exceed 32M values);
- semi_structured (2:4 on CUDA sm80+): not available on a CPU.

For one token the table also gives the bytes each format reads (float32 values, int32 CSR indices) and
the effective bandwidth, bytes / time: a batch-1 layer is bound by memory traffic, so the ideal speed-up is
the bytes ratio.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

from saten.accounting import layer_counts
from saten.inference_layers import FactorizedTTLinear
from saten.layers import SatenLinear
from saten.sparse import kept_count
from saten.tt import balanced_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load_average, machine_lines, write_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "BERT-base": [(768, 768), (768, 3072), (3072, 768)],
    "LLaMA-3.2-1B": [(2048, 2048), (2048, 512), (2048, 8192), (8192, 2048)],
    "SmolLM2-135M": [(576, 576), (576, 192), (576, 1536), (1536, 576)],
}
GATHER_LIMIT = 2**25
DESCRIPTION = [
    "Layers: the Linear shapes of BERT-base, LLaMA-3.2-1B and SmolLM2-135M, float32. Each Saten layer has "
    "the repo's default structure (plain 2+2 balanced TT shape, unstructured residual at density 0.1) with "
    "the middle rank set so that the targeted ratio (cores + kept values over dense) is about 1/3, and "
    "random values (the kernels' time depends on shapes, ranks and nnz only).",
    "",
    "- dense: `F.linear` with the dense weight; a merged export runs exactly this;",
    "- factorized csr: `x A1 A2` (the TT factors contracted once at export) plus the residual as a torch "
    "CSR matrix (`torch.mv` for one token, `torch.sparse.mm` otherwise); its two parts are also timed alone;",
    "- factorized gather: the residual by an index gather of the input and a scatter-add (skipped where the "
    "gathered tokens x nnz temporary would exceed 32M values).",
]
DENSITY, RATIO = 0.1, 1 / 3
MIB = 2**20


def synthetic_layer(n_in: int, n_out: int, ratio: float = RATIO, density: float = DENSITY) -> SatenLinear:
    """A :class:`SatenLinear` with the default structure at about ``ratio``, random cores and mask."""
    shape = balanced_shape(n_in, n_out)
    n1, m2 = shape.in_factors[0], shape.out_factors[1]
    nnz = kept_count(density, n_in * n_out)
    rank = max(1, round((ratio * n_in * n_out - nnz - n1 * n1 - m2 * m2) / (n_in + n_out)))
    layer = SatenLinear(n_in, n_out, shape, [1, n1, rank, m2, 1], nnz)
    generator = torch.Generator().manual_seed(n_in * 7 + n_out)
    with torch.no_grad():
        for core in layer.cores:
            core.copy_(torch.randn(core.shape, generator=generator) / core.shape[1] ** 0.5)
        layer.values.copy_(torch.randn(nnz, generator=generator) * 0.01)
        layer.positions.copy_(torch.randperm(n_in * n_out, generator=generator)[:nnz].sort().values)
        layer.bias.zero_()
    return layer


class TTPart(nn.Module):
    """The TT part of a factorized layer alone (a module, so that it can be copied)."""

    def __init__(self, layer: FactorizedTTLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer.tt_part(x)


class SparsePart(TTPart):
    """The CSR residual of a factorized layer alone, added into a preallocated output."""

    def __init__(self, layer: FactorizedTTLinear, out: torch.Tensor):
        super().__init__(layer)
        self.out = out

    def forward(self, x):
        return self.layer.sparse_part(x, self.out)


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.nbytes for t in [*module.parameters(), *module.buffers()])


def measure(fn, x, min_time: float) -> float:
    """Median seconds per call (``torch.utils.benchmark``, blocked autorange, no autograd)."""
    with torch.inference_mode():
        timer = benchmark.Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_time).median


def measure_cold(module: nn.Module, x, min_time: float, dense_bytes: int, working_set: int) -> float:
    """Seconds per call of ``module`` when its tensors come from memory, not cache: the call cycles through
    ``⌈working_set / dense_bytes⌉`` copies (the same count for every format of a shape)."""
    copies = [copy.deepcopy(module) for _ in range(math.ceil(working_set / dense_bytes))]

    def chain(v):
        for layer in copies:
            layer(v)

    return measure(chain, x, min_time) / len(copies)


def bench_shape(model: str, n_in: int, n_out: int, tokens: list[int], min_time: float,
                working_set: int) -> list[dict]:
    layer = synthetic_layer(n_in, n_out)
    dense = layer.to_dense()
    csr, gather = FactorizedTTLinear.from_saten(layer, "csr"), FactorizedTTLinear.from_saten(layer, "gather")
    counts = layer_counts(layer)
    sparse_bytes = csr.values.nbytes + csr.col.nbytes + csr.crow.nbytes
    tt_bytes = csr.factor0.nbytes + csr.factor1.nbytes
    rows = []
    for t in tokens:
        x = torch.randn(t, n_in)
        with torch.inference_mode():
            zero = torch.zeros(t, n_out)
            assert torch.allclose(csr(x), dense(x), rtol=1e-3, atol=1e-4)
        row = {"model": model, "n_in": n_in, "n_out": n_out, "tokens": t, "rank": layer.ranks[2],
               "nnz": layer.nnz, "ratio": counts["params"] / counts["dense_params"],
               "dense_bytes": tensor_bytes(dense), "factorized_bytes": tt_bytes + sparse_bytes + n_out * 4,
               "dense_s": measure(dense, x, min_time), "csr_s": measure(csr, x, min_time),
               "tt_s": measure(csr.tt_part, x, min_time),
               "csr_part_s": measure(lambda v, zero=zero: csr.sparse_part(v, zero), x, min_time),
               "gather_s": measure(gather, x, min_time) if t * layer.nnz <= GATHER_LIMIT else None,
               "tt_bytes": tt_bytes, "csr_bytes": sparse_bytes}
        if t == 1:  # batch-1 decoding reads every weight from memory once per token
            size = row["dense_bytes"]
            row["dense_cold_s"] = measure_cold(dense, x, min_time, size, working_set)
            row["csr_cold_s"] = measure_cold(csr, x, min_time, size, working_set)
            row["tt_cold_s"] = measure_cold(TTPart(csr), x, min_time, size, working_set)
            row["csr_part_cold_s"] = measure_cold(SparsePart(csr, zero), x, min_time, size, working_set)
            row["speedup_cold_csr"] = row["dense_cold_s"] / row["csr_cold_s"]
        row["speedup_csr"] = row["dense_s"] / row["csr_s"]
        row["speedup_gather"] = row["dense_s"] / row["gather_s"] if row["gather_s"] else None
        row["auto"] = "factorized" if min(row["csr_s"], row["gather_s"] or 1e9) < row["dense_s"] else "merged"
        rows.append(row)
        print({k: row[k] for k in ("model", "n_in", "n_out", "tokens", "speedup_csr")}, flush=True)
    return rows


def _us(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1e6:,.0f}"


def _gbs(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f}"


def write(rows: list[dict], out: Path, command: str, load_at_start: str, min_time: float) -> None:
    write_csv(out / "inference.csv", rows)
    lines = ["# Per-layer inference time: dense vs exported Saten formats (CPU)", "",
             *machine_lines(command, load_at_start), "", *DESCRIPTION, "",
             f"Times are medians of `torch.utils.benchmark` blocked autorange (at least {min_time} s per "
             "measurement), in microseconds per call; the first tables call one layer repeatedly (its "
             "weights stay in cache), the last one reads them from memory. `auto` is what "
             "`saten.export(format=\"auto\")` would pick from these times (merged = dense GEMM). "
             "semi_structured: not available on this CPU (needs CUDA sm80+).", ""]
    for t in sorted({r["tokens"] for r in rows}):
        lines += [f"## {t} token{'s' if t > 1 else ''}", "",
                  "| model | in→out | rank | ratio | dense µs | factorized csr µs | (TT µs | CSR µs) "
                  "| gather µs | speed-up csr | speed-up gather | auto |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if r["tokens"] == t):
            gather = "–" if r["speedup_gather"] is None else f"{r['speedup_gather']:.2f}x"
            lines.append(f"| {r['model']} | {r['n_in']}→{r['n_out']} | {r['rank']} | {r['ratio']:.3f} "
                         f"| {_us(r['dense_s'])} | {_us(r['csr_s'])} | {_us(r['tt_s'])} "
                         f"| {_us(r['csr_part_s'])} "
                         f"| {_us(r['gather_s'])} | {r['speedup_csr']:.2f}x | {gather} | {r['auto']} |")
        lines.append("")
    lines += ["## 1 token, weights from memory: bytes read and effective bandwidth", "",
              "Each call cycles through copies of the layer whose dense bytes add up to the working set "
              "(larger than the L3 cache), as in batch-1 decoding, where every weight is read from memory "
              "once per token. Bytes: float32 values and TT factors, int32 CSR indices; the bytes ratio is "
              "the speed-up a purely bandwidth-bound kernel would reach.", "",
              "| model | in→out | dense MB | factorized MB | bytes ratio | dense µs | factorized µs "
              "| speed-up | speed-up / bytes ratio | dense GB/s | TT GB/s | CSR GB/s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["tokens"] == 1):
        ideal = r["dense_bytes"] / r["factorized_bytes"]
        lines.append(f"| {r['model']} | {r['n_in']}→{r['n_out']} | {r['dense_bytes'] / 1e6:.2f} "
                     f"| {r['factorized_bytes'] / 1e6:.2f} | {ideal:.2f}x | {_us(r['dense_cold_s'])} "
                     f"| {_us(r['csr_cold_s'])} | {r['speedup_cold_csr']:.2f}x "
                     f"| {r['speedup_cold_csr'] / ideal:.2f} | {_gbs(r['dense_bytes'], r['dense_cold_s'])} "
                     f"| {_gbs(r['tt_bytes'], r['tt_cold_s'])} "
                     f"| {_gbs(r['csr_bytes'], r['csr_part_cold_s'])} |")
    (out / "inference.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'inference.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 128, 4096])
    parser.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--working-set-mib", type=int, default=1024,
                        help="1-token cold timing: dense bytes of the layer copies cycled through (> L3)")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args()
    load_at_start = load_average()
    working_set = args.working_set_mib * MIB
    rows = [row for model in args.models for n_in, n_out in SHAPES[model]
            for row in bench_shape(model, n_in, n_out, args.tokens, args.min_time, working_set)]
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"{'OMP_NUM_THREADS=' + threads + ' ' if threads else ''}python benchmarks/inference.py "
               f"--tokens {' '.join(map(str, args.tokens))} --models {' '.join(args.models)} "
               f"--min-time {args.min_time} --working-set-mib {args.working_set_mib}")
    write(rows, Path(args.out), command, load_at_start, args.min_time)


if __name__ == "__main__":
    main()
