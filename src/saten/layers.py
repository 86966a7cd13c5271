"""The Saten layer: :class:`SatenLinear` (TT + fixed-mask sparse residual; TT-only without kept values)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from saten.autograd import saten_linear
from saten.sparse import scatter_into, select_positions
from saten.tt import TTShape, balanced_shape, tt_svd_matrix, tt_to_matrix

__all__ = ["SatenLinear"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Decompositions run in the stored precision; LAPACK has no half types, so those go through float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A plain ``nn.Linear`` holding a copy of ``weight`` (``(out, in)``) and ``bias``."""
    out_f, in_f = weight.shape
    linear = nn.Linear(in_f, out_f, bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _relative(diff: torch.Tensor, ref_norm: float) -> float:
    return float(torch.linalg.vector_norm(diff) / ref_norm) if ref_norm > 0 else 0.0


class SatenLinear(nn.Module):
    """``y = x (TT(cores)ᵀ + S)ᵀ + b``: a tensor-train part plus a fixed-mask sparse residual.

    Trainable: the TT cores, the kept residual ``values`` and the bias. The mask (``positions``, flat
    indices into the ``(out, in)`` weight) is a buffer and never changes. With no kept values this is the
    TT-only baseline. ``recompute`` (default ``True``) selects the memory-light forward of
    :func:`saten.autograd.saten_linear`; ``False`` gives the naive autograd path.

    Parameters
    ----------
    in_features, out_features : int
    shape : TTShape
        Factorization of ``(in, out)``.
    ranks : sequence of int
        TT ranks including the boundary ones, ``len(ranks) == len(shape.modes) + 1``.
    nnz : int
        Number of kept residual entries.
    bias : bool
    sparsity : {"unstructured", "nm"}
    nm : tuple of int, optional
        The N:M pattern when ``sparsity == "nm"``.
    input_scale : bool
        Keep a fixed per-input-channel scale (activation-aware compression, :mod:`saten.calibration`):
        ``y = (x ⊙ input_scale)(TT + S)ᵀ + b``.
    """

    recompute = True  # memory-light autograd (W rebuilt in backward); False: naive path

    def __init__(
        self,
        in_features,
        out_features,
        shape: TTShape,
        ranks,
        nnz=0,
        bias=True,
        sparsity="unstructured",
        nm=None,
        dtype=None,
        device=None,
        input_scale=False,
    ):
        super().__init__()
        if (shape.n_in, shape.n_out) != (in_features, out_features):
            raise ValueError(f"TT shape {shape.as_list()} does not factor {in_features}x{out_features}")
        kw = {"dtype": dtype, "device": device}
        self.in_features, self.out_features, self.shape = in_features, out_features, shape
        self.sparsity, self.nm = sparsity, tuple(nm) if nm is not None else None
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(ranks[k], mode, ranks[k + 1], **kw))
            for k, mode in enumerate(shape.modes)
        )
        self.values = nn.Parameter(torch.zeros(nnz, **kw))
        self.register_buffer("positions", torch.zeros(nnz, dtype=torch.long, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.register_buffer("input_scale", torch.ones(in_features, **kw) if input_scale else None)
        self.rel_error_tt = self.rel_error = None  # set by from_linear (errors at compression time)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        eps: float,
        density: float = 0.0,
        *,
        sparsity="unstructured",
        nm=None,
        max_rank=None,
        shape: TTShape | None = None,
        in_order=2,
        out_order=2,
        layout="plain",
        algorithm="gram",
        channel_scale: torch.Tensor | None = None,
    ) -> SatenLinear:
        """Compress ``linear``: ε-bounded TT-SVD of ``Wᵀ`` and a residual mask chosen from the TT error.

        Parameters
        ----------
        linear : nn.Linear
        eps : float
            Relative error bound of the TT part (method.md §2).
        density : float
            Fraction of entries kept in the residual (unstructured); ignored for ``sparsity="nm"``.
        sparsity : {"unstructured", "nm"}
        nm : (int, int), optional
            N:M pattern, e.g. ``(2, 4)``.
        max_rank : int, optional
            Cap on the TT ranks.
        shape : TTShape, optional
            Explicit factorization; default: the balanced shape with ``in_order``/``out_order``/``layout``.
        algorithm : {"gram", "svd"}
            TT-SVD step (see :func:`saten.tt.tt_svd`); ``svd`` is the plain reference computation.
        channel_scale : torch.Tensor, optional
            Activation-aware compression (:mod:`saten.calibration`): per-input-channel scales ``s``;
            ``W·diag(s)`` is compressed (ε, the mask and the reported errors refer to it) and the layer
            divides its input by ``s``.
        """
        weight = linear.weight.detach()
        out_f, in_f = weight.shape
        shape = shape or balanced_shape(in_f, out_f, in_order, out_order, layout)
        w = weight.to(_work_dtype(weight.dtype))
        if channel_scale is not None:
            w = w * channel_scale.to(w)[None, :]
        cores = tt_svd_matrix(w.T, shape, eps, max_rank, algorithm=algorithm)
        residual = w - tt_to_matrix(cores, shape).T  # (out, in)
        keep = density > 0 or sparsity == "nm"
        positions = (
            select_positions(residual, density, sparsity, nm) if keep else residual.new_zeros(0).long()
        )
        ranks = [1] + [c.shape[2] for c in cores]
        layer = cls(
            in_f,
            out_f,
            shape,
            ranks,
            positions.numel(),
            linear.bias is not None,
            sparsity,
            nm,
            dtype=weight.dtype,
            device=weight.device,
            input_scale=channel_scale is not None,
        )
        with torch.no_grad():
            if channel_scale is not None:
                layer.input_scale.copy_(1 / channel_scale.to(layer.input_scale))
            for param, core in zip(layer.cores, cores, strict=True):
                param.copy_(core)
            kept = residual.reshape(-1)[positions]
            layer.values.copy_(kept)
            layer.positions.copy_(positions)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
            layer.record_errors(w, residual, kept)
        return layer

    def record_errors(self, weight: torch.Tensor, residual: torch.Tensor, kept: torch.Tensor) -> None:
        """Set ``rel_error_tt`` (‖TT error‖/‖W‖) and ``rel_error`` (after adding the ``kept`` values)."""
        norm = float(torch.linalg.vector_norm(weight))
        self.rel_error_tt = _relative(residual, norm)
        self.rel_error = (
            math.sqrt(max(self.rel_error_tt**2 - float(kept.float().square().sum()) / norm**2, 0.0))
            if norm > 0
            else 0.0
        )

    @property
    def ranks(self) -> list[int]:
        """TT ranks including the boundary 1s."""
        return [1] + [core.shape[2] for core in self.cores]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def tt_weight(self) -> torch.Tensor:
        """The TT part in the weight's ``(out, in)`` orientation."""
        return tt_to_matrix(list(self.cores), self.shape).T

    @property
    def weight(self) -> torch.Tensor:
        """Effective dense weight ``(TT(cores)ᵀ + S)·diag(input_scale)`` of shape ``(out, in)``."""
        weight = scatter_into(self.tt_weight(), self.positions, self.values)
        return weight if self.input_scale is None else weight * self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute:
            if self.input_scale is not None:
                x = x * self.input_scale
            return saten_linear(x, list(self.cores), self.values, self.positions, self.bias, self.shape)
        return F.linear(x, self.weight, self.bias)

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the effective weight (for deployment)."""
        return dense_linear(self.weight, self.bias)

    merge = to_dense

    def spec(self) -> dict:
        """Structure needed to rebuild an empty layer that a state dict can fill."""
        return {
            "kind": "saten",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "in_factors": list(self.shape.in_factors),
            "out_factors": list(self.shape.out_factors),
            "layout": self.shape.layout,
            "ranks": self.ranks,
            "nnz": self.nnz,
            "bias": self.bias is not None,
            "sparsity": self.sparsity,
            "nm": list(self.nm) if self.nm else None,
            "input_scale": self.input_scale is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict, dtype=None, device=None) -> SatenLinear:
        shape = TTShape(tuple(spec["in_factors"]), tuple(spec["out_factors"]), spec["layout"])
        return cls(
            spec["in_features"],
            spec["out_features"],
            shape,
            spec["ranks"],
            spec["nnz"],
            spec["bias"],
            spec["sparsity"],
            spec["nm"],
            dtype=dtype,
            device=device,
            input_scale=spec.get("input_scale", False),
        )

    def extra_repr(self) -> str:
        kind = "TT" if self.nnz == 0 else f"TT+{self._pattern()}"
        from saten.accounting import layer_counts  # local: accounting imports the layer classes

        counts = layer_counts(self)
        return (
            f"{self.in_features}->{self.out_features}, {kind}, shape={self.shape.as_list()}"
            f"{'' if self.shape.layout == 'plain' else ' (matrix)'}, ranks={self.ranks}, nnz={self.nnz}, "
            f"ratio={counts['params'] / counts['dense_params']:.3f}"
        )

    def _pattern(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.sparsity == "nm" else "sparse"
