"""Image input and output, in one place.

Reading applies the EXIF orientation, converts any mode to RGB (transparent areas over white) and turns unreadable,
truncated or oversized files into an `ImageError` with a one-line message. Writing is atomic (a temporary file in the
same folder, then a rename) and refuses to replace any file given as an input.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 100_000_000  # ~10k x 10k; larger files are refused rather than decoded into many GB of memory


class ImageError(Exception):
    """An input image cannot be used, or an output cannot be written."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image, upright according to its EXIF orientation."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {img.width}x{img.height} is too large (limit {MAX_PIXELS:,} pixels)")
                img.load()
                img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: too large to decode safely") from None
    except OSError as exc:  # truncated or corrupt data
        raise ImageError(f"{path}: cannot decode ({exc})") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


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


def save_image(img: Image.Image, path: str | os.PathLike, protected: Iterable[str | os.PathLike] = ()) -> Path:
    """Write atomically; refuses to replace any path in `protected` (the inputs)."""
    path = Path(path)
    target = path.resolve()
    if any(target == Path(p).resolve() for p in protected):
        raise ImageError(f"{path}: refusing to overwrite an input file; choose another output")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image type {path.suffix!r}")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)
    return path


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image itself, or the images in a folder (sorted; not recursive)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder")
    return [path]
