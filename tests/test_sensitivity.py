"""Sensitivity-aware budget (saten.sensitivity): the allocation, the Fisher estimate, the pipeline."""

from __future__ import annotations

import itertools
import json

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
def test_allocation_respects_the_budget_and_beats_every_cheaper_choice(seed):
    options = _options(torch.Generator().manual_seed(seed))
    dense = 400
    choice, ratio = allocate(options, dense, target=0.5)
    params = sum(o["params"] for o in choice.values())
    cost = sum(o["cost"] for o in choice.values())
    assert params <= 0.5 * dense and ratio == pytest.approx(params / dense)
    # Lagrangian optimality: no allocation with at most as many parameters has a lower predicted cost
    for combo in itertools.product(*options.values()):
        if sum(o["params"] for o in combo) <= params:
            assert sum(o["cost"] for o in combo) >= cost - 1e-12


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
