"""The experiment pipeline in-process: the real Hydra config, shrunk to tiny_bert and a few GLUE rows.

Every GLUE task x every compression method composes and trains one batch (``trainer.fast_dev_run=1``);
further tests cover the optimizer groups, test-set prediction files and the config checks.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from saten.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
# lightning 2.6 on torch 2.13 warns about its own pytree use
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")
CONF_DIR = REPO_ROOT / "conf"
from conftest import FIXTURE_GLUE  # noqa: E402

TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
METHODS = ["saten_u", "saten_24", "tt", "svd", "dense"]
# tasks whose train split is not in the shared data folder: part B's fixtures stand in
FROM_FIXTURES = {"QQP", "MNLI", "QNLI"}
ROWS = 24  # rows kept of each real split
# one training step and one validation batch, with checkpoint, final validation and summary
ONE_STEP = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "trainer.num_sanity_val_steps=0"]


def make_mini_glue(target: Path, source: Path, rows: int = ROWS) -> Path:
    """A GLUE folder with the first ``rows`` lines of every real split (+ the QQP/MNLI/QNLI fixtures)."""
    for task_dir in ("CoLA", "SST-2", "MRPC", "STS-B", "RTE", "WNLI"):
        (target / task_dir).mkdir(parents=True, exist_ok=True)
        for name in ("train.tsv", "dev.tsv", "test.tsv"):
            lines = (source / task_dir / name).read_bytes().splitlines(keepends=True)
            (target / task_dir / name).write_bytes(b"".join(lines[: rows + 1]))
    for task_dir in FROM_FIXTURES:
        shutil.copytree(FIXTURE_GLUE / task_dir, target / task_dir, dirs_exist_ok=True)
    return target


def shrink_overrides(glue_dir: Path, task: str = "mrpc", method: str = "saten_u") -> list[str]:
    """Overrides that turn the default experiment into a seconds-long CPU smoke run."""
    return [f"task={task}", f"saten={method}", "model=tiny_bert", "logger=none", f"data.glue_dir={glue_dir}",
            "data.cache_dir=null", "data.batch_size=8", "data.eval_batch_size=8", "data.max_seq_length=64",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def compose_config(overrides: list[str], output_dir: Path):
    """Compose ``conf/config.yaml`` like ``run.py`` does, with the run dir set to ``output_dir``."""
    import saten.train  # noqa: F401  (registers the resolvers the config uses)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
    return cfg


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", TASKS)
def test_every_task_and_method_trains_one_batch(task, method, mini_glue, tmp_path):
    from saten.train import run

    cfg = compose_config([*shrink_overrides(mini_glue, task, method), "trainer.fast_dev_run=1"], tmp_path)
    summary = run(cfg)
    metric = f"best/{cfg.task.metric}"
    assert summary["task"] == task and summary["method"] == cfg.saten.method
    assert math.isfinite(summary[metric]), summary
    assert summary["params"] > 0
    assert (summary["layers"] > 0) == (method != "dense")
    assert json.loads((tmp_path / "summary.json").read_text())[metric] == summary[metric]
    assert (tmp_path / "provenance.json").is_file() and (tmp_path / "report.json").is_file()


def test_config_defaults_compose(tmp_path):
    cfg = compose_config([], tmp_path)
    assert (cfg.model.name, cfg.task.name, cfg.saten.method) == ("minilm", "mrpc", "saten")
    assert cfg.callbacks.model_checkpoint.monitor == "val/f1"
    assert cfg.callbacks.model_checkpoint.mode == "max"
    assert cfg.logger.wandb.mode == "offline"
    assert cfg.trainer.max_epochs == 3 and cfg.data.batch_size == 32


def test_experiment_files_compose(tmp_path):
    for name in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        cfg = compose_config([f"experiment={name}"], tmp_path)
        assert cfg.task.name
    quick = compose_config(["experiment=quick"], tmp_path)
    assert quick.data.train_limit == 512 and quick.trainer.max_epochs == 1 and quick.data.eval_limit is None


def test_monitor_mode_follows_the_metric(tmp_path):
    cfg = compose_config(["callbacks.model_checkpoint.monitor=val/loss"], tmp_path)
    assert cfg.callbacks.model_checkpoint.mode == "min"


def test_optimizer_groups_have_their_own_learning_rates(tiny_bert_cfg):
    from saten.lit import GlueClassifier
    from saten.lit.optim import build_optimizer

    saten_cfg = compose_config(["saten=saten_u"], Path("/tmp")).saten
    optim = {"lr": 1e-4, "lr_cores": 1e-3, "lr_sparse": 2e-3, "weight_decay": 0.01, "warmup_ratio": 0.1,
             "scheduler": "linear"}
    module = GlueClassifier(model=tiny_bert_cfg, task={"name": "mrpc", "metric": "f1"}, saten=saten_cfg)
    optimizer, scheduler = build_optimizer(module.model, optim, total_steps=100)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["cores"]["lr"] == pytest.approx(0.0) and groups["cores"]["initial_lr"] == 1e-3
    assert groups["sparse"]["initial_lr"] == 2e-3 and groups["rest"]["initial_lr"] == 1e-4
    assert groups["rest_no_decay"]["weight_decay"] == 0.0 and groups["rest"]["weight_decay"] == 0.01
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in map(names.get, map(id,
               groups["rest_no_decay"]["params"])))
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert groups["cores"]["lr"] == pytest.approx(1e-3)  # warm-up over (10 of 100 steps)


@pytest.mark.parametrize(("task", "files"), [("mrpc", ["MRPC.tsv"]), ("mnli", ["MNLI-m.tsv", "MNLI-mm.tsv"]),
                                            ("stsb", ["STS-B.tsv"])])
def test_test_predictions_are_glue_submission_files(task, files, mini_glue, tmp_path):
    from saten.train import run

    overrides = [*shrink_overrides(mini_glue, task, "tt"), *ONE_STEP, "test_predictions=true",
                 "callbacks.run_summary.save_model=false"]
    run(compose_config(overrides, tmp_path))
    for name in files:
        lines = (tmp_path / "predictions" / name).read_text().splitlines()
        assert lines[0] == "index\tprediction" and len(lines) > 1
        assert [int(line.split("\t")[0]) for line in lines[1:]] == list(range(len(lines) - 1))


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=-1", "optim.lr=-1"),
    ("optim.warmup_ratio=2", "optim.warmup_ratio=2"),
    ("train=false", "ckpt_path=null"),
    ("ckpt_path=/no/such/run", "ckpt_path=/no/such/run"),
    ("saten.eps=-1", "saten.eps=-1"),
    ("task.metric=auc", "task.metric=auc"),
    ("data.batch_size=0", "data.batch_size=0"),
])
def test_bad_values_raise_one_line_config_errors(override, message, mini_glue, tmp_path):
    from saten.train import run

    with pytest.raises(ConfigError, match=message) as info:
        run(compose_config([*shrink_overrides(mini_glue), override], tmp_path))
    assert "\n" not in str(info.value)


def test_eval_only_refuses_a_checkpoint_of_another_task(mini_glue, tmp_path):
    from saten.train import run

    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run(compose_config([*shrink_overrides(mini_glue, "rte", "dense"), *ONE_STEP], train_dir))
    with pytest.raises(ConfigError, match="task=rte"):
        run(compose_config([*shrink_overrides(mini_glue, "mrpc", "dense"), "train=false",
                            f"ckpt_path={train_dir}"], eval_dir))


def test_provenance_has_command_git_cpu_and_versions(tmp_path):
    from saten.provenance import write_provenance

    record = json.loads(write_provenance(tmp_path, argv=["run.py", "task=rte"]).read_text())
    assert record["argv"] == ["run.py", "task=rte"]
    assert set(record["git"]) == {"sha", "dirty"}
    assert record["cpu"]["model"] and record["torch_threads"] == torch.get_num_threads()
    assert {"torch", "transformers", "lightning", "hydra-core", "saten"} <= set(record["versions"])


def test_resume_needs_a_full_checkpoint(mini_glue, tmp_path):
    from saten.train import run

    first, weights_only = tmp_path / "first", tmp_path / "weights_only"
    base = [*shrink_overrides(mini_glue, "rte", "saten_u"), *ONE_STEP]
    run(compose_config([*base, "callbacks.model_checkpoint.save_weights_only=false"], first))
    resumed = run(compose_config([*base, "trainer.max_epochs=2", f"ckpt_path={first}/checkpoints/best.ckpt"],
                                 tmp_path / "resumed"))
    assert resumed["epochs"] == 2 and resumed["global_step"] == 2
    run(compose_config(base, weights_only))
    with pytest.raises(ConfigError, match="weights-only"):
        run(compose_config([*base, f"ckpt_path={weights_only}/checkpoints/best.ckpt"], tmp_path / "again"))
