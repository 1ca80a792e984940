"""Batch inversion and editing of image files: what `stylecli invert` and `stylecli edit` run, usable from Python.

Per file: read (EXIF-upright sRGB), resize to the pack's resolution, invert in batches, write outputs atomically.
With an `aligner` (`stylecli.faces.PhotoAligner`), a photo's faces are found and aligned instead, every face of a
chunk of files goes through the method in the same batches, and the outputs are the photo itself with the faces pasted
back (same size; pixels away from the faces untouched); per-face latent codes are NAME_faceK.latent.safetensors, and
with `save_aligned` the crops NAME_faceK.aligned.png.
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
from typing import TYPE_CHECKING, Callable, Iterable

import torch
from PIL import Image

from .fileio import OutputError, printable, write_files
from .imageio import (ImageError, ProtectedPaths, encode_image, image_to_tensor, load_image, make_grid, sidecar_path,
                      tensor_to_images)
from .latents import SUFFIX, LatentError, LatentSpec, latent_bytes, load_latent
from .methods.base import Inversion

if TYPE_CHECKING:
    from .faces.photos import AlignedPhoto

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


def _invert_each(method, x: torch.Tensor) -> list[Inversion | Exception]:
    """Per image: its inversion, or the exception. A batch that fails is retried image by image, so that one input
    the method cannot take fails alone."""
    try:
        inversion = method.invert(x)
        return [inversion.row(i) for i in range(len(x))]
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


def _write_inversion(item: "_Input", inversion: Inversion | Exception, pack_name: str, method_name: str,
                     save_aligned: bool = False) -> FileResult:
    """Encode and write one file's outputs (reconstruction, latent codes, mask and comparison when asked) as one
    group."""
    path, outputs = item.path, item.outputs
    try:
        if isinstance(inversion, Exception):
            raise inversion
        for name, code in inversion.latents.items():
            _finite(code, f"code {name!r}")
        recon = item.picture(_finite(inversion.image, "reconstruction"))
        contents = {outputs["image"]: encode_image(recon, outputs["image"])}
        for k, latent in item.latent_paths().items():
            contents[latent] = latent_bytes(inversion, k, pack_name, method_name, str(path), item.face_record(k))
        if "mask" in outputs:
            mask = item.mask_picture(_finite(inversion.extras["mask"], "mask"))
            contents[outputs["mask"]] = encode_image(mask, outputs["mask"])
        if "compare" in outputs:
            side = make_grid([item.shown(recon.size), recon], columns=2)
            contents[outputs["compare"]] = encode_image(side, outputs["compare"])
        if save_aligned:
            contents.update(item.aligned_crops(outputs["image"]))
        item.check_outputs(contents)
        write_files(contents)
        return FileResult(printable(path), "done", [printable(p) for p in contents])
    except Exception as exc:
        return _failed(path, exc)


def _plan(files: list[Path], outputs_of: Callable[[str], dict[str, Path]], overwrite: bool,
          report: Callable[[FileResult], None], skip_on: tuple[str, ...] | None = None
          ) -> list[tuple[Path, dict[str, Path]]]:
    """(file, its outputs) for the files to do: a file whose outputs would replace an input fails at once, a file
    whose outputs all exist (those named in `skip_on`, when given) is skipped unless `overwrite`; both are
    reported."""
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
        if not overwrite and all(o.exists() for k, o in outputs.items() if skip_on is None or k in skip_on):
            report(FileResult(printable(path), "skipped", [printable(o) for o in outputs.values()]))
        else:
            todo.append((path, outputs))
    return todo


@dataclass
class _Input:
    """One file as the method sees it: the image whole (resized to the method's resolution), or its aligned faces."""
    path: Path
    outputs: dict[str, Path]
    img: Image.Image                    # as read (EXIF-upright, sRGB)
    x: torch.Tensor                     # [k, 3, R, R]: one row per face; k = 1 for an image used whole
    photo: "AlignedPhoto | None" = None  # its faces and how to paste them back; None: the image is used whole
    protected: ProtectedPaths | None = None  # the inputs, which outputs named after faces must not replace

    def picture(self, images: torch.Tensor) -> Image.Image:
        """The output picture from the method's images [k, 3, R, R]: the image itself, or the photo with them
        pasted back."""
        if self.photo is None:
            return tensor_to_images(images)[0]
        return self.photo.compose(tensor_to_images(images))[0]

    def mask_picture(self, masks: torch.Tensor) -> Image.Image:
        """The invertibility masks [k, 1, R, R] as one picture (white = the input's own pixels): the photo's is
        white wherever no face was pasted."""
        if self.photo is None:
            return mask_image(masks)
        white = Image.new("RGB", self.img.size, (255, 255, 255))
        pictures = [mask_image(m[None]).convert("RGB") for m in masks]
        return self.photo.compose(pictures, onto=white)[0].convert("L")

    def shown(self, size: tuple[int, int]) -> Image.Image:
        """The input as comparison strips show it beside outputs of `size`."""
        return self.img if self.photo is not None else self.img.resize(size, Image.LANCZOS)

    def latent_paths(self) -> dict[int, Path]:
        """Batch row -> its latent file: NAME.latent.safetensors, or NAME_faceK.latent.safetensors per face."""
        if "latent" not in self.outputs:
            return {}
        latent = self.outputs["latent"]
        if self.photo is None:
            return {0: latent}
        stem = latent.name[:-len(SUFFIX)]
        return {row: latent.with_name(f"{stem}_face{face.index}{SUFFIX}") for row, face in enumerate(self.photo.faces)}

    def face_record(self, row: int) -> dict | None:
        """Where batch row `row` came from in the photo (for a latent file's metadata), None for an image used
        whole."""
        if self.photo is None:
            return None
        face = self.photo.faces[row]
        return {"face": face.index, "photo_size": list(self.img.size), "alignment": self.photo.recipe,
                **face.alignment.to_json()}

    def aligned_crops(self, picture: Path) -> dict[Path, bytes]:
        """PICTURE_faceK.aligned.png beside the output `picture` for each face (`--save-aligned`): the crops the
        method saw; nothing for an image used whole."""
        if self.photo is None:
            return {}
        paths = [picture.with_name(f"{picture.stem}_face{face.index}.aligned.png") for face in self.photo.faces]
        return {path: encode_image(face.crop, path) for path, face in zip(paths, self.photo.faces)}

    def check_outputs(self, contents: dict[Path, bytes]) -> None:
        """Outputs named after faces are known only once the faces are: they too must not replace an input."""
        if self.protected is not None and self.photo is not None:
            for output in contents:
                self.protected.check(output)


def _load(chunk: list[tuple[Path, dict]], resolution: int, aligner=None, protected: ProtectedPaths | None = None
          ) -> tuple[list[_Input], list[FileResult]]:
    """The files of `chunk` that read (and, with an `aligner`, hold the faces asked for), and the failures of the
    others. The photos' faces are found by one call to the aligner (its detector batches what it can)."""
    images, failures = [], []
    for path, outputs in chunk:
        try:
            images.append((path, outputs, load_image(path)))
        except Exception as exc:
            failures.append(_failed(path, exc))
    photos: list = [None] * len(images)
    if aligner is not None and images:
        try:
            photos = aligner.prepare_many([img for _, _, img in images], [path for path, _, _ in images])
        except Exception:  # an internal error in the batch: photo by photo, so that only its photo fails
            photos = []
            for path, _, img in images:
                try:
                    photos.append(aligner.prepare(img, path))
                except Exception as exc:
                    photos.append(exc)
    loaded = []
    for (path, outputs, img), photo in zip(images, photos):
        try:
            if isinstance(photo, Exception):
                raise photo
            if photo is None:
                x = image_to_tensor(img, resolution)
            else:
                x = torch.cat([image_to_tensor(face.crop, resolution) for face in photo.faces])
            loaded.append(_Input(path, outputs, img, x, photo, protected))
        except Exception as exc:
            failures.append(_failed(path, exc))
    return loaded, failures


def _read_ahead(chunks: Iterable[list], load: Callable[[list], tuple[list, list[FileResult]]]
                ) -> Iterable[tuple[list, list[FileResult]]]:
    """load(chunk) for each chunk in order, the next chunk loaded in a thread while the caller works on the current
    one: reading files and finding and aligning faces overlap the method's passes. The caller reports the failures
    (in its own thread)."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = None
        for chunk in chunks:
            following = reader.submit(load, chunk)
            if pending is not None:
                yield pending.result()
            pending = following
        if pending is not None:
            yield pending.result()


def _cat(inversions: list[Inversion]) -> Inversion:
    """Rows of several inversions as one (a photo's faces)."""
    if len(inversions) == 1:
        return inversions[0]
    first = inversions[0]
    return Inversion(latents={k: torch.cat([i.latents[k] for i in inversions]) for k in first.latents},
                     image=None if first.image is None else torch.cat([i.image for i in inversions]),
                     extras={k: torch.cat([i.extras[k] for i in inversions]) for k in first.extras})


def _invert_inputs(method, loaded: list[_Input], batch: int) -> list[Inversion | Exception]:
    """Per input: the inversion of its rows (all its faces), or the exception of the first row that failed. Rows of
    all inputs go through the method together, `batch` at a time."""
    x = torch.cat([item.x for item in loaded])
    rows: list[Inversion | Exception] = []
    size = math.ceil(len(x) / math.ceil(len(x) / batch))  # passes of at most `batch`, as even as they can be
    for start in range(0, len(x), size):
        rows += _invert_each(method, x[start:start + size])
    results, start = [], 0
    for item in loaded:
        mine = rows[start:start + len(item.x)]
        start += len(item.x)
        failed = next((r for r in mine if isinstance(r, Exception)), None)
        results.append(failed if failed is not None else _cat(mine))
    return results


def invert_files(method, pack_name: str, files: list[Path], out: Path, compare: bool = False, overwrite: bool = False,
                 batch: int = 8, masks: bool = False,
                 on_file: Callable[[FileResult], None] = lambda r: None, aligner=None,
                 save_aligned: bool = False) -> list[FileResult]:
    """Invert `files` into `out`: NAME.png (reconstruction) and NAME.latent.safetensors, NAME.mask.png with `masks`
    (a method that makes invertibility masks), NAME_compare.png with `compare`. One result per file, in the order
    they finish. With an `aligner`, photos are aligned (see the module's docstring)."""
    results: list[FileResult] = []

    def report(result: FileResult) -> None:
        results.append(result)
        on_file(result)

    def outputs_of(stem: str) -> dict[str, Path]:
        outputs = {"image": out / f"{stem}.png", "latent": out / f"{stem}{SUFFIX}"}
        if masks:
            outputs["mask"] = sidecar_path(out, stem, "mask")
        if compare:
            outputs["compare"] = sidecar_path(out, stem, "compare")
        return outputs

    # A photo whose picture exists was written whole (its faces' latent files with it): --overwrite redoes it.
    todo = _plan(files, outputs_of, overwrite, report, skip_on=("image",) if aligner is not None else None)
    protected = ProtectedPaths(files) if aligner is not None else None  # for outputs named after faces
    # Encoding and writing a batch's outputs (PNG compression, two files each) overlaps inverting the next batch: on
    # small images they cost about a fifth of the inversion. At most two batches wait, to bound memory.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: deque[Future] = deque()
        for loaded, failures in _read_ahead(_batches(todo, batch),
                                            lambda chunk: _load(chunk, method.resolution, aligner, protected)):
            for failure in failures:
                report(failure)
            if loaded:
                inversions = _invert_inputs(method, loaded, batch)
                for item, inversion in zip(loaded, inversions):
                    pending.append(writer.submit(_write_inversion, item, inversion, pack_name, method.name,
                                                 save_aligned))
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
               on_file: Callable[[FileResult], None] = lambda r: None, aligner=None,
               save_aligned: bool = False) -> list[FileResult]:
    """Apply all edits at once (their vectors times their strengths summed); a sweep (one edit with several
    strengths) writes a grid and an animated GIF per file. With `from_latents`, `sources` are latent files, checked
    against the pack and method (the aligned crops are edited: no photo to paste them into). With an `aligner`,
    photos are aligned and the edited faces pasted back (see the module's docstring)."""
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
    def load_latents(chunk: list) -> tuple[list, list[FileResult]]:
        items, failures = [], []
        for path, outputs in chunk:
            try:
                items.append((path, outputs, load_latent(path, spec)[0]))
            except Exception as exc:
                failures.append(_failed(path, exc))
        return items, failures

    load = load_latents if from_latents else (lambda chunk: _load(chunk, method.resolution, aligner, protected))
    for loaded, failures in _read_ahead(_batches(todo, batch), load):
        for failure in failures:
            report(failure)
        items = loaded
        if not from_latents and loaded:
            inversions = _invert_inputs(method, loaded, batch)
            items = [(item.path, item.outputs, inversion, item) for item, inversion in zip(loaded, inversions)]
        for path, outputs, inversion, *source in items:
            picture = source[0].picture if source else (lambda images: tensor_to_images(images)[0])
            try:
                if isinstance(inversion, Exception):
                    raise inversion
                if sweep:
                    _, vector, strengths = edits[0]
                    frames = [picture(_finite(method.edit(inversion, vector, s), "edited image")) for s in strengths]
                    gif = io.BytesIO()
                    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:] + frames[-2:0:-1],
                                   duration=120, loop=0)
                    contents = {outputs[0]: encode_image(make_grid(frames, columns=len(frames)), outputs[0]),
                                outputs[1]: gif.getvalue()}
                else:
                    from .edits import combine  # W+ vectors summed as before; learned edits chained in order
                    total = combine([(vector, s[0]) for _, vector, s in edits])
                    image = picture(_finite(method.edit(inversion, total, 1.0), "edited image"))
                    contents = {outputs[0]: encode_image(image, outputs[0])}
                if source and save_aligned:
                    contents.update(source[0].aligned_crops(outputs[0]))
                    source[0].check_outputs(contents)
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
                batch: int = 8, on_file: Callable[[FileResult], None] = lambda r: None, aligner=None,
                save_aligned: bool = False) -> list[FileResult]:
    """`stylecli blend`: per input NAME, with LABEL the edits (e.g. _smile+2) or nothing,
    OUT/NAME[LABEL].png (the blended result, edited with the mask recomputed on the edited pass),
    OUT/NAME[LABEL].mask.png, OUT/NAME[LABEL]_overlay.png (the mask over the input), and with `compare`
    OUT/NAME[LABEL]_compare.png: input | `base` method's result | `method`'s | mask. `method` must make masks."""
    results: list[FileResult] = []

    def report(result: FileResult) -> None:
        results.append(result)
        on_file(result)

    label = "".join(f"_{name}{s:+g}" for name, _, s in edits)
    from .edits import combine  # W+ vectors summed as before; learned edits chained in order
    total = combine([(vector, s) for _, vector, s in edits]) if edits else None
    def outputs_of(stem: str) -> dict[str, Path]:
        outputs = {"image": out / f"{stem}{label}.png", "mask": sidecar_path(out, stem + label, "mask"),
                   "overlay": sidecar_path(out, stem + label, "overlay")}
        if compare:
            outputs["compare"] = sidecar_path(out, stem + label, "compare")
        return outputs

    protected = ProtectedPaths(files) if aligner is not None else None  # for outputs named after faces
    skip_on = ("image",) if aligner is not None else None
    for loaded, failures in _read_ahead(_batches(_plan(files, outputs_of, overwrite, report, skip_on), batch),
                                        lambda chunk: _load(chunk, method.resolution, aligner, protected)):
        for failure in failures:
            report(failure)
        if not loaded:
            continue
        inversions = _invert_inputs(method, loaded, batch)
        base_images = _invert_inputs(base, loaded, batch) if compare else [None] * len(loaded)
        for item, inversion, base_inv in zip(loaded, inversions, base_images):
            path, outputs = item.path, item.outputs
            try:
                for failed in (inversion, base_inv):
                    if isinstance(failed, Exception):
                        raise failed
                result = inversion if total is None else method.edit_inversion(inversion, total, 1.0)
                blended = item.picture(_finite(result.image, "blended image"))
                mask = item.mask_picture(_finite(result.extras["mask"], "mask"))
                shown = item.shown(blended.size)
                contents = {outputs["image"]: encode_image(blended, outputs["image"]),
                            outputs["mask"]: encode_image(mask, outputs["mask"]),
                            outputs["overlay"]: encode_image(overlay_image(shown, mask), outputs["overlay"])}
                if compare:
                    base_image = base_inv.image if total is None else base.edit(base_inv, total, 1.0)
                    strip = [shown, item.picture(_finite(base_image, "base image")), blended, mask.convert("RGB")]
                    contents[outputs["compare"]] = encode_image(make_grid(strip, columns=4), outputs["compare"])
                if save_aligned:
                    contents.update(item.aligned_crops(outputs["image"]))
                item.check_outputs(contents)
                write_files(contents)
                report(FileResult(printable(path), "done", [printable(p) for p in contents]))
            except Exception as exc:
                report(_failed(path, exc))
    return results
