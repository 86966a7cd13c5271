"""TT shapes, the ε-bounded TT-SVD (error bound, rank rule, sweep direction) and reconstruction."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saten.tt import (
    TTShape,
    balanced_factors,
    balanced_shape,
    ordered_factorizations,
    rank_from_tail,
    tt_reconstruct,
    tt_svd,
    tt_svd_matrix,
    tt_to_matrix,
)


@pytest.mark.parametrize(
    ("n_in", "n_out", "expected"),
    [
        (384, 384, [24, 16, 24, 16]),
        (384, 1536, [24, 16, 48, 32]),
        (576, 192, [24, 24, 16, 12]),
        (768, 768, [32, 24, 32, 24]),
        (768, 3072, [32, 24, 64, 48]),
        (2048, 512, [64, 32, 32, 16]),
    ],
)
def test_balanced_shape_matches_method_examples(n_in, n_out, expected):
    assert balanced_shape(n_in, n_out).as_list() == expected


def test_ordered_factorizations_are_complete_and_ordered():
    facts = ordered_factorizations(12, 2)
    assert set(facts) == {(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)}
    assert all(math.prod(f) == 60 for f in ordered_factorizations(60, 3))
    assert balanced_factors(64, 3) == (4, 4, 4)


def test_rank_rule_is_smallest_rank_with_tail_below_delta():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    # tails after keeping r: r=1 -> sqrt(14), r=2 -> sqrt(5), r=3 -> 1, r=4 -> 0
    assert rank_from_tail(s, math.sqrt(14)) == 1
    assert rank_from_tail(s, math.sqrt(5)) == 2  # the cut-off is "tail <= delta"
    assert rank_from_tail(s, 2.0) == 3
    assert rank_from_tail(s, 0.5) == 4
    assert rank_from_tail(s, 0.0, max_rank=2) == 2
    assert rank_from_tail(s, 100.0) == 1  # r >= 1 always


def _rule_ranks(tensor, eps):
    """Ranks by the textbook rule on the reversed tensor, computed independently with numpy-like steps."""
    d = tensor.dim()
    t = tensor.permute(*reversed(range(d)))
    delta = eps * tensor.norm().item() / math.sqrt(d - 1)
    ranks, rank, rest = [], 1, t.reshape(-1)
    for n in t.shape[:-1]:
        u, s, vh = torch.linalg.svd(rest.reshape(rank * n, -1), full_matrices=False)
        r = next(r for r in range(1, s.numel() + 1) if s[r:].norm() <= delta)
        ranks.append(r)
        rest, rank = s[:r, None] * vh[:r], r
    return [1, *reversed(ranks), 1]


@settings(max_examples=25, deadline=None)
@given(
    modes=st.lists(st.integers(2, 6), min_size=2, max_size=4),
    eps=st.floats(0.0, 1.2),
    low_rank=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_tt_svd_error_bound_and_rank_rule(modes, eps, low_rank, seed):
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.randn(*modes, generator=gen)
    if low_rank:  # a TT of small ranks plus noise: the rule must find small ranks
        tensor = (
            tt_reconstruct(
                [
                    torch.randn(1 if k == 0 else 2, m, 1 if k == len(modes) - 1 else 2, generator=gen)
                    for k, m in enumerate(modes)
                ]
            )
            + 1e-3 * tensor
        )
    for algorithm in ("gram", "svd"):
        cores = tt_svd(tensor, eps, algorithm=algorithm)
        error = (tt_reconstruct(cores) - tensor).norm() / tensor.norm()
        assert error <= eps + 1e-5
        ranks = [1] + [c.shape[2] for c in cores]
        assert ranks == _rule_ranks(tensor, eps)


def test_eps_zero_is_exact_and_sweep_direction_matters():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(24, 16, 24, 16, generator=gen)
    assert torch.allclose(tt_reconstruct(tt_svd(a, 0.0)), a, atol=1e-4)
    skew = a * torch.logspace(0, -3, 16)[None, None, None, :]
    right = [c.shape[2] for c in tt_svd(skew, 0.5)]
    left = [c.shape[2] for c in tt_svd(skew, 0.5, reverse=False)]
    assert right != left


def test_max_rank_caps_every_rank():
    a = torch.randn(8, 8, 8, 8)
    assert max(c.shape[2] for c in tt_svd(a, 0.0, max_rank=5)) <= 5


@pytest.mark.parametrize("layout", ["plain", "matrix"])
def test_matrix_round_trip_in_both_layouts(layout):
    a = torch.randn(48, 40)
    shape = balanced_shape(48, 40, layout=layout)
    cores = tt_svd_matrix(a, shape, 0.0)
    assert len(cores) == (4 if layout == "plain" else 2)
    assert torch.allclose(tt_to_matrix(cores, shape), a, atol=1e-4)


def test_matrix_layout_needs_equal_orders():
    with pytest.raises(ValueError, match="in_order == out_order"):
        TTShape((4, 4), (2, 2, 2), "matrix")


@pytest.fixture(scope="module")
def minilm_linears():
    """``(name, weight)`` of the 36 encoder Linears of the packaged MiniLM checkpoint."""
    from safetensors.torch import load_file

    from saten.models import minilm_path

    state = load_file(str(minilm_path() / "model.safetensors"))
    return [(k, v) for k, v in state.items() if "encoder" in k and k.endswith("weight") and v.dim() == 2]


@pytest.mark.integration
def test_minilm_ranks_equal_the_plain_reference_algorithm(minilm_linears):
    """On every real MiniLM encoder Linear, the fast path gives the plain full-SVD algorithm's ranks."""
    for eps in (0.5, 0.8, 0.9):
        for name, weight in minilm_linears:
            a = weight.T.contiguous()
            shape = balanced_shape(*a.shape)
            fast = [c.shape[2] for c in tt_svd_matrix(a, shape, eps)]
            plain = [c.shape[2] for c in tt_svd_matrix(a, shape, eps, algorithm="svd")]
            assert fast == plain, (name, eps)
            assert [1, *fast] == _rule_ranks(a.reshape(shape.modes), eps), (name, eps)
