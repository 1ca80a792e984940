"""bias_act: add a per-channel bias, apply an activation, scale by a gain and clamp, in one op.

`bias_act(x, b, dim, act, alpha, gain, clamp)` computes, element-wise:

1. y = x + b, with `b` broadcast along dimension `dim` of `x`;
2. y = act(y, alpha);
3. y = y * gain (default: the activation's gain that keeps the signal's magnitude, sqrt(2) for relu/lrelu);
4. y = clamp(y, -clamp, +clamp) when `clamp` is given.

The reference path is plain PyTorch. For CUDA tensors a fused kernel computes the whole chain in one pass, and its
gradients (first and second order) in one pass each, so R1 and path-length regularisation can differentiate through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import _plugin


@dataclass(frozen=True)
class Activation:
    func: Callable          # reference implementation: func(x, alpha) -> tensor
    default_alpha: float    # slope/shape parameter when the caller gives none
    default_gain: float     # gain that keeps the output's magnitude comparable to the input's
    cuda_index: int         # index understood by the CUDA kernel


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0, 1),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0, 4),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 5),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0, 6),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0, 7),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0, 8),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 9),
}


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             inplace: bool = False) -> torch.Tensor:
    """Fused bias + activation + gain + clamp (see the module docstring).

    x     -- input of any shape; dtype float16/32/64.
    b     -- bias of shape [x.shape[dim]], or None.
    dim   -- the dimension of `x` that `b` runs along (the channel dimension).
    act   -- one of ACTIVATIONS.
    alpha -- activation parameter (negative slope for lrelu); None for its default.
    gain  -- output scaling; None for the activation's default gain.
    clamp -- clamp the output to [-clamp, +clamp]; None for no clamping.
    inplace -- `x` is the caller's own temporary and may be overwritten; honoured only when autograd does not need
               it (saves one full-size buffer per layer at inference).
    """
    assert isinstance(x, torch.Tensor)
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose from {', '.join(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    alpha = float(spec.default_alpha if alpha is None else alpha)
    gain = float(spec.default_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[dim], f"bias {tuple(b.shape)} does not fit dim {dim} of {tuple(x.shape)}"
    dim = dim % x.ndim
    if _plugin.use_cuda_kernel("bias_act", x):
        return _bias_act_cuda(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x, b, dim, act, alpha, gain, clamp, inplace)


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp, inplace=False):
    needs_graph = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    if not needs_graph and act in _INPLACE:
        # Inference: one new buffer at most (none with `inplace`), then in-place arithmetic. Fresh full-size
        # buffers cost page faults that take longer than the arithmetic itself on a CPU.
        if b is not None:
            bias = b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
            x = x.add_(bias) if inplace else x + bias
        elif not inplace:
            x = x.clone()
        _INPLACE[act](x, alpha)
        if gain != 1:
            x.mul_(gain)
        return x.clamp_(-clamp, clamp) if clamp >= 0 else x
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
    x = ACTIVATIONS[act].func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


_INPLACE = {
    "linear": lambda x, a: x,
    "relu": lambda x, a: x.relu_(),
    "lrelu": lambda x, a: F.leaky_relu_(x, a),
    "tanh": lambda x, a: x.tanh_(),
    "sigmoid": lambda x, a: x.sigmoid_(),
}


# --- CUDA path --------------------------------------------------------------------------------------------------
# Kernel modes: 0 = forward y = clamp(act(x + b) * gain); 1 = first derivative; 2 = second derivative.
# All derivatives are taken with respect to the pre-activation s = x + b, which the forward saves.

def _kernel(mode, x, s, act, alpha, gain, clamp):
    plugin = _plugin.get_plugin("bias_act")
    empty = x.new_empty([0])
    return plugin.bias_act(x.contiguous(), s.contiguous() if s is not None else empty, int(mode),
                           ACTIVATIONS[act].cuda_index, alpha, gain, clamp)


def _bias_act_cuda(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        # The bias add is cheap and broadcasting keeps its gradient (a reduction) in PyTorch's hands.
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
    return _BiasActCuda.apply(x, act, alpha, gain, clamp)


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, act, alpha, gain, clamp):
        ctx.save_for_backward(s)
        ctx.config = (act, alpha, gain, clamp)
        return _kernel(0, s, None, act, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, dy):
        (s,) = ctx.saved_tensors
        return _BiasActGradCuda.apply(dy, s, *ctx.config), None, None, None, None


class _BiasActGradCuda(torch.autograd.Function):
    """ds = dy * d act(s)/ds * gain * [|y| < clamp]; itself differentiable for second-order gradients."""

    @staticmethod
    def forward(ctx, dy, s, act, alpha, gain, clamp):
        ctx.save_for_backward(dy, s)
        ctx.config = (act, alpha, gain, clamp)
        return _kernel(1, dy, s, act, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, d_ds):
        dy, s = ctx.saved_tensors
        act, alpha, gain, clamp = ctx.config
        d_dy = d_s = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGradCuda.apply(d_ds, s, act, alpha, gain, clamp)
        if ctx.needs_input_grad[1]:
            d_s = _kernel(2, d_ds * dy, s, act, alpha, gain, clamp)
        return d_dy, d_s, None, None, None, None
