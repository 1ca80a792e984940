"""F/W+'s base-code encoder (BDInvert, Kang et al. 2021): a VGG-like network from an image to the coarse generator
feature that replaces the output of the first (upsampling) conv at the base resolution.

Layout, one `nn.Sequential` named `model` as in the official release, so its checkpoint maps onto this class key for
key (`model.N.*`):

    per stage s (widths[s] channels): convs_per_stage x [conv3x3 (bias) + BatchNorm + LeakyReLU(0.2)], AvgPool 2x2
    head: conv3x3 + BatchNorm + LeakyReLU(0.2), conv3x3 to the base code's channels (no BN, no activation: the base
          code is a free feature, and the generator feature it stands for is unbounded)

The official configuration (3 stages of 3 convs, 128/256/512, a 512-channel head; 11 convs and 3 pools, modules
0..33) reads a 128 px input for the 16x16 base code of FFHQ 1024: the input is always base_size * 2^stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2


@dataclass
class BaseEncoderConfig:
    base_size: int = 8                  # spatial size of the base code (the generator resolution it replaces)
    base_channels: int = 128            # channels of the base code (the generator's channels at base_size)
    widths: tuple = (32, 64, 96)        # channels of each stage; every stage ends with a 2x average pool
    convs_per_stage: int = 3            # conv3x3 + BN + LReLU units per stage
    head_channels: int | None = None    # channels of the head's first conv (None: base_channels, as the official)

    @property
    def input_size(self) -> int:
        """The size images are resized to: the base size times 2 per pooling stage."""
        return self.base_size * 2 ** len(self.widths)

    @classmethod
    def official(cls) -> "BaseEncoderConfig":
        """BDInvert's FFHQ 1024 encoder: 128 px in, 512 x 16 x 16 out."""
        return cls(base_size=16, base_channels=512, widths=(128, 256, 512), convs_per_stage=3)

    @classmethod
    def for_generator(cls, G, base_size: int, **overrides) -> "BaseEncoderConfig":
        """The synthface-64 configuration for generator G's feature at `base_size` (its channel count there)."""
        return cls(**{"base_size": base_size, "base_channels": G.synthesis.channels[base_size], **overrides})


def _conv_unit(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(LRELU_SLOPE)]


class BaseCodeEncoder(nn.Module):
    def __init__(self, **config):                 # the fields of BaseEncoderConfig (a pack's manifest stores them)
        super().__init__()
        cfg = BaseEncoderConfig(**config)
        assert cfg.base_size >= 4 and cfg.convs_per_stage >= 1 and len(cfg.widths) >= 1, f"bad config {cfg}"
        self.cfg = cfg
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
        layers: list[nn.Module] = []
        channels = 3
        for width in cfg.widths:
            for _ in range(cfg.convs_per_stage):
                layers += _conv_unit(channels, width)
                channels = width
            layers.append(nn.AvgPool2d(2))
        head = cfg.head_channels or cfg.base_channels
        layers += _conv_unit(channels, head)
        layers.append(nn.Conv2d(head, cfg.base_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, R, R] in [-1, 1] at any size R -> base codes [N, base_channels, base_size, base_size].

        1. resize to the encoder's input (area when shrinking, bilinear when enlarging);
        2. run the stages and the head.
        """
        cfg = self.cfg
        assert images.ndim == 4 and images.shape[1] == 3 and images.shape[2] == images.shape[3], \
            f"expected [N, 3, R, R], got {tuple(images.shape)}"
        size = cfg.input_size
        if images.shape[-1] > size:
            images = F.interpolate(images, size=(size, size), mode="area")
        elif images.shape[-1] < size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        base = self.model(images)
        assert base.shape[1:] == (cfg.base_channels, cfg.base_size, cfg.base_size), tuple(base.shape)
        return base
