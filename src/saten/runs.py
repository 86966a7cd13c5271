"""Run folders -> rows: what the tables, curves and shape-selection tools read.

A run folder holds ``summary.json`` (metrics; ``status: failed`` and ``error`` for a failed multirun job),
``provenance.json``, ``config.yaml`` and Hydra's ``.hydra/hydra.yaml`` (the config-group choices). Slices of a
sweep run in different sessions merge: pass all their folders and/or earlier ``runs.csv`` files; a run is
identified by its folder, so the same run is never counted twice.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from saten.provenance import cpu_model

__all__ = ["collect", "failed", "finished", "main_metric", "mean_std", "method_label", "newest_runs",
           "read_run", "write_csv"]

TEXT_KEYS = ("task", "model", "method", "command", "job", "git", "cpu", "run_dir", "status", "error",
             "saten_choice", "tt_shape", "method_preset", "metric", "sparsity", "protocol", "calibration",
             "distill", "schedule")
# the main metric per GLUE task (conf/task/*.yaml task.metric), for rows that lack config.yaml
MAIN_METRIC = {"cola": "matthews", "stsb": "pearson", "mrpc": "f1", "qqp": "f1", "mnli": "accuracy_m",
               "wikitext2": "perplexity"}


def method_label(summary: dict) -> str:
    """``dense``, ``svd``, ``tt``, ``saten(u)`` or ``saten(N:M)``; ``+e`` for Saten(e)."""
    method = summary.get("method")
    if method == "saten" and summary.get("sparsity") == "nm":
        nm = summary.get("nm") or [2, 4]
        label = f"saten({nm[0]}:{nm[1]})"
    else:
        label = "saten(u)" if method == "saten" else str(method)
    return label + ("(e)" if summary.get("embeddings") in (True, "True", "true") else "")


def main_metric(row: dict) -> str:
    """The task's main metric name (``f1`` for MRPC, ``matthews`` for CoLA, …)."""
    return row.get("metric") or MAIN_METRIC.get(str(row.get("task")), "accuracy")


def _load(path: Path, yaml: bool = False) -> dict:
    if not path.is_file():
        return {}
    if yaml:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    return json.loads(path.read_text())


def _protocol(summary: dict, cfg: dict) -> str:
    """``fine-tune``, ``lora`` (LoRA on the frozen compressed model) or ``train-free`` (evaluate only)."""
    if (cfg.get("lora") or {}).get("enabled"):
        return "lora"
    trained = summary.get("trained")
    return "train-free" if trained in (False, "False", "false") or summary.get("epochs") == 0 else "fine-tune"


def _recipe_extras(cfg: dict) -> tuple[str | None, str | None]:
    """Short labels of the compression-stage switches (calibration, recovery) and of distillation
    (``None`` when off)."""
    cal = cfg.get("calibration") or {}
    parts = []
    if cal.get("samples") and cal.get("activation_aware", True):
        parts.append(f"activation-aware α {cal.get('alpha', 0.5)}")
    if cal.get("samples") and cal.get("sensitivity"):
        parts.append("sensitivity budget" + (" (teacher Fisher)" if cal.get("fisher") == "teacher" else ""))
    recover = cfg.get("recover") or {}
    if recover.get("steps"):
        from saten.recover_inputs import TASK_CORPUS

        corpus = recover.get("corpus")
        parts.append(f"recovered {recover['steps']} steps on "
                     + ("the task's examples" if corpus == TASK_CORPUS else str(corpus)))
    from saten.distill import distill_enabled

    distill = cfg.get("distill") or {}
    teacher = []
    if distill_enabled(distill):
        teacher.append(f"kd {distill.get('kd_weight')} / hidden {distill.get('hidden_weight')}")
    if distill.get("init_from_teacher"):
        teacher.append("init from teacher")
    return (" + ".join(parts) or None), (" + ".join(teacher) or None)


def _schedule_label(cfg: dict) -> str | None:
    """``progressive ε 0.5 → target (4 steps by 50 %)`` for a progressive schedule, else ``None``."""
    from saten.progressive import schedule_enabled

    schedule = cfg.get("schedule") or {}
    if not schedule_enabled(schedule):
        return None
    density = schedule.get("start_density")
    start = f"ε {schedule.get('start_eps')}" + (f" d {density}" if density is not None else "")
    return f"progressive {start} → target ({schedule.get('steps')} steps by {schedule.get('end'):.0%})"


def read_run(run_dir: Path) -> dict:
    """One row: configuration, metrics, status and where it came from."""
    summary = _load(run_dir / "summary.json")
    provenance = _load(run_dir / "provenance.json")
    cfg = _load(run_dir / "config.yaml", yaml=True)
    choices = (_load(run_dir / ".hydra" / "hydra.yaml", yaml=True).get("hydra") or {}).get("runtime", {})
    choices = choices.get("choices") or {}
    optim, saten, task = cfg.get("optim") or {}, cfg.get("saten") or {}, cfg.get("task") or {}
    summary.setdefault("embeddings", saten.get("embeddings"))
    summary.setdefault("nm", saten.get("nm"))
    calibration, distill = _recipe_extras(cfg)
    row = {
        "task": summary.get("task") or task.get("name"),
        "model": summary.get("model") or (cfg.get("model") or {}).get("name"),
        "method": method_label(summary),
        "status": summary.get("status", "ok"),
        "error": summary.get("error"),
        "saten_choice": choices.get("saten"),
        "method_preset": choices.get("method_preset"),
        "tt_shape": choices.get("tt_shape"),
        "metric": task.get("metric"),
        "protocol": _protocol(summary, cfg),
        "calibration": calibration,
        "distill": distill,
        "schedule": _schedule_label(cfg),
        "eps": None if calibration and "sensitivity" in calibration else summary.get("eps"),  # per layer
        "density": summary.get("density"),
        "svd_ratio": saten.get("svd_ratio"),
        "target_ratio": saten.get("target_ratio"),
        "seed": summary.get("seed", cfg.get("seed")),
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
    row.update({k: v for k, v in summary.items() if k.startswith("recover/error")})
    # held-out test metrics (perplexity), and the final validation metric of runs that never trained
    row.update({k: v for k, v in summary.items() if k.startswith("test/") and k != "test/tokens"})
    if row["protocol"] == "train-free" or task.get("kind") == "lm":
        row.update({k: v for k, v in summary.items() if k.startswith("val/") and k != "val/tokens"})
    row.update({
        "command": provenance.get("job_command") or provenance.get("command", ""),
        "job": run_dir.name,
        "git": (provenance.get("git") or {}).get("sha"),
        "cpu": (provenance.get("cpu") or {}).get("model", cpu_model()),
        "threads": provenance.get("torch_threads"),
        "cores": (provenance.get("cpu") or {}).get("logical_cores"),
        "run_dir": str(run_dir),
    })
    return row


def _typed(row: dict) -> dict:
    """A ``runs.csv`` row with numbers as floats and empty cells as ``None``."""
    out = {}
    for key, value in row.items():
        if value in ("", None, "None"):
            out[key] = None
        elif key in TEXT_KEYS:
            out[key] = value
        else:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    out.setdefault("status", "ok")
    return out


def collect(paths: list[Path]) -> list[dict]:
    """Rows of every run under ``paths`` (folders searched recursively for ``summary.json``, or
    ``runs.csv`` files), finished and failed, each run once."""
    rows, seen = [], set()
    for path in map(Path, paths):
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


def newest_runs(log_dir: str | Path, marker: str) -> list[Path]:
    """Run dirs under ``log_dir`` that hold ``marker`` (a path relative to the run dir, e.g.
    ``"summary.json"`` or ``"checkpoints/last.ckpt"``), newest marker first."""
    depth = len(Path(marker).parts)
    found = sorted(Path(log_dir).glob(f"**/{marker}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [path.parents[depth - 1] for path in found]


def finished(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status", "ok") != "failed"]


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "failed"]


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    vals = [float(v) for v in values if v not in (None, "") and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def write_csv(rows: list[dict], path: Path) -> Path:
    """``rows`` as CSV (the union of their keys as columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
