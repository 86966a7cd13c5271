"""Provenance of a run: what ran, from which code, on which machine.

Every run dir holds a ``provenance.json`` so that a number in a table can be traced back to the
exact command, the git revision (and whether the tree had uncommitted changes) and the software
and hardware it came from.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

PACKAGES = ("torch", "transformers", "lightning", "hydra-core", "omegaconf", "wandb", "saten")


@functools.cache
def git_state(cwd: str | Path | None = None) -> dict:
    """Return the git SHA and dirty flag of the tree at ``cwd``.

    Parameters
    ----------
    cwd
        A folder inside the repository; default the folder of this file.

    Returns
    -------
    dict
        ``{"sha": str | None, "dirty": bool | None}``; both ``None`` when git or the repository
        is absent (e.g. an installed wheel). Cached: every job of a multirun reports the revision the
        process loaded its code from, even if the checkout moves on while the sweep runs.
    """
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    sha = _git("rev-parse", "HEAD")
    if not sha:
        return {"sha": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")  # dirty = tracked files changed
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    """Return a human-readable CPU model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Return installed versions of ``names`` (``None`` for a package that is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect(argv: list[str] | None = None, repo_dir: str | Path | None = None) -> dict:
    """Collect the provenance record of the current process.

    Parameters
    ----------
    argv
        The command line; default ``sys.argv``.
    repo_dir
        Where to ask git; default the folder of this file.

    Returns
    -------
    dict
        Keys ``command``, ``argv``, ``cwd``, ``git``, ``host``, ``cpu``, ``torch_threads``,
        ``cuda``, ``python``, ``platform``, ``versions``, ``started``.
    """
    import torch

    argv = list(sys.argv if argv is None else argv)
    cuda = None
    if torch.cuda.is_available():
        cuda = {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "version": torch.version.cuda}
    return {
        "command": " ".join([Path(sys.executable).name, *argv]),
        "job_command": _job_command(),
        "argv": argv,
        "cwd": os.getcwd(),
        "git": git_state(repo_dir),
        "host": socket.gethostname(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count()},
        "torch_threads": torch.get_num_threads(),
        "cuda": cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "started": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
    }


def _job_command() -> str | None:
    """The single-run command of this (multirun) job: ``python run.py <its overrides>``, or ``None``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(["python", "run.py", *HydraConfig.get().overrides.task])
    except (ImportError, ValueError):
        return None


def write_provenance(run_dir: str | Path, argv: list[str] | None = None) -> Path:
    """Write ``provenance.json`` into ``run_dir`` and return its path."""
    path = Path(run_dir) / "provenance.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collect(argv), indent=2) + "\n")
    return path
