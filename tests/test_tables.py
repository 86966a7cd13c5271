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


def test_language_model_runs_show_protocol_and_test_perplexity(tmp_path):
    """A train-free and a LoRA run of tiny_llama on WikiText-2: separate rows, test perplexity column."""
    common = ["model=tiny_llama", "task=wikitext2", "logger=none", "data.context=32", "data.train_context=32",
              "data.train_limit=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
              "trainer.num_sanity_val_steps=0", f"paths.log_dir={tmp_path / 'logs'}"]
    free = run_py([*common, "trainer.max_epochs=0"], cwd=tmp_path)
    assert free.returncode == 0, free.stderr[-3000:]
    lora = run_py([*common, "lora=lora", "saten.freeze=true", "trainer.max_epochs=1",
                   "trainer.limit_train_batches=1"], cwd=tmp_path)
    assert lora.returncode == 0, lora.stderr[-3000:]
    out = tmp_path / "results"
    assert tables.main([str(tmp_path / "logs"), "--out", str(out)]) == 0
    rows = {r["protocol"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    assert set(rows) == {"train-free", "lora"}
    assert all(float(r["test/perplexity"]) > 1 for r in rows.values())
    paper = (out / "paper_table.md").read_text()
    assert "wikitext2 test perplexity" in paper
    assert any("train-free" in line for line in paper.splitlines()) and any("lora" in line
                                                                          for line in paper.splitlines())


def test_rows_from_an_older_csv_group_with_new_runs():
    """An older runs.csv has no tt_shape / protocol cells and writes epochs as 3.0: same setting still."""
    new = {"task": "mrpc", "model": "minilm", "method": "dense", "tt_shape": "balanced", "epochs": "3",
           "protocol": "fine-tune", "lr": "0.0001", "status": "completed", "best/f1": "0.86"}
    old = new | {"tt_shape": "", "protocol": "", "epochs": "3.0", "lr": "1e-4", "best/f1": "0.88"}
    assert tables._key(new, tables.SETTING_KEYS) == tables._key(old, tables.SETTING_KEYS)
    other = new | {"lr": "0.001"}
    assert tables._key(other, tables.SETTING_KEYS) != tables._key(new, tables.SETTING_KEYS)


def test_newest_runs_orders_by_marker_time_and_returns_run_dirs(tmp_path):
    import os

    from saten.runs import newest_runs

    for age, name in enumerate(["new", "old"]):
        ckpt = tmp_path / "multiruns" / name / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_text("x")
        os.utime(ckpt, (1000 - age, 1000 - age))
    (tmp_path / "no_ckpt").mkdir()
    found = newest_runs(tmp_path, "checkpoints/last.ckpt")
    assert found == [tmp_path / "multiruns" / "new", tmp_path / "multiruns" / "old"]
    assert newest_runs(tmp_path, "summary.json") == []


def test_paper_table_groups_runs_fitted_to_a_target_ratio_by_the_target():
    """ε fitted per task to one target ratio is one setting across tasks; a fixed ε stays its own row."""
    base = {"model": "minilm", "method": "saten(u)", "lr": "0.0001", "epochs": "3", "status": "completed",
            "calibration": "activation-aware α 0.5", "target_ratio": "0.333", "ratio": "0.333"}
    rte = base | {"task": "rte", "eps": "0.8167", "density": "0.1002", "best/accuracy": "0.58"}
    sst2 = base | {"task": "sst2", "eps": "0.8096", "density": "0.1", "best/accuracy": "0.82"}
    fixed = rte | {"target_ratio": "", "eps": "0.85", "density": "0.1", "calibration": ""}
    assert tables._paper_key(rte) == tables._paper_key(sst2) != tables._paper_key(fixed)
    paper = tables.paper_table([rte, sst2, fixed], "cmd")
    fitted_rows = [line for line in paper.splitlines() if "target ratio 0.333" in line]
    assert len(fitted_rows) == 1 and "82.0" in fitted_rows[0] and "58.0" in fitted_rows[0]
    assert "ε 0.8167" not in paper and any("ε 0.85" in line for line in paper.splitlines())


def test_seeds_fitted_to_one_target_ratio_aggregate_into_one_row():
    """Each seed fits its own ε to the target: table.md still shows one row with the seeds' mean."""
    base = {"task": "rte", "model": "minilm", "method": "saten(u)", "lr": "0.0001", "epochs": "3",
            "status": "completed", "calibration": "activation-aware α 0.5", "target_ratio": "0.333",
            "ratio": "0.333"}
    seeds = [base | {"seed": str(s), "eps": eps, "density": "0.1", "best/accuracy": acc}
             for s, eps, acc in [(1, "0.8166", "0.5"), (2, "0.8168", "0.6")]]
    fixed = seeds[0] | {"target_ratio": "", "eps": "0.85", "calibration": ""}
    groups = tables.aggregate([*seeds, fixed])
    assert sorted(g["seeds"] for g in groups) == [1, 2]
    table = tables.markdown(groups, [*seeds, fixed], "cmd")
    (fitted,) = [line for line in table.splitlines() if "target ratio 0.333" in line]
    assert "| 2 |" in fitted and "55.0 ± 7.1" in fitted and "ε 0.816" not in table
