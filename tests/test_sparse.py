"""Residual masks: exact density, N:M pattern, top-|E| selection, storage as positions + values."""

import math

import pytest
import torch

from saten.sparse import kept_count, nm_positions, scatter_into, select_positions, topk_positions


@pytest.mark.parametrize("density", [0.0, 0.013, 0.1, 0.3, 1.0])
def test_topk_keeps_ceil_density_entries_of_largest_magnitude(density):
    e = torch.randn(37, 53)
    pos = topk_positions(e, density)
    k = kept_count(density, e.numel())
    assert pos.numel() == k == math.ceil(density * e.numel() - 1e-9)
    assert torch.equal(pos, pos.sort().values)
    if 0 < k < e.numel():
        kept = e.reshape(-1).abs()[pos]
        dropped = torch.ones(e.numel(), dtype=torch.bool)
        dropped[pos] = False
        assert kept.min() >= e.reshape(-1).abs()[dropped].max()


def test_kept_count_is_robust_to_float_noise():
    assert kept_count(0.3, 10) == 3
    assert kept_count(0.1, 147456) == 14746


def test_nm_pattern_is_exact_per_row_and_group():
    e = torch.randn(6, 16)
    pos = nm_positions(e, 2, 4)
    mask = torch.zeros(e.numel(), dtype=torch.bool)
    mask[pos] = True
    groups = mask.reshape(6, 4, 4)
    assert torch.all(groups.sum(-1) == 2)
    mags = e.abs().reshape(6, 4, 4)
    assert torch.all(mags.masked_fill(~groups, -1).amax(-1) >= mags.masked_fill(groups, -1).amax(-1))
    assert torch.all(
        mags.masked_fill(~groups, float("inf")).amin(-1) >= mags.masked_fill(groups, -1).amax(-1)
    )


def test_nm_rejects_bad_patterns():
    with pytest.raises(ValueError, match="not divisible"):
        nm_positions(torch.randn(3, 10), 2, 4)
    with pytest.raises(ValueError, match="0 < N < M"):
        select_positions(torch.randn(3, 8), sparsity="nm", nm=(4, 4))


def test_scatter_into_adds_values_at_positions_and_is_differentiable():
    dense = torch.zeros(3, 4)
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    out = scatter_into(dense, torch.tensor([1, 10]), values)
    assert out[0, 1] == 1 and out[2, 2] == 2 and out.sum() == 3
    (out * torch.arange(12.0).reshape(3, 4)).sum().backward()
    assert values.grad.tolist() == [1.0, 10.0]
