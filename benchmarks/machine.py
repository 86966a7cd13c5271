"""Provenance lines for benchmark and result tables: command, git revision, machine, date."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import torch

from saten.provenance import cpu_model, git_state


def machine_lines(command: str) -> list[str]:
    """Markdown bullet lines: the command, revision, CPU, cores, threads, torch version and date."""
    git = git_state()
    revision = f"{git['sha']}{' (dirty)' if git['dirty'] else ''}" if git["sha"] else "unknown"
    return [f"- command: `{command}`", f"- git revision: {revision}",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads", f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"]
