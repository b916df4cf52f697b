"""A frozen linear layer plus a low-rank update, ``y = x W^T + b + s (x A^T) B^T``, as one autograd node.

    forward:   h = x A^T  (T x r),   y = x W^T + b,   y += s h B^T    (in place: one output buffer)
    backward:  G = s B^T dy^T  (r x T)
               dA = G x,   dB = s (h^T dy)^T,   dx = dy W + G^T A    (accumulated in place)

Why a custom node: autograd's generic backward of ``linear`` computes ``dy^T h``
and ``dy B`` with ``dy`` (T x m, the widest tensor of the layer) transposed
into the matmul, the slow layout on CPU BLAS (5x slower than ``h^T dy`` for
T = 2048, m = 384, r = 8); it multiplies the full T x m output by the scale
in both directions; and it sums the input gradients of the frozen path and of
the update in a separate pass. Here every product keeps the long dimension T
contiguous, the scale lands on r-wide tensors, and both sums happen inside
the matmuls. It saves what autograd saved before: x, h and the matrices.

Used by LoRA and the LoRA-shaped methods (PiSSA, MiLoRA, OLoRA, EVA, CorDA),
by DoRA's direction, and by the methods with a diagonal core folded into A
(AdaLoRA's Lambda, SORSA's S, SVFit's sigma: ``a = diag(core) A`` is one
r x n product per forward, through which autograd carries the core's
gradient). It applies when the update sees the layer's own input (no dropout
in training), dtypes agree, autocast is off and W and b are frozen; otherwise
:func:`lora_linear` takes the plain autograd path, whose casts and dropout
autograd already gets right.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LowRankLinear(torch.autograd.Function):
    """``x @ w.T + bias + scale * (x @ a.T) @ b.T`` over the last dimension of x (2-D inside).

    ``w`` and ``bias`` are frozen: no gradient is returned for them."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, bias: Tensor | None, a: Tensor, b: Tensor, scale: float) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = x2 @ w.t() if bias is None else torch.addmm(bias, x2, w.t())
        h = x2 @ a.t()
        out.addmm_(h, b.t(), alpha=scale)
        ctx.save_for_backward(x2, h, w, a, b)
        ctx.scale, ctx.x_shape = scale, x.shape
        return out.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x2, h, w, a, b = ctx.saved_tensors
        dy = grad.reshape(-1, grad.shape[-1])
        need_x, _, _, need_a, need_b = ctx.needs_input_grad[:5]
        d_x = d_a = d_b = None
        if need_x or need_a:
            g = (b.t() @ dy.t()).mul_(ctx.scale)  # r x T: the gradient of h, transposed and contiguous
            if need_a:
                d_a = g @ x2
            if need_x:
                d_x = (dy @ w).addmm_(g.t(), a).view(ctx.x_shape)
        if need_b:
            d_b = (h.t() @ dy).mul_(ctx.scale).t().contiguous()
        return d_x, None, None, d_a, d_b, None


def sees_frozen_input(x: Tensor, weight: Tensor, bias: Tensor | None, dropout: nn.Module,
                      *dtypes: torch.dtype) -> bool:
    """Whether an update may be computed together with the frozen ``x W^T + b``: W and b frozen,
    the update sees x itself (no dropout in training), one dtype throughout, autocast off."""
    return (not weight.requires_grad and (bias is None or not bias.requires_grad)
            and (isinstance(dropout, nn.Identity) or not dropout.training)
            and all(d == x.dtype for d in (weight.dtype, *dtypes))
            and not torch.is_autocast_enabled(x.device.type))


def lora_linear(x: Tensor, base: nn.Linear, a: Tensor, b: Tensor, scale: float,
                dropout: nn.Module, weight: Tensor | None = None) -> Tensor:
    """``base(x) + scale * (dropout(x) a^T) b^T``, x cast to the factors' dtype for the update.

    ``weight`` replaces ``base`` by ``x @ weight.T`` (no bias) when given: DoRA's direction ``V x``."""
    if weight is None:
        frozen_path = base if type(base).forward is nn.Linear.forward else None  # a subclass keeps its forward
        weight, bias = base.weight, base.bias
    else:
        frozen_path, bias = (lambda inputs: F.linear(inputs, weight)), None
    if frozen_path is not None and sees_frozen_input(x, weight, bias, dropout, a.dtype, b.dtype):
        return LowRankLinear.apply(x, weight, bias, a, b, float(scale))
    result = (frozen_path or base)(x)
    update = F.linear(F.linear(dropout(x.to(a.dtype)), a), b) * scale
    return result + update.to(result.dtype)
