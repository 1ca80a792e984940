"""The options `invert`, `edit` and `blend` share for photos that are not aligned crops: --align, --face,
--detector, --landmarks, --save-aligned, --paste-mask; and opening the aligner they describe (stylecli.faces)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import UsageError, console, escape

AlignOption = typer.Option("auto", "--align",
                           help="auto: align photos that are not already aligned crops of the pack's size "
                                "(with a detector that can run here); on: always; off: use images whole (resized).")
FaceOption = typer.Option("all", "--face", help="Faces of a photo to edit: all, largest, or an index (0 = leftmost).")
DetectorOption = typer.Option("auto", "--detector",
                              help="auto, synth (the pack's own, synthetic domain), dlib or retinaface (real faces).")
LandmarksOption = typer.Option(None, "--landmarks",
                               help="A JSON file of faces from your own detector (5 or 68 points per face; see the "
                                    "README), used instead of a detector.")
SaveAlignedOption = typer.Option(False, "--save-aligned", help="Also write each face's aligned crop "
                                                               "(NAME_faceK.aligned.png).")
PasteMaskOption = typer.Option("auto", "--paste-mask",
                               help="How faces are blended back into a photo: ellipse (a feathered ellipse around "
                                    "the face); parser (the face's outline from facexlib's face parser: skin, brows, "
                                    "eyes, nose, mouth, while hair, ears, neck and background stay the photo's; needs "
                                    "parsing_bisenet.pth or parsing_parsenet.pth in the pack folder or "
                                    "~/.cache/stylecli/facexlib/); auto: parser when those weights are found and "
                                    "the pack is of real faces, else ellipse.")


def _needs_alignment(files: list[Path], resolution: int) -> bool:
    """Whether any of `files` is not a square of `resolution` (read from the file's header; an unreadable file is
    left to fail on its own later). The EXIF orientation cannot make a square from a non-square."""
    from PIL import Image

    from ..fileio import describe_problem

    for path in files:
        if describe_problem(path):  # a FIFO would block the open; such a file fails alone later
            continue
        try:
            with Image.open(path) as img:
                if img.size != (resolution, resolution):
                    return True
        except Exception:
            continue
    return False


def open_aligner(files: list[Path], pack, resolution: int, align: str, face: str, detector: str,
                 landmarks: Optional[Path], device: str, paste_mask: str = "auto"
                 ) -> tuple[object | None, str | None]:
    """(The `stylecli.faces.PhotoAligner` the options ask for, or None when images are used whole; a note for the
    user or None):
    1. --align off, or auto when every input already is a square of the pack's resolution (no detector is opened);
    2. a bad --align, --face, --detector or --paste-mask, and a --landmarks file that cannot be read, are usage
       errors;
    3. auto with no detector that can run here makes a note (`show_note`, once the command is sure to run) and uses
       images whole; on makes it a usage error;
    4. --paste-mask parser without a face parser that can run here (no weights, a synthetic pack) is a usage error;
       auto uses the parser when its weights are found for a real-face pack, and a weights file there that does not
       load makes a note and the ellipse."""
    from ..faces.detect import DetectorUnavailable, LandmarkError, open_detector
    from ..faces.parse import PASTE_MASKS, ParserUnavailable, open_parser
    from ..faces.photos import ALIGN_MODES, PhotoAligner, parse_face_choice, recipe_of

    if align not in ALIGN_MODES:
        raise UsageError(f"--align {align!r}: use {', '.join(ALIGN_MODES)}")
    if paste_mask not in PASTE_MASKS:
        raise UsageError(f"--paste-mask {paste_mask!r}: use {', '.join(PASTE_MASKS)}")
    try:
        choice = parse_face_choice(face)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if align == "off" or (align == "auto" and landmarks is None and not _needs_alignment(files, resolution)):
        return None, None
    recipe = recipe_of(pack)
    try:
        found = open_detector(detector, pack, recipe, device, landmarks)
    except LandmarkError as exc:
        raise UsageError(str(exc)) from None
    except DetectorUnavailable as exc:
        if align == "on" or detector != "auto":
            raise UsageError(str(exc)) from None
        return None, (f"note: images that are not {resolution}x{resolution} aligned crops are used whole (resized): "
                      f"{exc} (--align on makes this an error)")
    try:
        parser, note = open_parser(paste_mask, pack, recipe, device), None
    except ParserUnavailable as exc:
        if paste_mask != "auto":
            raise UsageError(str(exc)) from None
        parser, note = None, f"note: faces are pasted back with the ellipse mask: {exc}"
    return PhotoAligner(found, recipe, resolution, align, choice, parser), note


def show_note(note: str | None) -> None:
    if note:
        console.print(note, soft_wrap=True, highlight=False)


def describe(aligner) -> str:
    """A progress-bar word for what happens to photos."""
    if aligner is None:
        return ""
    parser = f", {aligner.parser.name} mask" if aligner.parser is not None else ""
    return f", aligning faces ({escape(aligner.detector.name)}{parser})"
