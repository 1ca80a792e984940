"""StyleGAN2 (config-f) generator and discriminator, parameterised by resolution and channel widths.

Faithful to NVIDIA's stylegan2-ada-pytorch networks (same parameter names and arithmetic), so official checkpoints
load with a near-identity key map (see stylecli.packs.convert). Beyond plain generation, the synthesis network exposes
what inversion methods need (`SynthesisNetwork.synthesize`):

- the feature map after any synthesis layer (`capture`),
- synthesis started from a given feature after a given layer with the remaining w rows (`start_after`, `x`, `img`),
  where `img=None` drops the coarse RGB skip,
- an optional `layer_hook(name, x)` that may replace the pre-activation feature inside any synthesis layer
  (after the modulated convolution and noise, before bias + activation).

Layers are named "b{res}.conv0" (the upsampling conv; absent at 4x4) and "b{res}.conv1"; `layer_names` lists them.
"b{res}.img" names the RGB skip image accumulated up to and including block `res` (capturable, and the `img` to pass
when starting in block 2*res).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .layers import (RESAMPLE_FILTER, Conv2dLayer, FullyConnectedLayer, modulated_conv2d, normalize_2nd_moment)
from .ops import bias_act, upfirdn2d

LayerHook = Callable[[str, torch.Tensor], torch.Tensor]
NOISE_MODES = ("const", "random", "none")


def channels_per_resolution(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """{res: min(channel_base // res, channel_max)} for res = 4, 8, ..., resolution."""
    log2 = int(np.log2(resolution))
    assert resolution == 2 ** log2 and resolution >= 4, f"resolution must be a power of two >= 4, not {resolution}"
    return {2 ** i: min(channel_base // 2 ** i, channel_max) for i in range(2, log2 + 1)}


# ----------------------------------------------------------------------------------------------------------------
# Mapping network

class MappingNetwork(nn.Module):
    def __init__(self,
                 z_dim: int,                   # input latent (Z) dimensionality
                 w_dim: int,                   # intermediate latent (W) dimensionality
                 num_ws: int,                  # number of w rows to broadcast to
                 num_layers: int = 8,          # number of fully connected layers
                 activation: str = "lrelu",    # activation of every layer
                 lr_multiplier: float = 0.01,  # learning-rate multiplier of the layers
                 w_avg_beta: float = 0.995):   # decay of the running average of w during training
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers, self.w_avg_beta = z_dim, w_dim, num_ws, num_layers, w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim]; truncation pulls the first `truncation_cutoff` rows to w_avg."""
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z {tuple(z.shape)} vs z_dim {self.z_dim}"
        x = normalize_2nd_moment(z.to(torch.float32))
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws


# ----------------------------------------------------------------------------------------------------------------
# Synthesis network

class SynthesisLayer(nn.Module):
    def __init__(self,
                 name: str,                    # "b{res}.conv{i}", passed to layer hooks
                 in_channels: int,             # number of input channels
                 out_channels: int,            # number of output channels
                 w_dim: int,                   # W dimensionality
                 resolution: int,              # output resolution
                 kernel_size: int = 3,         # convolution kernel size
                 up: int = 1,                  # integer upsampling factor
                 use_noise: bool = True,       # add per-pixel noise?
                 activation: str = "lrelu",    # activation function
                 resample_filter=RESAMPLE_FILTER,  # low-pass filter for upsampling
                 conv_clamp: float | None = None):  # clamp the output to +-this value; None disables
        super().__init__()
        self.name, self.in_channels, self.out_channels = name, in_channels, out_channels
        self.resolution, self.up, self.use_noise, self.activation, self.conv_clamp = resolution, up, use_noise, activation, conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = bias_act.ACTIVATIONS[activation].default_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1.0,
                layer_hook: LayerHook | None = None) -> torch.Tensor:
        """x [N, C_in, R/up, R/up], w [N, w_dim] -> [N, C_out, R, R]."""
        in_res = self.resolution // self.up
        assert x.shape[1:] == (self.in_channels, in_res, in_res), f"{self.name}: got {tuple(x.shape)}"
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        # flip_weight=(up == 1) follows the official arithmetic: true convolution in upsampling layers.
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        if layer_hook is not None:
            x = layer_hook(self.name, x)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        # x is this layer's own temporary, so inference may overwrite it.
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp,
                                 inplace=True)


class ToRGBLayer(nn.Module):
    def __init__(self,
                 in_channels: int,             # number of input channels
                 out_channels: int,            # number of image channels
                 w_dim: int,                   # W dimensionality
                 kernel_size: int = 1,         # convolution kernel size
                 conv_clamp: float | None = None):  # clamp the output to +-this value; None disables
        super().__init__()
        self.in_channels, self.conv_clamp = in_channels, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    def __init__(self,
                 in_channels: int,             # input channels, 0 for the first (constant-input) block
                 out_channels: int,            # output channels
                 w_dim: int,                   # W dimensionality
                 resolution: int,              # resolution of this block
                 img_channels: int,            # number of output image channels
                 resample_filter=RESAMPLE_FILTER,  # low-pass filter for upsampling
                 conv_clamp: float | None = None,  # clamp of every conv output; None disables
                 **layer_kwargs):              # arguments for SynthesisLayer
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(resample_filter))
        prefix = f"b{resolution}"
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(f"{prefix}.conv0", in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
        self.conv1 = SynthesisLayer(f"{prefix}.conv1", out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    @property
    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]


@dataclass
class SynthesisResult:
    img: torch.Tensor | None                     # [N, img_channels, R, R], None when stopped early
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # captured layer outputs by layer name


class SynthesisNetwork(nn.Module):
    def __init__(self,
                 w_dim: int,                   # W dimensionality
                 img_resolution: int,          # output resolution
                 img_channels: int = 3,        # number of output channels
                 channel_base: int = 32768,    # overall multiplier of the channel counts
                 channel_max: int = 512,       # maximum channels of any layer
                 **block_kwargs):              # arguments for SynthesisBlock
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = list(self.channels)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, self.channels[res], w_dim, res, img_channels, **block_kwargs)
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last toRGB; the others share their w with the next block's first conv
        self.layer_names = [layer.name for res in self.block_resolutions for layer in self.block(res).layers]

    def block(self, res: int) -> SynthesisBlock:
        return getattr(self, f"b{res}")

    @property
    def resample_filter(self) -> torch.Tensor:
        # A property, not a copy: a tensor attribute would stay behind on .to(device) while the buffer moves.
        return self.block(4).resample_filter

    def layer(self, name: str) -> SynthesisLayer:
        if name not in self.layer_names:
            raise KeyError(f"unknown synthesis layer {name!r}; layers are {', '.join(self.layer_names)}")
        block, conv = name.split(".")
        return getattr(getattr(self, block), conv)

    def w_index(self, name: str) -> int:
        """Row of ws that drives layer `name`."""
        return self.layer_names.index(name)

    def feature_shape(self, name: str) -> tuple[int, int, int]:
        layer = self.layer(name)
        return layer.out_channels, layer.resolution, layer.resolution

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const", *,
                   start_after: str | None = None,      # begin after this layer, from `x` (and `img`)
                   x: torch.Tensor | None = None,       # [N, C, R, R] output of layer `start_after`
                   img: torch.Tensor | None = None,     # "b{res/2}.img" skip entering start_after's block; None drops it
                   capture: tuple[str, ...] = (),       # layer names whose outputs to return
                   stop_after: str | None = None,       # stop (no image) after this layer
                   layer_hook: LayerHook | None = None,
                   ) -> SynthesisResult:
        """Run the synthesis network on ws [N, num_ws, w_dim] (rows before the start are ignored)."""
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), f"ws {tuple(ws.shape)} vs {(self.num_ws, self.w_dim)}"
        assert noise_mode in NOISE_MODES, f"noise_mode must be one of {NOISE_MODES}"
        for name in tuple(n for n in (start_after, stop_after) if n is not None):
            self.layer(name)  # validates the name
        image_names = [f"b{res}.img" for res in self.block_resolutions]
        for name in capture:
            if name not in image_names:
                self.layer(name)
        if start_after is not None:
            assert x is not None and x.shape[1:] == self.feature_shape(start_after), \
                f"start feature {None if x is None else tuple(x.shape)} vs {self.feature_shape(start_after)}"
        ws = ws.to(torch.float32)
        result = SynthesisResult(img=None)
        started = start_after is None
        for res in self.block_resolutions:
            block = self.block(res)
            for layer in block.layers:
                if not started:
                    if layer.name == start_after:
                        started = True
                    continue
                if layer.name == "b4.conv1":
                    x = block.const.to(ws.dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
                if x.device.type == "cpu":
                    # oneDNN convolutions are up to 1.6x faster on channels-last tensors; later ops keep the format.
                    x = x.contiguous(memory_format=torch.channels_last)
                x = layer(x, ws[:, self.w_index(layer.name)], noise_mode=noise_mode, layer_hook=layer_hook)
                if layer.name in capture:
                    result.features[layer.name] = x
                if layer.name == stop_after:
                    return result
            if not started:
                continue
            if img is not None:
                img = upfirdn2d.upsample2d(img, self.resample_filter)
            # toRGB of block k shares its w with the first conv of block k + 1.
            y = block.torgb(x, ws[:, self.w_index(block.layers[-1].name) + 1])
            img = y if img is None else img + y
            if f"b{res}.img" in capture:
                result.features[f"b{res}.img"] = img
        result.img = img
        return result

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        return self.synthesize(ws, noise_mode).img


class Generator(nn.Module):
    def __init__(self,
                 z_dim: int = 512,             # input latent (Z) dimensionality
                 w_dim: int = 512,             # intermediate latent (W) dimensionality
                 img_resolution: int = 1024,   # output resolution
                 img_channels: int = 3,        # number of output channels
                 mapping_layers: int = 8,      # depth of the mapping network
                 channel_base: int = 32768,    # overall multiplier of the channel counts
                 channel_max: int = 512,       # maximum channels of any layer
                 conv_clamp: float | None = None):  # clamp of every conv output; None disables (config-f)
        super().__init__()
        self.config = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                           mapping_layers=mapping_layers, channel_base=channel_base, channel_max=channel_max,
                           conv_clamp=conv_clamp)
        self.z_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, w_dim, img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base=channel_base,
                                          channel_max=channel_max, conv_clamp=conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_layers=mapping_layers)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const") -> torch.Tensor:
        """z [N, z_dim] -> images [N, img_channels, R, R] in about [-1, 1]."""
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg


# ----------------------------------------------------------------------------------------------------------------
# Discriminator

class DiscriminatorBlock(nn.Module):
    def __init__(self,
                 in_channels: int,             # input channels, 0 for the first block (which reads the image)
                 tmp_channels: int,            # channels of the intermediate layers
                 out_channels: int,            # output channels
                 resolution: int,              # resolution of this block's input
                 img_channels: int,            # number of input image channels
                 activation: str = "lrelu",    # activation function
                 resample_filter=RESAMPLE_FILTER,  # low-pass filter for downsampling
                 conv_clamp: float | None = None):  # clamp of every conv output; None disables
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        kwargs = dict(activation=activation, conv_clamp=conv_clamp)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, **kwargs)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, **kwargs)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, resample_filter=resample_filter, **kwargs)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2, resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None) -> torch.Tensor:
        if self.in_channels == 0:
            assert img is not None and img.shape[1:] == (self.img_channels, self.resolution, self.resolution), \
                f"image {None if img is None else tuple(img.shape)} vs {(self.img_channels, self.resolution, self.resolution)}"
            x = self.fromrgb(img)
        # Residual: both paths scaled by sqrt(1/2) so the sum keeps the magnitude.
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y + x


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        assert n % g == 0, f"batch {n} must be divisible by the minibatch-stddev group {g}"
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)                 # [G, n/G, F, c, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)          # variance over each group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])             # [n/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)         # [n, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self,
                 in_channels: int,             # number of input channels
                 resolution: int = 4,          # resolution of this block
                 mbstd_group_size: int = 4,    # group size of the minibatch-stddev layer
                 mbstd_num_channels: int = 1,  # features of the minibatch-stddev layer
                 activation: str = "lrelu",    # activation function
                 conv_clamp: float | None = None):  # clamp of the conv output; None disables
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (self.in_channels, self.resolution, self.resolution), f"got {tuple(x.shape)}"
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))


class Discriminator(nn.Module):
    def __init__(self,
                 img_resolution: int = 1024,   # input resolution
                 img_channels: int = 3,        # number of input channels
                 channel_base: int = 32768,    # overall multiplier of the channel counts
                 channel_max: int = 512,       # maximum channels of any layer
                 mbstd_group_size: int = 4,    # group size of the minibatch-stddev layer
                 conv_clamp: float | None = None):  # clamp of every conv output; None disables
        super().__init__()
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
                           channel_max=channel_max, mbstd_group_size=mbstd_group_size, conv_clamp=conv_clamp)
        self.img_resolution, self.img_channels = img_resolution, img_channels
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = [res for res in reversed(channels) if res > 4]
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            setattr(self, f"b{res}", DiscriminatorBlock(in_channels, channels[res], channels[res // 2], res, img_channels,
                                                        conv_clamp=conv_clamp))
        self.b4 = DiscriminatorEpilogue(channels[4], mbstd_group_size=mbstd_group_size, conv_clamp=conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, C, R, R] -> logits [N, 1]."""
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x)
