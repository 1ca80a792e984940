"""Batch inversion and editing of image files: what `stylecli invert` and `stylecli edit` run, usable from Python.

Per file: read (EXIF-upright RGB), resize to the pack's resolution, invert in batches, write outputs atomically.
A file that fails is reported and the batch goes on: bad input fails with a one-line reason, anything else (a bug)
also keeps its traceback. A file's outputs land together or not at all and never replace an input; outputs that
exist are skipped unless `overwrite`.
"""

from __future__ import annotations

import io
import math
import traceback
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image

from .fileio import OutputError, printable, write_files
from .imageio import ImageError, ProtectedPaths, encode_image, image_to_tensor, load_image, make_grid, tensor_to_images
from .latents import SUFFIX, LatentError, LatentSpec, latent_bytes, load_latent
from .methods.base import Inversion

MAX_STRENGTH = 100.0    # directions are scaled so that 1-3 is a clear edit; far beyond, the generator gives noise
MAX_SWEEP_STEPS = 100   # frames of one sweep: one grid row and one GIF per file, held in memory together

BAD_INPUT = (ImageError, LatentError, OutputError)  # failures that are the file's, not the program's


@dataclass
class FileResult:
    source: str
    status: str                      # "done", "skipped" or "failed"
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None     # for a failure that is a bug rather than bad input


def _failed(path: Path, exc: BaseException) -> FileResult:
    """A failed file: bad input names its reason; anything else is a bug and keeps its traceback."""
    source = printable(path)
    if isinstance(exc, BAD_INPUT):
        return FileResult(source, "failed", error=str(exc))
    text = " ".join(str(exc).split())
    return FileResult(source, "failed", error=f"{source}: internal error ({type(exc).__name__}: {text})",
                      traceback="".join(traceback.format_exception(exc)))


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def output_stems(sources: list[Path]) -> list[str]:
    """The name each source's outputs start with: its stem (NAME of NAME.png or NAME.latent.safetensors); sources that
    share a stem, also across letter case (dup.png, dup.jpg, Dup.webp), get their suffix added (dup_png, dup_jpg,
    Dup_webp) so that no two write the same file; one still taken gets _2, _3, ..."""
    def stem(path: Path) -> str:
        return path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem

    shared = Counter(stem(p).casefold() for p in sources)
    used: set[str] = set()
    stems = []
    for path in sources:
        base = stem(path)
        if shared[base.casefold()] > 1:
            base = f"{base}_{path.suffix[1:].lower()}"
        candidate, n = base, 1
        while candidate.casefold() in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate.casefold())
        stems.append(candidate)
    return stems


def _row(inversion: Inversion, i: int) -> Inversion:
    return Inversion(latents={k: v[i:i + 1] for k, v in inversion.latents.items()},
                     image=None if inversion.image is None else inversion.image[i:i + 1],
                     extras={k: v[i:i + 1] for k, v in inversion.extras.items()})


def _invert_each(method, x: torch.Tensor) -> list[Inversion | Exception]:
    """Per image: its inversion, or the exception. A batch that fails is retried image by image, so that one input
    the method cannot take fails alone."""
    try:
        inversion = method.invert(x)
        return [_row(inversion, i) for i in range(len(x))]
    except Exception as exc:
        if len(x) == 1:
            return [exc]
    results: list[Inversion | Exception] = []
    for i in range(len(x)):
        try:
            results.append(method.invert(x[i:i + 1]))
        except Exception as exc:
            results.append(exc)
    return results


def _finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise ValueError(f"the method produced NaN or infinite values in the {what}")
    return x


def mask_image(mask: torch.Tensor) -> Image.Image:
    """An invertibility mask [1, 1, R, R] in [0, 1] as a greyscale picture (white = taken from the input)."""
    assert mask.ndim == 4 and mask.shape[:2] == (1, 1), f"expected a mask [1, 1, R, R], got {tuple(mask.shape)}"
    return Image.fromarray((mask[0, 0].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "L")


def _write_inversion(path: Path, outputs: dict[str, Path], img: Image.Image, inversion: Inversion | Exception,
                     pack_name: str, method_name: str) -> FileResult:
    """Encode and write one file's outputs (reconstruction, latent code, mask and comparison when asked) as one
    group."""
    try:
        if isinstance(inversion, Exception):
            raise inversion
        for name, code in inversion.latents.items():
            _finite(code, f"code {name!r}")
        recon = tensor_to_images(_finite(inversion.image, "reconstruction"))[0]
        contents = {outputs["image"]: encode_image(recon, outputs["image"]),
                    outputs["latent"]: latent_bytes(inversion, 0, pack_name, method_name, str(path))}
        if "mask" in outputs:
            mask = mask_image(_finite(inversion.extras["mask"], "mask"))
            contents[outputs["mask"]] = encode_image(mask, outputs["mask"])
        if "compare" in outputs:
            side = make_grid([img.resize(recon.size, Image.LANCZOS), recon], columns=2)
            contents[outputs["compare"]] = encode_image(side, outputs["compare"])
        write_files(contents)
        return FileResult(printable(path), "done", [printable(p) for p in contents])
    except Exception as exc:
        return _failed(path, exc)


def _plan(files: list[Path], outputs_of: Callable[[str], dict[str, Path]], overwrite: bool,
          report: Callable[[FileResult], None]) -> list[tuple[Path, dict[str, Path]]]:
    """(file, its outputs) for the files to do: a file whose outputs would replace an input fails at once, a file
    whose outputs all exist is skipped unless `overwrite`; both are reported."""
    protected = ProtectedPaths(files)
    claimed: dict[Path, Path] = {}  # output -> the input that writes it
    todo = []
    for path, stem in zip(files, output_stems(files)):
        outputs = outputs_of(stem)
        try:
            for output in outputs.values():  # before any work: an output that would replace an input fails the file
                protected.check(output)
                if output in claimed:  # e.g. a.png's a.mask.png and an input named a.mask.png
                    raise ImageError(f"{printable(path)}: its output {printable(output)} is also the output of "
                                     f"{printable(claimed[output])}; rename one of them")
        except ImageError as exc:
            report(_failed(path, exc))
            continue
        claimed.update((output, path) for output in outputs.values())
        if not overwrite and all(o.exists() for o in outputs.values()):
            report(FileResult(printable(path), "skipped", [printable(o) for o in outputs.values()]))
        else:
            todo.append((path, outputs))
    return todo


def _load(chunk: list[tuple[Path, dict]], resolution: int, report: Callable[[FileResult], None]) -> list[tuple]:
    """(path, outputs, image, tensor [1, 3, R, R]) for each file of `chunk` that reads; the others are reported."""
    loaded = []
    for path, outputs in chunk:
        try:
            img = load_image(path)
            loaded.append((path, outputs, img, image_to_tensor(img, resolution)))
        except Exception as exc:
            report(_failed(path, exc))
    return loaded


def invert_files(method, pack_name: str, files: list[Path], out: Path, compare: bool = False, overwrite: bool = False,
                 batch: int = 8, masks: bool = False,
                 on_file: Callable[[FileResult], None] = lambda r: None) -> list[FileResult]:
    """Invert `files` into `out`: NAME.png (reconstruction) and NAME.latent.safetensors, NAME.mask.png with `masks`
    (a method that makes invertibility masks), NAME_compare.png with `compare`. One result per file, in the order
    they finish."""
    results: list[FileResult] = []

    def report(result: FileResult) -> None:
        results.append(result)
        on_file(result)

    def outputs_of(stem: str) -> dict[str, Path]:
        outputs = {"image": out / f"{stem}.png", "latent": out / f"{stem}{SUFFIX}"}
        if masks:
            outputs["mask"] = out / f"{stem}.mask.png"
        if compare:
            outputs["compare"] = out / f"{stem}_compare.png"
        return outputs

    todo = _plan(files, outputs_of, overwrite, report)
    # Encoding and writing a batch's outputs (PNG compression, two files each) overlaps inverting the next batch: on
    # small images they cost about a fifth of the inversion. At most two batches wait, to bound memory.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: deque[Future] = deque()
        for chunk in _batches(todo, batch):
            loaded = _load(chunk, method.resolution, report)
            if loaded:
                inversions = _invert_each(method, torch.cat([x for *_, x in loaded]))
                for (path, outputs, img, _), inversion in zip(loaded, inversions):
                    pending.append(writer.submit(_write_inversion, path, outputs, img, inversion, pack_name,
                                                 method.name))
            while pending and (pending[0].done() or len(pending) > 2 * batch):
                report(pending.popleft().result())
        while pending:
            report(pending.popleft().result())
    return results


def parse_strengths(text: str) -> list[float]:
    """'2' -> [2.0]; '-3:3:7' -> 7 values from -3 to 3. ValueError (one line) for anything else, for values that are
    not finite or beyond ±MAX_STRENGTH, and for sweeps of more than MAX_SWEEP_STEPS."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            ends, count = [float(parts[0])], 1
        elif len(parts) == 3:
            ends, count = [float(parts[0]), float(parts[1])], int(parts[2])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"bad strength {text!r}: use a number, or START:END:COUNT for a sweep (e.g. -3:3:7)") from None
    for value in ends:
        if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
            raise ValueError(f"bad strength {text!r}: strengths are finite numbers within ±{MAX_STRENGTH:g} "
                             "(1 to 3 is a clear edit)")
    if len(ends) == 1:
        return ends
    if not 2 <= count <= MAX_SWEEP_STEPS:
        raise ValueError(f"bad sweep {text!r}: COUNT is 2 to {MAX_SWEEP_STEPS} frames")
    a, b = ends
    return [a + (b - a) * k / (count - 1) for k in range(count)]


def edit_files(method, pack_name: str, sources: list[Path], edits: list[tuple[str, torch.Tensor, list[float]]],
               out: Path, from_latents: bool = False, batch: int = 8,
               on_file: Callable[[FileResult], None] = lambda r: None) -> list[FileResult]:
    """Apply all edits at once (their vectors times their strengths summed); a sweep (one edit with several
    strengths) writes a grid and an animated GIF per file. With `from_latents`, `sources` are latent files, checked
    against the pack and method."""
    results: list[FileResult] = []

    def report(result: FileResult) -> None:
        results.append(result)
        on_file(result)

    sweep = len(edits) == 1 and len(edits[0][2]) > 1
    label = "_".join(f"{name}{s[0]:+g}" if len(s) == 1 else f"{name}{s[0]:+g}..{s[-1]:+g}" for name, _, s in edits)
    spec = LatentSpec.of(method, pack_name) if from_latents else None
    protected = ProtectedPaths(sources)
    todo = []
    for path, stem in zip(sources, output_stems(sources)):
        outputs = [out / f"{stem}_{label}.png"] + ([out / f"{stem}_{label}.gif"] if sweep else [])
        try:
            for output in outputs:
                protected.check(output)
            todo.append((path, outputs))
        except ImageError as exc:
            report(_failed(path, exc))
    for chunk in _batches(todo, batch):
        items = []
        if from_latents:
            for path, outputs in chunk:
                try:
                    items.append((path, outputs, load_latent(path, spec)[0]))
                except Exception as exc:
                    report(_failed(path, exc))
        else:
            loaded = []
            for path, outputs in chunk:
                try:
                    loaded.append((path, outputs, image_to_tensor(load_image(path), method.resolution)))
                except Exception as exc:
                    report(_failed(path, exc))
            if loaded:
                inversions = _invert_each(method, torch.cat([x for *_, x in loaded]))
                items = [(path, outputs, inversion) for (path, outputs, _), inversion in zip(loaded, inversions)]
        for path, outputs, inversion in items:
            try:
                if isinstance(inversion, Exception):
                    raise inversion
                if sweep:
                    _, vector, strengths = edits[0]
                    frames = [tensor_to_images(_finite(method.edit(inversion, vector, s), "edited image"))[0]
                              for s in strengths]
                    gif = io.BytesIO()
                    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:] + frames[-2:0:-1],
                                   duration=120, loop=0)
                    contents = {outputs[0]: encode_image(make_grid(frames, columns=len(frames)), outputs[0]),
                                outputs[1]: gif.getvalue()}
                else:
                    total = sum(vector * s[0] for _, vector, s in edits)
                    image = tensor_to_images(_finite(method.edit(inversion, total, 1.0), "edited image"))[0]
                    contents = {outputs[0]: encode_image(image, outputs[0])}
                write_files(contents)
                report(FileResult(printable(path), "done", [printable(p) for p in contents]))
            except Exception as exc:
                report(_failed(path, exc))
    return results


def overlay_image(img: Image.Image, mask: Image.Image) -> Image.Image:
    """The input with its invertibility mask tinted red on top (half strength), to see what is kept from it."""
    red = Image.new("RGB", img.size, (255, 0, 0))
    return Image.composite(red, img, mask.point(lambda v: v // 2))


def blend_files(method, base, pack_name: str, files: list[Path], out: Path,
                edits: list[tuple[str, torch.Tensor, float]] = (), compare: bool = False, overwrite: bool = False,
                batch: int = 8, on_file: Callable[[FileResult], None] = lambda r: None) -> list[FileResult]:
    """`stylecli blend`: per input NAME, with LABEL the edits (e.g. _smile+2) or nothing,
    OUT/NAME[LABEL].png (the blended result, edited with the mask recomputed on the edited pass),
    OUT/NAME[LABEL].mask.png, OUT/NAME[LABEL]_overlay.png (the mask over the input), and with `compare`
    OUT/NAME[LABEL]_compare.png: input | `base` method's result | `method`'s | mask. `method` must make masks."""
    results: list[FileResult] = []

    def report(result: FileResult) -> None:
        results.append(result)
        on_file(result)

    label = "".join(f"_{name}{s:+g}" for name, _, s in edits)
    total = sum(vector * s for _, vector, s in edits) if edits else None
    def outputs_of(stem: str) -> dict[str, Path]:
        outputs = {"image": out / f"{stem}{label}.png", "mask": out / f"{stem}{label}.mask.png",
                   "overlay": out / f"{stem}{label}_overlay.png"}
        if compare:
            outputs["compare"] = out / f"{stem}{label}_compare.png"
        return outputs

    for chunk in _batches(_plan(files, outputs_of, overwrite, report), batch):
        loaded = _load(chunk, method.resolution, report)
        if not loaded:
            continue
        x = torch.cat([t for *_, t in loaded])
        inversions = _invert_each(method, x)
        base_images = _invert_each(base, x) if compare else [None] * len(loaded)
        for (path, outputs, img, _), inversion, base_inv in zip(loaded, inversions, base_images):
            try:
                for failed in (inversion, base_inv):
                    if isinstance(failed, Exception):
                        raise failed
                result = inversion if total is None else method.edit_inversion(inversion, total, 1.0)
                blended = tensor_to_images(_finite(result.image, "blended image"))[0]
                mask = mask_image(_finite(result.extras["mask"], "mask"))
                shown = img.resize(blended.size, Image.LANCZOS)
                contents = {outputs["image"]: encode_image(blended, outputs["image"]),
                            outputs["mask"]: encode_image(mask, outputs["mask"]),
                            outputs["overlay"]: encode_image(overlay_image(shown, mask), outputs["overlay"])}
                if compare:
                    base_image = base_inv.image if total is None else base.edit(base_inv, total, 1.0)
                    strip = [shown, tensor_to_images(_finite(base_image, "base image"))[0], blended,
                             mask.convert("RGB")]
                    contents[outputs["compare"]] = encode_image(make_grid(strip, columns=4), outputs["compare"])
                write_files(contents)
                report(FileResult(printable(path), "done", [printable(p) for p in contents]))
            except Exception as exc:
                report(_failed(path, exc))
    return results
