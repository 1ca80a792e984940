"""The face region of aligned faces: where an edit may change the face (SFE's `--edit-mask face`).

SFE (section 4.4 of the paper) zeroes the editor's Delta outside the face, from a face mask of the source image, so
that an edit leaves hair and background alone. Two sources, by the pack's domain:
- a synthetic-domain pack: its `face_region` network (`FaceRegionNet`, trained by `stylecli train faceregion` on the
  renderer's own face region, `render_face_region`);
- a real-face pack: facexlib's face parser (`faces/parse.py`), its face classes (skin, brows, eyes, glasses, nose,
  mouth, lips) with the parts away from the crop's middle dropped, when its weights are found offline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """conv3x3 (strided), BN, ReLU, conv3x3, BN, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FaceRegionNet(nn.Module):
    """A small U-Net: aligned faces [N, 3, R, R] in [-1, 1] -> face-region logits [N, 1, R, R] (read at input_size,
    resized back to R)."""

    def __init__(self, input_size: int = 64,   # resolution the network reads (images of other sizes are resized)
                 width: int = 16):              # channels of the first stage (then 2x and 4x at 1/2 and 1/4)
        super().__init__()
        assert input_size % 8 == 0, f"input_size {input_size}: a multiple of 8"
        self.config = dict(input_size=input_size, width=width)
        c1, c2, c3 = width, 2 * width, 4 * width
        self.down1, self.down2, self.down3 = _block(3, c1), _block(c1, c2, 2), _block(c2, c3, 2)
        self.middle = _block(c3, c3, 2)
        self.up3, self.up2, self.up1 = _block(2 * c3, c3), _block(c3 + c2, c2), _block(c2 + c1, c1)
        self.head = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """1. resize to input_size; 2. three stages down and a middle one at 1/8; 3. up with the skips; 4. logits,
        resized back."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N, 3, R, R], got {tuple(x.shape)}"
        size, side = self.config["input_size"], x.shape[-1]
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="area" if side > size else "bilinear",
                              **({} if side > size else {"align_corners": False}))
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
        u = self.up3(torch.cat([up(self.middle(d3)), d3], dim=1))
        u = self.up2(torch.cat([up(u), d2], dim=1))
        u = self.up1(torch.cat([up(u), d1], dim=1))
        logits = self.head(u)
        if side != size:
            logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        return logits


class FaceRegionUnavailable(Exception):
    """One line: why this pack has no face region (no network, no parser weights)."""


NETWORK = "face_region"


class FaceRegions:
    """`masks(images)`: the face region of aligned faces [N, 3, R, R] in [-1, 1] as [N, 1, R, R] in [0, 1]. Build it
    with `FaceRegions.open(pack)`."""

    def __init__(self, masks):
        self._masks = masks

    @classmethod
    def open(cls, pack, device="cpu") -> "FaceRegions":
        """The pack's source (module docstring); FaceRegionUnavailable names what is missing and how to get it."""
        from .photos import recipe_of

        if recipe_of(pack) == "synthetic":
            if not pack.has(NETWORK):
                raise FaceRegionUnavailable(f"pack {pack.name!r} has no {NETWORK} network; train it with `stylecli "
                                            f"train faceregion` and add it with `stylecli weights from-runs`")
            net = pack.load(NETWORK, device)
            return cls(lambda images: torch.sigmoid(net(images.to(device, torch.float32))))
        from .parse import ParserUnavailable, missing_message, open_parser
        try:
            parser = open_parser("parser", pack, device=device)
        except ParserUnavailable as exc:
            raise FaceRegionUnavailable(str(exc).replace("--paste-mask parser: ", "").replace(
                " (--paste-mask ellipse needs none)", "")) from None
        if parser is None:  # pragma: no cover - open_parser("parser") raises instead
            raise FaceRegionUnavailable(missing_message(pack))
        return cls(lambda images: _parsed_regions(parser, images))

    def masks(self, images: torch.Tensor) -> torch.Tensor:
        assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, R, R], got {tuple(images.shape)}"
        with torch.no_grad():
            masks = self._masks(images).to(images.device, torch.float32)
        assert masks.shape == (len(images), 1, *images.shape[-2:]), tuple(masks.shape)
        return masks


def _parsed_regions(parser, images: torch.Tensor) -> torch.Tensor:
    """[N, 1, R, R]: the parser's face region (`parse.face_region`) of each image, area-resized to R."""
    import numpy as np

    from ..imageio import tensor_to_images
    from .parse import face_region

    regions = [face_region(labels, parser.model) for labels in parser.labels(tensor_to_images(images))]
    masks = torch.from_numpy(np.stack(regions).astype(np.float32))[:, None]
    return F.interpolate(masks, size=images.shape[-2:], mode="area")
