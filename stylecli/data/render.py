"""The synthetic face domain: a deterministic procedural renderer of aligned frontal cartoon faces.

`sample_params(rng)` draws every parameter of a face; `render(params, resolution)` draws it with Pillow at
`SUPERSAMPLE` times the resolution and downsamples (anti-aliasing), so any output resolution works. Everything is a
function of the parameters, and the parameters are a function of the seed, so a seed names an image exactly.

Parameters (all recorded in the labels):
- identity: skin tone, face width, jaw roundness, eye spacing/size, iris colour, nose length/width, hair style
- editable attributes (ATTRIBUTES): smile, yaw, age, glasses, beard, eyebrow angle, hair colour
- fine detail: freckles and moles at random places, skin texture (what a W+ code cannot pin down)
- scene: background colours and gradient direction, light direction and strength
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4

# Editable attributes and their ranges (continuous unless noted). `glasses` is 0 or 1.
ATTRIBUTES = {
    "smile": (-1.0, 1.0),       # frown .. broad open smile
    "yaw": (-1.0, 1.0),         # head turned to the viewer's left .. right
    "age": (0.0, 1.0),          # young .. old (wrinkles, grey hair)
    "glasses": (0.0, 1.0),      # binary
    "beard": (0.0, 1.0),        # none .. full
    "eyebrows": (-1.0, 1.0),    # angry (inner ends down) .. worried (inner ends up)
    "hair_hue": (0.0, 1.0),     # black .. brown .. auburn .. blonde (see HAIR_COLOURS)
}

SKIN_TONES = np.array([[255, 224, 196], [241, 194, 155], [224, 172, 125], [198, 134, 86], [141, 85, 54], [95, 60, 40]], float)
HAIR_COLOURS = np.array([[25, 20, 18], [78, 50, 30], [140, 70, 35], [200, 150, 80], [235, 205, 130]], float)
IRIS_COLOURS = np.array([[70, 45, 25], [60, 100, 150], [70, 120, 70], [110, 90, 60], [40, 40, 45]], float)
HAIR_STYLES = ("short", "long", "bob", "spiky", "bald")


@dataclass
class FaceParams:
    # identity
    skin: float
    face_width: float
    jaw: float
    eye_spacing: float
    eye_size: float
    iris: float
    nose_length: float
    nose_width: float
    hair_style: str
    # editable attributes
    smile: float
    yaw: float
    age: float
    glasses: float
    beard: float
    eyebrows: float
    hair_hue: float
    # fine detail: (x, y, radius) in face-relative units, darkness in [0, 1]
    freckles: list = field(default_factory=list)
    moles: list = field(default_factory=list)
    texture_seed: int = 0
    texture: float = 0.0
    # scene
    bg_top: tuple = (200, 210, 230)
    bg_bottom: tuple = (150, 160, 190)
    bg_angle: float = 0.0
    light_angle: float = 0.0
    light: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def attributes(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def _palette(colours: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear colour along a palette, t in [0, 1]."""
    pos = float(np.clip(t, 0, 1)) * (len(colours) - 1)
    i = min(int(pos), len(colours) - 2)
    return colours[i] + (colours[i + 1] - colours[i]) * (pos - i)


def sample_params(rng: np.random.Generator, detail: float = 1.0) -> FaceParams:
    """Draw a face. `detail` scales how many freckles/moles appear (the `detail` evaluation set uses 3)."""
    u = rng.uniform
    n_freckles = int(rng.poisson(6 * detail)) if u() < 0.5 else 0
    # Offsets from the face centre in canvas units (the face is ~0.5 wide): freckles on the cheeks and nose bridge,
    # moles anywhere on the face.
    freckles = [(float(u(-0.16, 0.16)), float(u(0.0, 0.1)), float(u(0.005, 0.01))) for _ in range(n_freckles)]
    moles = [(float(u(-0.17, 0.17)), float(u(-0.22, 0.3)), float(u(0.009, 0.016))) for _ in range(int(rng.poisson(0.8 * detail)))]
    bg_base = rng.uniform(60, 235, 3)
    return FaceParams(
        skin=float(u()), face_width=float(u(0.86, 1.1)), jaw=float(u()), eye_spacing=float(u()), eye_size=float(u()),
        iris=float(u()), nose_length=float(u()), nose_width=float(u()),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.3, 0.25, 0.2, 0.15, 0.1])),
        smile=float(u(-1, 1)), yaw=float(np.clip(rng.normal(0, 0.45), -1, 1)), age=float(u() ** 1.5),
        glasses=float(u() < 0.3), beard=float(u() if u() < 0.35 else 0.0), eyebrows=float(u(-1, 1)),
        hair_hue=float(u()),
        freckles=freckles, moles=moles, texture_seed=int(rng.integers(0, 2 ** 31)), texture=float(u(0.0, 1.0)),
        bg_top=tuple(int(c) for c in np.clip(bg_base + rng.normal(0, 25, 3), 0, 255)),
        bg_bottom=tuple(int(c) for c in np.clip(bg_base + rng.normal(0, 25, 3) - 30, 0, 255)),
        bg_angle=float(u(0, 2 * math.pi)), light_angle=float(u(0, 2 * math.pi)), light=float(u(0, 0.25)),
    )


def resample_appearance(p: FaceParams, rng: np.random.Generator) -> FaceParams:
    """The same person (identity and fine detail kept) with new editable attributes, background and light."""
    other = sample_params(rng)
    keep = ("skin", "face_width", "jaw", "eye_spacing", "eye_size", "iris", "nose_length", "nose_width", "hair_style",
            "freckles", "moles", "texture_seed", "texture")
    return FaceParams(**{**other.to_dict(), **{k: getattr(p, k) for k in keep}})


def _gradient(size: int, angle: float) -> np.ndarray:
    """[size, size] values in [0, 1] along direction `angle`."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    g = xx * math.cos(angle) + yy * math.sin(angle)
    return (g - g.min()) / max(g.max() - g.min(), 1e-6)


def _rgb(c) -> tuple[int, int, int]:
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))


def _quad_curve(p0, p1, p2, n=24):
    """Points of the quadratic Bezier curve p0 -> p2 with control p1."""
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t ** 2 * np.array(p2)
    return [tuple(p) for p in pts]


def render_background(p: FaceParams, size: int) -> Image.Image:
    """The two-colour gradient background (RGB, size x size); computed coarsely, it is smooth."""
    coarse = min(size, 64)
    g = _gradient(coarse, p.bg_angle)[..., None]
    bg = np.array(p.bg_top, float) * (1 - g) + np.array(p.bg_bottom, float) * g
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    return img if coarse == size else img.resize((size, size), Image.BILINEAR)


def finish(p: FaceParams, big: Image.Image, resolution: int) -> Image.Image:
    """Downsample the supersampled canvas (box filter: anti-aliasing), then light it with a smooth ramp."""
    img = big.resize((resolution, resolution), Image.BOX)
    if p.light <= 0:
        return img
    ramp = 1 + p.light * (_gradient(resolution, p.light_angle) - 0.5)[..., None]
    return Image.fromarray(np.clip(np.asarray(img, float) * ramp, 0, 255).astype(np.uint8), "RGB")


def render_face_layer(p: FaceParams, size: int) -> Image.Image:
    """Head, hair, neck and shoulders on a transparent canvas (RGBA, size x size)."""
    return _draw_face(p, size)[0]


def render_face_region(p: FaceParams, resolution: int = 64) -> np.ndarray:
    """[R, R] float32 in [0, 1]: how much of each pixel of `render(p, resolution)` is the face -- the skull and jaw
    with everything drawn on them (eyes, brows, nose, mouth, beard, glasses), without the hair over them, the ears,
    neck and background: what a face parser's face classes cover on a photo (the edit mask of `--edit-mask face`)."""
    region = _draw_face(p, resolution * SUPERSAMPLE)[1]
    return np.asarray(region.resize((resolution, resolution), Image.BOX), np.float32) / 255.0


def _draw_face(p: FaceParams, size: int) -> tuple[Image.Image, Image.Image]:
    """(the face layer, RGBA size x size; the face region, L size x size: 255 on the face)."""
    S = size
    X = lambda v: v * S  # canvas units (0..1 across the canvas) -> pixels
    # Strokes blend over an opaque canvas; the silhouette (opaque shapes only) is drawn into a separate mask that
    # becomes the alpha channel, so translucent details never punch holes. Shapes drawn with region=True (the skull,
    # the jaw) add to the face region, region=False (hair over the face) take from it.
    img = Image.new("RGB", (S, S), (0, 0, 0))
    silhouette = Image.new("L", (S, S), 0)
    face_region = Image.new("L", (S, S), 0)
    draw = _SilhouetteDraw(ImageDraw.Draw(img, "RGBA"), ImageDraw.Draw(silhouette), ImageDraw.Draw(face_region))

    skin = _palette(SKIN_TONES, p.skin)
    hair = _palette(HAIR_COLOURS, p.hair_hue)
    grey = np.array([200, 200, 200], float)
    hair = hair + (grey - hair) * np.clip((p.age - 0.45) / 0.55, 0, 1)  # greying with age
    shade = lambda c, k: _rgb(np.asarray(c) * k)

    cx, cy = 0.5 + 0.06 * p.yaw, 0.53
    fw, fh = 0.25 * p.face_width, 0.32
    turn = 0.11 * p.yaw  # inner features shift more than the outline when the head turns

    # Hair behind the head.
    if p.hair_style in ("long", "bob"):
        bottom = 0.92 if p.hair_style == "long" else 0.7
        draw.rounded_rectangle([X(cx - fw - 0.06), X(cy - fh - 0.06), X(cx + fw + 0.06), X(bottom)], radius=X(0.12),
                               fill=_rgb(hair))
    # Neck and shoulders.
    draw.rectangle([X(cx - 0.09), X(cy + 0.2), X(cx + 0.09), X(1.0)], fill=shade(skin, 0.88))
    draw.ellipse([X(0.12), X(0.9), X(0.88), X(1.3)], fill=shade(skin, 0.6))
    # Ears (the far one hides as the head turns).
    for side in (-1, 1):
        visible = 1 - max(0.0, side * p.yaw)
        if visible > 0.25:
            ex = cx + side * (fw + 0.01) - 0.02 * p.yaw
            draw.ellipse([X(ex - 0.035 * visible), X(cy - 0.06), X(ex + 0.035 * visible), X(cy + 0.05)],
                         fill=shade(skin, 0.93))
    # Face: an ellipse for the skull, a polygon for the jaw (rounder or squarer).
    draw.ellipse([X(cx - fw), X(cy - fh), X(cx + fw), X(cy + fh * 0.55)], fill=_rgb(skin), region=True)
    jaw_w = fw * (0.55 + 0.3 * p.jaw)
    jaw = _quad_curve((cx - fw, cy), (cx - jaw_w, cy + fh * 1.25), (cx + turn * 0.3, cy + fh))
    jaw += _quad_curve((cx + turn * 0.3, cy + fh), (cx + jaw_w, cy + fh * 1.25), (cx + fw, cy))
    draw.polygon([(X(x), X(y)) for x, y in jaw], fill=_rgb(skin), region=True)

    # Skin texture and fine detail.
    tex_rng = np.random.default_rng(p.texture_seed)
    for _ in range(int(40 * p.texture)):
        x, y = cx + tex_rng.uniform(-fw * 0.8, fw * 0.8), cy + tex_rng.uniform(-fh * 0.6, fh * 0.8)
        r = tex_rng.uniform(0.004, 0.009)
        draw.ellipse([X(x - r), X(y - r), X(x + r), X(y + r)], fill=shade(skin, tex_rng.uniform(0.9, 0.97)) + (90,))
    for x, y, r in p.freckles:
        x, y = cx + turn + x * p.face_width, cy + y
        draw.ellipse([X(x - r), X(y - r), X(x + r), X(y + r)], fill=_rgb([150, 85, 45]) + (170,))
    for x, y, r in p.moles:
        x, y = cx + turn * 0.8 + x * p.face_width, cy + y * 0.7
        draw.ellipse([X(x - r), X(y - r), X(x + r), X(y + r)], fill=_rgb([60, 35, 25]) + (235,))

    # Beard: a darker band around the lower face, density by `beard`.
    if p.beard > 0.05:
        alpha = int(60 + 170 * p.beard)
        band = _quad_curve((cx - fw * 0.95, cy + 0.02), (cx + turn * 0.3, cy + fh * 1.55), (cx + fw * 0.95, cy + 0.02))
        inner = _quad_curve((cx + fw * 0.6, cy + 0.08), (cx + turn * 0.3, cy + fh * (1.1 - 0.3 * p.beard)),
                            (cx - fw * 0.6, cy + 0.08))
        draw.polygon([(X(x), X(y)) for x, y in band + inner], fill=_rgb(hair * 0.8) + (alpha,))

    # Hair on top of the head.
    top = cy - fh
    if p.hair_style == "bald":
        draw.arc([X(cx - fw), X(top - 0.01), X(cx + fw), X(cy)], 200, 340, fill=_rgb(hair) + (120,), width=max(1, int(X(0.015))))
    else:
        draw.chord([X(cx - fw - 0.02), X(top - 0.05), X(cx + fw + 0.02), X(cy + 0.02)], 180, 360, fill=_rgb(hair),
                   region=False)
        fringe = [(cx - fw - 0.02, cy - 0.06), (cx - fw * 0.3 + turn, top + 0.1 + 0.02 * p.yaw),
                  (cx + fw * 0.5 + turn, top + 0.07), (cx + fw + 0.02, cy - 0.06), (cx + fw + 0.02, top), (cx - fw - 0.02, top)]
        draw.polygon([(X(x), X(y)) for x, y in fringe], fill=_rgb(hair), region=False)
        if p.hair_style == "spiky":
            for k in range(7):
                x0 = cx - fw + (k + 0.5) * 2 * fw / 7
                draw.polygon([(X(x0 - 0.03), X(top + 0.03)), (X(x0 + 0.01), X(top - 0.09)), (X(x0 + 0.03), X(top + 0.03))],
                             fill=_rgb(hair), region=False)

    # Eyes.
    ex_off = 0.075 + 0.03 * p.eye_spacing
    er = 0.028 + 0.014 * p.eye_size
    ey = cy - 0.02
    iris = _palette(IRIS_COLOURS, p.iris)
    for side in (-1, 1):
        squash = 1 - 0.35 * max(0.0, side * p.yaw)  # the far eye narrows
        ex = cx + turn + side * ex_off * (1 - 0.25 * abs(p.yaw))
        draw.ellipse([X(ex - er * squash), X(ey - er * 0.7), X(ex + er * squash), X(ey + er * 0.7)], fill=(250, 250, 250))
        ir = er * 0.55
        ix = ex + 0.35 * er * p.yaw
        draw.ellipse([X(ix - ir * squash), X(ey - ir), X(ix + ir * squash), X(ey + ir)], fill=_rgb(iris))
        draw.ellipse([X(ix - ir * 0.45), X(ey - ir * 0.45), X(ix + ir * 0.45), X(ey + ir * 0.45)], fill=(15, 15, 15))
        # Eyebrows: the inner end rises (worried) or drops (angry).
        inner, outer = ex - side * er * 1.1, ex + side * er * 1.2
        by = ey - er * 1.6
        draw.line([(X(inner), X(by - 0.04 * p.eyebrows)), (X(outer), X(by + 0.015 * p.eyebrows))],
                  fill=_rgb(hair * 0.5), width=max(1, int(X(0.024))))
        # Age: crow's feet and lower-lid lines.
        if p.age > 0.3:
            a = int(200 * (p.age - 0.3) / 0.7)
            for k in (-1, 0, 1):
                draw.line([(X(ex + side * er * 1.2), X(ey + k * 0.01)), (X(ex + side * (er * 1.2 + 0.025)), X(ey + k * 0.018))],
                          fill=shade(skin, 0.6) + (a,), width=max(1, int(X(0.005))))
            draw.arc([X(ex - er), X(ey), X(ex + er), X(ey + er * 1.3)], 20, 160, fill=shade(skin, 0.65) + (a,),
                     width=max(1, int(X(0.004))))
    # Forehead wrinkles with age.
    if p.age > 0.4:
        a = int(200 * (p.age - 0.4) / 0.6)
        for k in range(3):
            y = cy - 0.12 - 0.025 * k
            draw.arc([X(cx + turn - 0.09), X(y - 0.02), X(cx + turn + 0.09), X(y + 0.02)], 200, 340,
                     fill=shade(skin, 0.62) + (a,), width=max(1, int(X(0.005))))

    # Nose.
    nl = 0.06 + 0.04 * p.nose_length
    nw = 0.02 + 0.02 * p.nose_width
    nx = cx + turn * 1.2
    draw.line([(X(nx), X(ey + 0.01)), (X(nx + 0.01 * p.yaw), X(ey + nl))], fill=shade(skin, 0.75), width=max(1, int(X(0.008))))
    draw.arc([X(nx - nw), X(ey + nl - nw * 0.8), X(nx + nw), X(ey + nl + nw * 0.8)], 20, 160, fill=shade(skin, 0.6),
             width=max(1, int(X(0.008))))

    # Mouth: smile bends the corners up and opens the mouth; frowning bends them down.
    my = cy + 0.13
    mw = 0.075 + 0.025 * max(p.smile, 0)
    mx = cx + turn
    corner = -0.045 * p.smile
    open_ = max(0.0, p.smile - 0.1) * 0.07
    upper = _quad_curve((mx - mw, my + corner), (mx, my + 0.5 * corner * -0.4), (mx + mw, my + corner))
    lower = _quad_curve((mx + mw, my + corner), (mx, my + open_ * 2 + 0.01 - corner * 0.6), (mx - mw, my + corner))
    lip = _rgb(np.array([150, 45, 55]) * 0.8 + skin * 0.2)
    if open_ > 0.004:
        draw.polygon([(X(x), X(y)) for x, y in upper + lower], fill=(70, 20, 25))
        teeth = _quad_curve((mx - mw * 0.8, my + corner * 0.8 + 0.004), (mx, my + 0.012), (mx + mw * 0.8, my + corner * 0.8 + 0.004))
        draw.line([(X(x), X(y)) for x, y in teeth], fill=(245, 245, 240), width=max(1, int(X(0.012))))
    draw.line([(X(x), X(y)) for x, y in upper], fill=lip, width=max(1, int(X(0.018))), joint="curve")
    if open_ > 0.004:
        draw.line([(X(x), X(y)) for x, y in lower], fill=lip, width=max(1, int(X(0.018))), joint="curve")

    # Glasses: two rims and a bridge.
    if p.glasses >= 0.5:
        gr = er * 1.7
        rims = []
        for side in (-1, 1):
            ex = cx + turn + side * ex_off * (1 - 0.25 * abs(p.yaw))
            rims.append(ex)
            draw.ellipse([X(ex - gr), X(ey - gr * 0.8), X(ex + gr), X(ey + gr * 0.8)], outline=(30, 30, 35),
                         width=max(1, int(X(0.011))))
        draw.line([(X(rims[0] + gr), X(ey)), (X(rims[1] - gr), X(ey))], fill=(30, 30, 35), width=max(1, int(X(0.01))))

    img.putalpha(silhouette)
    return img, face_region


class _SilhouetteDraw:
    """ImageDraw whose opaque fills (solid=True, the default for fills) also mark the silhouette mask; a shape drawn
    with region=True / False also marks / clears the face region."""

    def __init__(self, draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, region: ImageDraw.ImageDraw):
        self.draw, self.mask, self.region = draw, mask, region

    def __getattr__(self, name):
        method = getattr(self.draw, name)

        def call(*args, region: bool | None = None, **kwargs):
            method(*args, **kwargs)
            if region is not None:
                getattr(self.region, name)(*args, **{**kwargs, "fill": 255 if region else 0})
            fill = kwargs.get("fill")
            if name in ("ellipse", "polygon", "rectangle", "rounded_rectangle", "chord") and fill is not None \
                    and len(fill) == 3:
                getattr(self.mask, name)(*args, **{**kwargs, "fill": 255})

        return call


# Landmarks of a face, in canvas units (0..1 across the aligned canvas, x right, y down; pixel j of a render at
# resolution R covers [j / R, (j + 1) / R)). The five points follow the 5-point convention of face detectors, in
# image order: the eye on the image's left, the other eye, the nose tip, the mouth corner on the image's left, the
# other corner. The formulas are render_face_layer's own (a test checks that the two agree).
POINT_NAMES = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
# The template of the aligned canvas: two fixed canvas points on its vertical midline. A face's canvas is placed in a
# photo by a similarity transform; where these two points land in the photo gives that transform back exactly, which
# no set of facial features can (eye spacing, yaw and smile move every feature relative to the canvas).
TEMPLATE_POINTS = ((0.5, 0.3), (0.5, 0.8))


def face_points(p: FaceParams) -> np.ndarray:
    """[5, 2] canvas coordinates of the five landmarks (POINT_NAMES) of face `p` as render_face_layer draws it."""
    cx, cy = 0.5 + 0.06 * p.yaw, 0.53
    turn = 0.11 * p.yaw
    ex_off = (0.075 + 0.03 * p.eye_spacing) * (1 - 0.25 * abs(p.yaw))
    ey = cy - 0.02
    nx = cx + turn * 1.2
    nl = 0.06 + 0.04 * p.nose_length
    my = cy + 0.13
    mw = 0.075 + 0.025 * max(p.smile, 0)
    corner = -0.045 * p.smile
    return np.array([[cx + turn - ex_off, ey], [cx + turn + ex_off, ey], [nx + 0.01 * p.yaw, ey + nl],
                     [cx + turn - mw, my + corner], [cx + turn + mw, my + corner]])


def face_box(p: FaceParams) -> np.ndarray:
    """[4, 2] canvas corners (top-left, bottom-left, bottom-right, top-right) of the face's box: the width of the face
    (ears left out), from the top of the hair (the skull for a bald head) to the chin."""
    cx, cy = 0.5 + 0.06 * p.yaw, 0.53
    fw, fh = 0.25 * p.face_width, 0.32
    top = cy - fh - (0.0 if p.hair_style == "bald" else 0.05)
    return np.array([[cx - fw, top], [cx - fw, cy + fh], [cx + fw, cy + fh], [cx + fw, top]])


def render(p: FaceParams, resolution: int = 64) -> Image.Image:
    """The face as an RGB image of resolution x resolution."""
    S = resolution * SUPERSAMPLE
    big = render_background(p, S)
    face = render_face_layer(p, S)
    big.paste(face, (0, 0), face)
    return finish(p, big, resolution)


def render_seed(seed: int, resolution: int = 64, detail: float = 1.0) -> tuple[Image.Image, FaceParams]:
    params = sample_params(np.random.default_rng(seed), detail=detail)
    return render(params, resolution), params
