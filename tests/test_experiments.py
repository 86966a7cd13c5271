"""The sweep experiments, method presets and launchers compose (Hydra compose API, no run)."""

import pytest

from saten.report import compose
from saten.train import optimized_metric

EXPERIMENTS = ["density_sweep", "method_comparison", "embedding_sparsity", "shape_search", "shape_optuna",
               "ablation"]
BERT_BASE = ["density_sweep", "method_comparison", "embedding_sparsity", "shape_search"]


@pytest.mark.parametrize("name", EXPERIMENTS + [f"{e}_bert_base" for e in BERT_BASE])
def test_experiment_composes_with_a_sweep(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.hydra.sweeper.params, "each experiment is a multirun"
    assert cfg.model.name == ("bert_base" if name.endswith("_bert_base") else "minilm")
    assert name.removesuffix("_bert_base") in cfg.tags


def test_density_sweep_trains_sst2_on_a_10k_subset_and_mrpc_on_all():
    assert compose(["experiment=density_sweep", "task=sst2"]).data.train_limit == 10000
    assert compose(["experiment=density_sweep", "task=mrpc"]).data.train_limit is None
    params = compose(["experiment=density_sweep"]).hydra.sweeper.params
    assert params["saten.density"].split(",") == ["0", "0.01", "0.02", "0.05", "0.1", "0.2", "0.3"]


def test_method_presets_read_the_measured_matched_ratios():
    matched = compose(["+method_preset=svd"]).matched.minilm
    expect = {"svd": ("svd", "svd_ratio", matched.svd_ratio_u), "tt": ("tt", "eps", matched.tt_eps_u),
              "svd_at_24": ("svd", "svd_ratio", matched.svd_ratio_24),
              "tt_at_24": ("tt", "eps", matched.tt_eps_24),
              "saten_u": ("saten", "density", 0.1), "saten_24": ("saten", "nm", [2, 4])}
    for preset, (method, key, value) in expect.items():
        cfg = compose(["experiment=method_comparison", f"method_preset={preset}"])
        assert cfg.saten.method == method and cfg.saten[key] == value
        assert cfg.hydra.runtime.choices.saten == preset.replace("_at_24", "")  # run dirs name the method
    assert compose(["experiment=method_comparison", "method_preset=dense"]).saten.method == "dense"


def test_ablation_rows_switch_one_recipe_part_each_and_dense_runs_first():
    params = compose(["experiment=ablation"]).hydra.sweeper.params
    assert list(params)[-1] == "ablation_row" and params["ablation_row"].split(",")[0] == "dense"
    rows = {row: compose(["experiment=ablation", f"ablation_row={row}"])
            for row in params["ablation_row"].split(",")}
    assert rows["dense"].saten.method == "dense"
    for row, cfg in rows.items():
        if row != "dense":
            assert (cfg.saten.method, cfg.saten.eps, cfg.saten.density) == ("saten", 0.85, 0.1)
        calibration = cfg.calibration
        budgeted = ("sensitivity", "all", "sensitivity_teacher", "all_teacher", "all_recover")
        activation = ("activation", "all", "all_teacher", "all_recover")
        assert bool(calibration.activation_aware) == (row in activation)
        assert bool(calibration.sensitivity) == (row in budgeted)
        assert (calibration.fisher == "teacher") == (row.endswith("_teacher") or row == "all_recover")
        assert (cfg.saten.target_ratio == 0.333) == (row in ("activation", *budgeted))
        distilled = row in ("distill", "all", "recover_distill", "all_teacher", "recover_task_distill",
                            "all_recover", "teacher_recover_distill")
        assert (cfg.distill.teacher == "auto" and cfg.distill.kd_weight > 0) == distilled
        assert (cfg.distill.teacher == "auto") == (distilled or row == "sensitivity_teacher")
        on_task = row in ("recover_task", "recover_task_distill", "all_recover", "teacher_recover_distill")
        assert bool(cfg.distill.init_from_teacher) == (row == "teacher_recover_distill")
        assert bool(cfg.recover.steps) == (row in ("recover", "recover_distill") or on_task)
        assert (cfg.recover.get("corpus") == "task") == on_task
    assert rows["paper"].data.train_limit is None
    assert compose(["experiment=ablation", "task=sst2"]).data.train_limit == 10000


@pytest.mark.parametrize("launcher, target", [("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers_compose(launcher, target):
    hydra = compose([f"hydra/launcher={launcher}"]).hydra
    assert hydra.launcher._target_.endswith(target)
    # jobs run in fresh interpreters: the callback registers the config resolvers there
    assert hydra.callbacks.saten_resolvers._target_ == "saten.launcher.RegisterResolvers"
    assert hydra.callbacks.saten_failed_jobs._target_ == "saten.failure.FailedJobs"  # failed jobs -> exit 1


def test_metric_per_ratio_objective():
    cfg = compose(["experiment=shape_optuna"])
    summary = {"best/f1": 0.8, "model_ratio": 0.5}
    assert optimized_metric(cfg, summary) == pytest.approx(1.6)
    assert optimized_metric(compose([]), summary) == pytest.approx(0.8)
