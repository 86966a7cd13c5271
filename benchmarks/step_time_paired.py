"""Training step time of Saten relative to dense, measured in adjacent pairs so that CPU drift cancels.

``python benchmarks/step_time_paired.py [--pairs 20] [--configs recompute_act recompute naive]`` writes
``results/benchmarks/step_time_paired.md`` and ``.csv``. Why pairs: on a shared virtual CPU the same
dense step has taken 3.2, 6.1 and 7.9 s in separate runs, so configurations timed one after another in
their own processes (``train_step.py``, which measures memory that way) cannot resolve a 5 % difference.
Here every model lives in one process and each round runs one step of dense and one of each Saten
configuration back to back (the order rotates every round); the ratio of two steps a few seconds apart
sees the same machine speed. Reported per configuration: the median of the per-round ratios with its
quartiles, the share of rounds in which Saten was faster, and the median step times. Memory is not
measured here (two models share the process): see ``train_step.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load_average, machine_lines, write_csv  # noqa: E402
from train_step import CONFIGS, setup, timed_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def measure(configs: list[str], pairs: int, warmup: int, batch: int, seq: int) -> dict[str, list[float]]:
    """Step times per configuration (``"dense"`` first), ``warmup`` rounds dropped; rounds rotate order."""
    names = ["dense", *configs]
    prepared = {name: setup(name, batch, seq)[:3] for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + pairs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = timed_step(*prepared[name])
            if round_index >= warmup:
                times[name].append(seconds)
        print(f"round {round_index + 1}/{warmup + pairs}: "
              + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items() if t), flush=True)
    return times


def summarize(times: dict[str, list[float]]) -> list[dict]:
    """One row per Saten configuration: per-round ratios to dense (median, quartiles, share below 1)."""
    rows = []
    for name, seconds in times.items():
        if name == "dense":
            continue
        ratios = [s / d for s, d in zip(seconds, times["dense"])]
        q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        rows.append({"config": name, "rounds": len(ratios),
                     "dense_step_s_median": statistics.median(times["dense"]),
                     "step_s_median": statistics.median(seconds), "ratio_median": median,
                     "ratio_q1": q1, "ratio_q3": q3,
                     "share_faster": sum(r < 1 for r in ratios) / len(ratios)})
    return rows


def write(rows: list[dict], out: Path, command: str, load_at_start: str) -> None:
    """``step_time_paired.md`` and ``.csv`` in ``out``."""
    write_csv(out / "step_time_paired.csv", rows)
    lines = ["# Training step time, paired with dense (MiniLM)", "",
             *machine_lines(command, load_at_start), "",
             "MiniLM-L6-H384, 2-class head, random token ids, AdamW, train mode; Saten: all 36 encoder",
             "Linears at eps 0.8 / density 0.1 (the setup of train_step.md). All models in one process;",
             "every round runs one step of each configuration back to back, order rotating; the ratio is",
             "taken per round.",
             "", "Target (issue 8): Saten step time <= 1.0x dense.", "",
             "| config | rounds | dense step s | Saten step s | ratio (median) | quartiles | rounds faster |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['rounds']} | {r['dense_step_s_median']:.3f} "
                     f"| {r['step_s_median']:.3f} | {r['ratio_median']:.3f}x "
                     f"| {r['ratio_q1']:.3f}–{r['ratio_q3']:.3f} "
                     f"| {r['share_faster']:.0%} |")
    lines += ["", *[f"- {r['config']}: {CONFIGS[r['config']]}" for r in rows]]
    (out / "step_time_paired.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'step_time_paired.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20, help="measured rounds (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    saten_configs = [c for c in CONFIGS if not c.startswith("dense")]
    parser.add_argument("--configs", nargs="+", choices=saten_configs, default=["recompute_act"])
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args()
    if args.pairs < 1 or args.warmup < 0:
        parser.error(f"--pairs {args.pairs} / --warmup {args.warmup}: need at least 1 pair and warmup >= 0")
    load_at_start = load_average()
    times = measure(args.configs, args.pairs, args.warmup, args.batch, args.seq)
    threads = torch.get_num_threads()
    command = (f"OMP_NUM_THREADS={threads} python benchmarks/step_time_paired.py --pairs {args.pairs} "
               f"--warmup {args.warmup} --batch {args.batch} --seq {args.seq} "
               f"--configs {' '.join(args.configs)}")
    write(summarize(times), Path(args.out), command, load_at_start)


if __name__ == "__main__":
    for key, value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    main()
