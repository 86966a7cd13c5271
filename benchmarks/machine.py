"""Provenance lines for benchmark tables (command, revision, machine, load, date) and CSV output."""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from saten.provenance import cpu_model, git_state


def load_average() -> str:
    """The 1/5/15-minute load averages as ``"a / b / c"`` (``"unknown"`` where the OS does not say)."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines(command: str, load_at_start: str | None = None) -> list[str]:
    """Markdown bullet lines: command, revision, CPU, cores, threads, torch version, date and, when
    ``load_at_start`` is given, the load averages at the start and at the end of the run."""
    git = git_state()
    revision = f"{git['sha']}{' (dirty)' if git['dirty'] else ''}" if git["sha"] else "unknown"
    lines = [f"- command: `{command}`", f"- git revision: {revision}",
             f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads", f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"]
    if load_at_start is not None:
        lines.append(f"- load average (1 / 5 / 15 min): {load_at_start} at the start, {load_average()} at "
                     "the end (above about 1 per busy core, other jobs shared the machine and absolute times "
                     "carry that noise; ratios are measured side by side)")
    return lines


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV file with the union of their keys as header (first-seen order)."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
