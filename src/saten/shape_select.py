"""Pick a TT shape from fine-tuned runs: ``python -m saten.shape_select RUNS... --task mrpc --name NAME``.

Reads the finished runs (e.g. of ``experiment=shape_search``), groups them by their ``tt_shape`` choice
(mean of the task's main metric over seeds), keeps the Pareto front of metric vs model parameters, and picks
from it the shape with the best metric per parameter ratio (``best/<metric> / model_ratio``, the sweeps'
``metric_per_ratio`` objective). ``--max-macs F`` first drops the shapes that cost more than ``F`` times the
MACs per token of ``--reference`` (the proxy counts parameters, not MACs: an interleaved layout can be
smaller and many times costlier). Writes the winner's resolved ``tt_shape`` (from its run's ``config.yaml``)
as ``conf/tt_shape/<NAME>.yaml``, the table and front to ``results/shape_search/<NAME>.{md,csv,png}``, and
logs the front to an offline W&B run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saten.plots import pareto_front
from saten.runs import collect, finished, main_metric, mean_std, write_csv

__all__ = ["candidates_from_runs", "select", "within_macs"]


def candidates_from_runs(rows: list[dict], task: str) -> list[dict]:
    """One entry per ``tt_shape`` choice of the finished ``task`` runs: metric mean ± std, params, ratio."""
    groups: dict[str, list[dict]] = {}
    for row in finished(rows):
        if row.get("task") == task and row.get("tt_shape"):
            groups.setdefault(str(row["tt_shape"]), []).append(row)
    out = []
    for shape, runs in groups.items():
        metric = main_metric(runs[0])
        mean, std, n = mean_std(r.get(f"best/{metric}") for r in runs)
        if not n:
            continue
        ratio = float(runs[0].get("model_ratio") or 1.0)
        out.append({"tt_shape": shape, "metric": metric, "mean": mean, "std": std, "seeds": n,
                    "params": float(runs[0]["params"]), "macs": float(runs[0].get("macs") or 0),
                    "model_ratio": ratio, "ratio": runs[0].get("ratio"),
                    "per_ratio": mean / ratio, "run_dir": runs[0]["run_dir"]})
    return out


def within_macs(candidates: list[dict], max_macs: float | None, reference: str) -> list[dict]:
    """The candidates whose MACs per token are at most ``max_macs`` times the ``reference`` shape's."""
    if max_macs is None:
        return candidates
    ref = next((c for c in candidates if c["tt_shape"] == reference), None)
    if ref is None:
        raise ValueError(f"--reference {reference}: no finished run with tt_shape={reference}; pass the "
                         f"reference shape's runs too, or another --reference")
    return [c for c in candidates if c["macs"] <= max_macs * ref["macs"]]


def select(candidates: list[dict]) -> tuple[dict, list[dict]]:
    """The winner (best metric per ratio on the Pareto front) and the front (fewer params, higher metric)."""
    front = pareto_front(candidates, lambda c: c["params"], lambda c: c["mean"], maximize_y=True)
    return max(front, key=lambda c: c["per_ratio"]), front


def write_config(winner: dict, path: Path, command: str) -> Path:
    """The winner's resolved ``tt_shape`` group as a reusable config file."""
    from omegaconf import OmegaConf

    from saten.provenance import git_state

    shape = OmegaConf.load(Path(winner["run_dir"]) / "config.yaml").tt_shape
    header = (f"# TT shape selected from fine-tuned runs: {winner['tt_shape']} ({winner['metric']} "
              f"{winner['mean']:.4f} ± {winner['std']:.4f} over {winner['seeds']} seed(s), model ratio "
              f"{winner['model_ratio']:.4f}).\n# Written by `{command}` at git {git_state()['sha']}.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + OmegaConf.to_yaml(shape))
    return path


def log_front(cands: list[dict], front: list[dict], name: str, wandb_dir: Path) -> None:
    import wandb

    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project="saten", job_type="shape_select", name=name, dir=str(wandb_dir),
                     tags=["shape_select"])
    try:
        cols = ["tt_shape", "params", "mean", "std", "seeds", "per_ratio", "on_front"]
        table = wandb.Table(columns=cols, data=[[c[k] for k in cols[:-1]] + [c in front] for c in cands])
        run.log({"candidates": table,
                 "front": wandb.plot.scatter(table, "params", "mean", title=f"{name}: metric vs params")})
    finally:
        run.finish()


def main(argv: list[str] | None = None) -> int:
    from saten.plots import labelled_front

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders, or runs.csv files")
    parser.add_argument("--task", required=True)
    parser.add_argument("--name", required=True, help="name of the tt_shape config to write")
    parser.add_argument("--conf", type=Path, default=Path("conf/tt_shape"))
    parser.add_argument("--out", type=Path, default=Path("results/shape_search"))
    parser.add_argument("--wandb-dir", type=Path, default=Path("logs/wandb_curves"))
    parser.add_argument("--no-wandb", action="store_true")
    parser.add_argument("--max-macs", type=float, default=None,
                        help="keep shapes with at most this many times the reference's MACs per token")
    parser.add_argument("--reference", default="balanced", help="tt_shape that --max-macs is relative to")
    args = parser.parse_args(argv)
    cands = candidates_from_runs(collect(args.paths), args.task)
    if not cands:
        print(f"error: --task {args.task}: no finished runs with a tt_shape choice under "
              f"{' '.join(map(str, args.paths))}; pass the runs of experiment=shape_search", file=sys.stderr)
        return 2
    try:
        eligible = within_macs(cands, args.max_macs, args.reference)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    winner, front = select(eligible)
    command = "python -m saten.shape_select " + " ".join(sys.argv[1:] if argv is None else argv)
    write_config(winner, args.conf / f"{args.name}.yaml", command)
    write_csv([c | {"on_front": c in front} for c in cands], args.out / f"{args.name}.csv")
    lines = [f"# Shape selection: {args.name} ({args.task})", "", f"- command: `{command}`", "",
             "| tt_shape | metric (mean ± std) | seeds | params | model ratio | MACs / token "
             "| metric / ratio | front |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in sorted(cands, key=lambda c: -c["per_ratio"]):
        lines.append(f"| {c['tt_shape']}{' **(selected)**' if c is winner else ''} | {100 * c['mean']:.1f} ± "
                     f"{100 * c['std']:.1f} | {c['seeds']} | {c['params']:,.0f} | {c['model_ratio']:.4f} "
                     f"| {c['macs'] / 1e6:.1f}M | {c['per_ratio']:.4f} "
                     f"| {'yes' if c in front else ('' if c in eligible else 'over the MAC budget')} |")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    def point(c):
        return {"label": c["tt_shape"], "x": c["params"], "mean": c["mean"], "std": c["std"]}

    labelled_front([point(c) for c in cands], [point(c) for c in front], point(winner),
                   args.out / f"{args.name}.png", "model parameters", f"{args.task} {winner['metric']} (dev)",
                   f"{args.name}: metric vs parameters per TT shape")
    if not args.no_wandb:
        log_front(cands, front, args.name, args.wandb_dir)
    print(f"selected {winner['tt_shape']} -> {args.conf / (args.name + '.yaml')}; table {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
