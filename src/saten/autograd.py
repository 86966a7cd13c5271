"""Memory-light training path for :class:`~saten.layers.SatenLinear` (the SLTrain pattern).

The naive forward builds the effective weight ``W = TT(cores)ᵀ + S`` with autograd recording every step
and calls ``F.linear``, which saves the dense ``W`` (``out × in``) of every layer until the backward pass.
:func:`saten_linear` computes the same output with one GEMM but saves only the input, the small cores, the
kept values and their positions; the backward pass rebuilds ``W`` and forms

- ``grad_x = dY W``,
- ``dW = dYᵀ X`` (batch dimensions flattened),
- ``grad_values = dW`` gathered at the kept ``positions``,
- ``grad_cores``: autograd through the small core chain ``A = TT(cores)`` with ``dA = dWᵀ`` (for the plain
  2+2 layout, ``A = A₁A₂`` gives ``dA₁ = dA A₂ᵀ`` and ``dA₂ = A₁ᵀ dA``, then the two small core products),
- ``grad_bias = Σ dY`` over the batch dimensions.

The gradients equal the naive path's to float tolerance (``tests/test_autograd.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from saten.tt import TTShape, tt_to_matrix

__all__ = [
    "SatenLinearFunction",
    "effective_weight",
    "recompute_activations",
    "saten_linear",
    "set_recompute",
]


def effective_weight(
    cores, shape: TTShape, positions: torch.Tensor, values: torch.Tensor, tt: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense ``W = TT(cores)ᵀ + S`` of shape ``(out, in)``, built without recording autograd history.

    Parameters
    ----------
    cores : sequence of torch.Tensor
        TT cores ``(r_{k-1}, s_k, r_k)``.
    shape : TTShape
    positions : torch.Tensor
        Flat int64 positions of the kept residual entries in the row-major ``(out, in)`` weight.
    values : torch.Tensor
        Kept residual values, shape ``(nnz,)``.
    tt : torch.Tensor, optional
        ``A = TT(cores)`` of shape ``(in, out)`` when already computed (it is not modified).

    Returns
    -------
    torch.Tensor
        A fresh contiguous ``(out, in)`` tensor.
    """
    with torch.no_grad():
        a = tt_to_matrix(list(cores), shape) if tt is None else tt.detach()
        weight = a.t().contiguous()
        if positions.numel():
            weight.view(-1).index_add_(0, positions, values.detach().to(weight.dtype))
    return weight


class SatenLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` with ``W`` rebuilt in backward instead of saved; see the module docstring.

    ``apply(x, bias, values, positions, shape, *cores)``; ``bias`` may be ``None``.
    """

    @staticmethod
    def forward(ctx, x, bias, values, positions, shape, *cores):
        weight = effective_weight(cores, shape, positions, values)
        ctx.shape = shape
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, values, positions, *cores)
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, values, positions, *cores = ctx.saved_tensors
        need_x, need_bias, need_values = ctx.needs_input_grad[:3]
        need_cores = ctx.needs_input_grad[5:]
        grad_x = grad_bias = grad_values = None
        grad_cores = [None] * len(cores)

        leaves, tt = None, None
        if any(need_cores):
            with torch.enable_grad():
                pairs = zip(cores, need_cores, strict=True)
                leaves = [core.detach().requires_grad_(need) for core, need in pairs]
                tt = tt_to_matrix(leaves, ctx.shape)  # (in, out), graph over the small cores only
        if need_x:
            weight = effective_weight(cores, ctx.shape, positions, values, tt=tt)
            grad_x = grad_out.matmul(weight.to(grad_out.dtype))
            del weight
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        need_values = need_values and positions.numel() > 0  # no kept values: None, as the naive path
        if need_values or tt is not None:
            flat_out = grad_out.reshape(-1, grad_out.shape[-1])
            grad_weight = flat_out.t().matmul(x.reshape(-1, x.shape[-1]).to(flat_out.dtype))  # (out, in)
            if need_values:
                grad_values = grad_weight.reshape(-1).index_select(0, positions).to(values.dtype)
            if tt is not None:
                wanted = [leaf for leaf in leaves if leaf.requires_grad]
                found = iter(torch.autograd.grad(tt, wanted, grad_weight.t().to(tt.dtype)))
                grad_cores = [next(found) if need else None for need in need_cores]
        return (grad_x, grad_bias, grad_values, None, None, *grad_cores)


def saten_linear(
    x: torch.Tensor,
    cores,
    values: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None,
    shape: TTShape,
) -> torch.Tensor:
    """Memory-light ``y = x (TT(cores)ᵀ + S)ᵀ + b``; same value and gradients as the naive forward.

    Parameters
    ----------
    x : torch.Tensor
        Input ``(..., in)``.
    cores : sequence of torch.Tensor
        TT cores in ``shape``'s layout.
    values, positions : torch.Tensor
        Kept residual values ``(nnz,)`` and their flat positions in the ``(out, in)`` weight.
    bias : torch.Tensor or None
        ``(out,)``.
    shape : TTShape

    Returns
    -------
    torch.Tensor
        ``(..., out)``.
    """
    return SatenLinearFunction.apply(x, bias, values, positions, shape, *cores)


def set_recompute(model: nn.Module, enabled: bool = True) -> int:
    """Switch every :class:`~saten.layers.SatenLinear` in ``model`` to the memory-light (``True``) or
    the naive autograd path (``False``); returns the number of layers switched."""
    from saten.layers import SatenLinear  # local: layers imports this module

    layers = [m for m in model.modules() if isinstance(m, SatenLinear)]
    for layer in layers:
        layer.recompute = enabled
    return len(layers)


class _RecordingActivation(nn.Module):
    """Wraps an activation and remembers its last ``(input, output)`` until the next Linear reads it."""

    def __init__(self, act):
        super().__init__()
        self.act = act
        self.last = None

    def forward(self, h):
        a = self.act(h)
        self.last = (h, a) if torch.is_grad_enabled() and a.requires_grad else None
        return a


def _key(t: torch.Tensor) -> tuple:
    """Identity of a tensor's data without holding a reference to it (a reshaped view keeps it)."""
    return t.data_ptr(), t.numel(), t.dtype


class _RecomputeHooks:
    """Forward hooks on the Linear after a recorded activation: while that Linear runs, the activation
    output it saves for backward is packed as the activation's input and recomputed on unpack."""

    def __init__(self, recorder: _RecordingActivation):
        self.recorder, self.context = recorder, None

    def pre(self, module, args):
        record, self.recorder.last = self.recorder.last, None
        if record is None or _key(args[0]) != _key(record[1]):
            return
        h, output = record[0], _key(record[1])  # no reference to act(h) may outlive this forward
        act = self.recorder.act
        del record

        def pack(t):
            return (_RecomputeHooks, h, t.shape) if _key(t) == output and t.is_contiguous() else t

        def unpack(packed):
            if isinstance(packed, tuple) and packed[0] is _RecomputeHooks:
                with torch.no_grad():
                    return act(packed[1]).reshape(packed[2])
            return packed

        self.context = torch.autograd.graph.saved_tensors_hooks(pack, unpack)
        self.context.__enter__()

    def post(self, module, args, output):
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


def recompute_activations(model: nn.Module) -> int:
    """Save the feed-forward activation's input instead of its output: recompute ``act(h)`` in backward.

    In a BERT-style block ``output.dense(act(intermediate.dense(x)))`` autograd keeps both ``h`` (for the
    activation's backward) and ``act(h)`` (for the second Linear's weight gradient), two tensors of the
    widest shape in the block. With this switch the second one is not kept: the Linear's saved input is
    packed as a reference to ``h`` (kept anyway) and recomputed elementwise when backward needs it
    (``torch.autograd.graph.saved_tensors_hooks``). Values and gradients are unchanged; it works for
    :class:`~saten.layers.SatenLinear` and plain ``nn.Linear`` alike. Applies to every module with an
    ``intermediate.intermediate_act_fn`` and an ``output.dense`` (BERT, RoBERTa, …); returns their number.
    """
    count = 0
    for block in model.modules():
        intermediate, output = getattr(block, "intermediate", None), getattr(block, "output", None)
        act = getattr(intermediate, "intermediate_act_fn", None)
        if act is None or not isinstance(getattr(output, "dense", None), nn.Module):
            continue
        recorder = act if isinstance(act, _RecordingActivation) else _RecordingActivation(act)
        if recorder is not act:
            intermediate.intermediate_act_fn = recorder
            hooks = _RecomputeHooks(recorder)
            output.dense.register_forward_pre_hook(hooks.pre)
            output.dense.register_forward_hook(hooks.post)
        count += 1
    return count
