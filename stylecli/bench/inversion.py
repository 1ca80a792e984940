"""The evaluation bench shared by every method (`stylecli bench inversion|editing`).

Inversion, on a held-out set of the synthetic domain: PSNR, SSIM, MS-SSIM (pytorch-msssim; the window is 11 taps
where the image allows, else the largest that fits MS-SSIM's four downsamplings: 3 taps at 64 px), L2 (MSE in
[-1, 1]), perceptual distance and ID similarity (the pack's loss networks), domain FID between reconstructions and
inputs, seconds per image at batch 1 (median) and peak memory.

Editing, on `indomain`: for each direction, the change of its attribute per unit strength (in standard deviations
of that attribute over the set), the mean absolute drift of every other attribute (same units), and the ID
similarity between the edited and the unedited reconstruction.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim, ssim

from ..data.render import ATTRIBUTES
from ..data.sets import make_sample, rerender
from ..imageio import image_to_tensor, make_grid, tensor_to_images
from ..losses import LossNetworks
from .quality import frechet_distance
from .timing import measure


def load_set(set_name: str, count: int, resolution: int) -> tuple[torch.Tensor, list[dict]]:
    samples = [make_sample(set_name, i, resolution) for i in range(count)]
    return torch.cat([image_to_tensor(s.image) for s in samples]), [s.label for s in samples]


def _counted(result, on_batch: Callable[[int], None], n: int):
    """result, after reporting its n images done to on_batch (a progress bar)."""
    on_batch(n)
    return result


def _ms_ssim_window(size: int) -> int:
    if size > 160:
        return 11
    w = (size - 1) // 16 + 1
    w = w if w % 2 == 1 else w - 1
    while (w - 1) * 16 >= size:
        w -= 2
    return max(w, 1)


@torch.no_grad()
def image_metrics(x: torch.Tensor, y: torch.Tensor, losses: LossNetworks) -> dict[str, float]:
    """x, y [N, 3, R, R] in [-1, 1]."""
    x01, y01 = (x.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2
    mse01 = (x01 - y01).square().mean(dim=[1, 2, 3])
    psnr = (10 * torch.log10(1 / mse01.clamp(min=1e-10))).mean()
    return {
        "psnr": float(psnr),
        "ssim": float(ssim(x01, y01, data_range=1.0)),
        "ms_ssim": float(ms_ssim(x01, y01, data_range=1.0, win_size=_ms_ssim_window(x.shape[-1]))),
        "l2": float((x - y).square().mean()),
        "perceptual": float(losses.perceptual(x, y).mean()),
        "id_similarity": float(losses.identity(x, y).mean()),
    }


@torch.no_grad()
def evaluate_inversion(method, losses: LossNetworks, set_name: str, count: int, batch: int = 16,
                       timing_images: int = 20, on_batch: Callable[[int], None] = lambda n: None
                       ) -> tuple[dict, Image.Image]:
    """Scores of `method` on `count` images of a held-out set; on_batch(n) after each batch of n inverted."""
    x, _ = load_set(set_name, count, method.resolution)
    recon = torch.cat([_counted(method.invert(chunk).image, on_batch, len(chunk)) for chunk in x.split(batch)])
    row = {"set": set_name, "count": count, **image_metrics(x, recon, losses)}
    if losses.attributes is not None and count >= 10:
        fx, fy = losses.attributes.pooled(x), losses.attributes.pooled(recon)
        row["domain_fid"] = frechet_distance(fx, fy)
    # Batch-1 time: the median of 30 calls cycling over the first images, after 3 warm-up calls. On a shared machine
    # single calls swing by a third; 10 calls left the median a few ms apart from run to run.
    singles = itertools.cycle(x[:timing_images].split(1))
    m = measure(lambda: method.invert(next(singles)), torch.device(getattr(method, "device", "cpu")), warmup=3,
                repeats=30)
    row["seconds_per_image"] = m.median
    row["peak_rss_bytes"] = m.peak_bytes
    comparison = make_grid(tensor_to_images(torch.cat([x[:8], recon[:8]])), columns=min(8, count))
    return row, comparison


def _edit_row(name: str, target: str, base: torch.Tensor, edited: torch.Tensor, losses: LossNetworks,
              std: dict[str, float]) -> dict:
    """Scores of one edit: base and edited images [N, 3, R, R]; attribute changes in units of `std`, the target's
    with its standard error over the N faces (how far another draw of faces could move the mean change)."""
    predict = losses.attributes.predict
    before, after = {}, {}
    for b, e in zip(base.split(16), edited.split(16)):
        for store, img in ((before, b), (after, e)):
            for n, v in predict(img).items():
                if n in std:
                    store.setdefault(n, []).append(v)
    moved = {n: torch.cat(after[n]) - torch.cat(before[n]) for n in std}
    change = {n: float(moved[n].mean()) / max(std[n], 1e-8) for n in std}
    drift = {n: float(moved[n].abs().mean()) / max(std[n], 1e-8) for n in std if n != target}
    target_moved = moved.get(target)
    se = (float(target_moved.std()) / math.sqrt(len(target_moved)) / max(std[target], 1e-8)
          if target_moved is not None and len(target_moved) > 1 else math.nan)
    return {"direction": name, "attribute": target, "target_change_std": change.get(target, math.nan),
            "target_change_se": se,
            "max_drift_std": max(drift.values()) if drift else 0.0, "drift_std": drift,
            "id_similarity": float(losses.identity(edited, base).mean())}


def _indomain_std(labels: list[dict]) -> dict[str, float]:
    return {n: float(np.std([l[n] for l in labels])) for n in ATTRIBUTES}


@torch.no_grad()
def evaluate_editing(method, losses: LossNetworks, directions: dict, count: int = 100, strength: float = 2.0,
                     batch: int = 16, on_batch: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Edit scores of each direction on `count` `indomain` faces; on_batch(n) after each batch of n images inverted
    or edited, (1 + len(directions)) * count in all."""
    if losses.attributes is None:
        raise ValueError("editing metrics need the pack's attribute predictor")
    x, labels = load_set("indomain", count, method.resolution)
    std = _indomain_std(labels)
    inversions = [_counted(method.invert(chunk), on_batch, len(chunk)) for chunk in x.split(batch)]
    base = torch.cat([inv.image for inv in inversions])
    rows = []
    for dname, direction in directions.items():
        edited = torch.cat([_counted(method.edit(inv, direction.vector, strength), on_batch, len(inv.image))
                            for inv in inversions])
        row = _edit_row(dname, direction.info.get("attribute", dname), base, edited, losses, std)
        rows.append({**row, "strength": strength, "target_change_per_unit": row["target_change_std"] / strength})
    return rows


@torch.no_grad()
def evaluate_reference_editing(losses: LossNetworks, attributes: dict[str, str], count: int, resolution: int,
                               shift_std: float = 1.0) -> list[dict]:
    """What an ideal edit scores: each `indomain` face rendered again with one attribute moved by `shift_std`
    standard deviations (clipped to its range; glasses put on), scored like a method's edit of the rendered face.
    attributes: row name -> attribute; names whose attribute the renderer does not have (PCA, imports) are skipped."""
    if losses.attributes is None:
        raise ValueError("editing metrics need the pack's attribute predictor")
    x, labels = load_set("indomain", count, resolution)
    std = _indomain_std(labels)
    rows = []
    for name, attribute in attributes.items():
        if attribute not in ATTRIBUTES:
            continue
        low, high = ATTRIBUTES[attribute]

        def moved(value: float) -> float:
            return high if attribute == "glasses" else float(np.clip(value + shift_std * std[attribute], low, high))

        edited = torch.cat([image_to_tensor(rerender(label, resolution, **{attribute: moved(label[attribute])}))
                            for label in labels])
        rows.append({**_edit_row(name, attribute, x, edited, losses, std), "shift_std": shift_std})
    return rows
