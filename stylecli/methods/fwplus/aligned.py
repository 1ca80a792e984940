"""F/W+ edits made in the aligned frame and carried back to the moved head (`--edit-mode aligned`, the default).

BDInvert edits a moved head by moving the W+ rows after the base code. At 64 px the base code (8 px) already draws
the mouth, and the optimised base code lies off the generator's feature manifold, on which those rows act weakly:
the smile moves +0.39 std on `geometric` (docs/fwplus.md). Here the edit is made where the generator edits well,
on the face brought to the aligned frame, and only its change is carried back:

  1. at inversion, the pack's face detector finds the head in the frame (padded by half its side, so a head at the
     border is found too) and gives the aligned crop's place A (crop -> frame, the pack's alignment recipe); e4e
     inverts the crop: code a;
  2. an edit by step d: Delta = G(a + d) - G(a), the edit's change of the aligned face, times the pack's feathered
     face mask; warped into the frame by A and added to the F/W+ reconstruction. Pixels the warped mask does not
     reach keep the reconstruction exactly; the base code and the rows stay as they were, so the head keeps its
     place, size and tilt.
A frame in which no face is found is edited the paper's way (rows after the base code).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...packs import Pack
from ..e4e import NETWORK as E4E_NETWORK
from ..e4e.method import encode


def crop_to_frame(matrix: torch.Tensor, crop: int, frame: int) -> torch.Tensor:
    """[N, 2, 3] affine_grid thetas mapping the aligned crop's normalised coordinates to the frame's, from
    `matrix` [N, 2, 3] (crop edge coordinates in pixels -> frame edge coordinates, as `Alignment.matrix`)."""
    linear, shift = matrix[:, :, :2], matrix[:, :, 2]
    centre = linear @ torch.full((2,), crop / 2, dtype=matrix.dtype)   # the crop's centre, minus the shift
    return torch.cat([linear * (crop / frame), ((2 / frame) * (centre + shift) - 1)[:, :, None]], dim=2)


def invert_theta(theta: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] -> the inverse affine maps [N, 2, 3]."""
    full = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0], dtype=theta.dtype).expand(len(theta), 1, 3)], dim=1)
    return torch.linalg.inv(full)[:, :2]


class AlignedUnavailable(Exception):
    """The pack lacks what aligned edits need (a face detector, an e4e encoder); one line."""


class AlignedEdits:
    """Finds heads in frames and carries edits of their aligned crops back (see the module docstring)."""

    def __init__(self, pack: Pack, device: str | torch.device = "cpu"):
        from ...faces.align import face_mask
        from ...faces.detect import DetectorUnavailable, open_detector
        from ...faces.photos import recipe_of

        if not pack.has(E4E_NETWORK):
            raise AlignedUnavailable(f"pack {pack.name!r} has no {E4E_NETWORK} to edit the aligned crops with")
        self.recipe = recipe_of(pack)
        try:
            self.detector = open_detector("auto", pack, self.recipe, device)
        except DetectorUnavailable as exc:
            raise AlignedUnavailable(f"no face detector: {exc}") from None
        self.device = torch.device(device)
        self.G = pack.generator(device)
        self.E = pack.load(E4E_NETWORK, device).to(memory_format=torch.channels_last)  # see e4e's `encode`
        self.size = self.G.img_resolution
        self.mask = torch.from_numpy(face_mask(self.size, self.recipe)).to(self.device)[None, None]

    @torch.no_grad()
    def locate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, R, R] in [-1, 1] -> (matrices [N, 2, 3] float64, crop -> frame edge coordinates, zero
        where no face was found; e4e codes [N, num_ws, w_dim] of the aligned crops, zero where none)."""
        from ...faces.align import align
        from ...imageio import tensor_to_images

        R, pad = self.size, self.size // 2
        padded = F.pad(images.float().cpu(), (pad,) * 4, mode="replicate")
        matrices = torch.zeros(len(images), 2, 3, dtype=torch.float64)
        for i, photo in enumerate(tensor_to_images(padded)):
            faces = self.detector.detect(photo)
            if faces:
                matrix = align(max(faces, key=lambda f: f.area), R, self.recipe).matrix.copy()
                matrix[:, 2] -= pad  # padded photo -> frame
                matrices[i] = torch.from_numpy(np.asarray(matrix, dtype=np.float64))
        codes = torch.zeros(len(images), self.G.num_ws, self.G.w_dim, device=self.device)
        found = found_mask(matrices)
        if found.any():
            grid = F.affine_grid(crop_to_frame(matrices[found], R, R).float(), [int(found.sum()), 3, R, R],
                                 align_corners=False)
            crops = F.grid_sample(images[found].float().cpu(), grid, mode="bilinear", padding_mode="border",
                                  align_corners=False)
            codes[found.to(self.device)] = encode(self.E, crops.to(self.device))[0]
        return matrices, codes

    @torch.no_grad()
    def carry(self, frames: torch.Tensor, matrices: torch.Tensor, codes: torch.Tensor, steps: torch.Tensor
              ) -> torch.Tensor:
        """frames [N, 3, R, R] (the reconstructions) plus each aligned edit's change: the change G(a + step) - G(a)
        [N, 3, R, R] of the crop, masked by the face mask and warped into the frame by the matrix. Frames of
        zero matrices come back as they are."""
        found = found_mask(matrices).to(frames.device)
        out = frames.clone()
        if not found.any():
            return out
        a, d = codes[found].to(self.device), steps[found].to(self.device)
        change = (self.G.synthesis(a + d, noise_mode="const") - self.G.synthesis(a, noise_mode="const")) * self.mask
        theta = invert_theta(crop_to_frame(matrices[found.cpu()], self.size, frames.shape[-1])).float()
        grid = F.affine_grid(theta, [len(a), 3, *frames.shape[-2:]], align_corners=False).to(self.device)
        warped = F.grid_sample(change, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[found] = frames[found] + warped.to(frames.device)
        return out


def found_mask(matrices: torch.Tensor) -> torch.Tensor:
    """[N] bool: the frames whose aligned crop was found (a non-zero matrix)."""
    return matrices.flatten(1).abs().sum(dim=1) > 0
