"""Training step time and training memory on MiniLM: dense vs naive Saten vs memory-light Saten.

``python benchmarks/train_step.py [--steps 10] [--batch 32] [--seq 128] [--repeats 1]`` writes
``results/benchmarks/train_step.md`` and ``train_step.csv``. Each configuration runs in its own
subprocess: load the packaged MiniLM with a 2-class head (train mode, dropout on), compress all encoder
Linears at ε 0.8 / density 0.1 (Saten configurations), build AdamW over the trainable parameters, then run
``--steps`` steps on random token ids. Reported per configuration:

- step time: median over steps 3..N (the first two allocate optimizer state and warm up);
- training memory: the process's peak RSS over the steps (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus its RSS just before the first step (after ``malloc_trim``, so that heap
  freed by loading and compressing is not reused unseen);
- saved for backward: bytes of the distinct tensors other than parameters and buffers that autograd
  saves in one forward pass (measured after the timed steps, so it does not touch the peak);
- matmul FLOPs of one forward + backward pass (``torch.utils.flop_counter``: every matrix product, the
  rebuilds of Saten's weights included; elementwise work and the optimizer are not counted), measured after
  the timed steps: on a compute-bound CPU the step time cannot fall below dense while this exceeds dense.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MINILM = {"name": "minilm", "source": "package_minilm"}
SATEN = {"method": "saten", "eps": 0.8, "density": 0.1}
CONFIGS = {
    "dense": "ordinary fine-tuning of the dense model",
    "naive": "Saten, naive autograd (W rebuilt with autograd history; F.linear saves W)",
    "recompute": "Saten, memory-light autograd (saten.autograd: W rebuilt in backward)",
    "recompute_act": "Saten, memory-light autograd plus saten.autograd.recompute_activations (the FFN "
                     "activation's output is recomputed in backward instead of kept)",
    "dense_act": "dense fine-tuning plus saten.autograd.recompute_activations (the same activation trick "
                 "applied to the dense model, for a like-for-like comparison)",
}
MIB = 2**20


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS; ``False`` where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024


def _trim_heap() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim``); ``False`` where unavailable.

    Without it, memory freed while loading and compressing stays resident and the measured steps reuse it
    unseen, which would flatter the configurations that compress.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _saved_bytes(model, batch) -> int:
    """Distinct storages, other than parameters and buffers, that autograd saves in one forward pass."""
    resident = [*model.parameters(), *model.buffers()]  # already in memory before the pass
    params = {t.untyped_storage().data_ptr() for t in resident}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    del loss
    return sum(seen.values())


def _step_flops(model, batch) -> int:
    """Matrix-product FLOPs of one forward + backward pass (gradients are discarded)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def setup(config: str, batch_size: int, seq: int):
    """MiniLM with a 2-class head prepared as ``config``: ``(model, optimizer, batch, dense_params)``."""
    from saten.autograd import recompute_activations, set_recompute
    from saten.compress import compress
    from saten.models import load_model

    torch.manual_seed(0)
    model = load_model(MINILM, num_labels=2)
    dense_params = sum(p.numel() for p in model.parameters())
    if not config.startswith("dense"):
        compress(model, SATEN)
        set_recompute(model, config.startswith("recompute"))
    if config.endswith("_act"):
        recompute_activations(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, model.config.vocab_size, (batch_size, seq), generator=generator),
        "attention_mask": torch.ones(batch_size, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator),
    }
    return model, optimizer, batch, dense_params


def timed_step(model, optimizer, batch) -> float:
    """Seconds of one training step: forward, backward, optimizer step."""
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def worker(config: str, steps: int, batch_size: int, seq: int) -> dict:
    """One configuration, measured in this process; returns the result row."""
    model, optimizer, batch, dense_params = setup(config, batch_size, seq)
    trainable = [p for p in model.parameters() if p.requires_grad]
    gc.collect()
    trimmed = _trim_heap()
    before_kib = _status_kib("VmRSS")
    peak_reset = _reset_peak()
    times = [timed_step(model, optimizer, batch) for _ in range(steps)]
    peak_kib = _status_kib("VmHWM")
    saved = _saved_bytes(model, batch)
    flops = _step_flops(model, batch)
    timed = times[2:] or times
    return {
        "config": config,
        "trainable_params": sum(p.numel() for p in trainable),
        "params": sum(p.numel() for p in model.parameters()),
        "dense_params": dense_params,
        "step_s_median": statistics.median(timed),
        "step_s_min": min(timed),
        "train_mem_mib": (peak_kib - before_kib) / 1024,
        "rss_before_mib": before_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "saved_for_backward_mib": saved / MIB,
        "gflop_per_step": flops / 1e9,
        "peak_reset": peak_reset,
        "heap_trimmed": trimmed,
        "threads": torch.get_num_threads(),
        "steps": steps,
    }


def run_isolated(config: str, args) -> dict:
    """Run :func:`worker` for ``config`` in a fresh interpreter and parse its result line."""
    command = [sys.executable, __file__, "--worker", config, "--steps", str(args.steps),
               "--batch", str(args.batch), "--seq", str(args.seq)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout + done.stderr)
        raise RuntimeError(f"{config}: worker failed with exit code {done.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def summarize(runs: list[dict], configs: list[str]) -> list[dict]:
    """One row per configuration: medians over repeats, ratios to the dense row when there is one."""
    rows = []
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        row = dict(mine[0])
        for key in ("step_s_median", "step_s_min", "train_mem_mib", "rss_before_mib", "peak_rss_mib"):
            row[key] = statistics.median(r[key] for r in mine)
        row["repeats"] = len(mine)
        rows.append(row)
    dense = next((r for r in rows if r["config"] == "dense"), None)
    for row in rows:
        row["time_vs_dense"] = row["step_s_median"] / dense["step_s_median"] if dense else None
        row["mem_vs_dense"] = row["train_mem_mib"] / dense["train_mem_mib"] if dense else None
        row["flops_vs_dense"] = row["gflop_per_step"] / dense["gflop_per_step"] if dense else None
    return rows


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


def write(rows: list[dict], out: Path, args, load_at_start: str | None = None) -> None:
    """``train_step.csv`` and ``train_step.md`` in ``out``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import machine_lines

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train_step.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"{'OMP_NUM_THREADS=' + threads + ' ' if threads else ''}python benchmarks/train_step.py "
               f"--steps {args.steps} --batch {args.batch} --seq {args.seq} --repeats {args.repeats} "
               f"--configs {' '.join(args.configs)}")
    timed = f"steps 3..{args.steps}" if args.steps > 2 else "all steps"
    lines = ["# Training step: time and memory (MiniLM)", "", *machine_lines(command, load_at_start), "",
             f"MiniLM-L6-H384 with a 2-class head, batch {args.batch} x {args.seq} random token ids, AdamW "
             "(lr 1e-5, torch defaults), train mode. Saten: all 36 encoder Linears at eps 0.8 / density 0.1.",
             "Each configuration runs in its own process. Step time (forward, backward, optimizer step):",
             f"median over {timed}. Training memory: "
             "peak RSS over the steps minus RSS just before the first",
             "step (gradients, AdamW state, activations, temporaries). Saved for backward: distinct tensors",
             "other than parameters and buffers that autograd keeps after one forward pass. GFLOP: matrix",
             "products of one forward + backward pass (torch.utils.flop_counter; Saten's weight rebuilds",
             "included, elementwise work and the optimizer not).",
             f"Values are medians over {args.repeats} repeat(s) per configuration.", "",
             "Targets (issue 8): Saten step time <= 1.0x dense, training memory <= 0.9x dense.", "",
             "| config | trainable params | step s | vs dense | train memory MiB | vs dense "
             "| saved for backward MiB | peak RSS MiB | GFLOP | vs dense |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['trainable_params'] / 1e6:.2f}M | {r['step_s_median']:.3f} "
                     f"| {_ratio(r['time_vs_dense'])} | {r['train_mem_mib']:.0f} "
                     f"| {_ratio(r['mem_vs_dense'])} | {r['saved_for_backward_mib']:.0f} "
                     f"| {r['peak_rss_mib']:.0f} | {r['gflop_per_step']:.1f} "
                     f"| {_ratio(r['flops_vs_dense'])} |")
    lines += ["", *[f"- {name}: {CONFIGS[name]}" for name in args.configs]]
    if not all(r["peak_reset"] for r in rows):
        lines += ["", "Warning: VmHWM could not be reset; training memory is an upper bound."]
    (out / "train_step.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'train_step.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, interleaved")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.steps, args.batch, args.seq)), flush=True)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import load_average

    load_at_start = load_average()
    runs = []
    for _ in range(args.repeats):
        for config in args.configs:
            runs.append(run_isolated(config, args))
            print({k: runs[-1][k] for k in ("config", "step_s_median", "train_mem_mib")}, flush=True)
    write(summarize(runs, args.configs), Path(args.out), args, load_at_start)


if __name__ == "__main__":
    for key, value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    main()
