"""The domain-guided encoder of IDInvert (Zhu et al. 2020): image -> W+ in one forward pass.

The paper's architecture (its official 256 px FFHQ configuration is `EncoderConfig.official_256()`):
  1. stem: conv3x3 -> BN -> LeakyReLU at the input resolution;
  2. one residual block per resolution halving: a 2x average pool, then conv3x3-BN-LReLU-conv3x3-BN plus a shortcut
     (1x1 conv + BN where the width changes), LeakyReLU; down to 4x4;
  3. Linear(C * 4 * 4 -> num_ws * w_dim) + BatchNorm1d, reshaped to W+ [N, num_ws, w_dim].
The final BN is what lets one linear layer write codes with W's per-element means and spreads: its affine starts at
the statistics of the generator's W (`init_output`), so an untrained encoder already writes W-like codes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

LRELU_SLOPE = 0.2  # the official encoder's leaky ReLU


@dataclass
class EncoderConfig:
    input_size: int = 64                   # input resolution (a power of two >= 8); images are resized to it
    stem: int = 32                         # channels of the stem conv at the input resolution
    widths: tuple = (64, 128, 128, 128)    # channels of the residual blocks, one per 2x pool, down to 4x4
    w_dim: int = 256                       # W dimensionality of the generator
    num_ws: int = 10                       # rows of W+ the generator takes

    def __post_init__(self):
        blocks = int(math.log2(self.input_size)) - 2
        assert 2 ** (blocks + 2) == self.input_size and blocks >= 1, f"input_size {self.input_size}: a power of 2 >= 8"
        assert len(self.widths) == blocks, \
            f"input_size {self.input_size} needs {blocks} residual blocks (down to 4x4), got widths {self.widths}"

    @classmethod
    def official_256(cls) -> "EncoderConfig":
        """The official FFHQ 256 configuration: stem 64, six blocks 128..1024, Linear(1024*4*4 -> 14*512) + BN."""
        return cls(input_size=256, stem=64, widths=(128, 256, 512, 1024, 1024, 1024), w_dim=512, num_ws=14)

    @classmethod
    def for_generator(cls, img_resolution: int, w_dim: int, num_ws: int) -> "EncoderConfig":
        """A configuration for a generator: the 64 px widths below 256 px, the official ones from 256 px up (the
        encoder reads at most 256 px, as the official one does at FFHQ 1024)."""
        size = min(img_resolution, 256)
        if size == 256:
            return cls(input_size=256, stem=64, widths=(128, 256, 512, 1024, 1024, 1024), w_dim=w_dim, num_ws=num_ws)
        blocks = int(math.log2(size)) - 2
        base = cls().widths
        widths = tuple(base[min(i, len(base) - 1)] for i in range(blocks))
        return cls(input_size=size, stem=cls().stem, widths=widths, w_dim=w_dim, num_ws=num_ws)


class ResidualBlock(nn.Module):
    """2x average pool, then a residual unit at the pooled resolution (the pool first: the official block order)."""

    def __init__(self,
                 in_channels: int,     # channels of the input feature map
                 out_channels: int):   # channels written (a 1x1 projection on the shortcut when they differ)
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.shortcut = (nn.Identity() if in_channels == out_channels else
                         nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)))
        self.act = nn.LeakyReLU(LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        y = self.bn1(self.conv1(self.act(self.bn0(self.conv0(x)))))
        return self.act(y + self.shortcut(x))


class DomainGuidedEncoder(nn.Module):
    def __init__(self, **config):   # EncoderConfig fields (a pack stores them as the network's config)
        super().__init__()
        cfg = EncoderConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        self.cfg = cfg
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.stem, 3, 1, 1, bias=False), nn.BatchNorm2d(cfg.stem),
                                  nn.LeakyReLU(LRELU_SLOPE))
        channels = (cfg.stem, *cfg.widths)
        self.blocks = nn.Sequential(*(ResidualBlock(channels[i], channels[i + 1]) for i in range(len(cfg.widths))))
        self.fc = nn.Linear(cfg.widths[-1] * 4 * 4, cfg.num_ws * cfg.w_dim)
        self.out_norm = nn.BatchNorm1d(cfg.num_ws * cfg.w_dim)

    @torch.no_grad()
    def init_output(self, w_mean: torch.Tensor, w_std: torch.Tensor) -> None:
        """Start the output BN's affine at W's statistics (w_mean, w_std [w_dim], over mapped samples): the codes of
        an untrained encoder then have W's per-element mean and spread, every row alike."""
        cfg = self.cfg
        assert w_mean.shape == w_std.shape == (cfg.w_dim,), f"expected [{cfg.w_dim}] statistics"
        self.out_norm.bias.copy_(w_mean.repeat(cfg.num_ws))
        self.out_norm.weight.copy_(w_std.repeat(cfg.num_ws))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, S, S] in [-1, 1], S = input_size -> W+ codes [N, num_ws, w_dim]."""
        cfg = self.cfg
        assert x.ndim == 4 and x.shape[1:] == (3, cfg.input_size, cfg.input_size), \
            f"encoder expects [N, 3, {cfg.input_size}, {cfg.input_size}], got {tuple(x.shape)}"
        features = self.blocks(self.stem(x))
        assert features.shape[1:] == (cfg.widths[-1], 4, 4)
        codes = self.out_norm(self.fc(features.flatten(1)))
        return codes.view(-1, cfg.num_ws, cfg.w_dim)
