"""Tensor-train shapes, the ε-bounded TT-SVD of method.md §2, and reconstruction.

Pure tensor math: nothing here knows about modules, configs or training.

Conventions
-----------
A ``torch.nn.Linear`` stores ``W`` with shape ``(out, in)``; Saten tensorizes ``A = Wᵀ`` with shape
``(N, M) = (in, out)``. In the *plain* layout ``A`` is reshaped row-major into
``[n_1 … n_p, m_1 … m_q]`` (input modes first), giving ``d = p + q`` cores of shape
``(r_{k-1}, mode_k, r_k)`` with boundary ranks ``r_0 = r_d = 1``. In the *matrix* layout (the interleaved
TT-matrix that tltorch uses) mode ``k`` is the pair ``(n_k, m_k)`` and ``d = p = q``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = [
    "TTShape",
    "balanced_factors",
    "balanced_shape",
    "ordered_factorizations",
    "rank_from_tail",
    "tt_reconstruct",
    "tt_svd",
    "tt_svd_matrix",
    "tt_to_matrix",
]


@lru_cache(maxsize=4096)
def ordered_factorizations(n: int, order: int) -> tuple[tuple[int, ...], ...]:
    """All ordered tuples of ``order`` positive integers whose product is ``n`` (factors may be 1)."""
    if n < 1 or order < 1:
        raise ValueError(f"need n >= 1 and order >= 1, got n={n}, order={order}")
    if order == 1:
        return ((n,),)
    out = []
    for first in range(1, n + 1):
        if n % first == 0:
            out.extend((first, *rest) for rest in ordered_factorizations(n // first, order - 1))
    return tuple(out)


def balanced_factors(n: int, order: int) -> tuple[int, ...]:
    """The factorization of ``n`` into ``order`` factors with the smallest sum, largest factor first.

    Ties between factorizations of equal sum keep the reference's choice: factors sorted from largest to
    smallest, and among different multisets of equal sum the lexicographically largest.
    """
    best = min(
        ordered_factorizations(n, order), key=lambda f: (sum(f), tuple(-x for x in sorted(f, reverse=True)))
    )
    return tuple(sorted(best, reverse=True))


@dataclass(frozen=True)
class TTShape:
    """Factorization of a ``(N, M)`` matrix: input factors, output factors and the layout.

    Attributes
    ----------
    in_factors, out_factors : tuple of int
        ``Π in_factors = N`` and ``Π out_factors = M``.
    layout : {"plain", "matrix"}
        ``plain``: modes ``[n_1 … n_p, m_1 … m_q]``; ``matrix``: modes ``[(n_1 m_1), …, (n_p m_p)]``.
    """

    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]
    layout: str = "plain"

    def __post_init__(self):
        if self.layout not in ("plain", "matrix"):
            raise ValueError(f"layout={self.layout!r}: use 'plain' or 'matrix'")
        if self.layout == "matrix" and len(self.in_factors) != len(self.out_factors):
            raise ValueError(
                f"matrix layout needs in_order == out_order, got {self.in_factors} x {self.out_factors}"
            )

    @property
    def n_in(self) -> int:
        return math.prod(self.in_factors)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_factors)

    @property
    def modes(self) -> tuple[int, ...]:
        """Mode sizes of the tensor that TT-SVD decomposes."""
        if self.layout == "plain":
            return (*self.in_factors, *self.out_factors)
        return tuple(n * m for n, m in zip(self.in_factors, self.out_factors, strict=True))

    def as_list(self) -> list[int]:
        """``[n_1 … n_p, m_1 … m_q]`` as the report prints it."""
        return [*self.in_factors, *self.out_factors]


def balanced_shape(
    n_in: int, n_out: int, in_order: int = 2, out_order: int = 2, layout: str = "plain"
) -> TTShape:
    """The balanced (min-sum) shape of method.md §1: ``(384, 1536) -> [24, 16, 48, 32]``."""
    return TTShape(balanced_factors(n_in, in_order), balanced_factors(n_out, out_order), layout)


def rank_from_tail(
    singular_values: torch.Tensor, delta: float, max_rank: int | None = None, squared: bool = False
) -> int:
    """Smallest ``r >= 1`` whose discarded tail ``‖σ_{r+1:}‖₂ <= delta``, capped at ``max_rank``.

    ``singular_values`` are sorted descending (``squared=True``: their squares). The tail norms are
    accumulated from the smallest value upwards, in the dtype given.
    """
    sq = singular_values if squared else singular_values * singular_values
    # tail[i] = ‖σ_{i:}‖₂; keeping r values discards tail[r] (0 for r = len).
    tail = torch.flip(torch.cumsum(torch.flip(sq, (0,)), 0), (0,)).clamp_min(0).sqrt()
    over = (tail[1:] > delta).nonzero()
    rank = int(over[-1]) + 2 if over.numel() else 1
    if max_rank is not None:
        rank = min(rank, max_rank)
    return max(1, min(rank, sq.numel()))


def _split_svd(
    unfolding: torch.Tensor, delta: float, max_rank: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain step: thin SVD of the unfolding, truncated by the rank rule; returns ``(U_r, Σ_r V_rᵀ)``."""
    if unfolding.shape[0] < unfolding.shape[1]:  # LAPACK is much faster on the tall transpose here
        v, s, uh = torch.linalg.svd(unfolding.T, full_matrices=False)
        u, vh = uh.T, v.T
    else:
        u, s, vh = torch.linalg.svd(unfolding, full_matrices=False)
    rank = rank_from_tail(s, delta, max_rank)
    return u[:, :rank], s[:rank, None] * vh[:rank]


def _split_gram(unfolding: torch.Tensor, delta: float, max_rank: int | None) -> tuple[torch.Tensor, ...]:
    """Fast step: the same truncation from the eigen-decomposition of the smaller Gram matrix.

    The rank rule needs only the squared singular values and the kept part needs only ``r`` singular
    vectors, so one Gram product and a symmetric ``eigh`` replace the SVD; the kept factor is the exact
    projection ``U_rᵀ C`` (equal to ``Σ_r V_rᵀ``). The tail sums are accumulated in float64.
    """
    rows, cols = unfolding.shape
    gram = unfolding @ unfolding.T if rows <= cols else unfolding.T @ unfolding
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    # Eigenvalues below ~n·u·λ_max are noise in this precision: when the allowed tail δ² is that small
    # (ε near 0), the rank rule needs exact small singular values, which only the SVD gives.
    noise = evals.numel() ** 2 * torch.finfo(unfolding.dtype).eps * float(evals[-1].abs())
    if delta**2 <= 100 * noise:
        return _split_svd(unfolding, delta, max_rank)
    sq = evals.flip(0).double().clamp_min(0)
    rank = rank_from_tail(sq, delta, max_rank, squared=True)
    top = evecs[:, -rank:].flip(1)
    if rows <= cols:
        u = top
    else:  # top holds V_r; U_r spans C V_r (QR keeps it orthonormal where σ_r is tiny, unlike C V_r / σ_r)
        u = torch.linalg.qr(unfolding @ top).Q
    return u, u.T @ unfolding


def _left_to_right(
    tensor: torch.Tensor, delta: float, max_rank: int | Sequence[int] | None, algorithm: str
) -> list[torch.Tensor]:
    """Classic left-to-right TT-SVD (Oseledets 2011) with a per-step truncation threshold ``delta``.

    ``max_rank``: one cap for every internal rank, or one cap per internal rank (``d − 1`` of them).
    """
    split = {"gram": _split_gram, "svd": _split_svd}[algorithm]
    modes = tensor.shape
    caps = list(max_rank) if isinstance(max_rank, Sequence) else [max_rank] * (len(modes) - 1)
    if len(caps) != len(modes) - 1:
        raise ValueError(f"max_rank={max_rank}: give one cap per internal rank ({len(modes) - 1})")
    cores = []
    rank = 1
    rest = tensor.reshape(-1)
    for n_k, cap in zip(modes[:-1], caps):
        u, rest = split(rest.reshape(rank * n_k, -1), delta, cap)
        cores.append(u.reshape(rank, n_k, u.shape[1]))
        rank = u.shape[1]
    cores.append(rest.reshape(rank, modes[-1], 1))
    return cores


def tt_svd(
    tensor: torch.Tensor,
    eps: float,
    max_rank: int | Sequence[int] | None = None,
    *,
    reverse: bool = True,
    algorithm: str = "gram",
) -> list[torch.Tensor]:
    """ε-bounded TT-SVD of a d-way tensor (method.md §2).

    Parameters
    ----------
    tensor : torch.Tensor
        Shape ``(s_1, …, s_d)``; decomposed in its own dtype (keep float32 to match the reference ranks).
    eps : float
        Relative error bound: ``‖T − TT(T)‖_F <= eps ‖T‖_F``. Each of the ``d − 1`` steps discards
        singular values of norm at most ``δ = eps ‖T‖_F / √(d − 1)``.
    max_rank : int or sequence of int, optional
        Cap on every internal rank, or one cap per internal rank ``r_1 … r_{d−1}`` (the bound then no
        longer holds). With ``eps=0`` the caps are the ranks: a fixed-rank TT-SVD.
    reverse : bool
        Sweep from the last mode to the first, as the reference does (default). ``False`` gives the
        textbook left-to-right sweep, whose ranks differ.
    algorithm : {"gram", "svd"}
        ``gram`` (default): rank rule and kept vectors from the eigen-decomposition of the smaller Gram
        matrix of each unfolding; ``svd``: the plain full-spectrum thin SVD, kept for tests and benchmarks.

    Returns
    -------
    list of torch.Tensor
        Cores ``G_k`` of shape ``(r_{k-1}, s_k, r_k)`` with ``r_0 = r_d = 1``.
    """
    if eps < 0:
        raise ValueError(f"eps={eps}: must be >= 0")
    d = tensor.dim()
    if d == 1:
        return [tensor.reshape(1, -1, 1).clone()]
    delta = eps * torch.linalg.vector_norm(tensor).item() / math.sqrt(d - 1)
    if not reverse:
        return _left_to_right(tensor, delta, max_rank, algorithm)
    flipped = tensor.permute(*reversed(range(d))).contiguous()
    caps = max_rank[::-1] if isinstance(max_rank, Sequence) else max_rank  # the sweep meets r_{d-1} first
    cores = _left_to_right(flipped, delta, caps, algorithm)
    return [core.permute(2, 1, 0) for core in reversed(cores)]


def tt_reconstruct(cores: list[torch.Tensor]) -> torch.Tensor:
    """Full tensor ``(s_1, …, s_d)`` from cores ``(r_{k-1}, s_k, r_k)``."""
    out = cores[0].reshape(cores[0].shape[1], -1)
    for core in cores[1:]:
        out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[2])
    return out.reshape([c.shape[1] for c in cores])


def tt_svd_matrix(
    a: torch.Tensor, shape: TTShape, eps: float, max_rank: int | Sequence[int] | None = None, **kw
) -> list[torch.Tensor]:
    """TT-SVD of a matrix ``A`` (shape ``(N, M)``) tensorized with ``shape``; see :func:`tt_svd`."""
    return tt_svd(_tensorize(a, shape), eps, max_rank, **kw)


def tt_to_matrix(cores: list[torch.Tensor], shape: TTShape) -> torch.Tensor:
    """The ``(N, M)`` matrix represented by ``cores`` in ``shape``'s layout."""
    if shape.layout == "plain":
        p = len(shape.in_factors)
        left = _chain(cores[:p]).reshape(shape.n_in, -1)  # (N, r_p)
        right = _chain(cores[p:]).reshape(left.shape[1], shape.n_out)  # (r_p, M)
        return left @ right
    full = tt_reconstruct(cores)
    p = len(shape.in_factors)
    pairs = full.reshape([f for nm in zip(shape.in_factors, shape.out_factors, strict=True) for f in nm])
    order = [2 * k for k in range(p)] + [2 * k + 1 for k in range(p)]
    return pairs.permute(order).reshape(shape.n_in, shape.n_out)


def _chain(cores: list[torch.Tensor]) -> torch.Tensor:
    """Contract consecutive cores into one ``(r_first, Π s_k, r_last)`` tensor."""
    out = cores[0]
    for core in cores[1:]:
        r0, s0, _ = out.shape
        out = (out.reshape(r0 * s0, -1) @ core.reshape(core.shape[0], -1)).reshape(r0, -1, core.shape[2])
    return out


def _tensorize(a: torch.Tensor, shape: TTShape) -> torch.Tensor:
    if tuple(a.shape) != (shape.n_in, shape.n_out):
        raise ValueError(f"matrix of shape {tuple(a.shape)} does not match TT shape {shape.as_list()}")
    if shape.layout == "plain":
        return a.reshape(shape.modes)
    p = len(shape.in_factors)
    t = a.reshape(*shape.in_factors, *shape.out_factors)
    order = [i for k in range(p) for i in (k, p + k)]
    return t.permute(order).reshape(shape.modes)
