"""Sweep runs → curves: ``python -m saten.curves RUN_DIRS... --out results/<experiment>``.

For every task, the main metric (mean ± std over seeds) against the residual density and against the model's
parameter count, one line per method setting (method and ε; SVD/dense as points). Writes ``curves.csv``
(task, series, x axis, x, mean, std, seeds), one PNG per task and axis (``<task>_vs_density.png``,
``<task>_vs_params.png``), ``runs.csv``, and one aggregated W&B run (offline unless ``WANDB_MODE`` says
otherwise) holding a ``wandb.Table`` of all runs and the same line plots. Slices merge as in
:mod:`saten.tables` (pass several folders and/or earlier ``runs.csv`` files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saten.plots import metric_curves
from saten.runs import collect, failed, finished, main_metric, mean_std, write_csv

__all__ = ["curve_points", "log_wandb", "main"]

AXES = {"density": ("density", "residual density (fraction of entries kept)", "linear"),
        "params": ("params", "model parameters", "log")}


def _series(row: dict) -> str:
    label = str(row["method"])
    if row.get("eps") not in (None, ""):
        label += f" ε {float(row['eps']):.3g}"
    if row.get("tt_shape") not in (None, "", "balanced"):
        label += f" {row['tt_shape']}"
    if row.get("lr_cores") not in (None, "", row.get("lr")):  # another recipe: never averaged in
        label += f" lr cores {float(row['lr_cores']):.3g}"
    for key in ("protocol", "calibration", "distill", "schedule"):
        if row.get(key) not in (None, "", "fine-tune"):
            label += f" {row[key]}"
    return label


def curve_points(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds of each task's main metric per (series, x) for both axes."""
    points = []
    for axis, (key, _, _) in AXES.items():
        groups: dict[tuple, list[dict]] = {}
        for row in finished(rows):
            x = row.get(key)
            if x in (None, "") and axis == "density" and row["method"] in ("tt", "dense"):
                x = 0.0
            if x in (None, ""):
                continue
            groups.setdefault((str(row["task"]), _series(row), float(x)), []).append(row)
        for (task, series, x), runs in sorted(groups.items()):
            metric = main_metric(runs[0])
            mean, std, n = mean_std(r.get(f"best/{metric}") for r in runs)
            if n:
                points.append({"task": task, "series": series, "axis": axis, "x": x, "metric": metric,
                               "mean": mean, "std": std, "seeds": n})
    return points


def plot_all(points: list[dict], out: Path, title: str) -> list[Path]:
    """One PNG per task and axis; returns the paths."""
    paths = []
    for task in dict.fromkeys(p["task"] for p in points):
        for axis, (_, xlabel, xscale) in AXES.items():
            mine = [p for p in points if p["task"] == task and p["axis"] == axis]
            if not mine:
                continue
            series: dict[str, list] = {}
            for p in mine:
                series.setdefault(p["series"], []).append((p["x"], p["mean"], p["std"]))
            paths.append(metric_curves(series, out / f"{task}_vs_{axis}.png", xlabel,
                                       f"{task} {mine[0]['metric']} (dev, mean ± std over seeds)",
                                       f"{title}: {task}", xscale,
                                       references=("dense",) if axis == "density" else ()))
    return paths


def log_wandb(rows: list[dict], points: list[dict], name: str, wandb_dir: Path) -> str:
    """One aggregated W&B run: a table of every run, a table of the curve points, and line plots."""
    import wandb

    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project="saten", job_type="curves", name=name, group=name, dir=str(wandb_dir),
                     tags=["curves"], config={"runs": len(rows)})
    try:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = [[_cell(r.get(c)) for c in columns] for r in rows]
        run.log({"runs": wandb.Table(columns=columns, data=table)})
        for task in dict.fromkeys(p["task"] for p in points):
            for axis in AXES:
                mine = [p for p in points if p["task"] == task and p["axis"] == axis]
                keys = list(dict.fromkeys(p["series"] for p in mine))
                if not keys:
                    continue
                xs = [[p["x"] for p in mine if p["series"] == k] for k in keys]
                ys = [[p["mean"] for p in mine if p["series"] == k] for k in keys]
                run.log({f"{task}/metric_vs_{axis}": wandb.plot.line_series(
                    xs, ys, keys=keys, title=f"{task} {mine[0]['metric']} vs {axis}", xname=axis)})
        columns = list(points[0]) if points else ["task"]
        table = [[p[c] for c in columns] for p in points]
        run.log({"curve_points": wandb.Table(columns=columns, data=table)})
        return run.dir
    finally:
        run.finish()


def _cell(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sweep runs -> curves.csv, PNG plots, an aggregated W&B run")
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders, or runs.csv files")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/density_sweep")
    parser.add_argument("--wandb-dir", type=Path, default=Path("logs/wandb_curves"),
                        help="where the aggregated W&B run goes (never results/)")
    parser.add_argument("--no-wandb", action="store_true", help="skip the aggregated W&B run")
    args = parser.parse_args(argv)
    rows = collect(args.paths)
    points = curve_points(rows)
    if not points:
        print(f"error: no finished runs with a metric under {' '.join(map(str, args.paths))}; pass run "
              f"folders", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "runs.csv")
    command = "python -m saten.curves " + " ".join(sys.argv[1:] if argv is None else argv)
    write_csv([p | {"command": command} for p in points], args.out / "curves.csv")
    pngs = plot_all(points, args.out, args.out.name)
    print(f"{len(rows)} runs ({len(failed(rows))} failed) -> {args.out}/curves.csv, "
          f"{', '.join(p.name for p in pngs)}")
    if not args.no_wandb:
        print(f"W&B run: {log_wandb(rows, points, args.out.name, args.wandb_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
