"""The evaluation bench shared by every method (`stylecli bench inversion|editing`).

An evaluation set is a synthetic set's name or a folder of aligned images with optional labels and masks
(`stylecli.data.sets.evaluation_set`). Attribute names and kinds come from the pack's attribute predictor
(`attribute_kinds`); on a pack without one every metric that does not need it is still computed.

Inversion: PSNR, SSIM, MS-SSIM (pytorch-msssim; the window is 11 taps where the image allows, else the largest that
fits MS-SSIM's four downsamplings: 3 taps at 64 px), L2 (MSE in [-1, 1]), perceptual distance and ID similarity (the
pack's loss networks), seconds per image at batch 1 (median) and peak memory. On a set with masks: the PSNR inside
them (the added objects) and outside them (the face around them). For a method whose inversion carries
extras["mask"]: its mean area on every set and, on a set with masks, its IoU with them (`masks.py`). With an
attribute predictor: domain FID between reconstructions and inputs, and the mean absolute change of the editable
attributes from input to reconstruction (in std over the set). A metric that cannot be computed is left out of the
row, its reason under `skipped`.

Editing, on `indomain` or another set: for each direction, the change of its attribute per unit strength (in standard
deviations of that attribute over the set), the mean absolute drift of every other editable attribute (same units),
and the ID similarity between the edited and the unedited reconstruction; on a set with masks, the PSNR of the edited
image against the input inside them (`psnr_kept`: how much of what was added survives the edit). On rendered faces,
the edit's locality: PSNR against the input outside the region the renderer's own edit of the attribute changes
(`psnr_outside_edit`) and the share of the edit's squared pixel change inside it (`change_inside_edit`). For a binary
attribute, the share of faces that gain it at a positive strength or lose it at a negative one (`flipped_share`). The standard
deviations come from the set's labels where they hold the attribute, else from the predictor's predictions on the
set's images.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import MISSING, dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim, ssim

from ..data.render import ATTRIBUTES, FaceParams
from ..data.sets import evaluation_set, rerender
from ..imageio import image_to_tensor, make_grid, tensor_to_images
from ..losses import LossNetworks, attribute_kinds
from .masks import EMPTY_TRUTHS, FULL_TRUTHS, mask_agreement, masked_psnr, predicted_masks
from .quality import frechet_distance
from .timing import measure

NO_PREDICTOR = "the pack has no attribute predictor"
NO_SET_MASKS = "the set has no masks"
NO_METHOD_MASKS = "the method makes no masks"
FID_MIN_COUNT = 10  # fewer images give no usable covariance


@dataclass
class BenchSet:
    name: str
    images: torch.Tensor                 # [N, 3, R, R] in [-1, 1]
    labels: list[dict] | None            # None: the set has no labels
    masks: torch.Tensor | None           # [N, 1, R, R] bool, True where pixels were added; None: no masks
    unreadable: list[str] = field(default_factory=list)  # files of a folder passed over


def load_set(source: str, count: int, resolution: int) -> BenchSet:
    """The first `count` images of a set name or a folder at `resolution` (masks resized nearest-neighbour)."""
    found = evaluation_set(source, count, resolution)
    images = torch.cat([image_to_tensor(s.image, resolution) for s in found.samples])
    masks = None
    if found.masked:
        size = (resolution, resolution)
        masks = torch.stack([torch.from_numpy(np.asarray(s.mask.resize(size, Image.NEAREST)) >= 128)
                             for s in found.samples])[:, None]
    labels = [s.label for s in found.samples] if found.labelled else None
    return BenchSet(source, images, labels, masks, found.unreadable)


def editable_attributes(predictor) -> list[str]:
    """The scalar attributes an edit is about, as the predictor declares them."""
    return [name for name, kind in attribute_kinds(predictor).items() if kind.editable and kind.scalar]


@torch.no_grad()
def predictions(predictor, images: torch.Tensor, names: list[str], batch: int = 16) -> dict[str, torch.Tensor]:
    """The predictor's values [N] of `names` on images [N, 3, R, R]."""
    out = {n: [] for n in names}
    for chunk in images.split(batch):
        predicted = predictor.predict(chunk)
        for n in names:
            out[n].append(predicted[n])
    return {n: torch.cat(v) for n, v in out.items()}


def attribute_std(predictor, bench_set: BenchSet, names: list[str]) -> dict[str, float]:
    """The std of each attribute over the set: from the labels when every label holds it, else from the
    predictor's predictions on the set's images."""
    labels = bench_set.labels or []
    std = {n: float(np.std([float(label[n]) for label in labels]))
           for n in names if labels and all(n in label for label in labels)}
    unlabelled = [n for n in names if n not in std]
    if unlabelled:
        std.update({n: float(v.std(unbiased=False))
                    for n, v in predictions(predictor, bench_set.images, unlabelled).items()})
    return std


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


def _mask_scores(x: torch.Tensor, recon: torch.Tensor, truth: torch.Tensor | None, predicted: torch.Tensor | None,
                 skipped: dict) -> dict:
    """The row's mask measures (`masks.py`), their reasons for being left out added to `skipped`. PSNR inside and
    outside the ground truth holds for every method (what e4e, which has no mask, makes of added objects is the
    baseline); the mask's own measures need a method that makes masks."""
    row = {}
    if truth is None:
        skipped.update(psnr_inside=NO_SET_MASKS, psnr_outside=NO_SET_MASKS)
    else:
        for name, region, why in (("psnr_inside", truth, EMPTY_TRUTHS), ("psnr_outside", ~truth, FULL_TRUTHS)):
            value = masked_psnr(x, recon, region)
            if value is None:
                skipped[name] = why
            else:
                row[name] = value
    if predicted is None:
        skipped.update(mask_area=NO_METHOD_MASKS, mask_iou=NO_METHOD_MASKS, mask_iou_per_image=NO_METHOD_MASKS)
        return row
    row["mask_area"] = float(predicted.mean())
    if truth is None:
        skipped.update(mask_iou=NO_SET_MASKS, mask_iou_per_image=NO_SET_MASKS)
    else:
        scores, why = mask_agreement(predicted, truth)
        row.update(scores)
        skipped.update(why)
    return row


@torch.no_grad()
def evaluate_inversion(method, losses: LossNetworks, set_name: str, count: int, batch: int = 16,
                       timing_images: int = 20, timing_calls: int = 30,
                       on_batch: Callable[[int], None] = lambda n: None, timing_batch: int = 0
                       ) -> tuple[dict, Image.Image]:
    """Scores of `method` on the first `count` images of a set name or folder; on_batch(n) after each batch of n
    inverted. The row holds what could be measured; `skipped` names the rest and why. With `timing_batch` N, also
    `batch_seconds_per_image`: the median of 3 calls on N images at once (after one warm-up), divided by N."""
    data = load_set(set_name, count, method.resolution)
    x = data.images
    recon, masks = [], []
    for chunk in x.split(batch):
        inversion = _counted(method.invert(chunk), on_batch, len(chunk))
        recon.append(inversion.image)
        # Only the mask is kept of the extras: an inversion may hold much more (feature codes, a copy of the input).
        masks.append(getattr(inversion, "extras", {}).get("mask"))
    recon = torch.cat(recon)
    predicted = predicted_masks(masks, len(x), method.resolution)
    row = {"set": set_name, "count": len(x), **image_metrics(x, recon, losses)}
    skipped = {}
    row.update(_mask_scores(x, recon, data.masks, predicted, skipped))
    predictor = losses.attributes
    if predictor is None:
        skipped.update(domain_fid=NO_PREDICTOR, attribute_error_std=NO_PREDICTOR)
    else:
        if len(x) >= FID_MIN_COUNT:
            row["domain_fid"] = frechet_distance(predictor.pooled(x), predictor.pooled(recon))
        else:
            skipped["domain_fid"] = f"fewer than {FID_MIN_COUNT} images"
        names = editable_attributes(predictor)
        std = attribute_std(predictor, data, names)
        before, after = predictions(predictor, x, names), predictions(predictor, recon, names)
        row["attribute_error_std"] = float(np.mean([float((after[n] - before[n]).abs().mean()) / max(std[n], 1e-8)
                                                    for n in names])) if names else math.nan
    if data.unreadable:
        row["unreadable"] = data.unreadable
    row["skipped"] = skipped
    # Batch-1 time: the median of 30 calls cycling over the first images, after 3 warm-up calls. On a shared machine
    # single calls swing by a third; 10 calls left the median a few ms apart from run to run.
    singles = itertools.cycle(x[:timing_images].split(1))
    m = measure(lambda: method.invert(next(singles)), torch.device(getattr(method, "device", "cpu")), warmup=3,
                repeats=timing_calls)
    row["seconds_per_image"] = m.median
    row["peak_rss_bytes"] = m.peak_bytes
    if timing_batch:
        many = x[:timing_batch].repeat(math.ceil(timing_batch / len(x)), 1, 1, 1)[:timing_batch]
        row["batch_seconds_per_image"] = measure(lambda: method.invert(many), torch.device(
            getattr(method, "device", "cpu")), warmup=1, repeats=3).median / timing_batch
    comparison = make_grid(tensor_to_images(torch.cat([x[:8], recon[:8]])), columns=min(8, len(x)))
    return row, comparison


def unmoved(images: torch.Tensor, labels: list[dict] | None) -> torch.Tensor:
    """images [N, 3, R, R] with each moved head (`geometric`: a label with the renderer's recorded `transform`)
    brought back to the aligned frame; images without one as they are.

    The attribute predictor reads aligned faces only: the renderer's own smile edit of +1 std reads +0.76 std on
    `indomain` but +0.03 on the same edit of moved heads in their frames (50 faces each), so an edit that keeps the
    head where it is can only be read once the head is brought back. `render_moved` places the aligned face's
    point u at x = c + t + s R(angle)^T (u - c) about the canvas centre c; sampling the image at x(u) undoes it
    (in grid_sample's [-1, 1] coordinates: x = s R^T u + 2 t, t in canvas units)."""
    moved = [i for i, label in enumerate(labels or []) if "transform" in label]
    if not moved:
        return images
    theta = torch.zeros(len(moved), 2, 3)
    for k, i in enumerate(moved):
        t = labels[i]["transform"]
        a, scale = math.radians(t["angle"]), t["scale"]
        theta[k] = torch.tensor([[scale * math.cos(a), -scale * math.sin(a), 2 * t["dx"]],
                                 [scale * math.sin(a), scale * math.cos(a), 2 * t["dy"]]])
    grid = torch.nn.functional.affine_grid(theta.to(images), [len(moved), *images.shape[1:]], align_corners=False)
    out = images.clone()
    out[moved] = torch.nn.functional.grid_sample(images[moved], grid, mode="bilinear", padding_mode="border",
                                                 align_corners=False)
    return out


def _edit_row(name: str, target: str, base: torch.Tensor, edited: torch.Tensor, losses: LossNetworks,
              std: dict[str, float]) -> dict:
    """Scores of one edit: base and edited images [N, 3, R, R]; attribute changes in units of `std`, the target's
    with its standard error over the N faces (how far another draw of faces could move the mean change)."""
    names = list(std)
    before, after = predictions(losses.attributes, base, names), predictions(losses.attributes, edited, names)
    moved = {n: after[n] - before[n] for n in names}
    change = {n: float(moved[n].mean()) / max(std[n], 1e-8) for n in std}
    drift = {n: float(moved[n].abs().mean()) / max(std[n], 1e-8) for n in std if n != target}
    target_moved = moved.get(target)
    se = (float(target_moved.std()) / math.sqrt(len(target_moved)) / max(std[target], 1e-8)
          if target_moved is not None and len(target_moved) > 1 else math.nan)
    return {"direction": name, "attribute": target, "target_change_std": change.get(target, math.nan),
            "target_change_se": se,
            "max_drift_std": max(drift.values()) if drift else 0.0, "drift_std": drift,
            "id_similarity": float(losses.identity(edited, base).mean())}


def attribute_regions(labels: list[dict] | None, attribute: str, resolution: int, margin: int = 2
                      ) -> torch.Tensor | None:
    """Where the renderer's own edit of `attribute` changes each face ([N, 1, R, R] bool): the pixels that differ
    between the face and its renders at the attribute's two extremes (glasses on and off), grown by `margin` pixels;
    a moved head (`geometric`) is rendered again where the image has it, with its recorded transform. None when the
    labels cannot be rendered again (not renderer labels) or the renderer has no such attribute."""
    required = [n for n, f in FaceParams.__dataclass_fields__.items() if f.default is f.default_factory is MISSING]
    if attribute not in ATTRIBUTES or labels is None or any(n not in label for label in labels for n in required):
        return None
    low, high = ATTRIBUTES[attribute]
    regions = []
    for label in labels:
        base = image_to_tensor(rerender(label, resolution))
        changed = torch.zeros(1, 1, resolution, resolution, dtype=torch.bool)
        for value in (low, high):
            moved = image_to_tensor(rerender(label, resolution, **{attribute: value}))
            changed |= (moved - base).abs().amax(dim=1, keepdim=True) > 2 / 255
        regions.append(changed)
    grown = torch.nn.functional.max_pool2d(torch.cat(regions).float(), 2 * margin + 1, 1, margin)
    return grown > 0


def change_inside(base: torch.Tensor, edited: torch.Tensor, regions: torch.Tensor) -> float | None:
    """The share of an edit's squared pixel change (edited against the unedited reconstruction, [N, 3, R, R]) that
    falls inside `regions` ([N, 1, R, R] bool, `attribute_regions`): 1 when the edit touches nothing else; None for
    an edit that changes nothing."""
    change = (edited - base).square().sum(dim=1, keepdim=True)
    total = float(change.sum())
    return float(change[regions].sum()) / total if total > 0 else None


def binary_flips(predictor, attribute: str, base: torch.Tensor, edited: torch.Tensor, strength: float
                 ) -> float | None:
    """For a binary attribute: the share of faces without it (predicted probability < 0.5) that have it after a
    positive edit, or of faces with it that lose it after a negative one; None for other attributes."""
    kind = attribute_kinds(predictor).get(attribute)
    if kind is None or kind.kind != "binary" or strength == 0:
        return None
    before = predictions(predictor, base, [attribute])[attribute] >= 0.5
    after = predictions(predictor, edited, [attribute])[attribute] >= 0.5
    pool = ~before if strength > 0 else before
    return float((pool & (after != before)).sum()) / max(int(pool.sum()), 1)


def _edit_scales(losses: LossNetworks, data: BenchSet, targets: list[str], aligned: Callable = lambda x: x
                 ) -> tuple[list[str], dict[str, float]]:
    """The editable attributes (drift is measured on them) and the std over the set (its images as `aligned`
    gives them to the predictor) of those and of every target the predictor gives as a scalar."""
    if losses.attributes is None:
        raise ValueError(f"editing metrics need an attribute predictor; {NO_PREDICTOR}")
    kinds = attribute_kinds(losses.attributes)
    editable = editable_attributes(losses.attributes)
    measured = editable + [t for t in dict.fromkeys(targets) if t not in editable and t in kinds and kinds[t].scalar]
    return editable, attribute_std(losses.attributes, dataclasses.replace(data, images=aligned(data.images)), measured)


def _scales_for(target: str, editable: list[str], std: dict[str, float]) -> dict[str, float]:
    return {n: std[n] for n in [*editable, target] if n in std}


@torch.no_grad()
def evaluate_editing(method, losses: LossNetworks, directions: dict, count: int = 100, strength: float = 2.0,
                     batch: int = 16, on_batch: Callable[[int], None] = lambda n: None,
                     set_name: str = "indomain", timing_images: int = 8, timing_calls: int = 30) -> list[dict]:
    """Edit scores of each direction on the first `count` faces of a set; on_batch(n) after each batch of n images
    inverted or edited, (1 + len(directions)) * count in all. `edit_seconds_per_image`: the median of `timing_calls`
    batch-1 edits of an inversion (cycling over the first faces), after 3 warm-up calls: what an edit costs on top of
    the inversion (timing_calls 0: not timed)."""
    data = load_set(set_name, count, method.resolution)
    targets = {dname: direction.info.get("attribute", dname) for dname, direction in directions.items()}
    aligned = lambda images: unmoved(images, data.labels)  # what the predictor reads (moved heads brought back)
    editable, std = _edit_scales(losses, data, list(targets.values()), aligned)
    inversions = [_counted(method.invert(chunk), on_batch, len(chunk)) for chunk in data.images.split(batch)]
    base = torch.cat([inv.image for inv in inversions])
    singles = [inversions[0].row(i) for i in range(min(timing_images, len(inversions[0].image)))]
    device = torch.device(getattr(method, "device", "cpu"))
    rows = []
    for dname, direction in directions.items():
        edited = torch.cat([_counted(method.edit(inv, direction.vector, strength), on_batch, len(inv.image))
                            for inv in inversions])
        row = _edit_row(dname, targets[dname], aligned(base), aligned(edited), losses,
                        _scales_for(targets[dname], editable, std))
        row.update(set=set_name, strength=strength, target_change_per_unit=row["target_change_std"] / strength)
        if timing_calls:
            cycle = itertools.cycle(singles)
            row["edit_seconds_per_image"] = measure(lambda: method.edit(next(cycle), direction.vector, strength),
                                                    device, warmup=3, repeats=timing_calls).median
        # What was added to the face should come through the edit as it was: compared with the input, not with the
        # reconstruction, so that a method that never reconstructed it (e4e, the baseline) scores what it lost.
        kept = masked_psnr(data.images, edited, data.masks) if data.masks is not None else None
        if kept is not None:
            row["psnr_kept"] = kept
        # Edit locality: the rest of the face and the background should come through as they were (against the
        # input, so a method that lost detail in inversion scores that loss too).
        regions = attribute_regions(data.labels, targets[dname], method.resolution)
        if regions is not None:
            outside = masked_psnr(data.images, edited, ~regions)
            if outside is not None:
                row["psnr_outside_edit"] = outside
            inside = change_inside(base, edited, regions)
            if inside is not None:
                row["change_inside_edit"] = inside
        flipped = binary_flips(losses.attributes, targets[dname], aligned(base), aligned(edited), strength)
        if flipped is not None:
            row["flipped_share"] = flipped
        rows.append(row)
    return rows


@torch.no_grad()
def evaluate_reference_editing(losses: LossNetworks, attributes: dict[str, str], count: int, resolution: int,
                               shift_std: float = 1.0, set_name: str = "indomain") -> list[dict]:
    """What an ideal edit scores: each face of a set rendered again from its label with one renderer attribute moved
    by `shift_std` standard deviations (clipped to its range; glasses put on), scored like a method's edit of the
    rendered face. The set needs the renderer's labels (a synthetic set, or `stylecli data synth` output).
    attributes: row name -> attribute; names whose attribute the renderer does not have (PCA, imports) are skipped."""
    data = load_set(set_name, count, resolution)
    required = [n for n, f in FaceParams.__dataclass_fields__.items() if f.default is f.default_factory is MISSING]
    if data.labels is None or any(n not in label for label in data.labels for n in required):
        raise ValueError(f"the renderer reference re-renders each face from its label: {set_name} has no renderer "
                         "labels (use a synthetic set or a folder written by `stylecli data synth`)")
    chosen = {name: a for name, a in attributes.items() if a in ATTRIBUTES}
    aligned = lambda images: unmoved(images, data.labels)
    editable, std = _edit_scales(losses, data, list(chosen.values()), aligned)
    rows = []
    for name, attribute in chosen.items():
        low, high = ATTRIBUTES[attribute]
        spread = float(np.std([float(label[attribute]) for label in data.labels]))  # in renderer units

        def moved(value: float) -> float:
            return high if attribute == "glasses" else float(np.clip(value + shift_std * spread, low, high))

        edited = torch.cat([image_to_tensor(rerender(label, resolution, **{attribute: moved(label[attribute])}))
                            for label in data.labels])
        row = _edit_row(name, attribute, aligned(data.images), aligned(edited), losses,
                        _scales_for(attribute, editable, std))
        rows.append({**row, "set": set_name, "shift_std": shift_std})
    return rows
