"""The synthetic domain's face detector: a small CenterNet-style detector and a landmark refiner, in one network.

1. Detector (whole photo, resized so that its longer side is `input_size` and padded to a multiple of 32): a
   five-stage convolutional backbone (strides 2..32) with a top-down path back to 1/4 of the input; at that resolution
   a heatmap of face centres (one peak per face, at the cell holding its box's centre) and, at each cell, the centre's
   sub-cell offset, the box's log size and the seven points' offsets from the centre (in units of the box's size).
2. Refiner (each face's canvas, cropped from the photo at `crop` x `crop` by the current estimate): a small
   convolutional regressor of the seven points in canvas units, as residuals from their mean positions. Applied twice
   from the detector's estimate; it is what makes landmarks and alignment sub-pixel.

The seven points: the five landmarks (`render.POINT_NAMES`) and the canvas' two `TEMPLATE_POINTS` (the synthetic
alignment). The network is trained on rendered scenes (`stylecli train detector`, stylecli/train/detector.py); the
detector `stylecli.faces.detect.SynthDetector` runs it on photos.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.render import TEMPLATE_POINTS

STRIDE = 4          # heatmap cells per input pixel: 1/4 of the input
NUM_POINTS = 7      # five landmarks + the two template points
MULTIPLE = 32       # input sides are padded to a multiple of the backbone's total stride


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FaceDetectorNet(nn.Module):
    def __init__(self,
                 width: int = 32,        # channels of the first full stage; the backbone widens to 4x, the
                                         # top-down path and heads keep `width`
                 input_size: int = 160,  # the longer side a photo is resized to for detection
                 crop: int = 64,         # the refiner's canvas crop, pixels
                 mean_points: list | None = None):  # [7, 2] canvas positions the refiner's residuals start from;
                                                    # None: the template points and the landmarks' mean
        super().__init__()
        assert crop % 16 == 0, f"crop {crop} must be a multiple of 16"
        if mean_points is None:
            from .align import mean_canvas_points
            mean_points = np.concatenate([mean_canvas_points(), np.array(TEMPLATE_POINTS)]).tolist()
        self.config = {"width": width, "input_size": input_size, "crop": crop, "mean_points": mean_points}
        self.input_size, self.crop = input_size, crop
        w = width
        self.stages = nn.ModuleList([
            _conv(3, w // 2, 2),                                 # 1/2
            nn.Sequential(_conv(w // 2, w, 2), _conv(w, w)),     # 1/4
            nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w)),          # 1/8
            nn.Sequential(_conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w)),      # 1/16
            nn.Sequential(_conv(3 * w, 4 * w, 2), _conv(4 * w, 4 * w)),      # 1/32
        ])
        self.lateral = nn.ModuleList([nn.Conv2d(c, w, 1) for c in (w, 2 * w, 3 * w, 4 * w)])  # 1/4 .. 1/32
        self.smooth = _conv(w, w)
        self.heat = nn.Sequential(_conv(w, w), nn.Conv2d(w, 1, 1))
        self.regress = nn.Sequential(_conv(w, w), nn.Conv2d(w, 4 + 2 * NUM_POINTS, 1))
        # A heatmap that starts near 0.1 everywhere: the focal loss' usual start (CenterNet), not a flood of peaks.
        nn.init.constant_(self.heat[-1].bias, -2.19)
        side = crop // 16
        self.refiner = nn.Sequential(
            _conv(3, 24), _conv(24, 32, 2), _conv(32, 32), _conv(32, 64, 2), _conv(64, 64), _conv(64, 96, 2),
            _conv(96, 96), _conv(96, 128, 2), nn.Flatten(), nn.Linear(128 * side * side, 256), nn.ReLU(inplace=True),
            nn.Linear(256, 2 * NUM_POINTS))
        nn.init.zeros_(self.refiner[-1].weight)  # starts at the mean positions
        nn.init.zeros_(self.refiner[-1].bias)
        self.register_buffer("mean_points", torch.tensor(mean_points, dtype=torch.float32).reshape(NUM_POINTS, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3, H, W] in [-1, 1], H and W multiples of 32 -> (heatmap logits [N, 1, H/4, W/4], regression
        [N, 4 + 14, H/4, W/4]: centre offset (2, cells), log box size (2, cells), points (14, box sizes))."""
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[2] % MULTIPLE == 0 and x.shape[3] % MULTIPLE == 0, \
            f"expected [N, 3, H, W] with sides multiples of {MULTIPLE}, got {tuple(x.shape)}"
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        top = self.lateral[3](features[4])
        for level in (2, 1, 0):  # 1/16, 1/8, 1/4: upsample and add the lateral
            top = F.interpolate(top, scale_factor=2, mode="nearest") + self.lateral[level](features[level + 1])
        top = self.smooth(top)
        return self.heat(top), self.regress(top)

    def refine(self, crops: torch.Tensor) -> torch.Tensor:
        """crops [M, 3, crop, crop] in [-1, 1] (canvases cropped by the current estimate) -> [M, 7, 2] the points in
        the crops' canvas units."""
        assert crops.ndim == 4 and crops.shape[1:] == (3, self.crop, self.crop), f"crops {tuple(crops.shape)}"
        residual = self.refiner(crops).reshape(-1, NUM_POINTS, 2)
        return self.mean_points + 0.1 * residual


@torch.no_grad()
def decode(heat_logits: torch.Tensor, regression: torch.Tensor, threshold: float, max_faces: int = 20) -> list[list]:
    """Per image: the faces the heatmap finds, as (score, centre [2], size [2], points [7, 2]) in input pixels (edge
    coordinates): local maxima of the heatmap (3x3) above `threshold`, at most `max_faces`, highest first."""
    assert heat_logits.ndim == 4 and heat_logits.shape[1] == 1, f"heatmap {tuple(heat_logits.shape)}"
    heat = torch.sigmoid(heat_logits.float())
    peaks = (heat == F.max_pool2d(heat, 3, 1, 1)) & (heat > threshold)
    out = []
    for n in range(heat.shape[0]):
        ys, xs = torch.nonzero(peaks[n, 0], as_tuple=True)
        scores = heat[n, 0, ys, xs]
        order = torch.argsort(scores, descending=True)[:max_faces]
        faces = []
        for k in order.tolist():
            y, x = int(ys[k]), int(xs[k])
            r = regression[n, :, y, x].float()
            centre = (torch.tensor([x, y], dtype=torch.float32) + r[0:2]) * STRIDE
            size = torch.exp(r[2:4].clamp(-5, 8)) * STRIDE
            points = centre + r[4:].reshape(NUM_POINTS, 2) * torch.sqrt(size[0] * size[1])
            faces.append((float(scores[k]), centre.numpy(), size.numpy(), points.numpy()))
        out.append(faces)
    return out
