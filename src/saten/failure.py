"""What a run does when it fails: one clear line for a bad value; in a multirun, record the job and go on.

- A single run with a bad value (a :class:`saten.errors.ConfigError`) prints ``error: <key>=<value>: ...``
  and exits with code 2, without a traceback (``SATEN_DEBUG=1`` prints it too). Any other exception
  propagates as usual.
- A job of a multirun that fails for any reason writes ``summary.json`` with ``status: failed``, ``error``,
  ``error_type`` and ``traceback`` (the file ``traceback.txt`` next to it), logs one line, and returns NaN
  (Optuna records a failed trial); the next job runs, and ``run.py`` exits 1 at the end
  (:func:`sweep_failed`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig

from saten.errors import ConfigError

__all__ = ["FailedJobs", "record_failure", "report_config_error", "run_job", "sweep_failed"]

log = logging.getLogger(__name__)
TRACEBACK_FILE = "traceback.txt"
FAILED: list[Path] = []  # job dirs of this process's failed multirun jobs


def debug() -> bool:
    """``SATEN_DEBUG=1``: show tracebacks behind one-line errors."""
    return os.environ.get("SATEN_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def config_error(error: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` behind ``error`` (itself, or a cause, e.g. inside an OmegaConf resolver)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def report_config_error(error: BaseException) -> NoReturn:
    """Print ``error: <message>`` for a config error and exit 2; re-raise anything else."""
    cause = config_error(error)
    if cause is None:
        raise error
    if debug():
        traceback.print_exception(error)
    print(f"error: {cause}", file=sys.stderr)
    sys.exit(2)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig) -> float | None:
    """One ``run.py`` job: :func:`saten.train.run`; failures as described in the module docstring."""
    from saten.train import optimized_metric, run

    try:
        return optimized_metric(cfg, run(cfg))
    except Exception as error:
        if not in_multirun():
            report_config_error(error)
        from hydra.core.hydra_config import HydraConfig

        record_failure(Path(HydraConfig.get().runtime.output_dir), error, cfg)
        return math.nan


def _describe(cfg: DictConfig | None) -> dict:
    """Task, model, method and seed of a config, for the failed job's summary (best effort)."""
    if cfg is None:
        return {}
    try:
        return {"task": cfg.task.name, "model": cfg.model.get("name"), "method": cfg.saten.get("method"),
                "eps": cfg.saten.get("eps"), "density": cfg.saten.get("density"), "seed": cfg.get("seed")}
    except Exception:  # noqa: BLE001 - the config itself may be what failed
        return {}


def record_failure(job_dir: Path, error: BaseException, cfg: DictConfig | None = None) -> Path:
    """Write ``summary.json`` (``status: failed``) and ``traceback.txt`` into ``job_dir``; log one line."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / TRACEBACK_FILE).write_text("".join(traceback.format_exception(error)))
    summary_file = job_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    message = str(config_error(error) or error).strip().splitlines()
    summary.update(_describe(cfg) | {k: v for k, v in summary.items() if v is not None})
    summary.update({"status": "failed", "error": message[0] if message else type(error).__name__,
                    "error_type": type(error).__name__, "traceback": TRACEBACK_FILE})
    summary_file.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    FAILED.append(job_dir)
    log.error("job failed: %s: %s (%s)", summary["error_type"], summary["error"], job_dir / TRACEBACK_FILE)
    print(f"error: job {job_dir.name} failed: {summary['error_type']}: {summary['error']}; see "
          f"{job_dir / TRACEBACK_FILE}", file=sys.stderr)
    return summary_file


def sweep_failed() -> bool:
    """True when a multirun job failed (``run.py`` then exits 1).

    Jobs of the basic launcher run in this process and add themselves; other launchers (joblib, submitit)
    run jobs elsewhere, and :class:`FailedJobs` collects their ``summary.json`` files at the sweep's end.
    """
    return bool(FAILED)


try:  # the Hydra callback API (hydra-core >= 1.1)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class FailedJobs(_HydraCallback):
    """Hydra callback (``hydra.callbacks.failed_jobs._target_=saten.failure.FailedJobs``): after a multirun,
    find the jobs whose ``summary.json`` says ``status: failed`` under the sweep dir, so that ``run.py`` exits
    1 whichever launcher ran them."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        for summary in sorted(sweep_dir.glob("**/summary.json")):
            try:
                failed = json.loads(summary.read_text()).get("status") == "failed"
            except (OSError, ValueError):
                continue
            if failed and summary.parent not in FAILED:
                FAILED.append(summary.parent)
        if FAILED:
            log.error("%d job(s) of the sweep failed: %s", len(FAILED), ", ".join(p.name for p in FAILED))
