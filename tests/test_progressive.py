"""Progressive tightening (schedule=progressive): fixed-rank TT-SVD, re-truncation, the schedule in a run."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from test_pipeline import compose_config, shrink_overrides
from torch import nn

from saten import SatenLinear, compress
from saten.errors import ConfigError
from saten.models import load_model
from saten.progressive import (
    ProgressiveTightening,
    compress_for_training,
    interpolate,
    retruncate,
    start_plan,
    structure,
)
from saten.tt import tt_reconstruct, tt_svd

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")
PROGRESSIVE = ["schedule=progressive", "schedule.start_eps=0.3", "schedule.steps=2", "schedule.end=0.5"]


def test_per_bond_caps_fix_the_ranks_in_the_tensor_order():
    torch.manual_seed(0)
    tensor = torch.randn(4, 5, 6, 3)
    cores = tt_svd(tensor, 0.0, [3, 7, 2])
    assert [c.shape[2] for c in cores[:-1]] == [3, 7, 2]
    full = tt_svd(tensor, 0.0, [4, 18, 3])  # caps at the unfolding sizes: exact
    torch.testing.assert_close(tt_reconstruct(full), tensor, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one cap per internal rank"):
        tt_svd(tensor, 0.0, [3, 3])


def test_retruncate_reaches_the_requested_structure_in_place():
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    loose = SatenLinear.from_linear(linear, eps=0.3, density=0.2)
    tight = SatenLinear.from_linear(linear, eps=0.8, density=0.05)
    params = [*loose.cores, loose.values]
    changed = retruncate(loose, tight.ranks, tight.nnz)
    assert structure(loose) == structure(tight)
    assert all(a is b for a, b in zip(changed, params))  # the optimizer's parameter objects survive
    assert torch.equal(loose.positions, loose.positions.sort().values)
    assert loose.positions.unique().numel() == tight.nnz
    x = torch.randn(3, 48)
    assert torch.isfinite(loose(x)).all()
    # the kept values are the largest entries of the new TT error
    error = (loose.weight - loose.tt_weight()).detach()
    assert torch.allclose(error.reshape(-1)[loose.positions], loose.values.detach())


def test_retruncate_keeps_an_exact_tt_layer_and_nm_patterns():
    torch.manual_seed(1)
    linear = nn.Linear(48, 40)
    layer = SatenLinear.from_linear(linear, eps=0.5)  # TT only: the weight has exactly these ranks
    before = layer.weight.detach().clone()
    retruncate(layer, layer.ranks, 0)
    torch.testing.assert_close(layer.weight.detach(), before, atol=1e-5, rtol=1e-4)
    nm = SatenLinear.from_linear(linear, eps=0.4, sparsity="nm", nm=(2, 4))
    target = SatenLinear.from_linear(linear, eps=1.0, sparsity="nm", nm=(2, 4))
    retruncate(nm, target.ranks, target.nnz)
    assert structure(nm) == structure(target)
    groups = torch.zeros(40 * 48, dtype=torch.long)
    groups[nm.positions] = 1
    assert (groups.reshape(40, 12, 4).sum(-1) == 2).all()


def test_interpolate_and_start_plan():
    start, target = {"ranks": [1, 20, 1], "nnz": 100}, {"ranks": [1, 10, 1], "nnz": 40}
    assert interpolate(start, target, 0.5) == ([1, 15, 1], 70)
    assert interpolate(start, target, 1.0) == ([1, 10, 1], 40)
    plan = {"method": "saten", "eps": 0.85, "density": 0.1, "target_ratio": 0.33,
            "overrides": {"encoder.layer.0.*": {"eps": 0.2}}}
    loose = start_plan(plan, {"start_eps": 0.5, "start_density": 0.2})
    assert loose["eps"] == 0.5 and loose["density"] == 0.2 and loose["target_ratio"] is None
    assert loose["overrides"]["encoder.layer.0.*"]["eps"] == 0.2  # never looser than asked: already tighter


@pytest.mark.parametrize("model_name, head", [("tiny_bert", "sequence_classification"),
                                              ("tiny_llama", "causal_lm")])
def test_compress_for_training_starts_looser_and_records_the_plain_target(model_name, head, model_cfg_loader):
    saten = {"method": "saten", "eps": 0.8, "density": 0.05}
    kwargs = {"num_labels": 2} if head == "sequence_classification" else {}
    torch.manual_seed(0)
    plain = load_model(model_cfg_loader(model_name), head=head, **kwargs)
    names = compress(plain, saten)
    torch.manual_seed(0)
    model = load_model(model_cfg_loader(model_name), head=head, **kwargs)
    schedule = {"progressive": True, "start_eps": 0.3, "start_density": 0.1, "steps": 2, "end": 0.5}
    replaced, stages = compress_for_training(model, saten, None, None, None, schedule)
    assert replaced == names
    for name in names:
        assert stages["target"][name] == structure(plain.get_submodule(name))
        start = stages["start"][name]
        assert start == structure(model.get_submodule(name)) and start["nnz"] > stages["target"][name]["nnz"]
        assert sum(start["ranks"]) > sum(stages["target"][name]["ranks"])
    assert model.saten_info["config"]["eps"] == 0.8 and model.saten_info["progressive"]["steps"] == 2


def test_a_resumed_schedule_counts_the_events_its_checkpoint_holds():
    callback = ProgressiveTightening(steps=4, end=0.5)
    trainer = SimpleNamespace(estimated_stepping_batches=16, global_step=4)
    callback.on_train_start(trainer, SimpleNamespace(progressive={"start": {}, "target": {}}))
    assert callback.event_steps == [2, 4, 6, 8] and callback.applied == 1  # the step-4 event is still due


def test_progressive_run_ends_with_the_plain_structure(mini_glue, tmp_path):
    from saten.lit import load_run
    from saten.train import run

    base = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), "trainer.max_epochs=2",
            "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"]
    plain = run(compose_config(base, tmp_path / "plain"))
    summary = run(compose_config([*base, *PROGRESSIVE], tmp_path / "prog"))
    assert summary["params"] == plain["params"] and summary["ratio"] == pytest.approx(plain["ratio"])
    # the target is reached at step 2 = the first batch of epoch 1: epoch 0 (a larger model) is not eligible
    assert summary["best/epoch"] == 1 and math.isfinite(summary["best/f1"])
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("prog", "plain")]
    assert reports[0]["total"] == reports[1]["total"]  # report.json describes the target model
    module, reference = load_run(tmp_path / "prog"), load_run(tmp_path / "plain")
    for name in module.replaced:
        assert structure(module.model.get_submodule(name)) == structure(reference.model.get_submodule(name))


@pytest.mark.parametrize("override, key", [
    (["saten=svd"], "schedule=progressive with saten.method=svd"),
    (["schedule.end=1.0"], "schedule.end=1.0"),
    (["schedule.steps=0"], "schedule.steps=0"),
    (["saten.embeddings=true"], "saten.embeddings=true"),
])
def test_bad_schedules_fail_up_front(override, key, tmp_path):
    from saten.validate import check_config

    cfg = compose_config(["model=tiny_bert", "schedule=progressive", *override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        check_config(cfg)


def test_progressive_runs_get_their_own_run_dir_tag():
    from saten.train import run_tag

    saten = {"method": "saten", "density": 0.1, "eps": 0.85}
    tag = run_tag("saten_u", saten, None, None, {"progressive": True, "start_eps": 0.5})
    assert tag == "saten_u_d0.1_e0.85_prog0.5"
    assert run_tag("saten_u", saten, None, None, {"progressive": False}) == "saten_u_d0.1_e0.85"
