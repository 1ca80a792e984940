"""Measures that involve masks: PSNR over a region of the image, and a method's invertibility mask against the
ground-truth masks of a set (`ood`: exactly what was added to the face).

Ground-truth masks are bool [N, 1, R, R] (True = added, out of the domain); a method's mask is [N, 1, R, R] in [0, 1]
(1 = taken from the input). They answer the same question, "which pixels are not the generator's", so the
predicted mask thresholded at MASK_THRESHOLD is compared with the ground truth directly.
"""

from __future__ import annotations

import torch

MASK_THRESHOLD = 0.5  # a predicted pixel counts as "from the input" at mask >= 0.5

EMPTY_TRUTHS = "every ground-truth mask is empty"
FULL_TRUTHS = "every ground-truth mask covers its whole image"
NO_MASK_PIXELS = "neither the ground truth nor the prediction marks a pixel"


def masked_psnr(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor) -> float | None:
    """Mean over images of the PSNR of x against y (images [N, 3, R, R] in [-1, 1], scored in [0, 1]) over the pixels
    of `region` ([N, 1, R, R] bool). An image with no pixel in its region is left out of the mean: a PSNR over no
    pixels is undefined, and scoring it as a perfect match would lift the mean by whatever the error floor is.
    None when no image has a pixel in its region."""
    keep = region.to(x.device).float()
    counted = keep.sum(dim=[1, 2, 3]) > 0
    if not counted.any():
        return None
    squared = ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).square() * keep
    mse01 = squared.sum(dim=[1, 2, 3]) / (keep.sum(dim=[1, 2, 3]) * x.shape[1]).clamp(min=1)
    psnr = 10 * torch.log10(1 / mse01.clamp(min=1e-10))
    return float(psnr[counted].mean())


def mask_agreement(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[dict, dict]:
    """How a method's masks (predicted [N, 1, R, R] in [0, 1]) match the ground truth ([N, 1, R, R] bool), as
    (scores, skipped: name -> why it could not be computed).

    - mask_iou (the headline): intersection over union of all the set's pixels at once, the predicted mask
      thresholded at MASK_THRESHOLD. Every pixel weighs the same, so a large occluder counts for more than a small
      sticker, and pixels a method marks on an image whose ground truth is empty still count, as false positives.
    - mask_iou_per_image: the mean of each image's IoU over the images whose ground truth is not empty (on those an
      IoU is 0 for any prediction at all and undefined for none, whatever the method learnt); small additions weigh
      as much as large ones here.
    - truth_empty: how many images have an empty ground truth (added nothing, or too little to survive resizing).
    - truth_area: the mean of the ground-truth masks, to read the predicted `mask_area` against.
    """
    hit = predicted >= MASK_THRESHOLD
    truth = truth.to(hit.device)
    inter = (hit & truth).sum(dim=[1, 2, 3]).double()
    union = (hit | truth).sum(dim=[1, 2, 3]).double()
    present = truth.flatten(1).any(dim=1)
    scores = {"truth_empty": int((~present).sum()), "truth_area": float(truth.float().mean())}
    skipped = {}
    if union.sum() > 0:
        scores["mask_iou"] = float(inter.sum() / union.sum())
    else:
        skipped["mask_iou"] = NO_MASK_PIXELS
    if present.any():
        scores["mask_iou_per_image"] = float((inter[present] / union[present]).mean())
    else:
        skipped["mask_iou_per_image"] = EMPTY_TRUTHS
    return scores, skipped


def predicted_masks(masks: list[torch.Tensor | None], count: int, resolution: int) -> torch.Tensor | None:
    """The masks [count, 1, R, R] (float, on the CPU) of a set from the extras["mask"] of each batch's inversion;
    None when the method gives none (a method without masks: its mask measures are skipped, not failed)."""
    if not masks or any(m is None for m in masks):
        return None
    found = torch.cat([m.detach().float().cpu() for m in masks])
    if tuple(found.shape) != (count, 1, resolution, resolution):
        raise RuntimeError(f"the method's extras['mask'] has shape {tuple(found.shape)} for {count} images; the "
                           f"contract is [N, 1, {resolution}, {resolution}]")
    return found
