"""A tiny real multirun (tiny_bert, one batch, parallel launcher) feeds the tables and curve tools; a failed
job is listed, the W&B aggregate run is written offline. The multirun takes ~25 s (slow); the curve tool on
the committed MRPC runs is the fast check."""

import csv
import json
from pathlib import Path

import pytest
from test_run import run_py

from saten import curves, tables

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mini_glue):
    root = tmp_path_factory.mktemp("sweep")
    args = ["-m", "model=tiny_bert", "task=mrpc", "logger=csv", f"data.glue_dir={mini_glue}",
            "saten.density=0,0.1,1.5", "data.cache_dir=null", "data.batch_size=8", "data.eval_batch_size=8",
            "data.max_seq_length=32", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
            "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
            f"paths.log_dir={root / 'logs'}"]
    result = run_py(args, cwd=root)
    # density 1.5 fails (recorded in its summary.json, the sweep exits 1); the other two jobs finish
    assert result.returncode == 1, result.stderr[-3000:]
    assert "ConfigError: saten.density=1.5" in result.stderr and result.stderr.count("failed:") == 1
    return root


@pytest.mark.slow
def test_tables_from_a_tiny_multirun(sweep):
    assert tables.main([str(sweep / "logs"), "--out", str(sweep / "tables")]) == 0
    rows = list(csv.DictReader(open(sweep / "tables" / "runs.csv")))
    assert len(rows) == 3 and [r["status"] for r in rows].count("failed") == 1
    paper = (sweep / "tables" / "paper_table.md").read_text()
    body = [line for line in paper.splitlines() if line.startswith("| saten(u)")]
    assert len(body) == 2 and all("(1)" in line for line in body)  # one seed per density
    assert "mrpc f1" in paper and "MACs/token" in paper
    failed = paper.split("## Failed jobs")[1]
    assert "saten.density=1.5" in failed and failed.count("| mrpc |") == 1


@pytest.mark.slow
def test_curves_from_a_tiny_multirun(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = sweep / "curves"
    assert curves.main([str(sweep / "logs"), "--out", str(out), "--wandb-dir", str(sweep / "wandb")]) == 0
    points = list(csv.DictReader(open(out / "curves.csv")))
    density = sorted(float(p["x"]) for p in points if p["axis"] == "density")
    assert density == [0.0, 0.1] and all(p["metric"] == "f1" and p["seeds"] == "1" for p in points)
    for name in ("mrpc_vs_density.png", "mrpc_vs_params.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert len(list((sweep / "wandb").glob("wandb/offline-run-*/run-*.wandb"))) == 1


def test_curves_without_runs_is_one_clear_error(tmp_path, capsys):
    assert curves.main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-wandb"]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_curves_from_committed_runs(tmp_path):
    runs = REPO_ROOT / "results" / "mrpc_minilm" / "runs.csv"
    assert curves.main([str(runs), "--out", str(tmp_path), "--no-wandb"]) == 0
    points = list(csv.DictReader(open(tmp_path / "curves.csv")))
    dense = [p for p in points if p["series"] == "dense" and p["axis"] == "params"]
    assert len(dense) == 1 and dense[0]["seeds"] == "3" and float(dense[0]["mean"]) > 0.5
    assert (tmp_path / "mrpc_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_select_picks_the_best_metric_per_ratio_on_the_front():
    from saten.shape_select import select

    cands = [{"tt_shape": "a", "params": 100, "mean": 0.80, "per_ratio": 0.80 / 0.5},
             {"tt_shape": "b", "params": 120, "mean": 0.78, "per_ratio": 0.78 / 0.6},  # dominated by a
             {"tt_shape": "c", "params": 200, "mean": 0.85, "per_ratio": 0.85 / 1.0},
             {"tt_shape": "d", "params": 80, "mean": 0.70, "per_ratio": 0.70 / 0.45}]
    winner, front = select(cands)
    assert [c["tt_shape"] for c in front] == ["d", "a", "c"] and winner["tt_shape"] == "a"


def test_max_macs_drops_shapes_costlier_than_the_reference():
    from saten.shape_select import select, within_macs

    cands = [{"tt_shape": "balanced", "params": 100, "macs": 5.0, "mean": 0.80, "per_ratio": 1.6},
             {"tt_shape": "interleaved", "params": 90, "macs": 77.0, "mean": 0.80, "per_ratio": 1.8},
             {"tt_shape": "plain", "params": 95, "macs": 4.9, "mean": 0.79, "per_ratio": 1.66}]
    assert select(cands)[0]["tt_shape"] == "interleaved"
    kept = within_macs(cands, 1.0, "balanced")
    assert [c["tt_shape"] for c in kept] == ["balanced", "plain"] and select(kept)[0]["tt_shape"] == "plain"
    assert within_macs(cands, None, "balanced") == cands
    with pytest.raises(ValueError, match="--reference order3: no finished run"):
        within_macs(cands, 1.0, "order3")


@pytest.mark.slow
def test_shape_select_from_a_tiny_shape_sweep(tmp_path, mini_glue, monkeypatch):
    from omegaconf import OmegaConf

    from saten import shape_select

    args = ["-m", "model=tiny_bert", "task=mrpc", "logger=csv", f"data.glue_dir={mini_glue}",
            "tt_shape=balanced,order3", "data.cache_dir=null", "data.batch_size=8", "data.max_seq_length=32",
            "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false", "hydra/launcher=parallel",
            f"paths.log_dir={tmp_path / 'logs'}"]
    result = run_py(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert shape_select.main([str(tmp_path / "logs"), "--task", "mrpc", "--name", "picked", "--conf",
                              str(tmp_path / "conf"), "--out", str(tmp_path / "out"), "--wandb-dir",
                              str(tmp_path / "wandb")]) == 0
    table = (tmp_path / "out" / "picked.md").read_text()
    assert "balanced" in table and "order3" in table and table.count("(selected)") == 1
    picked = OmegaConf.load(tmp_path / "conf" / "picked.yaml")
    assert picked.in_order in (2, 3) and picked.layout == "plain"
    assert list((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_shape_optuna_runs_trials_and_maximizes_metric_per_ratio(tmp_path, mini_glue):
    args = ["-m", "experiment=shape_optuna", "model=tiny_bert", "hydra.sweeper.n_trials=2",
            "tt_shape=choice(balanced,order3)", f"data.glue_dir={mini_glue}", "data.train_limit=16",
            "task.metric=accuracy",
            "data.eval_limit=16", "data.batch_size=8", "data.cache_dir=null", "trainer.limit_train_batches=1",
            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = run_py(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from omegaconf import OmegaConf

    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert set(best.best_params) == {"tt_shape", "saten.eps", "saten.density"}
    assert 0.6 <= best.best_params["saten.eps"] <= 1.0 and best.best_value >= 0
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/summary.json")]
    assert len(summaries) == 2  # the objective is the metric per model ratio, maximized
    assert best.best_value == pytest.approx(max(s["best/accuracy"] / s["model_ratio"] for s in summaries))
    assert best.best_value > 0


def test_curves_never_average_different_recipes():
    from saten.curves import _series

    base = {"method": "saten(u)", "eps": 0.85, "lr": 1e-4, "lr_cores": 1e-4, "protocol": "fine-tune"}
    other_lr = base | {"lr_cores": 1e-3}
    aware = base | {"calibration": "activation-aware α 0.5"}
    assert len({_series(base), _series(other_lr), _series(aware)}) == 3
