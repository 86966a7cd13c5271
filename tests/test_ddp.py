"""Scale-out: ``trainer=ddp`` with 2 CPU processes (gloo) trains the same compressed model (same parameter
count) to a metric within noise of one process. Slow: two processes share the CPU with everything else.
"""

from __future__ import annotations

import json

import pytest
from test_pipeline import compose_config
from test_run import run_py
from test_validate import tiny, write_mrpc


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    glue = write_mrpc(tmp_path / "glue", train=512, dev=64)  # learnable within a few epochs
    base = tiny(glue, "trainer.max_epochs=3", "trainer.num_sanity_val_steps=0", "optim.lr=3e-3",
                "data.batch_size=16")
    summaries = {}
    for name, extra in (("one", ["trainer=cpu"]),
                        ("ddp", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                 "data.batch_size=8"])):  # 2 x 8: the same global batch as 1 x 16
        result = run_py([*base, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    one, ddp = summaries["one"], summaries["ddp"]
    assert ddp["params"] == one["params"] and ddp["ratio"] == one["ratio"]
    assert ddp["global_step"] == one["global_step"] == 3 * 512 // 16
    # both learn the task (chance: accuracy 0.5, loss 0.69); the data order and dropout differ, so not equal
    assert one["val/accuracy"] >= 0.9 and ddp["val/accuracy"] >= 0.9
    assert one["val/loss"] < 0.55 and ddp["val/loss"] < 0.55  # of the best epoch (first to reach F1 1.0)
    assert ddp["val/loss"] == pytest.approx(one["val/loss"], abs=0.1)


def test_fsdp_config_builds_lightning_fsdp_strategy(tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from torch import nn

    cfg = compose_config(["trainer=fsdp"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and cfg.trainer.precision == "bf16-mixed"
    assert strategy.kwargs["use_orig_params"] and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy(nn.Linear(2048, 1024), recurse=False, nonwrapped_numel=2048 * 1024 + 1024)
    assert not policy(nn.Linear(8, 8), recurse=False, nonwrapped_numel=72)
