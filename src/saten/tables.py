"""Runs → tables: ``python -m saten.tables RUN_DIRS... --out results/<name>``.

Reads every run folder under the given paths (``summary.json``, ``provenance.json``, ``config.yaml``; W&B is
not needed), writes ``runs.csv`` (one row per run, with its command, git revision and machine) and
``table.md`` (mean ± std over seeds per configuration). Slices of a sweep run in different sessions merge:
pass all their folders, or an existing ``runs.csv`` to extend.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from saten.provenance import cpu_model

CONFIG_KEYS = ("task", "model", "method", "eps", "density", "lr", "lr_cores", "lr_sparse", "epochs")
PERCENT = ("f1", "accuracy", "matthews", "pearson", "spearmanr", "combined", "accuracy_m", "accuracy_mm")


def method_label(summary: dict) -> str:
    """``dense``, ``svd``, ``tt``, ``saten(u)`` or ``saten(N:M)``."""
    method = summary.get("method")
    if method == "saten" and summary.get("sparsity") == "nm":
        nm = summary.get("nm") or [2, 4]
        return f"saten({nm[0]}:{nm[1]})"
    return "saten(u)" if method == "saten" else str(method)


def _job_command(run_dir: Path, provenance: dict) -> str:
    """The run's own command; for runs that predate ``job_command``, the exact (multirun) command line."""
    return provenance.get("job_command") or provenance.get("command", "")


def read_run(run_dir: Path) -> dict:
    """One row: configuration, metrics, and where it came from."""
    from omegaconf import OmegaConf

    summary = json.loads((run_dir / "summary.json").read_text())
    prov_file, cfg_file = run_dir / "provenance.json", run_dir / "config.yaml"
    provenance = json.loads(prov_file.read_text()) if prov_file.exists() else {}
    cfg = OmegaConf.load(cfg_file) if cfg_file.exists() else OmegaConf.create()
    optim = cfg.get("optim", {})
    row = {
        "task": summary.get("task"),
        "model": summary.get("model"),
        "method": method_label(summary),
        "eps": summary.get("eps"),
        "density": summary.get("density"),
        "seed": summary.get("seed"),
        "lr": optim.get("lr"),
        "lr_cores": optim.get("lr_cores") or optim.get("lr"),
        "lr_sparse": optim.get("lr_sparse") or optim.get("lr"),
        "epochs": summary.get("epochs"),
        "ratio": summary.get("ratio"),
        "model_ratio": summary.get("model_ratio"),
        "params": summary.get("params"),
        "macs": summary.get("macs"),
        "seconds": summary.get("seconds"),
    }
    row.update({k: v for k, v in summary.items() if k.startswith("best/") and k != "best/epoch"})
    row.update(
        {
            "command": _job_command(run_dir, provenance),
            "job": run_dir.name,
            "git": (provenance.get("git") or {}).get("sha"),
            "cpu": (provenance.get("cpu") or {}).get("model", cpu_model()),
            "threads": provenance.get("torch_threads"),
            "run_dir": str(run_dir),
        }
    )
    return row


def collect(paths: list[Path]) -> list[dict]:
    """Rows of every finished run under ``paths`` (folders searched recursively, or ``runs.csv`` files)."""
    rows, seen = [], set()
    for path in paths:
        if path.suffix == ".csv":
            with open(path) as f:
                found = [_typed(row) for row in csv.DictReader(f)]
        else:
            found = [read_run(s.parent) for s in sorted(path.rglob("summary.json"))]
        for row in found:
            if row["run_dir"] not in seen:
                seen.add(row["run_dir"])
                rows.append(row)
    return rows


def _typed(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        try:
            out[key] = (
                float(value)
                if value not in ("", None) and key not in ("command", "job", "git", "run_dir")
                else (value or None)
            )
        except ValueError:
            out[key] = value
    return out


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each configuration (``CONFIG_KEYS``)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k)) for k in CONFIG_KEYS), []).append(row)
    out = []
    for runs in groups.values():
        first = runs[0]
        entry = {k: first.get(k) for k in CONFIG_KEYS} | {"seeds": len(runs)}
        entry |= {k: first.get(k) for k in ("ratio", "model_ratio", "params", "macs")}
        for key in sorted({k for r in runs for k in r if k.startswith("best/") and k != "best/loss"}):
            values = [float(r[key]) for r in runs if r.get(key) not in (None, "")]
            entry[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        out.append(entry)
    return sorted(out, key=lambda e: (str(e["task"]), -float(e["ratio"] or 1), str(e["method"])))


def markdown(groups: list[dict], rows: list[dict], command: str) -> str:
    metrics = sorted({k for g in groups for k in g if k.startswith("best/")})
    head = [
        "task",
        "method",
        "eps",
        "density",
        "lr (rest / cores / sparse)",
        "ratio",
        "model ratio",
        "params",
        "seeds",
        *[m.removeprefix("best/") for m in metrics],
    ]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for g in groups:
        lr = f"{g['lr']} / {g['lr_cores']} / {g['lr_sparse']}" if g["method"] != "dense" else f"{g['lr']}"
        params = f"{int(float(g['params'])):,}" if g["params"] else "-"
        cells = [
            g["task"],
            g["method"],
            _fmt(g["eps"]),
            _fmt(g["density"]),
            lr,
            _fmt(g["ratio"], 3),
            _fmt(g["model_ratio"], 3),
            params,
            g["seeds"],
        ]
        for m in metrics:
            scale = 100 if m.removeprefix("best/") in PERCENT else 1
            cells.append(f"{g[m][0] * scale:.1f} ± {g[m][1] * scale:.1f}" if m in g else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    gits = sorted({str(r.get("git"))[:7] for r in rows})
    cpus = sorted(
        {f"{r.get('cpu')} ({int(float(r['threads'])) if r.get('threads') else '?'} threads)" for r in rows}
    )
    return (
        "\n".join(
            [
                f"Made by `{command}` from {len(rows)} runs (each run's own command, git revision and "
                "machine are in `runs.csv`).",
                "",
                f"- git revisions: {', '.join(gits)}",
                f"- machines: {', '.join(cpus)}",
                "- mean ± std over seeds; metrics in % (correlations × 100)",
                "",
                *lines,
            ]
        )
        + "\n"
    )


def _fmt(value, digits: int = 4) -> str:
    if value in (None, "", "None"):
        return "-"
    return f"{float(value):.{digits}g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run folders -> runs.csv + table.md")
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders, or runs.csv files")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/mrpc_minilm")
    args = parser.parse_args(argv)
    rows = collect(args.paths)
    if not rows:
        where = " ".join(map(str, args.paths))
        print(f"error: no finished runs (summary.json) under {where}; pass run folders", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(args.out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m saten.tables " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "table.md").write_text(markdown(aggregate(rows), rows, command))
    print(f"{len(rows)} runs -> {args.out / 'runs.csv'}, {args.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
