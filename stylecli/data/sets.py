"""Training and held-out evaluation sets of the synthetic face domain.

Every set draws from its own seed range, so evaluation faces are never seen in training:

| set       | seeds                 | what it holds                                                               |
|-----------|-----------------------|-----------------------------------------------------------------------------|
| train     | 0 .. 999,999,999      | plain faces (training renders on the fly from random seeds in this range)   |
| indomain  | 1,000,000,000 + i     | plain held-out faces                                                        |
| detail    | 1,100,000,000 + i     | dense fine detail (3x the freckles and moles)                               |
| ood       | 1,200,000,000 + i     | accessories, occluders, stickers, textured backgrounds + exact masks        |
| geometric | 1,300,000,000 + i     | faces translated, rotated and scaled, the transform recorded                |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .render import SUPERSAMPLE, FaceParams, finish, render, render_background, render_face_layer, sample_params

SET_SEEDS = {"train": 0, "indomain": 1_000_000_000, "detail": 1_100_000_000, "ood": 1_200_000_000,
             "geometric": 1_300_000_000}
TRAIN_SEED_LIMIT = 1_000_000_000
OOD_KINDS = ("sticker", "occluder", "microphone", "scribble", "texture_background", "hat")


@dataclass
class Sample:
    image: Image.Image            # RGB, resolution x resolution
    label: dict                   # every parameter, the set, the seed, and set-specific records
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


def rerender(label: dict, resolution: int = 64, **changes) -> Image.Image:
    """A plain face rendered again from its label with some parameters changed: the renderer's exact edit."""
    fields = FaceParams.__dataclass_fields__
    return render(FaceParams(**{k: v for k, v in {**label, **changes}.items() if k in fields}), resolution)


# --- out-of-domain additions -------------------------------------------------------------------------------------

def _render_ood(p: FaceParams, resolution: int, rng: np.random.Generator):
    S = resolution * SUPERSAMPLE
    scene = render_background(p, S)
    face = render_face_layer(p, S)
    kinds = sorted(set(rng.choice(OOD_KINDS, size=int(rng.integers(1, 3)), replace=False).tolist()))
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

def _render_geometric(p: FaceParams, resolution: int, rng: np.random.Generator):
    """Translate, rotate and scale the head (not the background); the transform is recorded."""
    S = resolution * SUPERSAMPLE
    transform = {"dx": float(rng.uniform(-0.12, 0.12)), "dy": float(rng.uniform(-0.1, 0.1)),
                 "angle": float(rng.uniform(-25, 25)), "scale": float(rng.uniform(0.8, 1.2))}
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
    return finish(p, scene, resolution), transform
