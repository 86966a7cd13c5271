"""``saten.tables``: a tiny real multirun (2 seeds) becomes runs.csv and a mean ± std table."""

import csv

from test_run import run_py

from saten import tables


def test_tiny_multirun_to_tables(tmp_path):
    args = ["-m", "model=tiny_bert", "task=mrpc", "logger=csv", "seed=1,2", "data.train_limit=16",
            "data.eval_limit=16", "data.batch_size=8", "data.cache_dir=null", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            f"paths.log_dir={tmp_path / 'logs'}"]
    result = run_py(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results"
    assert tables.main([str(tmp_path / "logs"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert sorted(r["seed"] for r in rows) == ["1", "2"]
    assert all(r["command"].startswith("python run.py") and r["git"] and r["cpu"] for r in rows)
    assert all("seed=" in r["command"] for r in rows)
    table = (out / "table.md").read_text()
    data_rows = [line for line in table.splitlines() if line.startswith("| mrpc")]
    assert len(data_rows) == 1 and "saten(u)" in data_rows[0] and "±" in data_rows[0]
    assert "| 2 |" in data_rows[0]  # two seeds aggregated
    # slices merge: the CSV plus the same folders do not duplicate runs
    merged = [str(out / "runs.csv"), str(tmp_path / "logs"), "--out", str(tmp_path / "merged")]
    assert tables.main(merged) == 0
    assert len(list(csv.DictReader(open(tmp_path / "merged" / "runs.csv")))) == 2


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert tables.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no finished runs" in capsys.readouterr().err
