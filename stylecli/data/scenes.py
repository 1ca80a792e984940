"""Photos of the synthetic domain: rendered faces placed in larger scenes (the `scenes` set, and the face detector's
training data).

A scene is a photo (e.g. 256x192) holding 0-3 faces of the domain, each drawn by the renderer on its own canvas and
placed by a similarity transform: a random position, a scale that makes the face 20-70 % of the photo's short side
wide, and an in-plane rotation; faces do not overlap much. Behind them: a background made to look more like a photo
than the renderer's gradients (walls and furniture-like shapes, textures, low-frequency shading, round objects as
decoys, a little blur and sensor noise). Faces are composited at `supersample` times the photo's resolution, then
box-filtered down, like the renderer's own images.

Labels (JSON, pixel coordinates with the top-left pixel's centre at (0, 0), as dlib and OpenCV report them): per face
its box (x0, y0, x1, y1), its five landmarks (`render.POINT_NAMES`), where the canvas' two `TEMPLATE_POINTS` lie,
the placement (centre, canvas side in pixels, angle in degrees) and every renderer parameter. The renderer's aligned
render of those parameters (`aligned_truth`) is what an exact alignment of that face gives back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .render import (SUPERSAMPLE, TEMPLATE_POINTS, FaceParams, _gradient, face_box, face_points, render,
                     render_face_layer, sample_params)

SCENE_SEED = 1_400_000_000   # the `scenes` evaluation set: scene i is seed SCENE_SEED + i (training draws below 1e9)
SCENE_SIZES = ((256, 192), (192, 256), (320, 240), (256, 256), (384, 288))  # (width, height) a scene draws from
FACE_COUNTS = (0.1, 0.4, 0.3, 0.2)  # chance of 0, 1, 2 and 3 faces
FACE_WIDTH = (0.2, 0.7)             # a face's width over the photo's short side
MAX_ANGLE = 35.0                    # in-plane rotation, degrees (normal with std 15, clipped)


@dataclass
class Scene:
    image: Image.Image   # RGB, width x height
    faces: list[dict]    # one label per face (see the module's docstring), left to right
    seed: int | None = None

    def label(self) -> dict:
        return {"seed": self.seed, "size": list(self.image.size), "faces": self.faces}


def canvas_transform(centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    """[2, 3] canvas units (0..1) -> photo edge coordinates for a canvas of `side` pixels centred at `centre`, rotated
    by `angle` degrees (counter-clockwise as seen in the photo, i.e. with y down a negative rotation matrix angle)."""
    a = math.radians(angle)
    rot = side * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return np.concatenate([rot, (centre - rot @ np.array([0.5, 0.5]))[:, None]], axis=1)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def render_scene(rng: np.random.Generator, size: tuple[int, int] | None = None, count: int | None = None,
                 supersample: int = SUPERSAMPLE, seed: int | None = None) -> Scene:
    """A scene drawn entirely from `rng`.

    size -- (width, height); None draws one of SCENE_SIZES;
    count -- faces to place (0-3); None draws from FACE_COUNTS (fewer are placed when they cannot fit);
    supersample -- the faces are composited at this multiple of the photo's resolution (the detector's training
                   uses 2 for speed; the evaluation set the renderer's 4);
    seed -- recorded in the label."""
    if size is None:
        size = SCENE_SIZES[int(rng.integers(len(SCENE_SIZES)))]
    W, H = size
    if count is None:
        count = int(rng.choice(len(FACE_COUNTS), p=FACE_COUNTS))
    photo = _background(W, H, rng)
    placed: list[dict] = []
    for _ in range(count):
        face = _place_face(rng, W, H, placed)
        if face is not None:
            placed.append(face)
    # Nearer (larger) faces last: they hide what lies behind them, as in a photo. `owner` records which face each
    # pixel shows, to tell how much of each head stays visible.
    owner = np.full((H, W), -1, dtype=np.int16)
    placed.sort(key=lambda face: face["side"])
    for k, face in enumerate(placed):
        _composite(photo, face, supersample, owner, k)
    for k, face in enumerate(placed):
        face["visible"] = _visible(face, owner, k)
    array = np.asarray(photo, dtype=np.float32)
    array = array + rng.normal(0, rng.uniform(0.5, 3.0), array.shape)  # sensor noise
    photo = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8), "RGB")
    labels = sorted((_face_label(face) for face in placed), key=lambda f: (f["box"][0] + f["box"][2]) / 2)
    return Scene(photo, labels, seed)


def make_scene(index: int) -> Scene:
    """Scene `index` of the `scenes` evaluation set (seed SCENE_SEED + index)."""
    seed = SCENE_SEED + index
    return render_scene(np.random.default_rng(seed), seed=seed)


def _place_face(rng: np.random.Generator, W: int, H: int, placed: list[dict], tries: int = 30) -> dict | None:
    """A face's parameters and placement, inside the photo and not overlapping `placed` by more than 15 % of the
    smaller box; None when `tries` draws all fail."""
    short = min(W, H)
    params = sample_params(rng)
    for _ in range(tries):
        width = rng.uniform(*FACE_WIDTH) * short
        side = width / (0.5 * params.face_width)        # the face is 0.5 * face_width canvas units wide
        angle = float(np.clip(rng.normal(0, 15), -MAX_ANGLE, MAX_ANGLE))
        offsets = _apply(canvas_transform(np.zeros(2), side, angle), face_box(params))
        lo, hi = -offsets.min(0), np.array([W, H]) - offsets.max(0)
        if (lo >= hi).any():
            continue
        centre = rng.uniform(lo, hi)
        box = np.concatenate([(offsets + centre).min(0), (offsets + centre).max(0)])
        if any(_overlap(box, other["box"]) > 0.15 for other in placed):
            continue
        return {"params": params, "centre": centre, "side": side, "angle": angle, "box": box}
    return None


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(w * h / smaller)


def _composite(photo: Image.Image, face: dict, supersample: int, owner: np.ndarray, index: int) -> None:
    """Draw `face` into `photo` (in place): its canvas rendered at `supersample` times its size in the photo, lit by
    the renderer's light ramp, warped into the patch it covers, box-filtered down and alpha-composited. Pixels it
    covers at least half are marked `index` in `owner` [H, W]; its head's own pixels are kept in face["head"]."""
    p: FaceParams = face["params"]
    W, H = photo.size
    canvas = max(8, int(math.ceil(face["side"] * supersample)))
    layer = render_face_layer(p, canvas)
    if p.light > 0:  # the renderer lights the whole canvas (`finish`); here the face carries its own light
        coarse = 64
        ramp = 1 + p.light * (_gradient(coarse, p.light_angle) - 0.5)
        ramp = np.asarray(Image.fromarray(ramp.astype(np.float32), "F").resize((canvas, canvas), Image.BILINEAR))
        rgb = np.asarray(layer.convert("RGB"), dtype=np.float32) * ramp[..., None]
        lit = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")
        lit.putalpha(layer.getchannel("A"))
        layer = lit
    # The patch of the photo the canvas covers (whole pixels), at the supersampled resolution.
    to_photo = canvas_transform(face["centre"], face["side"], face["angle"])
    corners = _apply(to_photo, np.array([[0, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float64))
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int), [W, H])
    if x0 >= x1 or y0 >= y1:
        return
    # Patch pixel (supersampled edge coordinates) -> canvas pixel: photo = (X / ss + x0), canvas units via the inverse.
    full = np.vstack([to_photo, [0, 0, 1]])
    inverse = np.linalg.inv(full)[:2] * canvas               # photo -> canvas pixels
    patch_to_canvas = inverse.copy()
    patch_to_canvas[:, :2] = inverse[:, :2] / supersample
    patch_to_canvas[:, 2] = inverse[:, :2] @ np.array([x0, y0], dtype=np.float64) + inverse[:, 2]
    size = ((x1 - x0) * supersample, (y1 - y0) * supersample)
    # Bilinear is enough: the patch is box-filtered down from `supersample` times its size.
    patch = layer.transform(size, Image.AFFINE, tuple(patch_to_canvas.reshape(-1)), resample=Image.BILINEAR)
    if supersample > 1:
        patch = patch.resize((x1 - x0, y1 - y0), Image.BOX)
    region = photo.crop((x0, y0, x1, y1)).convert("RGBA")
    photo.paste(Image.alpha_composite(region, patch).convert("RGB"), (x0, y0))
    covered = np.asarray(patch.getchannel("A")) >= 128
    owner[y0:y1, x0:x1][covered] = index
    bx0, by0, bx1, by1 = face["box"]
    yy, xx = np.mgrid[y0:y1, x0:x1] + 0.5
    face["head"] = (y0, x0, covered & (xx >= bx0) & (xx <= bx1) & (yy >= by0) & (yy <= by1))


def _visible(face: dict, owner: np.ndarray, index: int) -> float:
    """The share of a face's head (its silhouette within its box) that no nearer face hides."""
    if "head" not in face:
        return 0.0
    y0, x0, head = face.pop("head")
    if not head.any():
        return 0.0
    shown = owner[y0:y0 + head.shape[0], x0:x0 + head.shape[1]][head] == index
    return float(shown.mean())


def _face_label(face: dict) -> dict:
    """A placed face's label in pixel-index coordinates (edge coordinates - 0.5)."""
    p: FaceParams = face["params"]
    to_photo = canvas_transform(face["centre"], face["side"], face["angle"])
    index = lambda a: np.round(np.asarray(a) - 0.5, 3).tolist()
    return {"box": index(face["box"]), "points": index(_apply(to_photo, face_points(p))),
            "template": index(_apply(to_photo, np.array(TEMPLATE_POINTS))),
            "centre": index(face["centre"]), "side": round(float(face["side"]), 3), "angle": round(face["angle"], 3),
            "visible": round(face["visible"], 4), "params": p.to_dict()}


def aligned_truth(face: dict, resolution: int) -> tuple[Image.Image, np.ndarray]:
    """The renderer's aligned render of a scene's face (its label) and the head's silhouette [R, R] in [0, 1]: what
    an exact alignment of the face gives back, on the head (the scene's background differs from the renderer's, and
    neck and shoulders may leave the photo)."""
    fields = FaceParams.__dataclass_fields__
    p = FaceParams(**{k: v for k, v in face["params"].items() if k in fields})
    alpha = render_face_layer(p, resolution * SUPERSAMPLE).getchannel("A").resize((resolution, resolution), Image.BOX)
    mask = np.asarray(alpha, dtype=np.float32) / 255
    box = face_box(p) * resolution
    yy, xx = np.mgrid[0:resolution, 0:resolution] + 0.5
    mask[(xx < box[0, 0]) | (xx > box[2, 0]) | (yy < box[0, 1]) | (yy > box[1, 1])] = 0
    return render(p, resolution), mask


# --- backgrounds -------------------------------------------------------------------------------------------------

def _colour(rng: np.random.Generator, muted: bool = True) -> tuple[int, int, int]:
    base = rng.uniform(30, 230, 3)
    if muted:  # walls and furniture: mostly greys and browns
        base = base.mean() + (base - base.mean()) * rng.uniform(0.1, 0.6)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def _noise(W: int, H: int, rng: np.random.Generator, octaves: int = 3) -> np.ndarray:
    """[H, W] smooth noise in about [-1, 1]: random grids of a few cells upsampled bicubically, summed over octaves."""
    total = np.zeros((H, W), np.float32)
    for k in range(octaves):
        cells = 2 ** (k + 1) + 1
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        total += np.asarray(Image.fromarray(grid, "F").resize((W, H), Image.BICUBIC)) / 2 ** k
    return total / 1.75


def _background(W: int, H: int, rng: np.random.Generator) -> Image.Image:
    """A background that reads as a photo of a room or a street rather than the renderer's gradient."""
    g = _gradient(64, rng.uniform(0, 2 * math.pi))[..., None]
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    base = Image.fromarray((top * (1 - g) + bottom * g).astype(np.uint8), "RGB").resize((W, H), Image.BILINEAR)
    draw = ImageDraw.Draw(base, "RGBA")
    for _ in range(int(rng.integers(2, 7))):  # walls, doors, furniture, windows
        x0, y0 = rng.uniform(-0.2, 1.0) * W, rng.uniform(-0.2, 1.0) * H
        w, h = rng.uniform(0.1, 0.8) * W, rng.uniform(0.1, 0.8) * H
        kind = rng.uniform()
        if kind < 0.6:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=_colour(rng) + (int(rng.integers(150, 256)),))
        elif kind < 0.85:
            pts = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 6)))]
            draw.polygon(pts, fill=_colour(rng) + (int(rng.integers(150, 256)),))
        else:  # a straight pole or frame edge
            draw.line([(x0, y0), (x0 + w * rng.uniform(-0.3, 0.3), y0 + h)], fill=_colour(rng) + (255,),
                      width=int(rng.integers(2, 12)))
    if rng.uniform() < 0.35:  # wallpaper, tiles or a striped shirt-like region
        period = int(rng.integers(4, 16))
        yy, xx = np.mgrid[0:H, 0:W]
        pattern = ((xx + yy) // period) % 2 if rng.uniform() < 0.5 else ((xx // period) + (yy // period)) % 2
        a, b = np.array(_colour(rng, muted=False)), np.array(_colour(rng, muted=False))
        texture = Image.fromarray(np.where(pattern[..., None] == 1, a, b).astype(np.uint8), "RGB")
        x0, y0 = int(rng.uniform(0, 0.7) * W), int(rng.uniform(0, 0.7) * H)
        x1, y1 = x0 + int(rng.uniform(0.2, 0.6) * W), y0 + int(rng.uniform(0.2, 0.6) * H)
        base.paste(texture.crop((x0, y0, x1, y1)), (x0, y0))
    for _ in range(int(rng.poisson(1.2))):  # round objects, some skin-coloured: lamps, balls, plates (decoys)
        r = rng.uniform(0.04, 0.2) * min(W, H)
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        skin = rng.uniform() < 0.5
        colour = tuple(int(v) for v in (np.array([230, 180, 140]) * rng.uniform(0.5, 1.1))) if skin else \
            _colour(rng, muted=False)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.7, 1.3), cx + r, cy + r * rng.uniform(0.7, 1.3)],
                     fill=tuple(int(np.clip(v, 0, 255)) for v in colour) + (255,))
        if rng.uniform() < 0.3:  # two dark dots: a decoy that is not a face of the domain
            for side in (-1, 1):
                draw.ellipse([cx + side * r * 0.35 - r * 0.1, cy - r * 0.25, cx + side * r * 0.35 + r * 0.1,
                              cy - r * 0.05], fill=(20, 20, 20, 255))
    shading = _noise(W, H, rng) * rng.uniform(8, 30)  # uneven light
    array = np.asarray(base, dtype=np.float32) + shading[..., None]
    image = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8), "RGB")
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))  # depth of field
