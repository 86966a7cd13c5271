"""Inference formats of a compressed embedding (Saten(e)) and of the output head tied to it.

- merged: a plain ``nn.Embedding`` with the full table, and a plain ``nn.Linear`` head sharing its weight;
- factorized (:class:`FactorizedEmbedding`): the table ``E = L R + S`` kept as the row factor ``L``
  (``V × r_p``, the input-side cores contracted once, padding rows dropped), the column factor ``R``
  (``r_p × D``) and the residual in CSR. A lookup gathers ``L[ids] R`` plus the CSR rows; the tied head
  (:class:`FactorizedTiedHead`) computes ``logits = (x Rᵀ) Lᵀ + x Sᵀ`` without building ``E``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from saten.embedding import SatenEmbedding, csr_rows
from saten.inference_layers import csr_matrix
from saten.tt import _chain

__all__ = ["FactorizedEmbedding", "FactorizedTiedHead", "merged_embedding"]


def merged_embedding(embedding: SatenEmbedding, head_bias: torch.Tensor | None = None, tied: bool = False):
    """``(nn.Embedding, head or None)``: the merged table and, when ``tied``, a Linear head sharing it."""
    merged = embedding.to_dense().requires_grad_(False)
    if not tied:
        return merged, None
    head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, head_bias is not None,
                     device=merged.weight.device, dtype=merged.weight.dtype)
    head.weight = merged.weight
    if head_bias is not None:
        with torch.no_grad():
            head.bias.copy_(head_bias)
    return merged, head.requires_grad_(False)


class FactorizedEmbedding(nn.Module):
    """``E[ids] = L[ids] R + S[ids]`` with ``S`` in CSR; all tensors are buffers.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    rank : int
        ``r_p``, the TT rank between the row and the column modes.
    nnz : int
    padding_idx : int, optional
    """

    def __init__(self, num_embeddings, embedding_dim, rank, nnz, padding_idx=None, dtype=None, device=None):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("left", torch.zeros(num_embeddings, rank, **kw))
        self.register_buffer("right", torch.zeros(rank, embedding_dim, **kw))
        self.register_buffer("crow", torch.zeros(num_embeddings + 1, dtype=torch.int32, device=device))
        self.register_buffer("col", torch.zeros(nnz, dtype=torch.int32, device=device))
        self.register_buffer("values", torch.zeros(nnz, **kw))
        self._csr = None

    @classmethod
    def from_saten(cls, embedding: SatenEmbedding) -> FactorizedEmbedding:
        cores = [c.detach() for c in embedding.cores]
        p, dim, rows = len(embedding.shape.in_factors), embedding.embedding_dim, embedding.num_embeddings
        left = _chain(cores[:p]).reshape(embedding.shape.n_in, -1)[:rows]
        right = _chain(cores[p:]).reshape(left.shape[1], dim)
        out = cls(rows, dim, left.shape[1], embedding.nnz, embedding.padding_idx,
                  dtype=left.dtype, device=left.device)
        with torch.no_grad():
            out.left.copy_(left)
            out.right.copy_(right)
            out.crow.copy_(embedding.row_ptr[: rows + 1])
            out.col.copy_(embedding.positions % dim)
            out.values.copy_(embedding.values)
        return out

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def weight(self) -> torch.Tensor:
        """The full ``(V, D)`` table (built on demand)."""
        return (self.left @ self.right).index_put_(
            (self._rows().long(), self.col.long()), self.values, accumulate=True
        )

    def _rows(self) -> torch.Tensor:
        counts = (self.crow[1:] - self.crow[:-1]).long()
        return torch.repeat_interleave(torch.arange(self.num_embeddings, device=counts.device), counts)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out = F.embedding(flat, self.left) @ self.right
        out = out + csr_rows(self.crow, self.col, self.values, flat, self.embedding_dim)
        return out.reshape(*ids.shape, self.embedding_dim)

    def __getstate__(self):  # the cached CSR view cannot be copied or pickled; it is rebuilt on use
        return {**self.__dict__, "_csr": None}

    def csr(self) -> torch.Tensor:
        """The residual as a torch CSR tensor over the buffers (rebuilt when ``values`` is replaced)."""
        values = self.values
        if self._csr is None or self._csr[0] is not values:
            size = (self.num_embeddings, self.embedding_dim)
            self._csr = (values, csr_matrix(self.crow, self.col, values, size))
        return self._csr[1]

    def spec(self) -> dict:
        return {"kind": "factorized_embedding", "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "rank": self.left.shape[1], "nnz": self.nnz,
                "padding_idx": self.padding_idx}

    @classmethod
    def from_spec(cls, spec: dict, dtype=None, device=None) -> FactorizedEmbedding:
        return cls(spec["num_embeddings"], spec["embedding_dim"], spec["rank"], spec["nnz"],
                   spec["padding_idx"], dtype=dtype, device=device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}x{self.embedding_dim}, rank={self.left.shape[1]}, nnz={self.nnz}"


class FactorizedTiedHead(nn.Module):
    """``logits = (x Rᵀ) Lᵀ + x Sᵀ + b``: the output head tied to a :class:`FactorizedEmbedding`."""

    def __init__(self, embedding: FactorizedEmbedding, bias: torch.Tensor | None = None):
        super().__init__()
        self.embedding = [embedding]  # a list keeps it out of this module's children (no double counting)
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding[0]
        x2d = x.reshape(-1, x.shape[-1])
        out = F.linear(F.linear(x2d, emb.right), emb.left, self.bias)
        if emb.nnz:
            if x2d.shape[0] == 1:  # one token: CSR matrix-vector product, accumulated in place
                out[0].addmv_(emb.csr(), x2d[0])
            else:
                out.add_(torch.sparse.mm(emb.csr(), x2d.t()).t())
        return out.reshape(*x.shape[:-1], emb.num_embeddings)
