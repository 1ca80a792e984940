"""The e4e encoder (Tov et al. 2021): IR-SE backbone (`stylecli.irse`), feature-pyramid taps, one map2style block per
w row, and progressive deltas over a single base code w0.

Module names follow the official implementation (input_layer, body.i.shortcut_layer/res_layer, styles.i.convs/linear,
latlayer1/2), so its released checkpoint maps onto this class by stripping the `encoder.` prefix. The official FFHQ
configuration is `EncoderConfig.ffhq()`; the synthface-64 pack uses a narrower, shallower one at 64x64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...irse import input_layer, ir_se_body


@dataclass
class EncoderConfig:
    input_size: int = 64                       # encoder input resolution
    widths: tuple = (32, 64, 128, 128)         # channels of the four IR-SE stages (the last = FPN width)
    units: tuple = (2, 2, 4, 2)                # bottleneck units per stage (first one strides by 2)
    stem: int = 32                             # stem channels
    w_dim: int = 256                           # W dimensionality (= FPN width)
    num_ws: int = 10                           # rows of W+
    coarse_ind: int = 3                        # first w row driven by the middle FPN level
    middle_ind: int = 7                        # first w row driven by the fine FPN level

    @classmethod
    def ffhq(cls) -> "EncoderConfig":
        """The official e4e_ffhq_encode configuration (IR-SE50 at 256x256, 18 x 512)."""
        return cls(input_size=256, widths=(64, 128, 256, 512), units=(3, 4, 14, 3), stem=64, w_dim=512, num_ws=18,
                   coarse_ind=3, middle_ind=7)

    @classmethod
    def for_generator(cls, img_resolution: int, w_dim: int, num_ws: int) -> "EncoderConfig":
        """Rows split by resolution as in e4e: coarse = 4-8 px layers, middle = 16-32 px, fine = the rest."""
        return cls(input_size=min(img_resolution, 256), w_dim=w_dim, num_ws=num_ws, coarse_ind=3, middle_ind=7)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weight scaled by 1/sqrt(in) at run time)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """map2style: log2(spatial) stride-2 convs down to 1x1, then an equalised linear layer to w_dim."""

    def __init__(self, in_c: int, out_c: int, spatial: int, w_dim: int | None = None):
        super().__init__()
        self.out_c = out_c
        layers = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, w_dim or out_c)

    def forward(self, x):
        return self.linear(self.convs(x).reshape(-1, self.out_c))


class Encoder4Editing(nn.Module):
    def __init__(self, **config):
        super().__init__()
        cfg = EncoderConfig(**config)
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
        self.cfg = cfg
        self.input_layer = input_layer(cfg.stem)
        self.body = ir_se_body(cfg.stem, cfg.widths, cfg.units)
        # Taps at the ends of stages 2, 3 and 4 (units 6, 20, 23 in IR-SE50).
        ends = [sum(cfg.units[:k + 1]) - 1 for k in range(4)]
        self.taps = (ends[1], ends[2], ends[3])
        s3 = cfg.input_size // 16          # c3's spatial size (16 at 256 input)
        fpn = cfg.widths[3]                # FPN and map2style width (= w_dim in the official configuration)
        self.styles = nn.ModuleList(
            GradualStyleBlock(fpn, fpn, s3 if i < cfg.coarse_ind else s3 * 2 if i < cfg.middle_ind else s3 * 4, cfg.w_dim)
            for i in range(cfg.num_ws))
        self.latlayer1 = nn.Conv2d(cfg.widths[2], fpn, 1)
        self.latlayer2 = nn.Conv2d(cfg.widths[1], fpn, 1)
        self.register_buffer("latent_avg", torch.zeros(cfg.num_ws, cfg.w_dim))
        self.progressive_stage = cfg.num_ws    # number of active rows (w0 plus stage - 1 deltas); all by default

    def deltas_and_base(self, x: torch.Tensor, features: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3, S, S] in [-1, 1] -> (w0 [N, w_dim], deltas [N, num_ws, w_dim], zero for inactive rows).

        features -- if a dict, it receives the backbone features other methods tap (SAMM), keyed by their spatial
                    size: the stem output (S) and the ends of stages 1-3 (S/2, S/4, S/8).
        """
        cfg = self.cfg
        assert x.ndim == 4 and x.shape[1:] == (3, cfg.input_size, cfg.input_size), \
            f"encoder expects [N, 3, {cfg.input_size}, {cfg.input_size}], got {tuple(x.shape)}"
        x = self.input_layer(x)
        stage_ends = [sum(cfg.units[:k + 1]) - 1 for k in range(3)]
        if features is not None:
            features[x.shape[-1]] = x
        c1 = c2 = c3 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if features is not None and i in stage_ends:
                features[x.shape[-1]] = x
            if i == self.taps[0]:
                c1 = x
            elif i == self.taps[1]:
                c2 = x
            elif i == self.taps[2]:
                c3 = x
        w0 = self.styles[0](c3)
        deltas = torch.zeros(x.shape[0], cfg.num_ws, cfg.w_dim, device=x.device, dtype=w0.dtype)
        features = c3
        p2 = None
        for i in range(1, min(self.progressive_stage, cfg.num_ws)):
            if i == cfg.coarse_ind:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == cfg.middle_ind:
                features = _upsample_add(p2, self.latlayer2(c1))
            deltas[:, i] = self.styles[i](features)
        return w0, deltas

    def forward(self, x: torch.Tensor, features: dict | None = None) -> torch.Tensor:
        """W+ codes [N, num_ws, w_dim]: w0 repeated, plus the active deltas, plus latent_avg (`features`: see
        `deltas_and_base`)."""
        w0, deltas = self.deltas_and_base(x, features)
        return w0.unsqueeze(1) + deltas + self.latent_avg

    def feature_channels(self) -> dict[int, int]:
        """Channels of the tapped features by spatial size (see `deltas_and_base`)."""
        S, w = self.cfg.input_size, self.cfg.widths
        return {S: self.cfg.stem, S // 2: w[0], S // 4: w[1], S // 8: w[2]}


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y
