"""Training and held-out evaluation sets of the synthetic face domain.

Every set draws from its own seed range, so evaluation faces are never seen in training:

| set       | seeds                 | what it holds                                                               |
|-----------|-----------------------|-----------------------------------------------------------------------------|
| train     | 0 .. 999,999,999      | plain faces (training renders on the fly from random seeds in this range)   |
| indomain  | 1,000,000,000 + i     | plain held-out faces                                                        |
| detail    | 1,100,000,000 + i     | dense fine detail (3x the freckles and moles)                               |
| ood       | 1,200,000,000 + i     | accessories, occluders, stickers, textured backgrounds + exact masks        |
| geometric | 1,300,000,000 + i     | faces translated, rotated and scaled, the transform recorded                |

An evaluation set is one of these names (rendered on the fly) or a folder of aligned face images, read recursively
in the order of their paths (a set name wins over a folder of the same name: write ./ood for the folder). Optional:
- `labels.jsonl` at the top of the folder: one JSON object per line, its "file" the image's path relative to the
  folder (with /), the rest that image's label. When the file exists, every image needs a line.
- masks: `NAME_mask.png` (any image type) beside `NAME.png`, white where pixels were added to the face (an image
  without one added nothing). Masks are not images of the set, neither here nor in training folders.
`stylecli data synth --set X --out DIR` writes exactly this, so DIR and X are the same evaluation set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..imageio import DATA_MASK_ENDING, READABLE_SUFFIXES, ImageError, is_sidecar, load_image
from .render import SUPERSAMPLE, FaceParams, finish, render, render_background, render_face_layer, sample_params

SET_SEEDS = {"train": 0, "indomain": 1_000_000_000, "detail": 1_100_000_000, "ood": 1_200_000_000,
             "geometric": 1_300_000_000}
TRAIN_SEED_LIMIT = 1_000_000_000
OOD_KINDS = ("sticker", "occluder", "microphone", "scribble", "texture_background", "hat")
# Training scenes draw from a wider vocabulary than the `ood` set: generic shapes as well, so that what a method learns
# is "not a face of this domain", not the six kinds it is evaluated on.
TRAINING_OOD_KINDS = OOD_KINDS + ("blob", "bar", "patch")
LABELS_FILE = "labels.jsonl"


@dataclass
class Sample:
    image: Image.Image            # RGB, resolution x resolution (read from a folder: the file's size)
    label: dict                   # every parameter, the set, the seed, and set-specific records ({}: unlabelled)
    mask: Image.Image | None = None  # ood: "L" mask of the added pixels (255 = added)


def make_sample(set_name: str, index: int, resolution: int = 64) -> Sample:
    if set_name not in SET_SEEDS:
        raise ValueError(f"unknown set {set_name!r}; choose from {', '.join(SET_SEEDS)}")
    if set_name == "train" and not 0 <= index < TRAIN_SEED_LIMIT:
        raise ValueError("train indices are seeds in [0, 1e9)")
    seed = SET_SEEDS[set_name] + index
    rng = np.random.default_rng(seed)
    params = sample_params(rng, detail=3.0 if set_name == "detail" else 1.0)
    label = {"set": set_name, "seed": seed, **params.to_dict()}
    if set_name == "ood":
        image, mask, kinds = _render_ood(params, resolution, rng)
        label["ood"] = kinds
        return Sample(image, label, mask)
    if set_name == "geometric":
        image, transform = _render_geometric(params, resolution, rng)
        label["transform"] = transform
        return Sample(image, label)
    return Sample(render(params, resolution), label)


def sample_name(index: int) -> str:
    """The file stem of a set's image `index` in a folder (`stylecli data synth`)."""
    return f"{index:06d}"


@dataclass
class EvaluationSet:
    name: str                     # the set's name or the folder as given
    samples: list[Sample]         # images at their own size (rendered ones at the requested resolution)
    labelled: bool                # labels hold what was rendered (else every label is {})
    masked: bool                  # masks tell where pixels were added (absent: a metric that needs them is skipped)
    unreadable: list[str] = field(default_factory=list)  # files passed over


def check_evaluation_set(source: str) -> None:
    """Raise ValueError unless `source` names a set or a folder (before any work is spent on it)."""
    if source not in SET_SEEDS and not Path(source).is_dir():
        raise ValueError(f"{source}: neither a set ({', '.join(s for s in SET_SEEDS if s != 'train')}) nor a folder")


def evaluation_set(source: str, count: int, resolution: int = 64) -> EvaluationSet:
    """The first `count` images of a set name or of a folder (see the module's docstring for the folder's layout)."""
    check_evaluation_set(source)
    if source in SET_SEEDS:
        samples = [make_sample(source, i, resolution) for i in range(count)]
        return EvaluationSet(source, samples, labelled=True, masked=source == "ood")
    folder = Path(source)
    labels = _read_labels(folder)
    samples, unreadable = [], []
    files = find_images(folder)
    if labels is not None:
        missing = [p.relative_to(folder).as_posix() for p in files if p.relative_to(folder).as_posix() not in labels]
        if missing:
            raise ValueError(f"{folder / LABELS_FILE} has no line for {len(missing)} image(s), e.g. {missing[0]}")
    for path in files:
        if len(samples) == count:
            break
        relative = path.relative_to(folder).as_posix()
        try:
            image = load_image(path)
            mask_path = _mask_of(path)
            mask = load_image(mask_path).convert("L") if mask_path else None
        except ImageError as exc:
            unreadable.append(str(exc))
            continue
        samples.append(Sample(image, labels[relative] if labels is not None else {}, mask))
    if not samples:
        raise ValueError(f"{source}: no readable images found")
    masked = any(s.mask is not None for s in samples)
    for s in samples:  # an image without a mask in a masked set had nothing added
        if masked and s.mask is None:
            s.mask = Image.new("L", s.image.size, 0)
    return EvaluationSet(source, samples, labelled=labels is not None, masked=masked, unreadable=unreadable)


def find_images(folder: Path) -> list[Path]:
    """The images under `folder`, recursively, sorted by path; hidden files and folders, and masks (the sidecars
    of `imageio.is_sidecar`) left out."""
    folder = Path(folder)
    found = [p for p in folder.rglob("*") if p.suffix.lower() in READABLE_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    stems = {p.with_suffix("") for p in found}
    return sorted((p for p in found if not is_sidecar(p, stems)), key=lambda p: p.relative_to(folder).parts)


def _mask_of(image: Path) -> Path | None:
    for suffix in READABLE_SUFFIXES:
        candidate = image.with_name(image.stem + DATA_MASK_ENDING + suffix)
        if candidate.is_file():
            return candidate
    return None


def _read_labels(folder: Path) -> dict[str, dict] | None:
    """labels.jsonl as {file: label without "file"}; None when the folder has none."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return None
    labels = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            file = record.pop("file")
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise ValueError(f"{path}:{number}: not a JSON object with a \"file\" key") from None
        labels[str(file)] = record
    return labels


def rerender(label: dict, resolution: int = 64, **changes) -> Image.Image:
    """A plain or moved (`geometric`) face rendered again from its label with some parameters changed: the renderer's
    exact edit."""
    fields = FaceParams.__dataclass_fields__
    params = FaceParams(**{k: v for k, v in {**label, **changes}.items() if k in fields})
    return render_moved(params, resolution, label["transform"]) if "transform" in label else render(params, resolution)


# --- out-of-domain additions -------------------------------------------------------------------------------------

def render_training_scene(seed: int, resolution: int, rng: np.random.Generator, kind: str) -> Image.Image:
    """A face of the train stream (seed in [0, 1e9)) as a training scene of `kind`: "plain", "ood" (one or two
    additions from TRAINING_OOD_KINDS) or "geometric" (the head moved by up to half the `geometric` set's range).
    `rng` draws the additions or the transform."""
    params = sample_params(np.random.default_rng(seed))
    if kind == "ood":
        return _render_ood(params, resolution, rng, TRAINING_OOD_KINDS)[0]
    if kind == "geometric":
        return _render_geometric(params, resolution, rng, extent=0.5)[0]
    assert kind == "plain", f"unknown training scene {kind!r}"
    return render(params, resolution)


def _render_ood(p: FaceParams, resolution: int, rng: np.random.Generator, vocabulary: tuple = OOD_KINDS):
    S = resolution * SUPERSAMPLE
    scene = render_background(p, S)
    face = render_face_layer(p, S)
    kinds = sorted(set(rng.choice(vocabulary, size=int(rng.integers(1, 3)), replace=False).tolist()))
    overlay = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    if "texture_background" in kinds:  # stripes or checks behind the head, never seen in training
        texture = _texture(S, rng)
        behind = Image.fromarray(255 - np.asarray(face.getchannel("A")))
        overlay.paste(texture, (0, 0), behind)
    scene.paste(face, (0, 0), face)
    draw = ImageDraw.Draw(overlay)
    X = lambda v: v * S
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,)
    for kind in kinds:
        if kind == "sticker":  # a saturated star on the face
            cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.7), rng.uniform(0.05, 0.09)
            pts = [(X(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5 + 0.3)),
                    X(cy + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5 + 0.3))) for k in range(10)]
            draw.polygon(pts, fill=colour())
        elif kind == "occluder":  # a hand-like block entering from a side
            side = rng.choice([-1, 1])
            y0 = rng.uniform(0.45, 0.75)
            x_edge = 0.5 + side * rng.uniform(0.02, 0.15)
            box = [X(min(x_edge, 0.5 + side * 0.6)), X(y0), X(max(x_edge, 0.5 + side * 0.6)), X(y0 + rng.uniform(0.12, 0.2))]
            draw.rounded_rectangle(box, radius=X(0.04), fill=colour())
        elif kind == "microphone":
            mx, my = rng.uniform(0.4, 0.6), rng.uniform(0.7, 0.8)
            draw.rectangle([X(mx - 0.015), X(my), X(mx + 0.015), X(1.0)], fill=(40, 40, 40, 255))
            draw.ellipse([X(mx - 0.05), X(my - 0.07), X(mx + 0.05), X(my + 0.03)], fill=(90, 90, 95, 255))
        elif kind == "scribble":  # face paint / text-like strokes
            pts = [(X(rng.uniform(0.3, 0.7)), X(rng.uniform(0.35, 0.75))) for _ in range(5)]
            draw.line(pts, fill=colour(), width=max(1, int(X(0.025))), joint="curve")
        elif kind == "hat":
            brim_y = rng.uniform(0.2, 0.27)
            c = colour()
            draw.rectangle([X(0.3), X(brim_y - 0.16), X(0.7), X(brim_y)], fill=c)
            draw.rounded_rectangle([X(0.18), X(brim_y - 0.02), X(0.82), X(brim_y + 0.03)], radius=X(0.02), fill=c)
        elif kind == "blob":  # any polygon, anywhere
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.04, 0.15)
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(4, 9))))
            draw.polygon([(X(cx + r * rng.uniform(0.5, 1) * math.cos(t)), X(cy + r * rng.uniform(0.5, 1) * math.sin(t)))
                          for t in angles], fill=colour())
        elif kind == "bar":  # a straight band across part of the picture
            a, b = (X(rng.uniform(0, 1)), X(rng.uniform(0, 1))), (X(rng.uniform(0, 1)), X(rng.uniform(0, 1)))
            draw.line([a, b], fill=colour(), width=max(1, int(X(rng.uniform(0.02, 0.08)))))
        elif kind == "patch":  # a textured rectangle
            x0, y0 = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
            w, h = rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.3)
            box = [int(X(x0)), int(X(y0)), int(X(min(x0 + w, 1))), int(X(min(y0 + h, 1)))]
            overlay.paste(_texture(S, rng).crop(box), box[:2])
    scene.paste(overlay, (0, 0), overlay)
    image = finish(p, scene, resolution)
    alpha = overlay.getchannel("A").resize((resolution, resolution), Image.BOX)
    mask = alpha.point(lambda v: 255 if v >= 128 else 0)
    return image, mask, kinds


def _texture(S: int, rng: np.random.Generator) -> Image.Image:
    period = int(S * rng.uniform(0.05, 0.12))
    yy, xx = np.mgrid[0:S, 0:S]
    if rng.uniform() < 0.5:
        pattern = ((xx + yy) // period) % 2
    else:
        pattern = ((xx // period) + (yy // period)) % 2
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    rgb = np.where(pattern[..., None] == 1, a, b).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


# --- geometric transforms ----------------------------------------------------------------------------------------

def _render_geometric(p: FaceParams, resolution: int, rng: np.random.Generator, extent: float = 1.0):
    """Translate, rotate and scale the head (not the background) by up to `extent` of the set's range; the
    transform is recorded."""
    e = extent
    transform = {"dx": float(rng.uniform(-0.12, 0.12) * e), "dy": float(rng.uniform(-0.1, 0.1) * e),
                 "angle": float(rng.uniform(-25, 25) * e), "scale": float(rng.uniform(0.8, 1.2))}
    transform["scale"] = 1 + (transform["scale"] - 1) * e if e != 1 else transform["scale"]
    return render_moved(p, resolution, transform), transform


def render_moved(p: FaceParams, resolution: int, transform: dict) -> Image.Image:
    """The face with its head (not the background) moved by a recorded `transform` (dx, dy in canvas units, angle
    in degrees, scale), about the canvas centre."""
    S = resolution * SUPERSAMPLE
    face = render_face_layer(p, S)
    # Rotate and scale about the canvas centre, then shift; PIL's affine maps output to input coordinates.
    a = math.radians(transform["angle"])
    s = transform["scale"]
    c = S / 2
    cos, sin = math.cos(a) / s, math.sin(a) / s
    tx, ty = transform["dx"] * S, transform["dy"] * S
    coeffs = (cos, sin, c - cos * (c + tx) - sin * (c + ty), -sin, cos, c + sin * (c + tx) - cos * (c + ty))
    moved = face.transform((S, S), Image.AFFINE, coeffs, resample=Image.BICUBIC)
    scene = render_background(p, S)
    scene.paste(moved, (0, 0), moved)
    return finish(p, scene, resolution)
