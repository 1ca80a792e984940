"""IR-SE networks (improved residual units with squeeze-and-excitation, Deng et al. 2019): the backbone of the e4e
encoder and of the ArcFace identity network used as the ID loss on real faces.

Module names follow InsightFace_Pytorch, the layout of the checkpoints pSp and e4e use (`model_ir_se50.pth`:
input_layer, body.i.shortcut_layer / res_layer, output_layer), so those state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 1), 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(max(channels // reduction, 1), channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), SEModule(depth, 16))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def input_layer(stem: int) -> nn.Sequential:
    """conv3x3 3 -> stem, BN, PReLU."""
    return nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem))


def ir_se_body(stem: int, widths, units) -> nn.Sequential:
    """Stages of `units[k]` bottlenecks of width `widths[k]`; the first unit of each stage strides by 2."""
    layers, cin = [], stem
    for width, count in zip(widths, units):
        for i in range(count):
            layers.append(BottleneckIRSE(cin, width, 2 if i == 0 else 1))
            cin = width
    return nn.Sequential(*layers)


class Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class ArcFace(nn.Module):
    """ArcFace IR-SE50 (InsightFace): a 112x112 aligned face -> unit identity embedding [N, 512].

    `embed_aligned` takes faces aligned like FFHQ at any resolution and applies the crop pSp/e4e use: pooled to 256,
    rows 35:223 and columns 32:220, pooled to 112.
    """

    def __init__(self):
        super().__init__()
        self.config = {}
        self.input_layer = input_layer(64)
        self.body = ir_se_body(64, (64, 128, 256, 512), (3, 4, 14, 3))
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), Flatten(), nn.Linear(512 * 7 * 7, 512),
                                          nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1:] == (3, 112, 112), f"ArcFace expects [N, 3, 112, 112], got {tuple(x.shape)}"
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)

    def embed_aligned(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, R, R] in [-1, 1], an FFHQ-aligned face -> [N, 512]."""
        if x.shape[-1] >= 256:
            x = F.adaptive_avg_pool2d(x, 256)
        else:  # smaller packs (tests, previews): upsample first
            x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        return self(F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112))
