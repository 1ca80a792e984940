"""`stylecli invert`, `stylecli edit` and `stylecli blend`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..methods import DEFAULT_METHOD, method_help
from .common import DeviceOption, ModelOption, UsageError, console, escape, progress_bar
from .faces import (AlignOption, DetectorOption, FaceOption, LandmarksOption, PasteMaskOption, SaveAlignedOption,
                    describe, open_aligner, show_note)

MethodOption = typer.Option(DEFAULT_METHOD, "--method", help=method_help())


def _check_method(method: str, options: dict | None) -> None:
    """A bad method name or option is reported before anything is read."""
    from ..methods import get_method

    try:
        get_method(method).check_options(options or {})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _open_method(method: str, model: str, device: str, options: dict | None = None):
    """The method `method` loaded on pack `model` with its options (every failure a one-line error), and the pack."""
    from ..methods import get_method
    from ..models import resolve_device
    from ..packs import Pack

    spec = get_method(method)
    pack = Pack.open(model)
    return spec.load(pack, resolve_device(device), **(options or {})), pack


def _finish(results, json_output: bool, what: str, debug: bool) -> None:
    """Report a batch: failures one line each (tracebacks of internal errors with --debug), then a summary line;
    exit code 1 when any file failed."""
    done = sum(r.status == "done" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    if json_output:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    for r in failed:  # one plain line each: long paths stay whole and copyable
        if debug and r.traceback:
            console.print(r.traceback.rstrip(), soft_wrap=True, highlight=False)
        console.print(f"failed: {r.error}" if r.source in (r.error or "") else f"failed: {r.source}: {r.error}",
                      soft_wrap=True, highlight=False)
    bugs = sum(r.traceback is not None for r in failed)
    if bugs and not debug:
        console.print(f"{bugs} of the failures are internal errors, not bad input: --debug prints their tracebacks "
                      "(please report them)", soft_wrap=True, highlight=False)
    skip_note = f", {skipped} skipped (outputs exist; --overwrite redoes them)" if skipped else ""
    console.print(f"{what}: {done} done{skip_note}, {len(failed)} failed", highlight=False)
    if failed:
        raise typer.Exit(1)


DebugOption = typer.Option(False, "--debug", help="Print the traceback of files that fail with an internal error.")
OverwriteOption = typer.Option(False, "--overwrite", help="Redo files whose outputs already exist.")
JsonOption = typer.Option(False, "--json", help="Print machine-readable results.")
BatchOption = typer.Option(8, "--batch", min=1, help="Images per forward pass.")


def invert(
    input: Path = typer.Argument(..., help="An image or a folder of images."),
    out: Path = typer.Option(Path("inverted"), "--out", "-o", help="Output folder."),
    method: str = MethodOption,
    model: str = ModelOption,
    compare: bool = typer.Option(False, "--compare", help="Also write input | reconstruction side by side."),
    overwrite: bool = OverwriteOption,
    json_output: bool = JsonOption,
    batch: int = BatchOption,
    device: str = DeviceOption,
    debug: bool = DebugOption,
    align: str = AlignOption,
    face: str = FaceOption,
    detector: str = DetectorOption,
    landmarks: Path = LandmarksOption,
    save_aligned: bool = SaveAlignedOption,
    paste_mask: str = PasteMaskOption,
    method_options: dict = None,
):
    """Find photos in the generator's latent space; write reconstructions and latent codes.

    For each input NAME.png writes OUT/NAME.png (reconstruction) and OUT/NAME.latent.safetensors (the codes, with
    the pack and method recorded), OUT/NAME.mask.png for a method that makes invertibility masks (samm: white = taken
    from the input); --compare adds OUT/NAME_compare.png. Inputs sharing a NAME (a.png, a.jpg) write
    a_png.* and a_jpg.*. A failing file does not stop the batch; the exit code is 1 when any failed.

    A photo that is not an aligned crop of the pack's size has its faces found and aligned (--align); OUT/NAME.png is
    then the photo with the reconstructed faces pasted back, and each face's codes go to NAME_faceK.latent.safetensors.

    Example: stylecli invert photos/ -o out/ --method e4e
    """
    from ..fileio import writable_folder
    from ..imageio import READABLE_SUFFIXES, list_images
    from ..methods import get_method
    from ..pipeline import invert_files

    _check_method(method, method_options)
    files = list_images(input)
    if not files:
        raise UsageError(f"{escape(input)}: no images found (readable: {', '.join(READABLE_SUFFIXES)})")
    runner, pack = _open_method(method, model, device, method_options)  # a pack that cannot serve creates no folder
    aligner, note = open_aligner(files, pack, runner.resolution, align, face, detector, landmarks, device, paste_mask)
    writable_folder(out)  # before any work: an output folder that cannot be written is a usage error, not N failures
    show_note(note)
    with progress_bar(f"inverting with {method}{describe(aligner)}", len(files), runner) as advance:
        results = invert_files(runner, pack.name, files, out, compare=compare, overwrite=overwrite, batch=batch,
                               masks=get_method(method).makes_masks, on_file=lambda r: advance(), aligner=aligner,
                               save_aligned=save_aligned)
    _finish(results, json_output, "inverted", debug)


def edit(
    input: Path = typer.Argument(..., help="An image, a folder of images, or (with --latent) latent files."),
    direction: list[str] = typer.Option(..., "--direction", "-d", help="Direction name (repeatable)."),
    strength: list[str] = typer.Option(["1"], "--strength", "-s",
                                       help="Strength per direction, or a sweep START:END:COUNT (one direction). "
                                       "Linear directions: std of W along them; learned ones: std of their "
                                       "attribute, within ±3 (binary: + adds, - removes)."),
    method: str = MethodOption,
    model: str = ModelOption,
    out: Path = typer.Option(Path("edited"), "--out", "-o", help="Output folder."),
    latent: bool = typer.Option(False, "--latent", help="INPUT holds saved .latent.safetensors files: no re-inversion."),
    json_output: bool = JsonOption,
    batch: int = BatchOption,
    device: str = DeviceOption,
    debug: bool = DebugOption,
    align: str = AlignOption,
    face: str = FaceOption,
    detector: str = DetectorOption,
    landmarks: Path = LandmarksOption,
    save_aligned: bool = SaveAlignedOption,
    paste_mask: str = PasteMaskOption,
    method_options: dict = None,
):
    """Invert a photo, move its code along semantic directions, and write the edited photo.

    Several --direction/--strength pairs apply together. A sweep (--strength -3:3:7) writes a grid and an animated
    GIF. `stylecli directions list` shows the pack's directions. A photo that is not an aligned crop of the pack's
    size has its faces found, aligned, edited and pasted back: the output is the same photo with the faces edited.

    Example: stylecli edit face.jpg --direction smile --strength 2 --method e4e
    """
    from ..directions import DirectionError, check_strengths, get_direction
    from ..fileio import writable_folder
    from ..imageio import list_images
    from ..latents import list_latents
    from ..pipeline import edit_files, parse_strengths

    _check_method(method, method_options)

    if len(strength) == 1 and len(direction) > 1:
        strength = strength * len(direction)
    if len(strength) != len(direction):
        raise UsageError(f"{len(direction)} directions but {len(strength)} strengths: give one strength per direction")
    try:
        strengths = [parse_strengths(s) for s in strength]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if len(direction) > 1 and any(len(s) > 1 for s in strengths):
        raise UsageError("a strength sweep works with a single --direction")
    sources = list_latents(input) if latent else list_images(input)
    if not sources:
        raise UsageError(f"{escape(input)}: nothing to edit" + (" (no .latent.safetensors files)" if latent else ""))
    runner, pack = _open_method(method, model, device, method_options)
    aligner, note = (None, None) if latent else open_aligner(sources, pack, runner.resolution, align, face, detector,
                                                             landmarks, device, paste_mask)
    writable_folder(out)
    try:
        edits = [(name, get_direction(pack, name).vector, s) for name, s in zip(direction, strengths)]
        check_strengths(edits)  # a learned direction's range
    except DirectionError as exc:
        raise UsageError(str(exc)) from None
    show_note(note)
    with progress_bar(f"editing with {method}{describe(aligner)}", len(sources), runner) as advance:
        results = edit_files(runner, pack.name, sources, edits, out, from_latents=latent, batch=batch,
                             on_file=lambda r: advance(), aligner=aligner, save_aligned=save_aligned)
    _finish(results, json_output, "edited", debug)


def blend(
    input: Path = typer.Argument(..., help="An image or a folder of images."),
    direction: list[str] = typer.Option([], "--direction", "-d", help="Also edit along this direction (repeatable)."),
    strength: list[str] = typer.Option(["1"], "--strength", "-s", help="Strength per direction (linear: std of W "
                                       "along it; learned: std of its attribute, within ±3)."),
    method: str = typer.Option("samm", "--method", help="A method that makes an invertibility mask (see `stylecli "
                                                        "methods`)."),
    base: str = typer.Option(DEFAULT_METHOD, "--base", help="The method whose plain result --compare shows beside."),
    model: str = ModelOption,
    out: Path = typer.Option(Path("blended"), "--out", "-o", help="Output folder."),
    compare: bool = typer.Option(False, "--compare", help="Also write a strip: input | base | blended | mask."),
    overwrite: bool = OverwriteOption,
    json_output: bool = JsonOption,
    batch: int = BatchOption,
    device: str = DeviceOption,
    debug: bool = DebugOption,
    align: str = AlignOption,
    face: str = FaceOption,
    detector: str = DetectorOption,
    landmarks: Path = LandmarksOption,
    save_aligned: bool = SaveAlignedOption,
    paste_mask: str = PasteMaskOption,
    method_options: dict = None,
):
    """Invert and blend out-of-domain content (accessories, occluders, background) back from the input; with
    --direction, edit the face while what lies out of the domain stays.

    For each input NAME writes OUT/NAME.png (the blended result; NAME_smile+2.png etc. when editing), NAME.mask.png
    (the invertibility mask: white = taken from the input), NAME_overlay.png (the mask over the input), and with
    --compare NAME_compare.png. Failing files do not stop the batch; the exit code is 1 when any failed.

    Example: stylecli blend face.png -d smile -s 2 --compare -o blended/
    """
    from ..directions import DirectionError, check_strengths, get_direction
    from ..fileio import writable_folder
    from ..imageio import READABLE_SUFFIXES, list_images
    from ..methods import METHODS, get_method
    from ..pipeline import blend_files, parse_strengths

    _check_method(method, method_options)
    if not get_method(method).makes_masks:
        with_masks = ", ".join(name for name, s in METHODS.items() if s.makes_masks) or "none in this build"
        raise UsageError(f"method {method!r} makes no invertibility mask, which blend needs (methods that do: "
                         f"{with_masks})")
    get_method(base)
    if len(strength) == 1 and len(direction) > 1:
        strength = strength * len(direction)
    if direction and len(strength) != len(direction):
        raise UsageError(f"{len(direction)} directions but {len(strength)} strengths: give one strength per direction")
    try:
        strengths = [parse_strengths(s) for s in strength[:len(direction)]]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if any(len(s) > 1 for s in strengths):
        raise UsageError("blend takes one strength per direction (sweeps: `stylecli edit`)")
    files = list_images(input)
    if not files:
        raise UsageError(f"{escape(input)}: no images found (readable: {', '.join(READABLE_SUFFIXES)})")
    runner, pack = _open_method(method, model, device, method_options)
    base_runner = _open_method(base, model, device)[0] if compare else None
    aligner, note = open_aligner(files, pack, runner.resolution, align, face, detector, landmarks, device, paste_mask)
    writable_folder(out)
    try:
        edits = [(name, get_direction(pack, name).vector, s[0]) for name, s in zip(direction, strengths)]
        check_strengths(edits)  # a learned direction's range
    except DirectionError as exc:
        raise UsageError(str(exc)) from None
    show_note(note)
    with progress_bar(f"blending with {method}{describe(aligner)}", len(files), runner) as advance:
        results = blend_files(runner, base_runner, pack.name, files, out, edits, compare=compare, overwrite=overwrite,
                              batch=batch, on_file=lambda r: advance(), aligner=aligner, save_aligned=save_aligned)
    _finish(results, json_output, "blended", debug)
