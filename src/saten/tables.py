"""Runs → tables: ``python -m saten.tables RUN_DIRS... --out results/<name>``.

Reads every run folder under the given paths (``summary.json``, ``provenance.json``, ``config.yaml``; W&B is
not needed; see :mod:`saten.runs`) and writes

- ``runs.csv``: one row per run, with its command, git revision and machine (failed jobs included);
- ``table.md``: mean ± std over seeds per configuration, then a "Failed jobs" section;
- ``paper_table.md``: the paper's layout, one row per method setting × one column per task (its main metric,
  mean ± std and the number of seeds), with parameters, targeted and model ratio and MACs per token.

Slices of a sweep run in different sessions merge: pass all their folders, or an existing ``runs.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saten.runs import collect, failed, finished, main_metric, mean_std, write_csv

CONFIG_KEYS = ("task", "model", "method", "eps", "density", "svd_ratio", "tt_shape", "lr", "lr_cores",
               "lr_sparse", "epochs", "protocol", "calibration", "distill", "schedule")
SETTING_KEYS = ("model", "method", "eps", "density", "svd_ratio", "tt_shape", "lr", "lr_cores", "lr_sparse",
                "epochs", "protocol", "calibration", "distill", "schedule")
METRIC_PREFIXES = ("best/", "test/", "val/")
PERCENT = ("f1", "accuracy", "matthews", "pearson", "spearmanr", "combined", "accuracy_m", "accuracy_mm")
TASK_ORDER = ("mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "wnli")


# what a row from an older runs.csv (before the column existed) means by an empty cell
COLUMN_DEFAULTS = {"tt_shape": "balanced", "protocol": "fine-tune"}


def _key_value(row: dict, key: str) -> str:
    """One cell of a grouping key, so that slices from different sessions group together: an empty cell
    takes the column's default, and numbers compare by value (``3.0`` from a CSV equals ``3``)."""
    value = row.get(key)
    if value in (None, ""):
        value = COLUMN_DEFAULTS.get(key)
    if value in (None, ""):
        return "-"
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def _key(row: dict, keys) -> tuple:
    return tuple(_key_value(row, k) for k in keys)


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each configuration (``CONFIG_KEYS``) of the finished runs; runs whose ε and
    density were fitted to ``saten.target_ratio`` group by that target (each seed fits its own ε)."""
    groups: dict[tuple, list[dict]] = {}
    for row in finished(rows):
        groups.setdefault(_key(_by_target(row), CONFIG_KEYS + ("target_ratio",)), []).append(row)
    out = []
    for runs in groups.values():
        first = _by_target(runs[0])
        entry = {k: first.get(k) for k in (*CONFIG_KEYS, "target_ratio")} | {"seeds": len(runs)}
        entry |= {k: first.get(k) for k in ("ratio", "model_ratio", "params", "macs")}
        for key in sorted({k for r in runs for k in r if _is_metric(k)}):
            mean, std, n = mean_std(r.get(key) for r in runs)
            if n:
                entry[key] = (mean, std)
        out.append(entry)
    return sorted(out, key=lambda e: (str(e["task"]), -float(e["ratio"] or 1), str(e["method"])))


def _is_metric(key: str) -> bool:
    return key.startswith(METRIC_PREFIXES) and key.split("/", 1)[1] not in ("loss", "epoch", "tokens")


def _scale(metric: str) -> int:
    return 100 if metric.split("/", 1)[-1] in PERCENT else 1


def _cell(mean: float, std: float, metric: str) -> str:
    scale = _scale(metric)
    if abs(mean) >= 1e5:  # a perplexity that has blown up: keep it readable
        return f"{mean:.3g} ± {std:.2g}"
    return f"{mean * scale:.1f} ± {std * scale:.1f}"


def _fmt(value, digits: int = 4) -> str:
    if value in (None, "", "None", "-"):
        return "-"
    return f"{float(value):.{digits}g}"


def _fitted(row: dict) -> bool:
    """ε and density were fitted to ``saten.target_ratio`` in each run, so they differ with each task's head
    and calibration data: the paper table groups such runs by their target instead."""
    return row.get("target_ratio") not in (None, "")


def _by_target(row: dict) -> dict:
    return row | {"eps": None, "density": None} if _fitted(row) else row


def _paper_key(row: dict) -> tuple:
    return _key(_by_target(row), SETTING_KEYS + ("target_ratio",))


def _setting(row: dict, by_target: bool = False) -> str:
    if by_target:
        row = _by_target(row)
    parts = [f"preset {row['method_preset']}" if row.get("method_preset") not in (None, "") else "",
             f"target ratio {_fmt(row['target_ratio'])} (fitted per run)" if by_target and _fitted(row)
             else "",
             f"ε {_fmt(row.get('eps'))}" if row.get("eps") not in (None, "") else "",
             f"d {_fmt(row.get('density'))}" if row.get("density") not in (None, "")
             and str(row.get("method")).startswith("saten") else "",
             f"r {_fmt(row.get('svd_ratio'))}" if row.get("svd_ratio") not in (None, "") else "",
             f"shape {row['tt_shape']}" if row.get("tt_shape") not in (None, "", "balanced") else "",
             f"lr cores/sparse {_fmt(row['lr_cores'])}/{_fmt(row['lr_sparse'])}"
             if row.get("lr_cores") not in (None, "", row.get("lr")) else "",
             str(row["protocol"]) if row.get("protocol") not in (None, "", "fine-tune") else "",
             str(row["calibration"]) if row.get("calibration") not in (None, "") else "",
             f"distill {row['distill']}" if row.get("distill") not in (None, "") else "",
             str(row["schedule"]) if row.get("schedule") not in (None, "") else ""]
    return ", ".join(p for p in parts if p) or "-"


def _count(value) -> str:
    return str(int(float(value))) if value not in (None, "") else "?"


def _provenance(rows: list[dict], command: str) -> list[str]:
    gits = sorted({str(r.get("git"))[:7] for r in rows})
    cpus = sorted({f"{r.get('cpu')} ({_count(r.get('cores'))} cores, {_count(r.get('threads'))} torch "
                   f"threads)" for r in rows})
    return [f"Made by `{command}` from {len(rows)} runs (each run's own command, git revision and machine "
            "are in `runs.csv`).", "", f"- git revisions: {', '.join(gits)}",
            f"- machines: {', '.join(cpus)}",
            "- mean ± std over seeds; metrics in % (correlations × 100)", ""]


def failed_section(rows: list[dict]) -> list[str]:
    """The "Failed jobs" section: one line per failed run with its error (empty when none failed)."""
    bad = failed(rows)
    if not bad:
        return []
    lines = ["", "## Failed jobs", "", "| task | method | setting | seed | error | run dir |",
             "|---|---|---|---|---|---|"]
    for r in bad:
        error = str(r.get("error") or "?").replace("|", "\\|")
        lines.append(f"| {r.get('task')} | {r.get('method')} | {_setting(r)} | {_fmt(r.get('seed'))} "
                     f"| {error} | {r.get('run_dir')} |")
    return lines


def markdown(groups: list[dict], rows: list[dict], command: str) -> str:
    """``table.md``: one line per configuration (all metrics), then the failed jobs."""
    metrics = sorted({k for g in groups for k in g if _is_metric(k)})
    head = ["task", "method", "setting", "lr (rest / cores / sparse)", "ratio", "model ratio", "params",
            "seeds", *[m.removeprefix("best/") for m in metrics]]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for g in groups:
        lr = f"{g['lr']} / {g['lr_cores']} / {g['lr_sparse']}" if g["method"] != "dense" else f"{g['lr']}"
        params = f"{int(float(g['params'])):,}" if g["params"] else "-"
        cells = [g["task"], g["method"], _setting(g, by_target=True), lr, _fmt(g["ratio"], 3),
                 _fmt(g["model_ratio"], 3), params, g["seeds"]]
        for m in metrics:
            cells.append(_cell(*g[m], m) if m in g else "-")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join([*_provenance(rows, command), *lines, *failed_section(rows)]) + "\n"


def paper_table(rows: list[dict], command: str) -> str:
    """``paper_table.md``: methods × tasks (main metric), with params, ratios and MACs per token."""
    done = finished(rows)
    tasks = sorted({str(r["task"]) for r in done}, key=lambda t: (TASK_ORDER + (t,)).index(t))
    settings: dict[tuple, list[dict]] = {}
    for row in done:
        settings.setdefault(_paper_key(row), []).append(row)
    metric_of = {t: _paper_metric([r for r in done if r["task"] == t]) for t in tasks}
    head = ["method", "setting", "params", "ratio", "model ratio", "MACs/token",
            *[f"{t} {metric_of[t].replace('best/', '').replace('/', ' ')}" for t in tasks]]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for runs in sorted(settings.values(), key=lambda rs: (-float(rs[0].get("ratio") or 1), rs[0]["method"])):
        first = runs[0]
        params = f"{float(first['params']) / 1e6:.2f}M" if first.get("params") else "-"
        macs = f"{float(first['macs']) / 1e6:.2f}M" if first.get("macs") else "-"
        cells = [first["method"], _setting(first, by_target=True), params, _fmt(first.get("ratio"), 3),
                 _fmt(first.get("model_ratio"), 3), macs]
        for task in tasks:
            mine = [r for r in runs if r["task"] == task]
            mean, std, n = mean_std(r.get(metric_of[task]) for r in mine)
            cells.append(f"{_cell(mean, std, metric_of[task])} ({n})" if n else "-")
        lines.append("| " + " | ".join(cells) + " |")
    note = ["Params, ratios and MACs are those of the first run of each setting (heads differ slightly per "
            "task); (n) = seeds. Ratio = targeted (replaced Linears); MACs per token over them.", ""]
    return "\n".join([*_provenance(rows, command), *note, *lines, *failed_section(rows)]) + "\n"


def _paper_metric(rows: list[dict]) -> str:
    """The column of a task: its main metric on the test split where runs have one, else the best epoch's."""
    name = main_metric(rows[0])
    return f"test/{name}" if any(r.get(f"test/{name}") not in (None, "") for r in rows) else f"best/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run folders -> runs.csv, table.md, paper_table.md")
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders, or runs.csv files")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/mrpc_minilm")
    args = parser.parse_args(argv)
    rows = collect(args.paths)
    if not rows:
        where = " ".join(map(str, args.paths))
        print(f"error: no finished runs (summary.json) under {where}; pass run folders", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "runs.csv")
    command = "python -m saten.tables " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "table.md").write_text(markdown(aggregate(rows), rows, command))
    (args.out / "paper_table.md").write_text(paper_table(rows, command))
    print(f"{len(rows)} runs ({len(failed(rows))} failed) -> {args.out}/runs.csv, table.md, paper_table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
