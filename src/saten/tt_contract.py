"""Apply a TT matrix to an input without forming the matrix: ``x A`` contracted core by core.

Used by the factorized inference format (:class:`saten.inference_layers.FactorizedTTLinear`). For the
plain layout the input-side cores read fewer bytes than the contracted pair ``A₁ (N × r_p)``,
``A₂ (r_p × M)`` whenever the outer ranks are truncated, which is what a bandwidth-bound decode step pays
for; for the matrix (interleaved) layout contracting core by core is the only factorized form.
"""

from __future__ import annotations

import torch

from saten.tt import TTShape

__all__ = ["contract_matrix", "contract_plain"]


def contract_plain(x: torch.Tensor, cores, shape: TTShape) -> torch.Tensor:
    """``x A`` for the plain layout (``x``: ``(B, N)``), one core at a time.

    The input-side cores multiply from the left, ``(r_k, r_{k-1} n_k) @ (B, r_{k-1} n_k, N_rest)``, and
    the output-side cores from the right, ``(B M_done, r_{k-1}) @ (r_{k-1}, m_k r_k)``: the mode order of
    ``x`` and of the output is the tensorization's (first factor most significant), so every reshape between
    the products is a view and nothing is permuted.
    """
    batch, p = x.shape[0], len(shape.in_factors)
    t = x.reshape(batch, 1, shape.n_in)  # (B, r_0 · n_1, N_rest)
    for core in cores[:p]:
        r0, n_k, r1 = core.shape
        t = core.reshape(r0 * n_k, r1).t() @ t.reshape(batch, r0 * n_k, -1)  # (B, r_k, N_rest)
    t = t.reshape(batch, -1)  # (B, r_p)
    for core in cores[p:]:
        r0, m_k, r1 = core.shape
        t = t.reshape(-1, r0) @ core.reshape(r0, m_k * r1)  # (B · M_done, m_k · r_k)
    return t.reshape(batch, shape.n_out)


def contract_matrix(x: torch.Tensor, cores, shape: TTShape) -> torch.Tensor:
    """``x A`` for the matrix (interleaved) layout: contract ``(r_{k-1}, n_k)`` with core ``k`` in turn."""
    batch = x.shape[0]
    t = x.reshape(batch, 1, 1, shape.n_in)  # (B, M_done, r_{k-1}, n_k · N_rest)
    for core, n_k, m_k in zip(cores, shape.in_factors, shape.out_factors, strict=True):
        r0, r1 = core.shape[0], core.shape[2]
        b, done = t.shape[0], t.shape[1]
        rest = t.shape[3] // n_k
        t = t.reshape(b, done, r0, n_k, rest).permute(0, 1, 4, 2, 3).reshape(b, done, rest, r0 * n_k)
        t = t @ core.reshape(r0 * n_k, m_k * r1)  # (B, done, rest, m_k · r_k)
        t = t.reshape(b, done, rest, m_k, r1).permute(0, 1, 3, 4, 2).reshape(b, done * m_k, r1, rest)
    return t.reshape(batch, shape.n_out)
