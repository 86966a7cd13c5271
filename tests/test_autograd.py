"""Memory-light SatenLinear autograd: same outputs and gradients as the naive path, no dense W saved."""

import copy
import weakref

import pytest
import torch
from torch import nn

from saten import SatenLinear
from saten.autograd import effective_weight, saten_linear, set_recompute

N_IN, N_OUT = 48, 40
SPARSITY = {
    "unstructured": {"density": 0.15},
    "nm": {"sparsity": "nm", "nm": (2, 4)},
    "tt_only": {"density": 0.0},
}


def _layer(layout="plain", sparsity="unstructured", bias=True, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    linear = nn.Linear(N_IN, N_OUT, bias=bias, dtype=dtype)
    return SatenLinear.from_linear(linear, eps=0.6, layout=layout, **SPARSITY[sparsity], **kw)


def _grads(layer, x, recompute):
    layer = copy.deepcopy(layer)
    layer.recompute = recompute
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    (y * weights).sum().backward()
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("layout", ["plain", "matrix"])
@pytest.mark.parametrize("sparsity", list(SPARSITY))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(7,), (3, 5)], ids=["2d", "3d"])
def test_recompute_matches_naive_gradients(layout, sparsity, bias, batch):
    layer = _layer(layout, sparsity, bias)
    x = torch.randn(*batch, N_IN, dtype=torch.float64)
    y_naive, gx_naive, g_naive = _grads(layer, x, recompute=False)
    y_fast, gx_fast, g_fast = _grads(layer, x, recompute=True)
    assert y_fast.shape == (*batch, N_OUT)
    torch.testing.assert_close(y_fast, y_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_fast, gx_naive, rtol=1e-12, atol=1e-12)
    assert g_fast.keys() == g_naive.keys() and ("bias" in g_fast) == bias
    for name in g_naive:
        if sparsity == "tt_only" and name == "values":  # empty: no gradient on either path
            assert g_fast[name] is None and g_naive[name] is None
            continue
        torch.testing.assert_close(g_fast[name], g_naive[name], rtol=1e-10, atol=1e-12, msg=name)


def test_float32_matches_naive_to_float_tolerance():
    layer = _layer(dtype=torch.float32)
    x = torch.randn(4, 9, N_IN)
    y_naive, gx_naive, g_naive = _grads(layer, x, recompute=False)
    y_fast, gx_fast, g_fast = _grads(layer, x, recompute=True)
    torch.testing.assert_close(y_fast, y_naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_fast, gx_naive, rtol=1e-5, atol=1e-5)
    for name in g_naive:
        torch.testing.assert_close(g_fast[name], g_naive[name], rtol=1e-4, atol=1e-5, msg=name)


def test_three_input_modes_and_gradcheck():
    layer = _layer(in_order=3, out_order=1)
    assert len(layer.cores) == 4
    x = torch.randn(2, 3, N_IN, dtype=torch.float64, requires_grad=True)
    params = (*layer.cores, layer.values, layer.bias)

    def fn(x, *p):
        return saten_linear(x, p[:4], p[4], layer.positions, p[5], layer.shape)

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_frozen_parts_get_no_gradient_and_input_without_grad():
    layer = _layer()
    layer.cores[0].requires_grad_(False)
    layer.values.requires_grad_(False)
    ref = copy.deepcopy(layer)
    ref.recompute = False
    x = torch.randn(6, N_IN, dtype=torch.float64)  # no grad for x
    layer(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert layer.cores[0].grad is None and layer.values.grad is None
    for p, q in zip(layer.parameters(), ref.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_no_dense_weight_is_saved_for_backward():
    layer = _layer(dtype=torch.float32)
    x = torch.randn(3, N_IN, requires_grad=True)

    def saved_sizes(recompute):
        layer.recompute = recompute
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sizes

    assert N_IN * N_OUT in saved_sizes(False)  # the naive path keeps W for F.linear's backward
    assert max(saved_sizes(True)) < N_IN * N_OUT


def test_effective_weight_and_switch():
    layer = _layer(sparsity="nm")
    torch.testing.assert_close(
        effective_weight(layer.cores, layer.shape, layer.positions, layer.values), layer.weight
    )
    model = nn.Sequential(_layer(seed=1), nn.ReLU(), _layer(seed=2))
    assert set_recompute(model, False) == 2 and not model[0].recompute and not model[2].recompute
    assert SatenLinear.recompute  # the class default stays on
    set_recompute(model, True)
    assert model[0].recompute
    with torch.no_grad():
        x = torch.randn(2, N_IN, dtype=torch.float64)
        assert layer(x).shape == (2, N_OUT)


def _bert_grads(cfg, saten: bool, recompute_act: bool):
    from saten import compress
    from saten.autograd import recompute_activations
    from saten.models import load_model

    torch.manual_seed(0)
    model = load_model(cfg, num_labels=2)
    if saten:
        compress(model, {"method": "saten", "eps": 0.5, "density": 0.1})
    model.train()
    for module in model.modules():  # dropout off: the two runs must see the same mask
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    if recompute_act:
        assert recompute_activations(model) == cfg["tiny"]["num_hidden_layers"]
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1])}
    outputs = []  # weak references to each block's activation output act(h)
    for layer in model.bert.encoder.layer:
        layer.intermediate.register_forward_hook(lambda m, a, out: outputs.append(weakref.ref(out)))
    loss = model(**batch).loss
    kept = sum(ref() is not None for ref in outputs)  # alive only if autograd saved it for backward
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, kept, model


@pytest.mark.parametrize("saten", [True, False], ids=["saten", "dense"])
def test_recompute_activations_same_gradients_fewer_saved(tiny_bert_cfg, saten):
    loss, grads, kept, _ = _bert_grads(tiny_bert_cfg, saten, recompute_act=False)
    loss_r, grads_r, kept_r, model = _bert_grads(tiny_bert_cfg, saten, recompute_act=True)
    torch.testing.assert_close(loss_r, loss, rtol=0, atol=0)
    assert grads_r.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_r[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)
    layers = tiny_bert_cfg["tiny"]["num_hidden_layers"]
    assert kept == layers and kept_r == 0  # act(h) is no longer kept for backward next to h
    from saten.autograd import recompute_activations

    assert recompute_activations(model) == layers  # idempotent: no second wrapper or hook pair
    with torch.no_grad():
        model.eval()(input_ids=torch.ones(1, 4, dtype=torch.long))


def test_recompute_activations_is_a_config_switch(mini_glue, tmp_path):
    """``recompute_activations=true`` wraps every FFN activation of the run's model and still trains."""
    import math

    from test_pipeline import ONE_STEP, compose_config, shrink_overrides

    from saten.autograd import _RecordingActivation
    from saten.lit import build_module
    from saten.train import run

    cfg = compose_config([*shrink_overrides(mini_glue), *ONE_STEP, "recompute_activations=true"], tmp_path)
    module = build_module(cfg)
    wrapped = [m for m in module.model.modules() if isinstance(m, _RecordingActivation)]
    assert len(wrapped) == module.model.config.num_hidden_layers
    assert math.isfinite(run(cfg)["best/f1"])
