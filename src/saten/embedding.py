"""Saten(e): an embedding table compressed as TT (on a padded, factorizable row count) plus a sparse residual.

A lookup gathers only the requested rows: the TT part of row ``i = (i_1, …, i_p)`` is
``G_1[:, i_1] ⋯ G_p[:, i_p] · A₂`` and the residual rows come from a CSR row index.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from saten.layers import _relative, _work_dtype
from saten.sparse import select_positions
from saten.tt import TTShape, balanced_factors, tt_svd_matrix, tt_to_matrix

__all__ = ["SatenEmbedding", "csr_rows", "padded_rows"]


def padded_rows(num_rows: int, order: int = 2, slack: float = 0.01) -> int:
    """Smallest row count in ``[num_rows, num_rows · (1 + slack)]`` whose balanced factors have the least sum.

    BERT's 30522 = 2·3·5087 has no useful factorization; 30528 = 192·159 does.
    """
    candidates = range(num_rows, num_rows + max(1, int(num_rows * slack)) + 1)
    return min(candidates, key=lambda n: (sum(balanced_factors(n, order)), n))


def csr_rows(
    row_ptr: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, dim: int
) -> torch.Tensor:
    """Rows ``ids`` (1-D) of the sparse ``(rows, dim)`` matrix held in CSR form, as dense ``(len(ids), dim)``.

    ``columns`` may also be flat positions into the row-major matrix (only ``columns % dim`` is used).
    """
    out = torch.zeros(ids.numel(), dim, dtype=values.dtype, device=ids.device)
    if values.numel() == 0:
        return out
    start, stop = row_ptr[ids].long(), row_ptr[ids + 1].long()
    counts = stop - start
    owner = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), counts)
    offsets = torch.arange(int(counts.sum()), device=ids.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    entry = torch.repeat_interleave(start, counts) + offsets
    flat_out = owner * dim + columns[entry].long() % dim
    return out.reshape(-1).index_add(0, flat_out, values[entry]).reshape(out.shape)


class SatenEmbedding(nn.Module):
    """Embedding whose table ``(V, D)`` is ``TT(cores) + S`` on a zero-padded ``(V_pad, D)`` matrix.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    shape : TTShape
        Plain-layout factorization of ``(V_pad, D)``.
    ranks : sequence of int
    nnz : int
    padding_idx : int, optional
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        shape: TTShape,
        ranks,
        nnz=0,
        padding_idx=None,
        dtype=None,
        device=None,
    ):
        super().__init__()
        if shape.layout != "plain" or shape.n_out != embedding_dim or shape.n_in < num_embeddings:
            raise ValueError(
                f"embedding shape {shape.as_list()} ({shape.layout}) does not fit "
                f"{num_embeddings}x{embedding_dim}"
            )
        kw = {"dtype": dtype, "device": device}
        self.num_embeddings, self.embedding_dim, self.shape = num_embeddings, embedding_dim, shape
        self.padding_idx = padding_idx
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(ranks[k], mode, ranks[k + 1], **kw))
            for k, mode in enumerate(shape.modes)
        )
        self.values = nn.Parameter(torch.zeros(nnz, **kw))
        self.register_buffer("positions", torch.zeros(nnz, dtype=torch.long, device=device))
        self.register_buffer("row_ptr", torch.zeros(shape.n_in + 1, dtype=torch.long, device=device))
        self.rel_error_tt = self.rel_error = None

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        eps: float,
        density: float = 0.0,
        *,
        max_rank=None,
        in_order: int = 2,
        out_order: int = 2,
    ) -> SatenEmbedding:
        """Compress ``embedding``: TT-SVD of the padded table, then the top-|E| residual over real rows."""
        table = embedding.weight.detach()
        rows, dim = table.shape
        shape = TTShape(
            balanced_factors(padded_rows(rows, in_order), in_order), balanced_factors(dim, out_order)
        )
        work = torch.zeros(shape.n_in, dim, dtype=_work_dtype(table.dtype), device=table.device)
        work[:rows] = table
        cores = tt_svd_matrix(work, shape, eps, max_rank)
        residual = work[:rows] - tt_to_matrix(cores, shape)[:rows]
        positions = select_positions(residual, density) if density > 0 else residual.new_zeros(0).long()
        layer = cls(
            rows,
            dim,
            shape,
            [1] + [c.shape[2] for c in cores],
            positions.numel(),
            embedding.padding_idx,
            dtype=table.dtype,
            device=table.device,
        )
        with torch.no_grad():
            for param, core in zip(layer.cores, cores, strict=True):
                param.copy_(core)
            kept = residual.reshape(-1)[positions]
            layer.values.copy_(kept)
            layer.positions.copy_(positions)  # flat into (rows, dim) == flat into (V_pad, dim) for real rows
            counts = torch.bincount(positions // dim, minlength=shape.n_in)
            layer.row_ptr[1:] = torch.cumsum(counts, 0)
            norm = float(torch.linalg.vector_norm(table.float()))
            layer.rel_error_tt = _relative(residual, norm)
            layer.rel_error = math.sqrt(
                max(layer.rel_error_tt**2 - float(kept.square().sum()) / norm**2, 0.0)
            )
        return layer

    @property
    def ranks(self) -> list[int]:
        return [1] + [core.shape[2] for core in self.cores]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def weight(self) -> torch.Tensor:
        """The full ``(V, D)`` table (for tied output heads and export)."""
        table = tt_to_matrix(list(self.cores), self.shape)[: self.num_embeddings]
        return table.reshape(-1).index_add(0, self.positions, self.values).reshape(table.shape)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out = self._tt_rows(flat) + self._sparse_rows(flat)
        return out.reshape(*ids.shape, self.embedding_dim)

    def _tt_rows(self, ids: torch.Tensor) -> torch.Tensor:
        p = len(self.shape.in_factors)
        digits, rest = [], ids
        for factor in reversed(self.shape.in_factors):
            digits.append(rest % factor)
            rest = rest // factor
        digits.reverse()
        rows = self.cores[0][0, digits[0], :]  # (B, r_1)
        for core, digit in zip(list(self.cores)[1:p], digits[1:], strict=True):
            rows = torch.bmm(rows.unsqueeze(1), core[:, digit, :].permute(1, 0, 2)).squeeze(1)
        right = self.cores[p]
        for core in list(self.cores)[p + 1 :]:
            right = torch.tensordot(right, core, dims=1)
        return rows @ right.reshape(rows.shape[1], self.embedding_dim)

    def _sparse_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return csr_rows(self.row_ptr, self.positions, self.values, ids, self.embedding_dim)

    def to_dense(self) -> nn.Embedding:
        emb = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            self.padding_idx,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        with torch.no_grad():
            emb.weight.copy_(self.weight)
        return emb

    merge = to_dense

    def spec(self) -> dict:
        return {
            "kind": "embedding",
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "in_factors": list(self.shape.in_factors),
            "out_factors": list(self.shape.out_factors),
            "ranks": self.ranks,
            "nnz": self.nnz,
            "padding_idx": self.padding_idx,
        }

    @classmethod
    def from_spec(cls, spec: dict, dtype=None, device=None) -> SatenEmbedding:
        shape = TTShape(tuple(spec["in_factors"]), tuple(spec["out_factors"]))
        return cls(
            spec["num_embeddings"],
            spec["embedding_dim"],
            shape,
            spec["ranks"],
            spec["nnz"],
            spec["padding_idx"],
            dtype=dtype,
            device=device,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}x{self.embedding_dim} (padded {self.shape.n_in}), "
            f"shape={self.shape.as_list()}, ranks={self.ranks}, nnz={self.nnz}"
        )
