"""Batch inversion and editing of image files: what `stylecli invert` and `stylecli edit` run, usable from Python.

Per file: read (EXIF-upright RGB), resize to the pack's resolution, invert in batches, write outputs atomically.
A file that fails is reported and the batch goes on; outputs that exist are skipped unless `overwrite`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image

from .fileio import atomic_path
from .imageio import ImageError, image_to_tensor, load_image, make_grid, save_image, tensor_to_images
from .latents import SUFFIX, load_latent, save_latent


@dataclass
class FileResult:
    source: str
    status: str                      # "done", "skipped" or "failed"
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def invert_files(method, pack_name: str, files: list[Path], out: Path, compare: bool = False, overwrite: bool = False,
                 batch: int = 8, on_file: Callable[[FileResult], None] = lambda r: None) -> list[FileResult]:
    results: list[FileResult] = []
    todo = []
    for path in files:
        image_out, latent_out = out / f"{path.stem}.png", out / f"{path.stem}{SUFFIX}"
        if not overwrite and image_out.exists() and latent_out.exists():
            results.append(FileResult(str(path), "skipped", [str(image_out), str(latent_out)]))
            on_file(results[-1])
        else:
            todo.append(path)
    for chunk in _batches(todo, batch):
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, load_image(path)))
            except ImageError as exc:
                results.append(FileResult(str(path), "failed", error=str(exc)))
                on_file(results[-1])
        if not loaded:
            continue
        x = torch.cat([image_to_tensor(img, method.resolution) for _, img in loaded])
        try:
            inversion = method.invert(x)
        except Exception as exc:  # a method failure must not lose the rest of the batch
            for path, _ in loaded:
                results.append(FileResult(str(path), "failed", error=f"{type(exc).__name__}: {exc}"))
                on_file(results[-1])
            continue
        recon = tensor_to_images(inversion.image)
        for i, (path, img) in enumerate(loaded):
            try:
                written = [save_image(recon[i], out / f"{path.stem}.png", protected=files),
                           save_latent(out / f"{path.stem}{SUFFIX}", inversion, i, pack_name, method.name, str(path))]
                if compare:
                    side = make_grid([img.resize(recon[i].size, Image.LANCZOS), recon[i]], columns=2)
                    written.append(save_image(side, out / f"{path.stem}_compare.png", protected=files))
                results.append(FileResult(str(path), "done", [str(p) for p in written]))
            except (ImageError, OSError) as exc:
                results.append(FileResult(str(path), "failed", error=str(exc)))
            on_file(results[-1])
    return results


def parse_strengths(text: str) -> list[float]:
    """'2' -> [2.0]; '-3:3:7' -> 7 values from -3 to 3."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return [float(parts[0])]
        if len(parts) == 3:
            a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n < 2:
                raise ValueError
            return [a + (b - a) * k / (n - 1) for k in range(n)]
    except ValueError:
        pass
    raise ValueError(f"bad strength {text!r}: use a number, or START:END:COUNT for a sweep (e.g. -3:3:7)")


def edit_files(method, pack_name: str, sources: list[Path], edits: list[tuple[str, torch.Tensor, list[float]]],
               out: Path, from_latents: bool = False, batch: int = 8,
               on_file: Callable[[FileResult], None] = lambda r: None) -> list[FileResult]:
    """Apply all edits at once (their vectors times their strengths summed); a sweep (one edit with several
    strengths) writes a grid and an animated GIF per file."""
    results = []
    sweep = len(edits) == 1 and len(edits[0][2]) > 1
    label = "_".join(f"{name}{s[0]:+g}" if len(s) == 1 else f"{name}{s[0]:+g}..{s[-1]:+g}" for name, _, s in edits)
    for chunk in _batches(sources, batch):
        items = []
        for path in chunk:
            try:
                if from_latents:
                    inversion, meta = load_latent(path)
                    if meta.get("pack") != pack_name:
                        raise ImageError(f"{path}: latent of pack {meta.get('pack')!r}, not {pack_name!r}")
                    if meta.get("method") != method.name:
                        raise ImageError(f"{path}: latent of method {meta.get('method')!r}, not {method.name!r}")
                else:
                    inversion = method.invert(image_to_tensor(load_image(path), method.resolution))
                items.append((path, inversion))
            except Exception as exc:
                results.append(FileResult(str(path), "failed", error=str(exc)))
                on_file(results[-1])
        for path, inversion in items:
            stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
            try:
                if sweep:
                    name, vector, strengths = edits[0]
                    frames = [tensor_to_images(method.edit(inversion, vector, s))[0] for s in strengths]
                    grid = save_image(make_grid(frames, columns=len(frames)), out / f"{stem}_{label}.png", protected=sources)
                    gif = out / f"{stem}_{label}.gif"
                    with atomic_path(gif) as tmp:
                        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:] + frames[-2:0:-1],
                                       duration=120, loop=0)
                    written = [grid, gif]
                else:
                    total = sum(vector * s[0] for _, vector, s in edits)
                    image = tensor_to_images(method.edit(inversion, total, 1.0))[0]
                    written = [save_image(image, out / f"{stem}_{label}.png", protected=sources)]
                results.append(FileResult(str(path), "done", [str(p) for p in written]))
            except (ImageError, OSError) as exc:
                results.append(FileResult(str(path), "failed", error=str(exc)))
            on_file(results[-1])
    return results
