"""``python -m saten.report``: composes the run.py config, compresses, prints and writes the JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _report(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "saten.report", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_report_cli_on_tiny_bert_writes_schema(tmp_path):
    out = tmp_path / "r.json"
    result = _report(["model=tiny_bert", "saten.eps=0.7", "saten.density=0.2", f"report.out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["eps"] == 0.7 and report["density"] == 0.2 and report["method"] == "saten"
    assert len(report["layers"]) == 12 and report["total"]["ratio"] < 1
    assert "targeted:" in result.stdout


def test_report_cli_bad_value_is_one_line(tmp_path):
    result = _report(["model=tiny_bert", "saten.density=2"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: saten.density=2: invalid; use a fraction in [0, 1], e.g. saten.density=0.1"]


def test_report_on_real_minilm_at_eps_0_8(tmp_path):
    """The real packaged MiniLM at ε 0.8 / density 0.1: every layer within its bound, 36 layers."""
    out = tmp_path / "r.json"
    result = _report(["model=minilm", "saten.eps=0.8", "saten.density=0.1", f"report.out={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["layers"]) == 36
    assert all(row["rel_error_tt"] <= 0.8 + 1e-6 for row in report["layers"])
    assert report["layers"][0]["shape"] == [24, 16, 24, 16]
    assert 0.3 < report["total"]["ratio"] < 0.5
