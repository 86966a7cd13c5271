"""SatenLinear / SVDLinear / SatenEmbedding: exactness, trainable parameters, gradients, merge, specs."""

import pytest
import torch
from torch import nn

from saten import SatenEmbedding, SatenLinear, SVDLinear, TTShape
from saten.lowrank import svd_rank


def _linear(n_in=48, n_out=40, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out)


def test_eps_zero_density_zero_reproduces_linear_outputs():
    linear = _linear()
    layer = SatenLinear.from_linear(linear, eps=0.0)
    x = torch.randn(5, 48)
    assert torch.allclose(layer(x), linear(x), atol=1e-5)
    assert layer.nnz == 0 and layer.rel_error_tt < 1e-5


@pytest.mark.parametrize("layout", ["plain", "matrix"])
def test_saten_linear_weight_is_tt_plus_residual_on_the_mask(layout):
    linear = _linear()
    layer = SatenLinear.from_linear(linear, eps=0.7, density=0.2, layout=layout)
    w = linear.weight.detach()
    residual = w - layer.tt_weight().detach()
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    mask[layer.positions] = True
    expected = layer.tt_weight().detach() + (residual.reshape(-1) * mask).reshape(w.shape)
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    assert layer.nnz == round(0.2 * w.numel())
    err = ((layer.weight - w).norm() / w.norm()).item()
    assert abs(err - layer.rel_error) < 1e-4 and layer.rel_error <= layer.rel_error_tt <= 0.7 + 1e-6


def test_nm_layer_has_exact_pattern():
    layer = SatenLinear.from_linear(_linear(), eps=1.0, sparsity="nm", nm=(2, 4))
    mask = torch.zeros(40 * 48, dtype=torch.bool)
    mask[layer.positions] = True
    assert torch.all(mask.reshape(40, 12, 4).sum(-1) == 2)


def test_gradients_reach_cores_values_and_bias_only():
    layer = SatenLinear.from_linear(_linear(), eps=0.5, density=0.1)
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"cores.0", "cores.1", "cores.2", "cores.3", "values", "bias"}
    assert not layer.positions.requires_grad and "positions" in dict(layer.named_buffers())
    layer(torch.randn(3, 48)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    # no dense residual anywhere: the only (out, in)-sized tensor would be a dense S
    assert all(p.numel() < 40 * 48 for p in layer.parameters())


def test_merge_and_spec_round_trip():
    layer = SatenLinear.from_linear(_linear(), eps=0.6, density=0.05)
    x = torch.randn(4, 48)
    assert torch.allclose(layer.to_dense()(x), layer(x), atol=1e-6)
    rebuilt = SatenLinear.from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    assert torch.equal(rebuilt(x), layer(x)) and rebuilt.ranks == layer.ranks
    text = repr(layer)
    assert "ranks=" in text and "nnz=" in text and "ratio=" in text and "shape=[8, 6, 8, 5]" in text


def test_explicit_shape_must_factor_the_layer():
    with pytest.raises(ValueError, match="does not match"):
        SatenLinear.from_linear(_linear(), eps=0.5, shape=TTShape((6, 6), (8, 5)))


def test_svd_linear_rank_and_outputs():
    linear = _linear()
    assert svd_rank(48, 40, 0.5) == 10
    layer = SVDLinear.from_linear(linear, ratio=1.0)
    x = torch.randn(3, 48)
    u, s, vh = torch.linalg.svd(linear.weight.detach())
    assert layer.rank == 21  # floor(1.0 * 48 * 40 / 88)
    assert abs(layer.rel_error - (s[21:].norm() / s.norm()).item()) < 1e-5
    assert torch.allclose(layer.weight, (u[:, :21] * s[:21]) @ vh[:21], atol=1e-5)
    assert torch.allclose(layer.to_dense()(x), layer(x), atol=1e-5)


def test_saten_embedding_lookup_equals_rows_of_reconstructed_table():
    torch.manual_seed(0)
    emb = nn.Embedding(1001, 24, padding_idx=0)
    layer = SatenEmbedding.from_embedding(emb, eps=0.6, density=0.05)
    assert layer.shape.n_in >= 1001 and layer.shape.n_out == 24
    ids = torch.tensor([[0, 5, 1000], [17, 5, 999]])
    table = layer.weight
    assert table.shape == (1001, 24)
    assert torch.allclose(layer(ids), table[ids], atol=1e-6)
    layer(ids).sum().backward()
    assert layer.values.grad is not None and all(c.grad is not None for c in layer.cores)
    exact = SatenEmbedding.from_embedding(emb, eps=0.0)
    assert torch.allclose(exact(ids), emb(ids), atol=1e-5)
    rebuilt = SatenEmbedding.from_spec(layer.spec())
    rebuilt.load_state_dict(layer.state_dict())
    assert torch.equal(rebuilt(ids), layer(ids))
