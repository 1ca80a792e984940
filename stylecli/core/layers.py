"""Building blocks of StyleGAN2: equalised-learning-rate layers and the (modulated) resampling convolution.

Parameter names follow NVIDIA's stylegan2-ada-pytorch, so its checkpoints load with a near-identity key map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import bias_act, upfirdn2d
from .ops.bias_act import ACTIVATIONS

RESAMPLE_FILTER = (1, 3, 3, 1)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


_CHUNK_NUMEL = 8 * 2 ** 20  # output elements above which inference upsampling convs run in channel chunks


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _like_input(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight in the input's memory format: a mismatch makes oneDNN reorder the whole activation."""
    return w.contiguous(memory_format=torch.channels_last) if _is_channels_last(x) else w


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """2-D convolution with optional FIR up- or downsampling, in the cheapest equivalent order.

    Defined as: upfirdn2d(x, f, up, padding = padding + the filter's own padding, gain up**2), then a valid conv2d
    with `w` (correlation when flip_weight, true convolution otherwise), then upfirdn2d(f, down) when down > 1.
    x -- [N, C_in, H, W]; w -- [C_out, C_in / groups, kh, kw]; f -- FIR filter (needed when up or down > 1).
    """
    out_channels, in_per_group, kh, kw = w.shape
    assert x.ndim == 4 and x.shape[1] == in_per_group * groups, f"{tuple(x.shape)} vs weight {tuple(w.shape)}"
    assert up == 1 or down == 1, "up- and downsampling at once is not needed by StyleGAN2"
    fw, fh = upfirdn2d.filter_size(f)
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2; px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2; py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2; px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2; py1 += (fh - down) // 2

    def conv(x, w, **kwargs):
        if not flip_weight and (kw > 1 or kh > 1):
            w = w.flip([2, 3])
        if kw == kh == 1 and groups == 1 and not any(kwargs.get("padding", [0])) and _is_channels_last(x):
            # A 1x1 convolution of a channels-last image is one matrix product; oneDNN is ~50x slower at it
            # for few output channels (toRGB).
            return F.linear(x.permute(0, 2, 3, 1), w[:, :, 0, 0].to(x.dtype)).permute(0, 3, 1, 2)
        return F.conv2d(x, _like_input(w, x), groups=groups, **kwargs)

    if down > 1:
        if kw == 1 and kh == 1:  # 1x1: downsample first, then convolve the smaller image
            return conv(upfirdn2d.upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1]), w)
        return conv(upfirdn2d.upfirdn2d(x, f, padding=[px0, px1, py0, py1]), w, stride=down)
    if up > 1:
        if kw == 1 and kh == 1:  # 1x1: convolve first, then upsample
            return upfirdn2d.upfirdn2d(conv(x, w), f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
        # A strided transposed convolution does the zero insertion and the convolution together; the FIR filter
        # follows. conv_transpose2d is the adjoint of correlation, i.e. a true convolution with the weight as given.
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        if flip_weight:
            w = w.flip([2, 3])
        px0 -= kw - 1; px1 -= kw - up
        py0 -= kh - 1; py1 -= kh - up
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        w = _like_input(w, x)

        def up_conv(w_part):
            y = F.conv_transpose2d(x, w_part, stride=up, padding=[pyt, pxt], groups=groups)
            return upfirdn2d.upfirdn2d(y, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)

        out_numel = x.shape[0] * out_channels * (x.shape[2] * up) * (x.shape[3] * up)
        if groups > 1 or torch.is_grad_enabled() or out_numel <= 2 * _CHUNK_NUMEL:
            return up_conv(w)
        # Large inference outputs: a few output channels at a time, so the unfiltered intermediate never exists
        # at full size (peak memory at 1024x1024 drops by ~100 MB).
        step = max(1, out_channels * _CHUNK_NUMEL // out_numel)
        first = up_conv(w[:, :step])
        out = torch.empty([first.shape[0], out_channels, *first.shape[2:]], dtype=first.dtype, device=first.device,
                          memory_format=_memory_format(first))
        out[:, :step] = first
        del first
        for start in range(step, out_channels, step):
            out[:, start:start + step] = up_conv(w[:, start:start + step])
        return out
    if px0 == px1 and py0 == py1 and px0 >= 0:
        return conv(x, w, padding=[py0, px0])
    return conv(upfirdn2d.upfirdn2d(x, None, padding=[px0, px1, py0, py1]), w)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused: bool | None = None) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    x      -- [N, C_in, H, W] input features.
    weight -- [C_out, C_in, kh, kw] shared weight.
    styles -- [N, C_in] per-sample scales of the input channels.
    noise  -- broadcastable to [N, C_out, H', W'], added after (de)modulation; None for no noise.
    fused  -- one grouped convolution with per-sample weights (True) or scale-conv-scale (False). The default is
              fused for inference on CUDA or of a batch of one, and the non-fused form otherwise: ~2.4x faster for
              batches on a CPU, what training uses, and with gradients also at a batch of one (the fused form
              would differentiate the per-sample weights too: one more convolution per layer; synthesis forward +
              backward at 64 px 53 -> 42 ms on a CPU, as per-image latent optimisation runs it).
    """
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    assert styles.shape == (batch, in_channels), f"styles {tuple(styles.shape)} vs {(batch, in_channels)}"
    if fused is None:
        fused = not torch.is_grad_enabled() and (batch == 1 or x.is_cuda)

    dcoefs = None
    if demodulate:
        # sum over (C_in, kh, kw) of (weight * style)^2 = styles^2 @ (sum over kh, kw of weight^2): one small matrix
        # product instead of a per-sample weight tensor [N, C_out, C_in, kh, kw] (synthesis forward+backward ~1.2x
        # faster at batch 16 on a CPU).
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # [N, C_out]

    if not fused:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)
        if dcoefs is not None and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        if dcoefs is not None:
            return x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x

    scales = styles.reshape(batch, 1, -1, 1, 1)                           # [N, 1, C_in, 1, 1]
    if dcoefs is not None:
        scales = scales * dcoefs.reshape(batch, -1, 1, 1, 1)              # [N, C_out, C_in, 1, 1]
    w = weight.unsqueeze(0) * scales                                      # per-sample weights, one pass
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    if noise is None:
        return x
    # x is our own temporary: add in place unless autograd needs it.
    return x.add_(noise.to(x.dtype)) if not torch.is_grad_enabled() else x + noise.to(x.dtype)


class FullyConnectedLayer(nn.Module):
    def __init__(self,
                 in_features: int,          # number of input features
                 out_features: int,         # number of output features
                 bias: bool = True,         # apply an additive bias before the activation?
                 activation: str = "linear",  # activation function name, see ops.bias_act.ACTIVATIONS
                 lr_multiplier: float = 1.0,  # learning-rate multiplier (equalised learning rate)
                 bias_init: float = 0.0):   # initial value of the bias
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.in_features, f"{tuple(x.shape)} vs in_features {self.in_features}"
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    def __init__(self,
                 in_channels: int,            # number of input channels
                 out_channels: int,           # number of output channels
                 kernel_size: int,            # width and height of the kernel
                 bias: bool = True,           # apply an additive bias before the activation?
                 activation: str = "linear",  # activation function name
                 up: int = 1,                 # integer upsampling factor
                 down: int = 1,               # integer downsampling factor
                 resample_filter=RESAMPLE_FILTER,  # low-pass filter for resampling
                 conv_clamp: float | None = None):  # clamp the output to +-this value; None disables
        super().__init__()
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp = up, down, conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ACTIVATIONS[activation].default_gain
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, f"{tuple(x.shape)} vs in_channels {self.in_channels}"
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        act_gain = self.act_gain * gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")
