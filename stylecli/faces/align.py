"""Alignment of faces in photos, and paste-back of aligned crops.

Coordinates are pixel-edge coordinates throughout: x right, y down, the photo's top-left pixel covers [0, 1) x [0, 1)
(a detector that reports pixel indices, as dlib does, adds 0.5). An `Alignment` is the affine map from an aligned
crop's edge coordinates (u, v) in [0, size] to the photo: photo = matrix @ [u, v, 1]. Two recipes make one:

- `ffhq`: the recipe of the FFHQ dataset (and of e4e and SFE, which were trained on its crops). From the eye centres
  and mouth corners: c = eye_avg + 0.1 * eye_to_mouth; the crop's x axis is eye_to_eye minus eye_to_mouth turned by
  90 degrees, normalised, and scaled to max(2 * |eye_to_eye|, 1.8 * |eye_to_mouth|); y is x turned by 90 degrees;
  the crop is the square c +- x +- y.
- `synthetic`: the synthetic domain's own canvas. The renderer draws every face on a canvas whose two
  TEMPLATE_POINTS are fixed; where they lie in a photo gives the canvas back exactly (a similarity transform). Without
  them (a user's 5-point landmarks), the five points are fitted to their mean canvas positions by least squares.

`crop_face` warps a photo into an aligned crop (shrink first when the face is much larger than the crop, reflect and
blur where the crop reaches past the photo, as the FFHQ script does); `paste_faces` warps crops back and blends them
in with a feathered mask, so that every pixel the mask does not reach is the input's own, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from ..data.render import TEMPLATE_POINTS

RECIPES = ("ffhq", "synthetic")

# FFHQ's 5-point template (eye, eye, nose, mouth corner, mouth corner) in a 512 x 512 aligned crop, as facexlib
# records it (FaceRestoreHelper.face_template): where the FFHQ recipe puts an average face's landmarks.
FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]])


@dataclass
class Face:
    """One face in a photo (pixel-edge coordinates of the photo as read: EXIF-upright)."""
    box: np.ndarray                        # [4] x0, y0, x1, y1
    points: np.ndarray                     # [5, 2] eye, eye, nose, mouth corner, mouth corner (image left first)
    score: float = 1.0                     # the detector's confidence (1 for given landmarks)
    points68: np.ndarray | None = None     # [68, 2] iBUG 300-W landmarks, from a 68-point predictor
    template: np.ndarray | None = None     # [2, 2] where the synthetic canvas' TEMPLATE_POINTS lie in the photo

    def __post_init__(self):
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        self.points = np.asarray(self.points, dtype=np.float64).reshape(5, 2)
        if self.points68 is not None:
            self.points68 = np.asarray(self.points68, dtype=np.float64).reshape(68, 2)
        if self.template is not None:
            self.template = np.asarray(self.template, dtype=np.float64).reshape(2, 2)

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))

    def to_json(self) -> dict:
        record = {"box": _round(self.box), "points": _round(self.points), "score": round(float(self.score), 4)}
        if self.template is not None:
            record["template"] = _round(self.template)
        return record


def points_from_68(points68: np.ndarray) -> np.ndarray:
    """[68, 2] iBUG 300-W landmarks -> [5, 2]: the eye centres (means of points 36-41 and 42-47, the FFHQ script's
    eyes), the nose tip (30) and the mouth corners (48, 54)."""
    p = np.asarray(points68, dtype=np.float64)
    assert p.shape == (68, 2), f"expected [68, 2] landmarks, got {p.shape}"
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


@dataclass(frozen=True)
class Alignment:
    """Where an aligned crop of `size` x `size` lies in its photo: photo = matrix @ [u, v, 1]."""
    matrix: np.ndarray = field(repr=False)  # [2, 3] crop edge coordinates -> photo edge coordinates
    size: int                               # the crop's side in pixels

    def quad(self) -> np.ndarray:
        """[4, 2] the crop's corners in the photo: top-left, bottom-left, bottom-right, top-right (FFHQ's order)."""
        s = self.size
        corners = np.array([[0, 0, 1], [0, s, 1], [s, s, 1], [s, 0, 1]], dtype=np.float64)
        return corners @ self.matrix.T

    def scale(self) -> float:
        """Photo pixels per crop pixel."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def inverse(self) -> np.ndarray:
        """[2, 3] photo edge coordinates -> crop edge coordinates."""
        return _invert(self.matrix)

    def to_photo(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64)
        return uv @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_crop(self, xy: np.ndarray) -> np.ndarray:
        inv = self.inverse()
        return np.asarray(xy, dtype=np.float64) @ inv[:, :2].T + inv[:, 2]

    def resized(self, size: int) -> "Alignment":
        """The same square of the photo as a crop of another size."""
        m = self.matrix.copy()
        m[:, :2] *= self.size / size
        return Alignment(m, size)

    def to_json(self) -> dict:
        return {"size": self.size, "quad": _round(self.quad())}


def _round(a: np.ndarray) -> list:
    return np.round(np.asarray(a, dtype=np.float64), 3).tolist()


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _square(c: np.ndarray, x: np.ndarray, size: int) -> Alignment:
    """The crop of `size` whose centre is `c`, whose half-width vector is `x` and half-height x turned by 90 degrees
    (y down): photo = c + x (2u / size - 1) + y (2v / size - 1)."""
    y = np.array([-x[1], x[0]])
    matrix = np.stack([2 * x / size, 2 * y / size, c - x - y], axis=1)
    assert matrix.shape == (2, 3)
    return Alignment(matrix, size)


def ffhq_alignment(face: Face, size: int) -> Alignment:
    """The FFHQ dataset's crop of `face` (re-implemented from its recipe; see the module's docstring)."""
    if face.points68 is not None:  # the FFHQ script's own eyes: means of the 68-point contours
        points = points_from_68(face.points68)
    else:
        points = face.points
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # x: the eye line averaged with the mouth direction turned by -90 degrees (FFHQ: flipud(eye_to_mouth) * [-1, 1]).
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if not norm > 0:
        raise ValueError("degenerate landmarks: the eyes and mouth coincide")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    c = eye_avg + eye_to_mouth * 0.1
    return _square(c, x, size)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """[2, 3] the similarity transform (rotation, uniform scale, translation; no reflection) taking points `src`
    [N, 2] closest to `dst` [N, 2] in least squares (Umeyama's solution)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    assert src.shape == dst.shape and src.shape[0] >= 2, f"{src.shape} vs {dst.shape}"
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    var = (a ** 2).sum()
    if not var > 0:
        raise ValueError("degenerate landmarks: all points coincide")
    # In complex numbers: dst = z * src + t; z = sum(conj(a) b) / sum(|a|^2).
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    z = (np.conj(za) * zb).sum() / var
    rot = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.concatenate([rot, (md - rot @ ms)[:, None]], axis=1)


def _mean_canvas_points(count: int = 2000) -> np.ndarray:
    """[5, 2] the five landmarks' mean canvas positions over rendered faces (a fixed seed range of the train set)."""
    from ..data.render import face_points, sample_params
    return np.mean([face_points(sample_params(np.random.default_rng(seed))) for seed in range(count)], axis=0)


_MEAN_POINTS: np.ndarray | None = None


def mean_canvas_points() -> np.ndarray:
    global _MEAN_POINTS
    if _MEAN_POINTS is None:
        _MEAN_POINTS = _mean_canvas_points()
    return _MEAN_POINTS


def synthetic_alignment(face: Face, size: int) -> Alignment:
    """The synthetic canvas of `face` as a crop of `size`: exact from the canvas' template points, a least-squares
    fit of the five landmarks to their mean canvas positions otherwise."""
    if face.template is not None:
        canvas, photo = np.array(TEMPLATE_POINTS), face.template
    else:
        canvas, photo = mean_canvas_points(), face.points
    matrix = similarity(canvas * size, photo)
    return Alignment(matrix, size)


def align(face: Face, size: int, recipe: str) -> Alignment:
    """The aligned crop of `face` by `recipe` ("ffhq" or "synthetic")."""
    if recipe == "ffhq":
        return ffhq_alignment(face, size)
    if recipe == "synthetic":
        return synthetic_alignment(face, size)
    raise ValueError(f"unknown alignment recipe {recipe!r}; choose from {', '.join(RECIPES)}")


# --- warping ----------------------------------------------------------------------------------------------------

def _affine_data(matrix: np.ndarray) -> tuple:
    """PIL's AFFINE data (output edge coordinates -> input edge coordinates) for a [2, 3] matrix."""
    return tuple(float(v) for v in matrix.reshape(-1))


def _reflect_pad(region: Image.Image, pads: tuple[int, int, int, int], feather: float) -> Image.Image:
    """`region` (RGB) padded by (left, top, right, bottom) pixels, the FFHQ script's way: reflected, then blurred more
    the further a pixel lies from the photo (no sharp mirrored copies of the face)."""
    left, top, right, bottom = pads
    array = np.asarray(region)
    padded = Image.fromarray(np.pad(array, ((top, bottom), (left, right), (0, 0)),
                                    mode="reflect" if min(array.shape[:2]) > 1 else "edge"))
    w, h = padded.size
    # Distance past the photo's edge, per column and per row; a pixel's is the larger of the two.
    xx = np.arange(w, dtype=np.float32) + 0.5
    yy = np.arange(h, dtype=np.float32) + 0.5
    beyond_x = np.maximum(np.maximum(left - xx, xx - (w - right)), 0)
    beyond_y = np.maximum(np.maximum(top - yy, yy - (h - bottom)), 0)
    weight = np.clip(np.maximum(beyond_y[:, None], beyond_x[None, :]) / max(feather, 1.0), 0, 1)
    # The blur is wide and smooth: computed at up to 1/4 of the size and scaled back, it costs a sixteenth.
    radius = max(feather / 2, 1.0)
    step = int(max(1, min(4, radius // 2)))
    blurred = padded.reduce(step).filter(ImageFilter.GaussianBlur(radius / step)).resize(padded.size, Image.BILINEAR)
    return Image.composite(blurred, padded, Image.fromarray((weight * 255).round().astype(np.uint8), "L"))


def crop_face(photo: Image.Image, alignment: Alignment, max_supersample: int = 3) -> Image.Image:
    """The aligned crop (RGB, size x size) of `photo` under `alignment`:
    1. only the region of the photo under the crop (plus a margin) is used;
    2. a face much larger than the crop is shrunk first by an integer factor (box filter: no aliasing);
    3. where the crop reaches past the photo, the photo is reflected and blurred;
    4. the region is warped with a bicubic filter at up to `max_supersample` (3) times the crop's size, then
       box-filtered down (more buys nothing measurable: 0.02 dB on the synthetic scenes; 1 is what the landmark
       refiner's crops use, aliased a little and 3 ms per photo cheaper)."""
    size = alignment.size
    quad = alignment.quad()
    scale = alignment.scale()                 # photo pixels per crop pixel
    shrink = max(1, int(math.floor(scale / 2)))
    margin = 4 * shrink + 2
    x0, y0 = np.floor(quad.min(0)).astype(int) - margin
    x1, y1 = np.ceil(quad.max(0)).astype(int) + margin
    W, H = photo.size
    rx0, ry0, rx1, ry1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if rx0 >= rx1 or ry0 >= ry1:
        raise ValueError("the face's crop lies outside the photo")
    region = photo.crop((rx0, ry0, rx1, ry1))
    if shrink > 1:
        region = region.reduce(shrink)
    pads = tuple(int(math.ceil(max(v, 0) / shrink)) for v in (rx0 - x0, ry0 - y0, x1 - rx1, y1 - ry1))
    if any(pads):
        rgb = region if region.mode == "RGB" else region.convert("RGB")
        region = _reflect_pad(rgb, pads, feather=0.1 * size * scale / shrink)
    # Crop edge coordinates -> region edge coordinates: photo, minus the region's origin, shrunk, plus the padding.
    to_region = alignment.matrix.copy() / shrink
    to_region[:, 2] += np.array([pads[0] - rx0 / shrink, pads[1] - ry0 / shrink])
    supersample = int(min(max_supersample, max(1, math.ceil(scale / shrink))))
    big = size * supersample
    to_region[:, :2] /= supersample
    out = region.transform((big, big), Image.AFFINE, _affine_data(to_region), resample=Image.BICUBIC)
    return out.reduce(supersample) if supersample > 1 else out


def face_mask(size: int, recipe: str) -> np.ndarray:
    """[size, size] float32 in [0, 1]: where a pasted crop replaces the photo. An ellipse around the face (the
    synthetic canvas: skull, hair and chin; an FFHQ crop: forehead to chin), 1 inside and falling smoothly to exactly 0
    at its edge; the falling band is 12 % of the crop wide."""
    centre, radii = ((0.5, 0.5), (0.35, 0.40)) if recipe == "synthetic" else ((0.5, 0.56), (0.34, 0.42))
    return ellipse_mask(size, centre, radii, 0.12)


def ellipse_mask(size: int, centre: tuple[float, float], radii: tuple[float, float], feather: float) -> np.ndarray:
    """[size, size] float32: 1 inside the ellipse of `centre` and `radii` (fractions of the crop's side), falling
    smoothly to exactly 0 at its edge over a band `feather` of the crop wide (measured along the shorter radius)."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5) / size
    r = np.sqrt(((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2)
    band = feather / min(radii)                # the feather's width in units of the normalised radius
    t = np.clip((1 - r) / band, 0, 1)
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no kink where the band begins


def paste_faces(photo: Image.Image, crops: list[tuple[Image.Image, Alignment, np.ndarray]]) -> tuple[Image.Image, np.ndarray]:
    """`photo` with each (crop, alignment, mask) warped back and blended in: out = photo + mask * (crop - photo).
    Returns the new photo and its blend weights [H, W] float32 (0 where the photo is kept bit for bit).

    crop -- an RGB image of any size (the method's output), placed over the square `alignment` names;
    mask -- [S, S] float32 in [0, 1] in the crop's frame (any S), e.g. `face_mask`; exactly 0 keeps the photo's pixel."""
    out = np.asarray(photo.convert("RGB")).copy()
    H, W = out.shape[:2]
    weights = np.zeros((H, W), dtype=np.float32)
    for crop, alignment, mask in crops:
        quad = alignment.quad()
        x0, y0 = np.maximum(np.floor(quad.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(quad.max(0)).astype(int) + 1, [W, H])
        if x0 >= x1 or y0 >= y1:
            continue
        # Photo pixels per crop pixel: a crop much larger than its place in the photo is shrunk first (no aliasing).
        per_pixel = alignment.scale() * alignment.size / crop.size[0]
        if per_pixel < 0.5:
            side = max(8, int(round(alignment.size * alignment.scale() * 2)))  # 2 crop pixels per photo pixel
            crop = crop.resize((side, side), Image.LANCZOS)
        inverse = alignment.resized(crop.size[0]).inverse()
        inverse[:, 2] += inverse[:, :2] @ np.array([x0, y0], dtype=np.float64)  # patch -> photo offset
        data = _affine_data(inverse)
        size = (int(x1 - x0), int(y1 - y0))
        face = np.asarray(crop.convert("RGB").transform(size, Image.AFFINE, data, resample=Image.BICUBIC),
                          dtype=np.float32)
        mask_image = Image.fromarray(np.asarray(mask, dtype=np.float32), "F")
        scale = crop.size[0] / mask_image.size[0]
        mask_inverse = inverse.copy()
        mask_inverse /= scale
        m = np.asarray(mask_image.transform(size, Image.AFFINE, _affine_data(mask_inverse), resample=Image.BILINEAR),
                       dtype=np.float32)
        m = np.clip(m, 0, 1)
        region = out[y0:y1, x0:x1].astype(np.float32)
        blended = np.clip(region + m[..., None] * (face - region), 0, 255).round().astype(np.uint8)
        touched = m > 0
        out[y0:y1, x0:x1][touched] = blended[touched]
        w = weights[y0:y1, x0:x1]
        weights[y0:y1, x0:x1] = w + (1 - w) * m
    result = Image.fromarray(out, "RGB")
    result.info.update({k: v for k, v in photo.info.items() if k == "icc_profile"})
    return result, weights


def seam_ratio(photo: Image.Image, pasted: Image.Image, weights: np.ndarray) -> float:
    """Gradient energy of `pasted` on the border band of the blend (0.02 < weight < 0.98) over that of `photo` on the
    same band: about 1 when the paste leaves no seam, far above when an edge shows (the issue's measure)."""
    band = (weights > 0.02) & (weights < 0.98)
    if not band.any():
        return 1.0

    def energy(img: Image.Image) -> float:
        a = np.asarray(img.convert("L"), dtype=np.float64)
        gx = np.zeros_like(a)
        gy = np.zeros_like(a)
        gx[:, 1:-1] = (a[:, 2:] - a[:, :-2]) / 2
        gy[1:-1] = (a[2:] - a[:-2]) / 2
        return float((gx[band] ** 2 + gy[band] ** 2).mean())

    return energy(pasted) / max(energy(photo), 1e-6)
