"""Sparse residual masks (method.md §3) and the positions + values storage.

A residual is stored as sorted flat positions into a row-major ``(rows, cols)`` matrix plus one value per
position; a dense ``S × mask`` is never materialised in a trained layer.
"""

from __future__ import annotations

import math

import torch

__all__ = ["kept_count", "nm_positions", "scatter_into", "select_positions", "topk_positions"]


def kept_count(density: float, numel: int) -> int:
    """``⌈density · numel⌉`` entries, robust to float noise such as ``0.3 · 10 = 3.0000000000000004``."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density={density}: must be in [0, 1]")
    return min(numel, math.ceil(round(density * numel, 6)))


def topk_positions(residual: torch.Tensor, density: float) -> torch.Tensor:
    """Flat positions (sorted, int64) of the ``⌈density · numel⌉`` entries of largest ``|residual|``.

    The threshold is per matrix (per layer), never global.
    """
    k = kept_count(density, residual.numel())
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=residual.device)
    flat = residual.reshape(-1).abs()
    if k == flat.numel():
        return torch.arange(k, device=residual.device)
    candidates = _candidates(flat, k)
    if candidates is None:
        return torch.topk(flat, k, sorted=False).indices.sort().values
    keep = torch.zeros(candidates.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat[candidates], k, sorted=False).indices] = True
    return candidates[keep]  # candidates are ascending, so the kept positions are too


def _candidates(flat: torch.Tensor, k: int, sample_size: int = 16384) -> torch.Tensor | None:
    """Positions that surely contain the top ``k``: those at or above a lower bound on the k-th largest.

    The bound is a quantile of a strided sample, set well below the expected k-th value (a 30 % wider kept
    fraction plus 0.2 %). If fewer than ``k`` entries clear it, the bound was too high and ``None`` tells the
    caller to select over everything; the result is exact either way, only the work differs.
    """
    n = flat.numel()
    if n <= 4 * sample_size:
        return None
    level = 1.0 - 1.3 * k / n - 0.002
    if level <= 0.5:
        return None
    sample = flat[:: n // sample_size]
    bound = torch.kthvalue(sample, max(1, int(level * sample.numel()))).values
    candidates = (flat >= bound).nonzero().squeeze(1)
    return candidates if candidates.numel() >= k else None


def nm_positions(residual: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Flat positions (sorted) of an N:M pattern along the last (input) dimension of ``(out, in)``.

    In every row and every group of ``m`` consecutive columns the ``n`` entries of largest ``|residual|``
    are kept, so the density is exactly ``n / m``.
    """
    rows, cols = residual.shape
    if not 0 < n < m:
        raise ValueError(f"nm=[{n}, {m}]: need 0 < N < M, e.g. [2, 4]")
    if cols % m:
        raise ValueError(f"nm=[{n}, {m}]: input size {cols} is not divisible by M={m}")
    groups = residual.abs().reshape(rows, cols // m, m)
    within = torch.topk(groups, n, dim=-1, sorted=False).indices.sort(dim=-1).values
    base = torch.arange(0, rows * cols, m, device=residual.device).reshape(rows, cols // m, 1)
    return (base + within).reshape(-1)


def select_positions(
    residual: torch.Tensor,
    density: float = 0.0,
    sparsity: str = "unstructured",
    nm: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Positions kept by the mask of method.md §3; ``residual`` has the weight's ``(out, in)`` layout."""
    if sparsity == "unstructured":
        return topk_positions(residual, density)
    if sparsity == "nm":
        if nm is None:
            raise ValueError("sparsity='nm' needs nm=[N, M], e.g. [2, 4]")
        return nm_positions(residual, int(nm[0]), int(nm[1]))
    raise ValueError(f"sparsity={sparsity!r}: use 'unstructured' or 'nm'")


def scatter_into(dense: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``dense + S`` where ``S`` holds ``values`` at flat ``positions`` (out of place, differentiable)."""
    if positions.numel() == 0:
        return dense
    return dense.reshape(-1).index_add(0, positions, values.to(dense.dtype)).reshape(dense.shape)
