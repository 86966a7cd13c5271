"""Activation-aware compression (saten.calibration): channel statistics, the scaled layer, the pipeline."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from test_pipeline import ONE_STEP, compose_config, shrink_overrides
from torch import nn

from saten.calibration import activation_scales, input_channel_rms
from saten.errors import ConfigError
from saten.layers import SatenLinear

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")


def test_channel_rms_matches_direct_computation_and_skips_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, inputs, attention_mask):
            return self.net(inputs)

    rms = input_channel_rms(Wrapper(), ["net.0", "net.2"], [{"inputs": x, "attention_mask": mask}])
    kept = x[mask.bool()]
    torch.testing.assert_close(rms["net.0"], kept.square().mean(0).sqrt())
    hidden = torch.relu(model[0](kept))
    torch.testing.assert_close(rms["net.2"], hidden.square().mean(0).sqrt())


def test_scales_are_positive_with_mean_one():
    scales = activation_scales(torch.tensor([0.0, 1.0, 4.0, 9.0]), alpha=0.5)
    assert bool((scales > 0).all()) and scales.mean().item() == pytest.approx(1.0)
    assert scales[3] / scales[2] == pytest.approx(1.5)


@pytest.mark.parametrize("density", [0.0, 0.2])
def test_scaled_layer_computes_its_effective_weight_on_both_paths(density):
    torch.manual_seed(1)
    linear = nn.Linear(24, 16)
    scale = torch.rand(24) + 0.5
    layer = SatenLinear.from_linear(linear, eps=0.3, density=density, channel_scale=scale)
    x = torch.randn(5, 24)
    expected = x @ layer.weight.T + layer.bias
    torch.testing.assert_close(layer(x), expected)
    layer.recompute = False
    torch.testing.assert_close(layer(x), expected)
    # the compressed object is W·diag(s): undoing the scale leaves the error of that decomposition
    scaled = linear.weight * scale
    rebuilt = layer.weight * scale
    error = torch.linalg.vector_norm(scaled - rebuilt) / torch.linalg.vector_norm(scaled)
    assert error.item() == pytest.approx(layer.rel_error, abs=1e-5)
    # the scale is a fixed buffer, saved with the weights and rebuilt from the spec
    assert "input_scale" in layer.state_dict() and "input_scale" not in dict(layer.named_parameters())
    clone = SatenLinear.from_spec(layer.spec())
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone(x), layer(x))


def test_activation_aware_lowers_the_output_error_at_equal_size():
    """A few loud input channels (as in LLMs): scaling protects them, plain TT-SVD spreads its error."""
    torch.manual_seed(2)
    n_in, n_out = 64, 48
    weight = torch.randn(n_out, n_in)
    loudness = torch.full((n_in,), 0.1)
    loudness[:6] = 10.0
    x = torch.randn(2000, n_in) * loudness
    linear = nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    rms = x.square().mean(0).sqrt()
    plain = SatenLinear.from_linear(linear, eps=0.0, max_rank=6, density=0.05)
    aware = SatenLinear.from_linear(linear, eps=0.0, max_rank=6, density=0.05,
                                    channel_scale=activation_scales(rms, alpha=1.0))
    assert plain.ranks == aware.ranks and plain.nnz == aware.nnz

    def output_error(layer):
        norm = torch.linalg.vector_norm
        return norm(x @ (weight - layer.weight).T) / norm(x @ weight.T)

    assert output_error(aware) < 0.5 * output_error(plain)


def test_compress_with_calibration_on_tiny_llama(tiny_llama_cfg):
    from saten import compress
    from saten.calibration import calibrated_scales
    from saten.models import load_model

    torch.manual_seed(0)
    model = load_model(tiny_llama_cfg, head="causal_lm")
    ids = torch.randint(0, 100, (2, 16))
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    saten = {"method": "saten", "eps": 0.5, "density": 0.1, "sparsity": "unstructured"}
    scales = calibrated_scales(model, saten, {"samples": 2, "alpha": 0.5}, batches)
    assert calibrated_scales(model, saten, {"samples": 0}, batches) is None
    replaced = compress(model, saten, channel_scales=scales)
    assert set(replaced) == set(scales)
    layer = model.get_submodule(replaced[0])
    torch.testing.assert_close(layer.input_scale, 1 / scales[replaced[0]])
    logits = model(**batches[0]).logits
    assert torch.isfinite(logits).all()


def test_pipeline_with_calibration_trains_one_batch(mini_glue, tmp_path):
    from saten.lit import load_run
    from saten.train import run

    overrides = [*shrink_overrides(mini_glue, "mrpc", "saten_u"), "calibration=activation",
                 "calibration.samples=8", *ONE_STEP]
    summary = run(compose_config(overrides, tmp_path))
    assert math.isfinite(summary["best/f1"])
    layers = json.loads((tmp_path / "report.json").read_text())["layers"]
    assert layers and all(row["activation_aware"] for row in layers)
    # the saved run reloads with its scales although a rebuild has no calibration data
    module = load_run(tmp_path)
    scaled = [m for m in module.model.modules() if getattr(m, "input_scale", None) is not None]
    assert len(scaled) == len(layers)


def test_target_ratio_counts_the_scales_of_an_activation_aware_model(tiny_llama_cfg):
    from saten import compress
    from saten.accounting import model_report
    from saten.calibration import calibrated_scales
    from saten.models import load_model

    torch.manual_seed(0)
    model = load_model(tiny_llama_cfg, head="causal_lm")
    ids = torch.randint(0, 100, (2, 16))
    saten = {"method": "saten", "eps": 0.5, "density": 0.05, "sparsity": "unstructured", "target_ratio": 0.4}
    scales = calibrated_scales(model, saten, {"samples": 2, "alpha": 0.5},
                               [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    compress(model, saten, channel_scales=scales)
    reached = model_report(model)["total"]["ratio"]
    assert abs(reached / 0.4 - 1) <= 0.01
    assert model.saten_info["budget"]["ratio"] == pytest.approx(reached, rel=1e-9)


def test_activation_aware_layers_reload_from_their_state_dict(tiny_llama_cfg):
    """A model rebuilt without calibration data takes its structure (and scales) from the saved state."""
    from saten import compress
    from saten.calibration import calibrated_scales
    from saten.models import load_model
    from saten.reload import load_state_exact

    torch.manual_seed(0)
    saten = {"method": "saten", "eps": 0.5, "density": 0.1, "sparsity": "unstructured"}
    trained = load_model(tiny_llama_cfg, head="causal_lm")
    ids = torch.randint(0, 100, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    compress(trained, saten, channel_scales=calibrated_scales(trained, saten, {"samples": 2}, [batch]))
    torch.manual_seed(0)
    rebuilt = load_model(tiny_llama_cfg, head="causal_lm")
    compress(rebuilt, saten)  # no scales: a plain structure
    load_state_exact(rebuilt, trained.state_dict())
    torch.testing.assert_close(rebuilt(**batch).logits, trained(**batch).logits)


@pytest.mark.parametrize(("override", "key"), [
    ("calibration.samples=-3", "calibration.samples=-3"),
    ("calibration.alpha=0", "calibration.alpha=0"),
    ("calibration.sensitivity=true", "calibration.sensitivity=true: needs saten.target_ratio"),
    ("saten=svd", "saten.method=svd"),
])
def test_bad_calibration_values_fail_before_any_model_loads(override, key, tmp_path):
    from saten.validate import check_config

    cfg = compose_config(["model=tiny_bert", "calibration=activation", override], tmp_path)
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_config(cfg)


@pytest.mark.parametrize("fmt", ["merged", "factorized", "auto"])
def test_activation_aware_models_export_with_their_scales(tiny_llama_cfg, fmt):
    from saten import compress, export
    from saten.calibration import calibrated_scales
    from saten.models import load_model

    torch.manual_seed(0)
    model = load_model(tiny_llama_cfg, head="causal_lm").eval()
    ids = torch.randint(0, 100, (2, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    saten = {"method": "saten", "eps": 0.5, "density": 0.1, "sparsity": "unstructured"}
    compress(model, saten, channel_scales=calibrated_scales(model, saten, {"samples": 2}, [batch]))
    with torch.no_grad():
        expected = model(**batch).logits
        export(model, fmt, tokens=1, repeats=1)
        got = model(**batch).logits
    assert (torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected)).item() < 1e-4


def test_scales_fold_into_the_pair_only():
    from saten.inference_layers import FactorizedTTLinear

    torch.manual_seed(3)
    scale = torch.rand(16) + 0.5
    layer = SatenLinear.from_linear(nn.Linear(16, 12), eps=0.3, density=0.1, channel_scale=scale)
    with pytest.raises(ValueError, match="path='cores'"):
        FactorizedTTLinear.from_saten(layer, path="cores")
    x = torch.randn(3, 16)
    torch.testing.assert_close(FactorizedTTLinear.from_saten(layer, path="pair")(x), layer(x))


def test_matrix_layout_scales_cannot_be_factorized_but_merge():
    from saten.inference_layers import FactorizedTTLinear, MergedLinear
    from saten.tt import balanced_shape

    torch.manual_seed(3)
    linear = nn.Linear(16, 16)
    shape = balanced_shape(16, 16, 2, 2, "matrix")
    scale = torch.rand(16) + 0.5
    layer = SatenLinear.from_linear(linear, eps=0.3, density=0.1, shape=shape, channel_scale=scale)

    with pytest.raises(ValueError, match="format='merged'"):
        FactorizedTTLinear.from_saten(layer)
    x = torch.randn(3, 16)
    torch.testing.assert_close(MergedLinear.from_saten(layer)(x), layer(x))
