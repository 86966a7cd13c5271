"""The low-rank baseline of method.md §6: :class:`SVDLinear`, ``W ≈ (U√Σ)(√ΣVᵀ)``."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from saten.layers import _work_dtype, dense_linear

__all__ = ["SVDLinear", "svd_rank"]


def svd_rank(in_features: int, out_features: int, ratio: float) -> int:
    """``r = ⌊ratio · N · M / (N + M)⌋`` (method.md §6), at least 1."""
    return max(1, math.floor(round(ratio * in_features * out_features / (in_features + out_features), 6)))


class SVDLinear(nn.Module):
    """Low-rank baseline ``W ≈ (U√Σ)(√ΣVᵀ)``: ``y = x rightᵀ leftᵀ + b``.

    ``left`` has shape ``(out, r)`` and ``right`` ``(r, in)``.
    """

    def __init__(self, in_features, out_features, rank, bias=True, dtype=None, device=None):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.in_features, self.out_features = in_features, out_features
        self.left = nn.Parameter(torch.zeros(out_features, rank, **kw))
        self.right = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.rel_error = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, ratio: float) -> SVDLinear:
        """Truncated SVD at the rank that keeps ``ratio`` of the layer's weight parameters."""
        weight = linear.weight.detach()
        out_f, in_f = weight.shape
        rank = min(svd_rank(in_f, out_f, ratio), min(in_f, out_f))
        w = weight.to(_work_dtype(weight.dtype))
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[:rank].sqrt()
        layer = cls(in_f, out_f, rank, linear.bias is not None, dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            layer.left.copy_(u[:, :rank] * root)
            layer.right.copy_(root[:, None] * vh[:rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
            norm = float(torch.linalg.vector_norm(s))
            layer.rel_error = float(torch.linalg.vector_norm(s[rank:]) / norm) if norm > 0 else 0.0
        return layer

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        return self.left @ self.right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.right), self.left, self.bias)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W = left · right``."""
        return dense_linear(self.weight, self.bias)

    merge = to_dense

    def spec(self) -> dict:
        return {
            "kind": "svd",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict, dtype=None, device=None) -> SVDLinear:
        return cls(
            spec["in_features"], spec["out_features"], spec["rank"], spec["bias"], dtype=dtype, device=device
        )

    def extra_repr(self) -> str:
        dense = self.in_features * self.out_features
        return (
            f"{self.in_features}->{self.out_features}, SVD rank={self.rank}, "
            f"ratio={self.rank * (self.in_features + self.out_features) / dense:.3f}"
        )
