"""Image input and output, in one place.

Reading applies the EXIF orientation, scales 16-bit and float pixels to 8 bits, converts colours with an embedded ICC
profile to sRGB (the image keeps an sRGB profile in its `info`, which writing embeds where the format allows), converts
any mode to RGB (transparent areas over white) and turns every file that cannot be used (missing, a FIFO, a symlink loop, unreadable, corrupt,
oversized, of an unknown depth) into an `ImageError` with a one-line message; PIL's warnings stay quiet. Writing is
atomic (a temporary file in the same folder, then a rename) and refuses to replace any file given as an input.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .fileio import OutputError, describe_problem, printable, write_files

MAX_PIXELS = 100_000_000  # ~10k x 10k; larger files are refused rather than decoded into many GB of memory

# Photo formats, and the optional decoder each needs. Folder listing and single files both go by READABLE_SUFFIXES,
# so a file is read alone exactly when it would be read from its folder.
_PHOTO_FORMATS = {"JPEG": None, "PNG": None, "WEBP": "webp", "AVIF": "avif", "GIF": None, "BMP": None, "TIFF": None,
                  "JPEG2000": "jpg_2000", "PPM": None, "TGA": None, "QOI": None}


def _readable_suffixes() -> tuple[str, ...]:
    Image.init()
    usable = {fmt for fmt, feature in _PHOTO_FORMATS.items() if fmt in Image.OPEN
              and (feature is None or features.check(feature))}
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in usable))


READABLE_SUFFIXES = _readable_suffixes()


class ImageError(Exception):
    """An input image cannot be used, or an output cannot be written."""


def _eight_bit(img: Image.Image, name: str) -> Image.Image:
    """16-bit and 32-bit integer pixels scaled from 0..65535, float pixels from 0..1, to 8 bits (PIL's own
    conversion clips them: most 16-bit photos came out white); values outside those ranges are refused."""
    if img.mode.startswith("I"):
        array = np.asarray(img)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageError(f"{name}: 32-bit pixels outside 0..65535 ({array.min()}..{array.max()}); "
                             "save it with 8 or 16 bits per channel")
        return Image.fromarray(np.round(array.astype(np.float32) / 257).astype(np.uint8))
    if img.mode == "F":
        array = np.asarray(img)
        if not np.isfinite(array).all():
            raise ImageError(f"{name}: float image with NaN or infinite pixels")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ImageError(f"{name}: float pixels in {array.min():g}..{array.max():g}, expected 0..1; "
                             "save it with 8 or 16 bits per channel")
        return Image.fromarray(np.round(array * 255).astype(np.uint8))
    return img


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image, upright according to its EXIF orientation."""
    name = printable(path)
    problem = describe_problem(path)  # before opening: opening a FIFO would wait for a writer forever
    if problem:
        raise ImageError(f"{name}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd files make PIL warn (EXIF, MPO, palettes); they read fine or fail
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{name}: {img.width}x{img.height} is too large (limit {MAX_PIXELS:,} pixels)")
                img.load()
                img = ImageOps.exif_transpose(img)
            img = _eight_bit(img, name)
            img = _to_srgb(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            profile = img.info.get("icc_profile")
            img = img.convert("RGB")
            if profile:
                img.info["icc_profile"] = profile
            return img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: too large to decode safely") from None
    except Exception as exc:  # truncated or corrupt data, PIL's limits (ValueError on huge text chunks), odd modes
        raise ImageError(f"{name}: cannot decode ({_reason(exc)})") from None


def _to_srgb(img: Image.Image) -> Image.Image:
    """`img` converted from its embedded ICC profile to sRGB (perceptual intent), carrying an sRGB profile; an image
    without a profile, or whose profile already is sRGB or cannot be read, is returned as it is."""
    profile = img.info.get("icc_profile")
    if not profile or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img
    try:
        from PIL import ImageCms
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        if "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return img  # already sRGB: a conversion would only round
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        mode = "RGBA" if img.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(img, source, srgb, outputMode=mode)
    except Exception:  # a broken or unsupported profile: the pixels as stored (what most viewers show)
        return img
    converted.info["icc_profile"] = srgb.tobytes()
    return converted


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the library put in its message
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def image_to_tensor(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """[1, 3, H, W] float32 in [-1, 1]; resized (Lanczos) to size x size when given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[N, 3, H, W] in about [-1, 1] -> N RGB PIL images (clipped)."""
    assert x.ndim == 4 and x.shape[1] in (1, 3), f"expected [N, 3, H, W], got {tuple(x.shape)}"
    array = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in array]


def make_grid(images: list[Image.Image], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Tile equally sized images into a grid (columns default to about the square root of the count)."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w + (columns - 1) * pad, rows * h + (rows - 1) * pad), (255, 255, 255))
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * (w + pad), (i // columns) * (h + pad)))
    return grid


class ProtectedPaths:
    """Paths that outputs must never replace (the inputs), resolved once: a batch checks each output in O(1) instead
    of resolving every input for every output."""

    def __init__(self, paths: Iterable[str | os.PathLike] = ()):
        self._resolved = frozenset(_resolve(p) for p in paths)

    def check(self, output: str | os.PathLike) -> None:
        """ImageError if writing `output` would replace one of the paths."""
        if _resolve(output) in self._resolved:
            raise ImageError(f"{printable(output)}: refusing to overwrite an input file; choose another output")


def _resolve(path: str | os.PathLike) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: no output can be written through it anyway
        return Path(os.path.abspath(path))


def encode_image(img: Image.Image, path: str | os.PathLike) -> bytes:
    """The file `path` would hold: `img` in the format its suffix names."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ImageError(f"{printable(path)}: unknown image type {Path(path).suffix!r}")
    buffer = io.BytesIO()
    options = {}
    profile = img.info.get("icc_profile")  # an input's (sRGB) profile travels with the pictures made from it
    if profile and fmt != "GIF":
        options["icc_profile"] = profile
    if fmt == "PNG":  # zlib level 1: a photo encodes 4x faster than at PIL's default 6, for files ~15 % larger
        options["compress_level"] = 1
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def save_image(img: Image.Image, path: str | os.PathLike, protected: ProtectedPaths | None = None) -> Path:
    """Write atomically; refuses to replace any of the `protected` paths (the inputs)."""
    path = Path(path)
    if protected is not None:
        protected.check(path)
    try:
        write_files({path: encode_image(img, path)})
    except OutputError as exc:
        raise ImageError(str(exc)) from None
    return path


# Files that belong to an image beside them rather than being faces: ground-truth masks (`stylecli data ood` writes
# NAME_mask.png) and what invert/edit/blend write next to a result (NAME.mask.png, NAME_overlay.png,
# NAME_compare.png), so that a folder of a data set or of earlier results can be given again as input.
DATA_MASK_ENDING = "_mask"
RESULT_ENDINGS = {"mask": ".mask", "overlay": "_overlay", "compare": "_compare"}
SIDECAR_ENDINGS = (DATA_MASK_ENDING, *RESULT_ENDINGS.values())


def sidecar_path(out: Path, stem: str, kind: str) -> Path:
    """OUT/STEM.mask.png, OUT/STEM_overlay.png or OUT/STEM_compare.png (`kind` mask, overlay or compare): what
    invert, edit and blend write beside OUT/STEM.png."""
    return out / f"{stem}{RESULT_ENDINGS[kind]}.png"


def is_sidecar(path: Path, images: set[Path]) -> bool:
    """Whether `path` is a mask, overlay or comparison strip of one of `images` (paths without their suffixes) in its
    own folder."""
    stem = path.stem
    return any(stem.endswith(end) and path.with_name(stem[:-len(end)]) in images for end in SIDECAR_ENDINGS)


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image itself, or the images in a folder (sorted; not recursive; hidden files left out, and the masks,
    overlays and comparison strips of another image in the folder: NAME_mask.png beside NAME.png). Entries are told
    apart by name only: one that cannot be read (a FIFO, a symlink loop) fails alone when it is loaded."""
    path = Path(path)
    try:
        is_folder = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        is_folder = False
    if is_folder:
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise ImageError(f"{printable(path)}: cannot list the folder ({exc.strerror})") from None
        images = [path / n for n in names if Path(n).suffix.lower() in READABLE_SUFFIXES and not n.startswith(".")]
        stems = {p.with_suffix("") for p in images}
        return sorted(p for p in images if not is_sidecar(p, stems))
    problem = describe_problem(path)
    if problem:
        raise ImageError(f"{printable(path)}: {problem}")
    if path.suffix.lower() not in READABLE_SUFFIXES:
        raise ImageError(f"{printable(path)}: not a readable image type (readable: {', '.join(READABLE_SUFFIXES)})")
    return [path]
