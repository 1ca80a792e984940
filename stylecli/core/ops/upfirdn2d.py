"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2D images, in one op.

`upfirdn2d(x, f, up, down, padding, flip_filter, gain)` performs, for each channel of each image:

1. Upsample by inserting `up - 1` zeros after each pixel (an image of H x W becomes H*up x W*up).
2. Pad with zeros by `padding = [x0, x1, y0, y1]` pixels (left, right, top, bottom); negative values crop.
3. Convolve with the FIR filter `f` (true convolution unless `flip_filter`), scaled by `gain`.
   A 1-D filter is applied separably, first along x then along y, so `gain` is split between the two passes.
4. Downsample by keeping every `down`-th pixel, starting with the first.

Output size: H_out = (H * up + y0 + y1 - filter_height + down) // down, likewise for W.
The helpers `filter2d`, `upsample2d` and `downsample2d` choose the padding that keeps the image centred.

Two implementations: a pure-PyTorch reference (depthwise `conv2d`, strided for step 4) that runs anywhere and is
differentiable to any order, and a CUDA kernel used for CUDA tensors (see `_plugin`), whose gradient is again an
`upfirdn2d` (with up and down swapped and the filter flipped), so it is differentiable to any order as well.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import _plugin


def setup_filter(f, normalize: bool = True, flip_filter: bool = False, gain: float = 1.0, separable: bool | None = None,
                 device=None) -> torch.Tensor:
    """Turn a list/array of taps into a float32 filter tensor, 1-D (separable) or 2-D.

    f          -- taps, e.g. [1, 3, 3, 1]; None means the identity filter [1].
    normalize  -- scale the taps so that the 2-D filter sums to 1.
    separable  -- keep a 1-D filter 1-D (default: when it is 1-D and has more than one tap).
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2)
    assert f.numel() > 0
    if f.ndim == 0:
        f = f[np.newaxis]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.ger(f)
    assert f.ndim == (1 if separable else 2)
    if normalize:
        f /= f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _parse_scaling(scaling) -> tuple[int, int]:
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = scaling
    assert sx >= 1 and sy >= 1
    return int(sx), int(sy)


def _parse_padding(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        padding = [padding, padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    px0, px1, py0, py1 = padding
    return int(px0), int(px1), int(py0), int(py1)


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a 1-D or 2-D filter."""
    if f is None:
        return 1, 1
    assert f.ndim in (1, 2)
    return (f.shape[-1], f.shape[0]) if f.ndim == 2 else (f.shape[0], f.shape[0])


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1.0) -> torch.Tensor:
    """Upsample, pad, filter and downsample `x` [N, C, H, W] (see the module docstring for the exact steps).

    f           -- float32 filter of shape [fh, fw] (2-D) or [taps] (separable), or None for the identity.
    up, down    -- integer factors, one for both axes or [x, y].
    padding     -- int, [x, y] or [x0, x1, y0, y1]; applied after upsampling; negative crops.
    flip_filter -- False: true convolution; True: correlation.
    gain        -- overall scaling of the signal magnitude.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4, f"expected [N, C, H, W], got {tuple(x.shape)}"
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2) and f.dtype == torch.float32 and not f.requires_grad
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padding = _parse_padding(padding)
    if _plugin.use_cuda_kernel("upfirdn2d", x):
        return _Upfirdn2dCuda.apply(x, f, (upx, upy), (downx, downy), padding, bool(flip_filter), float(gain))
    return _upfirdn2d_ref(x, f, (upx, upy), (downx, downy), padding, flip_filter, gain)


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    """Reference: zero-insertion by reshape, F.pad, depthwise conv2d (strided along the last pass)."""
    n, c, h, w = x.shape
    (upx, upy), (downx, downy) = up, down
    px0, px1, py0, py1 = padding
    fw, fh = filter_size(f)

    # Steps 1-3 at once for plain upsampling: a depthwise transposed convolution is zero insertion followed by a
    # full true convolution; cropping its border gives the requested padding. Skips multiplying the inserted zeros.
    if (upx > 1 or upy > 1) and downx == downy == 1 and f.ndim == 2 and 0 <= fh - 1 - py0 and 0 <= fw - 1 - px0 \
            and py1 <= fh - upy and px1 <= fw - upx:
        k = f.to(x.dtype) * gain
        k = k.flip([0, 1]) if flip_filter else k
        y = F.conv_transpose2d(x, k[None, None].repeat(c, 1, 1, 1), stride=(upy, upx), groups=c)
        oy, ox = fh - 1 - py0, fw - 1 - px0
        return y[:, :, oy: oy + h * upy + py0 + py1 - fh + 1, ox: ox + w * upx + px0 + px1 - fw + 1]

    # 1. Upsample by zero insertion.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # 2. Pad (positive) and crop (negative). Symmetric padding is left to conv2d, which avoids a full-size copy.
    conv_pad = 0
    if px0 == px1 == py0 == py1 and px0 > 0:
        conv_pad = px0
    else:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # 3 + 4. Filter as a depthwise convolution; conv2d correlates, so flip for a true convolution. The stride
    # performs the downsampling without computing the discarded pixels.
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].repeat(c, 1, 1, 1)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            weight = weight.contiguous(memory_format=torch.channels_last)  # 2.7x faster than a mixed layout
        return F.conv2d(x, weight, stride=(downy, downx), padding=conv_pad, groups=c)
    x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), stride=(1, downx), padding=(0, conv_pad), groups=c)
    return F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), stride=(downy, 1), padding=(conv_pad, 0), groups=c)


class _Upfirdn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain):
        (upx, upy), (downx, downy) = up, down
        px0, px1, py0, py1 = padding
        plugin = _plugin.get_plugin("upfirdn2d")
        f2 = f.to(x.device)
        y = x
        if f2.ndim == 2:
            y = plugin.upfirdn2d(y, f2, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain)
        else:  # separable: x pass, then y pass, gain split between them
            g = gain ** 0.5
            y = plugin.upfirdn2d(y, f2[None, :], upx, 1, downx, 1, px0, px1, 0, 0, flip_filter, g)
            y = plugin.upfirdn2d(y, f2[:, None], 1, upy, 1, downy, 0, 0, py0, py1, flip_filter, g)
        ctx.save_for_backward(f)
        ctx.config = (x.shape, up, down, padding, flip_filter, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        in_shape, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter, gain = ctx.config
        fw, fh = filter_size(f)
        out_h, out_w = dy.shape[2], dy.shape[3]
        # The adjoint of upfirdn2d is an upfirdn2d with up/down swapped, the filter flipped and this padding.
        grad_padding = [
            fw - px0 - 1, in_shape[3] * upx - out_w * downx + px0 - upx + 1,
            fh - py0 - 1, in_shape[2] * upy - out_h * downy + py0 - upy + 1,
        ]
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _Upfirdn2dCuda.apply(dy, f, (downx, downy), (upx, upy), tuple(grad_padding), not flip_filter, gain)
            assert dx.shape == in_shape
        return dx, None, None, None, None, None, None


def filter2d(x, f, padding=0, flip_filter=False, gain=1.0):
    """Filter `x` with `f`, padding so the output has the input's size (plus `padding`)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1.0):
    """Upsample `x` by `up` with the interpolation filter `f` (output H*up x W*up); gain up**2 keeps the mean."""
    upx, upy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1.0):
    """Downsample `x` by `down` after anti-aliasing with `f` (output H/down x W/down)."""
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)
