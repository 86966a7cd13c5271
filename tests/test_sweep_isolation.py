"""Sweep isolation: a failing job of a multirun is recorded as failed (summary.json with the error and a
traceback file), the other jobs finish, and ``run.py`` exits 1 at the end.
"""

from __future__ import annotations

import json

from test_run import run_py
from test_validate import tiny, write_mrpc


def test_one_failing_job_does_not_stop_the_multirun(tmp_path):
    glue = write_mrpc(tmp_path / "glue")
    sweep = tmp_path / "sweep"
    args = ["-m", *tiny(glue, "trainer.num_sanity_val_steps=0"), "saten.eps=0.5,-1",
            f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}"]
    result = run_py(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    good = json.loads((sweep / "0" / "summary.json").read_text())
    bad = json.loads((sweep / "1" / "summary.json").read_text())
    assert good.get("status") != "failed" and good["trained"] and "best/f1" in good
    assert bad["status"] == "failed" and bad["error_type"] == "ConfigError"
    assert bad["error"].startswith("saten.eps=-1") and bad["task"] == "mrpc" and bad["seed"] == 1
    assert "Traceback" in (sweep / "1" / bad["traceback"]).read_text()
    assert "error: job 1 failed: ConfigError: saten.eps=-1" in result.stderr
