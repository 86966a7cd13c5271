"""Inference formats of a trained :class:`~saten.layers.SatenLinear` (see :func:`saten.export.export`).

- :class:`MergedLinear`: the effective dense weight ``TT(cores)ᵀ + S``; a plain ``nn.Linear`` subclass
  whose state dict is an ``nn.Linear``'s, so a merged model saves and loads as an ordinary model.
- :class:`FactorizedTTLinear`: the input is contracted with the TT factors and the sparse residual is
  applied separately: ``y = x A₁ A₂ + x Sᵀ + b``. For the plain layout either the input-side and
  output-side cores are contracted once at export into ``A₁`` (``N × r_p``) and ``A₂`` (``r_p × M``)
  (``path="pair"``: two GEMMs), or the input is contracted with one core after another (``path="cores"``:
  more, smaller products over fewer bytes when the outer ranks are truncated); the matrix layout always
  contracts core by core (:mod:`saten.tt_contract`). The
  residual is a torch CSR matrix (``kernel="csr"``, ``torch.sparse.mm``) or row/column index arrays
  (``kernel="gather"``, an index gather of the input and a scatter-add into the output).
- :class:`SemiStructuredLinear`: TT factors plus a 2:4 residual in PyTorch's semi-structured sparse format
  (``torch.sparse.to_sparse_semi_structured``), CUDA compute capability 8.0 or newer only.

All tensors are buffers: an exported layer has no trainable parameters other than the merged weight.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from saten.layers import SatenLinear
from saten.tt import TTShape, _chain
from saten.tt_contract import contract_matrix, contract_plain

__all__ = [
    "FactorizedTTLinear",
    "MergedLinear",
    "csr_matrix",
    "SemiStructuredLinear",
    "semi_structured_available",
    "sparse_residual",
]

KERNELS = ("csr", "gather")
PATHS = ("pair", "cores")


class MergedLinear(nn.Linear):
    """``nn.Linear`` holding the merged weight of a compressed layer (same state dict keys)."""

    @classmethod
    def from_saten(cls, layer: SatenLinear) -> MergedLinear:
        weight = layer.weight.detach()
        out = cls(layer.in_features, layer.out_features, layer.bias is not None,
                  device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            out.weight.copy_(weight)
            if layer.bias is not None:
                out.bias.copy_(layer.bias)
        return out.requires_grad_(False)

    def spec(self) -> dict:
        return {"kind": "merged", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    @classmethod
    def from_spec(cls, spec: dict, dtype=None, device=None) -> MergedLinear:
        return cls(spec["in_features"], spec["out_features"], spec["bias"], dtype=dtype, device=device)


def _tt_factors(layer: SatenLinear, path: str) -> list[torch.Tensor]:
    """``path="pair"`` (plain layout): ``[A₁ᵀ (r_p, N), A₂ᵀ (M, r_p)]`` in ``F.linear`` orientation; else
    the cores."""
    cores = [c.detach() for c in layer.cores]
    shape = layer.shape
    if path != "pair":
        return [c.clone() for c in cores]
    p = len(shape.in_factors)
    left = _chain(cores[:p]).reshape(shape.n_in, -1)
    right = _chain(cores[p:]).reshape(left.shape[1], shape.n_out)
    return [left.t().contiguous(), right.t().contiguous()]


def csr_matrix(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A torch CSR tensor over the given buffers (no copy; invariants hold by construction)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def sparse_residual(positions: torch.Tensor, values: torch.Tensor, rows: int, cols: int, kernel: str):
    """Index tensors for the residual in ``kernel``'s form; returns a dict of buffers."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: use one of {', '.join(KERNELS)}")
    positions = positions.detach()
    row, col = positions // cols, positions % cols
    values = values.detach().clone()
    if kernel == "gather":  # int64: torch's index kernels are several times slower with int32 indices
        return {"row": row, "col": col, "values": values}
    counts = torch.bincount(row, minlength=rows)
    crow = torch.zeros(rows + 1, dtype=torch.int32, device=positions.device)
    crow[1:] = torch.cumsum(counts, 0)
    return {"crow": crow, "col": col.to(torch.int32), "values": values}


class FactorizedTTLinear(nn.Module):
    """``y = x A₁ A₂ + x Sᵀ + b`` with the residual ``S`` applied by a sparse kernel.

    Parameters
    ----------
    in_features, out_features : int
    shape : TTShape
    ranks : sequence of int
        TT ranks including the boundary ones.
    nnz : int
        Kept residual entries.
    bias : bool
    kernel : {"csr", "gather"}
    path : {"pair", "cores"}
        TT part of the plain layout: the contracted pair ``A₁``, ``A₂`` or the cores one by one (the matrix
        layout always uses its cores).
    """

    def __init__(self, in_features, out_features, shape: TTShape, ranks, nnz, bias=True, kernel="csr",
                 dtype=None, device=None, path="pair"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: use one of {', '.join(KERNELS)}")
        if path not in PATHS:
            raise ValueError(f"path={path!r}: use one of {', '.join(PATHS)}")
        kw = {"dtype": dtype, "device": device}
        self.in_features, self.out_features, self.shape = in_features, out_features, shape
        self.ranks, self.kernel = list(ranks), kernel
        self.path = path if shape.layout == "plain" else "cores"
        if self.path == "pair":
            r_p = ranks[len(shape.in_factors)]
            factor_shapes = [(r_p, in_features), (out_features, r_p)]
        else:
            factor_shapes = [(ranks[k], mode, ranks[k + 1]) for k, mode in enumerate(shape.modes)]
        self.n_factors = len(factor_shapes)
        for k, size in enumerate(factor_shapes):
            self.register_buffer(f"factor{k}", torch.zeros(size, **kw))
        index = {"row": nnz, "col": nnz} if kernel == "gather" else {"crow": out_features + 1, "col": nnz}
        index_dtype = torch.int64 if kernel == "gather" else torch.int32
        for name, size in index.items():
            self.register_buffer(name, torch.zeros(size, dtype=index_dtype, device=device))
        self.register_buffer("values", torch.zeros(nnz, **kw))
        self.register_buffer("bias", torch.zeros(out_features, **kw) if bias else None)
        self._csr = None

    @classmethod
    def from_saten(cls, layer: SatenLinear, kernel: str = "csr", path: str = "pair") -> FactorizedTTLinear:
        values = layer.values.detach()
        out = cls(layer.in_features, layer.out_features, layer.shape, layer.ranks, layer.nnz,
                  layer.bias is not None, kernel, dtype=values.dtype, device=values.device, path=path)
        factors = _tt_factors(layer, out.path)
        scale = getattr(layer, "input_scale", None)
        if scale is not None:  # activation-aware: fold the fixed input scale into A₁ and the kept values
            if out.path != "pair":
                raise ValueError("format='factorized': an activation-aware layer cannot fold its input scale "
                                 "into the TT cores (matrix layout or path='cores'); use the plain layout's "
                                 "pair or format='merged'")
            factors[0] = factors[0] * scale[None, :]
            values = values * scale[layer.positions % layer.in_features]
        buffers = {f"factor{k}": f for k, f in enumerate(factors)}
        size = (layer.out_features, layer.in_features)
        buffers.update(sparse_residual(layer.positions, values, *size, kernel))
        if layer.bias is not None:
            buffers["bias"] = layer.bias.detach()
        with torch.no_grad():
            for name, tensor in buffers.items():
                getattr(out, name).copy_(tensor)
        return out

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def factors(self) -> list[torch.Tensor]:
        return [getattr(self, f"factor{k}") for k in range(self.n_factors)]

    def tt_part(self, x2d: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x A (+ bias)`` for a 2-D input."""
        if self.path == "pair":
            buffers = self._buffers
            return F.linear(F.linear(x2d, buffers["factor0"]), buffers["factor1"], bias)
        contract = contract_plain if self.shape.layout == "plain" else contract_matrix
        out = contract(x2d, self.factors(), self.shape)
        return out if bias is None else out + bias

    def sparse_part(self, x2d: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out + x Sᵀ`` for a 2-D input (``out`` is updated in place)."""
        values = self._buffers["values"]
        if values.numel() == 0:
            return out
        if self.kernel == "gather":
            contrib = x2d[:, self._buffers["col"]] * values  # (B, nnz)
            return out.index_add_(1, self._buffers["row"], contrib)
        csr = self._csr_matrix()
        if x2d.shape[0] == 1:  # one token: the CSR matrix-vector kernel is several times faster than mm
            return out[0].addmv_(csr, x2d[0]).unsqueeze(0)
        return out.add_(torch.sparse.mm(csr, x2d.t()).t())

    def __getstate__(self):  # the cached CSR view cannot be copied or pickled; it is rebuilt on use
        return {**self.__dict__, "_csr": None}

    def _csr_matrix(self) -> torch.Tensor:
        """The residual as a torch CSR tensor over the buffers (rebuilt when ``values`` is replaced, e.g.
        by ``.to()``; in-place updates such as ``load_state_dict`` are shared)."""
        values = self._buffers["values"]
        if self._csr is None or self._csr[0] is not values:
            size = (self.out_features, self.in_features)
            self._csr = (values, csr_matrix(self._buffers["crow"], self._buffers["col"], values, size))
        return self._csr[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        out = self.sparse_part(x2d, self.tt_part(x2d, self._buffers["bias"]))
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def spec(self) -> dict:
        return {"kind": "factorized", "in_features": self.in_features, "out_features": self.out_features,
                "in_factors": list(self.shape.in_factors), "out_factors": list(self.shape.out_factors),
                "layout": self.shape.layout, "ranks": self.ranks, "nnz": self.nnz,
                "bias": self.bias is not None, "kernel": self.kernel, "path": self.path}

    @classmethod
    def from_spec(cls, spec: dict, dtype=None, device=None) -> FactorizedTTLinear:
        shape = TTShape(tuple(spec["in_factors"]), tuple(spec["out_factors"]), spec["layout"])
        return cls(spec["in_features"], spec["out_features"], shape, spec["ranks"], spec["nnz"],
                   spec["bias"], spec["kernel"], dtype=dtype, device=device, path=spec.get("path", "pair"))

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, shape={self.shape.as_list()} "
                f"({self.shape.layout}), ranks={self.ranks}, nnz={self.nnz}, kernel={self.kernel}, "
                f"path={self.path}")


def semi_structured_available(device: torch.device | str | None = None) -> str | None:
    """``None`` when 2:4 semi-structured sparsity can run on ``device``, else the reason it cannot."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"needs a CUDA GPU (the layer is on {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"needs CUDA compute capability >= 8.0 (this GPU has {major}.{minor})"
    return None


class SemiStructuredLinear(FactorizedTTLinear):
    """TT factors plus a 2:4 residual held as a ``SparseSemiStructuredTensor`` (CUDA sm80+ only).

    Built only by :meth:`from_saten` from a layer with a 2:4 mask; saved and reloaded as the factorized
    gather form and converted again on load.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._semi = None

    @classmethod
    def from_saten(cls, layer: SatenLinear, kernel: str = "gather") -> SemiStructuredLinear:
        reason = semi_structured_available(layer.values.device)
        if reason is None and (layer.sparsity != "nm" or tuple(layer.nm or ()) != (2, 4)):
            reason = f"needs a 2:4 residual (this layer is {layer.sparsity} {layer.nm or ''})"
        if reason:
            raise ValueError(f"format='semi_structured' {reason}; use format='factorized' or 'merged'")
        out = super().from_saten(layer, "gather")
        out.build()
        return out

    def build(self) -> None:
        """Convert the residual to PyTorch's semi-structured format (after loading a state dict)."""
        from torch.sparse import to_sparse_semi_structured

        dense = torch.zeros(self.out_features, self.in_features, dtype=self.values.dtype,
                            device=self.values.device)
        dense[self.row, self.col] = self.values
        try:
            self._semi = to_sparse_semi_structured(dense)
        except (ValueError, RuntimeError) as err:  # dtype or shape outside the kernels' constraints
            raise ValueError(f"format='semi_structured': the {self.out_features}x{self.in_features} "
                             f"{dense.dtype} residual cannot be converted ({str(err).splitlines()[0]}); "
                             "use format='factorized' or 'merged'") from None

    def sparse_part(self, x2d: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self._semi is None:
            self.build()
        return out.add_(F.linear(x2d, self._semi))

    def spec(self) -> dict:
        return {**super().spec(), "kind": "semi_structured"}
