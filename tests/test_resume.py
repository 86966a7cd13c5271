"""Resume: ``last.ckpt`` holds the full training state; ``ckpt_path=last`` continues a killed run in its own
run dir and ends where an uninterrupted run with the same seed ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from test_pipeline import compose_config
from test_validate import tiny, write_mrpc

from saten.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec",
                                        "ignore:.*does not have many workers", "ignore:Checkpoint directory")
REPO_ROOT = Path(__file__).resolve().parents[1]


class Crash(Callback):
    """Raise at the start of epoch ``epoch`` (after the previous epoch's checkpoints were written)."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def overrides(glue: Path, logs: Path, *extra: str) -> list[str]:
    return tiny(glue, "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0", "optim.lr=1e-3",
                "callbacks.last_checkpoint.keep=true", f"paths.log_dir={logs}", *extra)


def assert_same_final_state(run_a: Path, run_b: Path) -> None:
    """The final epoch's weights, masks and optimizer moments of two runs are identical."""
    a, b = (torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            for run in (run_a, run_b))
    assert a["global_step"] == b["global_step"] and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    moments_a, moments_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert all(torch.equal(moments_a[i]["exp_avg"], moments_b[i]["exp_avg"]) for i in moments_a)


def test_resume_restores_optimizer_scheduler_and_masks(tmp_path):
    from saten.train import run

    glue, logs = write_mrpc(tmp_path / "glue"), tmp_path / "logs"
    base = overrides(glue, logs)
    crashed = logs / "runs" / "crashed"
    cfg = compose_config([*base, "+callbacks.crash._target_=test_resume.Crash"], crashed)
    cfg.paths.log_dir = str(logs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    last = crashed / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 4
    assert state["optimizer_states"][0]["state"] and state["lr_schedulers"][0]["last_epoch"] == 4
    masks = {k: v for k, v in state["state_dict"].items() if k.endswith(".positions")}
    assert masks and all(v.numel() > 0 for v in masks.values())

    cfg = compose_config([*base, "ckpt_path=last"], logs / "runs" / "resumed")
    cfg.paths.log_dir = str(logs)
    resumed = run(cfg)
    assert resumed["epochs"] == 2 and resumed["global_step"] == 8
    assert json.loads((crashed / "summary.json").read_text())["global_step"] == 8  # continued in its dir

    straight = logs / "runs" / "straight"
    uninterrupted = run(compose_config(base, straight))
    for key in ("best/f1", "best/loss", "val/loss", "val/accuracy"):
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-6), key
    assert_same_final_state(crashed, straight)


def test_ckpt_path_last_without_a_resumable_run_is_one_line(tmp_path):
    from saten.train import run

    cfg = compose_config(overrides(write_mrpc(tmp_path / "glue"), tmp_path / "logs", "ckpt_path=last"),
                         tmp_path / "logs" / "runs" / "x")
    cfg.paths.log_dir = str(tmp_path / "logs")
    with pytest.raises(ConfigError, match=r"^ckpt_path=last: no run under .*; run without ckpt_path"):
        run(cfg)


def run_py_process(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "run.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
def test_sigkill_mid_training_then_ckpt_path_last_reaches_the_same_metric(tmp_path):
    glue, logs = write_mrpc(tmp_path / "glue", train=1200, dev=64), tmp_path / "logs"
    base = overrides(glue, logs, "trainer.max_epochs=3")
    straight, killed = logs / "runs" / "straight", logs / "runs" / "killed"

    process = run_py_process([*base, f"hydra.run.dir={killed}"], tmp_path)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), process.stderr.read().decode()[-3000:] if process.poll() is not None else "timeout"
    time.sleep(2)  # well inside the second epoch
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (killed / "summary.json").exists()

    resumed = run_py_process([*base, "ckpt_path=last", f"hydra.run.dir={logs / 'runs' / 'resume'}"], tmp_path)
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read().decode()[-3000:]
    uninterrupted = run_py_process([*base, f"hydra.run.dir={straight}"], tmp_path)
    assert uninterrupted.wait(timeout=900) == 0, uninterrupted.stderr.read().decode()[-3000:]

    a = json.loads((killed / "summary.json").read_text())
    b = json.loads((straight / "summary.json").read_text())
    assert a["epochs"] == b["epochs"] == 3 and a["global_step"] == b["global_step"]
    for key in ("best/f1", "best/loss", "val/f1", "val/loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert_same_final_state(killed, straight)
