"""Sweep isolation: a failing job of a multirun is recorded as failed (summary.json with the error and a
traceback file), the other jobs finish, and ``run.py`` exits 1 at the end.
"""

from __future__ import annotations

import json

import pytest
from test_run import run_py
from test_validate import tiny, write_mrpc


def test_one_failing_job_does_not_stop_the_multirun(tmp_path):
    glue = write_mrpc(tmp_path / "glue")
    sweep = tmp_path / "sweep"
    args = ["-m", *tiny(glue, "trainer.num_sanity_val_steps=0"), "saten.eps=0.5,-1",
            f"hydra.sweep.dir={sweep}"]
    result = run_py(args, cwd=tmp_path)  # job dirs named by the config's own resolvers: 0_saten.eps=0.5, ...
    assert result.returncode == 1, result.stderr[-3000:]
    (good_dir,), (bad_dir,) = sweep.glob("0_*"), sweep.glob("1_*")
    good = json.loads((good_dir / "summary.json").read_text())
    bad = json.loads((bad_dir / "summary.json").read_text())
    assert good["status"] == "completed" and good["trained"] and "best/f1" in good
    assert bad["status"] == "failed" and bad["error_type"] == "ConfigError"
    assert bad["error"].startswith("saten.eps=-1") and bad["task"] == "mrpc" and bad["seed"] == 1
    assert "Traceback" in (bad_dir / bad["traceback"]).read_text()
    assert f"error: job {bad_dir.name} failed: ConfigError: saten.eps=-1" in result.stderr


@pytest.mark.slow
def test_jobs_in_other_processes_still_make_the_sweep_exit_1(tmp_path):
    glue = write_mrpc(tmp_path / "glue")
    sweep = tmp_path / "sweep"
    args = ["-m", *tiny(glue, "trainer.num_sanity_val_steps=0"), "saten.eps=0.5,-1",
            f"hydra.sweep.dir={sweep}", "hydra/launcher=parallel",
            "+hydra.callbacks.failed_jobs._target_=saten.failure.FailedJobs"]
    result = run_py(args, cwd=tmp_path, timeout=900)  # joblib: each job in a worker process
    assert result.returncode == 1, result.stderr[-3000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json"))
    assert statuses == ["completed", "failed"]
