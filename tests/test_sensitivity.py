"""Sensitivity-aware budget (saten.sensitivity): the allocation, the Fisher estimate, the pipeline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_pipeline import ONE_STEP, compose_config, shrink_overrides

from saten.errors import ConfigError
from saten.sensitivity import allocate, fisher_diagonals

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")


def _options(rng: torch.Generator, layers=4, choices=4):
    options = {}
    for layer in range(layers):
        params = sorted(torch.randint(10, 100, (choices,), generator=rng).tolist(), reverse=True)
        costs = sorted(torch.rand(choices, generator=rng).tolist())  # fewer parameters cost more
        options[f"l{layer}"] = [{"eps": 0.1 * (i + 1), "params": p, "cost": c}
                                for i, (p, c) in enumerate(zip(params, costs))]
    return options


@pytest.mark.parametrize("seed", range(5))
def test_allocation_respects_the_budget_and_no_single_change_that_fits_lowers_the_cost(seed):
    options = _options(torch.Generator().manual_seed(seed))
    dense = 400
    choice, ratio = allocate(options, dense, target=0.5)
    params = sum(o["params"] for o in choice.values())
    cost = sum(o["cost"] for o in choice.values())
    assert params <= 0.5 * dense and ratio == pytest.approx(params / dense)
    for name, opts in options.items():
        for option in opts:
            if params - choice[name]["params"] + option["params"] <= 0.5 * dense:
                assert cost - choice[name]["cost"] + option["cost"] >= cost - 1e-12


def test_budget_the_lagrangian_leaves_unused_is_spent():
    """Two equal layers: the relaxation can only move both (20 or 200 of 200); the budget 150 fits one."""
    layer = [{"eps": 0.2, "params": 100, "cost": 0.0}, {"eps": 1.0, "params": 10, "cost": 1.0}]
    choice, ratio = allocate({"a": layer, "b": layer}, dense=200, target=0.75)
    assert ratio == pytest.approx(110 / 200)
    assert sorted(o["eps"] for o in choice.values()) == [0.2, 1.0]


def test_an_unreachable_target_is_refused():
    options = {"a": [{"eps": 0.5, "params": 50, "cost": 0.0}]}
    with pytest.raises(ConfigError, match="saten.target_ratio=0.1"):
        allocate(options, 100, 0.1)


def test_fisher_is_the_mean_squared_gradient(tiny_bert_cfg):
    from saten.models import load_model

    torch.manual_seed(0)
    model = load_model(tiny_bert_cfg, head="sequence_classification", num_labels=2)
    ids = torch.randint(5, 100, (2, 6))
    batches = [{"input_ids": ids[i:i + 1], "attention_mask": torch.ones_like(ids[i:i + 1]),
                "labels": torch.tensor([i % 2])} for i in range(2)]
    name = "bert.encoder.layer.0.attention.self.query"
    fisher = fisher_diagonals(model, [name], batches)[name]
    weight = model.get_submodule(name).weight
    expected = torch.zeros_like(weight)
    model.eval()
    for batch in batches:
        grad, = torch.autograd.grad(model(**batch).loss, weight)
        expected += grad.square() / 2
    torch.testing.assert_close(fisher, expected)
    assert weight.grad is None


def test_pipeline_allocates_per_layer_eps_under_the_target(mini_glue, tmp_path):
    from saten.train import run

    overrides = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP, "calibration=sensitivity",
                 "calibration.samples=8", "saten.target_ratio=0.6"]
    summary = run(compose_config(overrides, tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    budget = report["budget"]
    assert budget["allocation"] == "sensitivity" and budget["ratio"] <= 0.6
    assert report["total"]["ratio"] == pytest.approx(budget["ratio"], rel=1e-9)
    assert budget["eps_min"] < budget["eps_max"]  # not one global ε
    assert summary["params"] > 0


def test_the_teachers_fisher_ranks_the_layers_and_the_students_weights_are_compressed(tiny_bert_cfg):
    """With ``fisher_model`` the allocation is the one the teacher's gradients give for the student's own
    weights: a teacher sharing the encoder but not the (random) head allocates like the teacher itself."""
    import copy

    from saten.calibration import plan_compression
    from saten.models import load_model

    torch.manual_seed(0)
    student = load_model(tiny_bert_cfg, head="sequence_classification", num_labels=2)
    teacher = copy.deepcopy(student)
    torch.nn.init.normal_(teacher.classifier.weight, std=1.0)  # another head: another Fisher
    ids = torch.randint(5, 100, (8, 12))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.arange(8) % 2}]
    saten = {"method": "saten", "eps": 0.5, "density": 0.1, "target_ratio": 0.5}
    calibration = {"samples": 8, "sensitivity": True, "activation_aware": False}

    def eps_by_layer(model, fisher_model=None):
        plan, _, record = plan_compression(model, saten, None, calibration, batches, fisher_model)
        assert record["fisher"] == ("model" if fisher_model is None else "teacher")
        return {name: override["eps"] for name, override in plan["overrides"].items()}

    from_teacher = eps_by_layer(student, fisher_model=teacher)
    assert from_teacher == eps_by_layer(teacher)
    assert from_teacher != eps_by_layer(student)
    with pytest.raises(ConfigError, match="calibration.fisher=teacher: the teacher has no"):
        eps_by_layer(student, fisher_model=torch.nn.Sequential())


def test_pipeline_ranks_layers_by_the_teacher_run_without_distilling(mini_glue, tmp_path):
    from saten.train import run

    teacher_dir = tmp_path / "teacher"
    run(compose_config([*shrink_overrides(mini_glue, "mrpc", "dense"), *ONE_STEP], teacher_dir))
    student = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), *ONE_STEP, "calibration=sensitivity",
               "calibration.samples=8", "saten.target_ratio=0.6", "calibration.fisher=teacher"]
    with pytest.raises(ConfigError, match="distill.teacher=null"):
        run(compose_config(student, tmp_path / "no_teacher"))
    with pytest.raises(ConfigError, match="calibration.fisher=student: use model .* or teacher"):
        run(compose_config([*student[:-1], "calibration.fisher=student"], tmp_path / "bad"))
    summary = run(compose_config([*student, f"distill.teacher={teacher_dir}"], tmp_path / "student"))
    budget = json.loads((tmp_path / "student" / "report.json").read_text())["budget"]
    assert budget["fisher"] == "teacher" and budget["ratio"] <= 0.6
    assert math.isfinite(summary["best/f1"])


def test_eps_by_block_reads_the_runs_overrides(tmp_path, capsys):
    from saten.sensitivity import eps_by_block, main

    overrides = {r"bert\.encoder\.layer\.0\.attention\.self\.query": {"eps": 0.4},
                 r"bert\.encoder\.layer\.0\.output\.dense": {"eps": 0.6},
                 r"bert\.encoder\.layer\.1\.output\.dense": {"eps": 1.2}}
    assert eps_by_block(overrides) == pytest.approx({0: 0.5, 1: 1.2})
    (tmp_path / "report.json").write_text(json.dumps({"config": {"overrides": overrides}}))
    main([str(tmp_path)])
    assert capsys.readouterr().out.split()[1:] == ["0:0.50", "1:1.20"]
    with pytest.raises(SystemExit, match="no report.json"):
        main([str(tmp_path / "missing")])
