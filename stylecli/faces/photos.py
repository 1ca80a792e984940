"""Photos in, photos out: what `invert`, `edit` and `blend` do with a photo that is not an aligned crop.

`PhotoAligner.prepare(photo, source)` finds the faces (a `Detector`), keeps those `--face` asks for, and aligns each to
the pack's resolution by the pack's recipe; `AlignedPhoto.compose(images)` pastes the method's outputs back into the
photo with a feathered mask, so the photo keeps its size and every pixel away from the faces. The mask is an ellipse
around the face (`face_mask`), or with a face parser (`--paste-mask`, stylecli.faces.parse) the face's own outline,
parsed once per face from its aligned crop. `--align auto` leaves an image that already is an aligned crop (square,
of the pack's resolution) as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..fileio import printable
from ..imageio import ImageError
from .align import Alignment, Face, align, crop_face, face_mask, paste_faces

ALIGN_MODES = ("auto", "on", "off")


def recipe_of(pack) -> str:
    """A pack's alignment recipe: its manifest's "alignment" when it names one, else "synthetic" for the synthetic
    domain's packs (those with a face detector network or a synthface name) and "ffhq" for every other."""
    named = pack.manifest.get("alignment") if pack is not None else None
    if named in ("ffhq", "synthetic"):
        return named
    if pack is not None and (pack.has("face_detector") or str(pack.name).startswith("synthface")):
        return "synthetic"
    return "ffhq"


def parse_face_choice(text: str) -> str | int:
    """--face: "all", "largest" or a face's index (faces are numbered left to right from 0); ValueError otherwise."""
    if text in ("all", "largest"):
        return text
    try:
        index = int(text)
    except ValueError:
        raise ValueError(f"--face {text!r}: use all, largest or a face's index (0 is the leftmost)") from None
    if index < 0:
        raise ValueError(f"--face {text!r}: an index counts from 0 (the leftmost face)")
    return index


def choose_faces(faces: list[Face], choice: str | int) -> list[tuple[int, Face]]:
    """(index, face) of the faces `choice` keeps; faces are numbered left to right (then top to bottom) by their
    box's centre. ValueError when an index is beyond the faces found."""
    ordered = sorted(faces, key=lambda f: ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2))
    numbered = list(enumerate(ordered))
    if choice == "all":
        return numbered
    if choice == "largest":
        return [max(numbered, key=lambda item: item[1].area)]
    if choice >= len(numbered):
        raise ValueError(f"--face {choice}: the photo has {len(numbered)} face{'s' if len(numbered) != 1 else ''} "
                         f"(0 to {len(numbered) - 1})")
    return [numbered[choice]]


@dataclass
class AlignedFace:
    index: int              # the face's number in its photo (left to right)
    face: Face              # where the detector found it
    alignment: Alignment    # the crop's square in the photo
    crop: Image.Image       # the aligned crop, resolution x resolution
    mask: np.ndarray | None = None  # its paste mask from a face parser ([S, S] in the crop's frame); None: the ellipse


@dataclass
class AlignedPhoto:
    photo: Image.Image          # the photo as read (EXIF-upright, sRGB)
    faces: list[AlignedFace]    # one per face the method sees, in the order of its batch rows
    recipe: str

    def compose(self, images: list[Image.Image], masks: list[np.ndarray] | None = None,
                onto: Image.Image | None = None) -> tuple[Image.Image, np.ndarray]:
        """The photo (or `onto`, a picture of its size) with `images` (one per face, the method's outputs at any
        size) pasted back; `masks` (one per face, in the crop's frame) narrow the paste further (multiplied with the
        face mask: the parser's when the face has one, else the ellipse). Returns the picture and its blend weights
        [H, W] (0: the input's own pixel)."""
        assert len(images) == len(self.faces), f"{len(images)} images for {len(self.faces)} faces"
        crops = []
        for k, (face, image) in enumerate(zip(self.faces, images)):
            mask = face.mask if face.mask is not None else face_mask(face.alignment.size, self.recipe)
            if masks is not None:
                extra = np.asarray(Image.fromarray(np.asarray(masks[k], np.float32), "F")
                                   .resize(mask.shape[::-1], Image.BILINEAR), dtype=np.float32)
                mask = mask * np.clip(extra, 0, 1)
            crops.append((image, face.alignment, mask))
        return paste_faces(self.photo if onto is None else onto, crops)


class PhotoAligner:
    """Finds, chooses and aligns the faces of photos for a method of `resolution`.

    detector -- a `stylecli.faces.detect.Detector`;
    recipe -- "ffhq" or "synthetic" (`recipe_of(pack)`);
    mode -- "on": always align; "auto": align unless the image already is a square of `resolution`; "off": never;
    face -- "all", "largest" or an index (`parse_face_choice`);
    parser -- a `stylecli.faces.parse.FaceParser` whose masks paste the faces back, or None for the ellipse."""

    def __init__(self, detector, recipe: str, resolution: int, mode: str = "auto", face: str | int = "all",
                 parser=None):
        assert mode in ALIGN_MODES, mode
        self.detector, self.recipe, self.resolution, self.mode, self.face = detector, recipe, resolution, mode, face
        self.parser = parser

    def wants(self, photo: Image.Image) -> bool:
        """Whether `photo` is aligned before the method sees it."""
        if self.mode == "off":
            return False
        return self.mode == "on" or photo.size != (self.resolution, self.resolution)

    def prepare(self, photo: Image.Image, source: str | os.PathLike | None = None) -> AlignedPhoto | None:
        """The photo's chosen faces aligned, or None when the photo is used whole (see `wants`). ImageError (one
        line, naming the file) for a photo without a face or with too few for --face INDEX."""
        result = self.prepare_many([photo], [source])[0]
        if isinstance(result, ImageError):
            raise result
        return result

    def prepare_many(self, photos: list[Image.Image], sources: list | None = None
                     ) -> list[AlignedPhoto | None | ImageError]:
        """`prepare` for several photos, their faces found by one call to the detector (which batches its networks
        where it can); a photo that fails has its ImageError in its place, the others go on."""
        sources = sources if sources is not None else [None] * len(photos)
        wanted = [k for k, photo in enumerate(photos) if self.wants(photo)]
        found = self.detector.detect_many([photos[k] for k in wanted], [sources[k] for k in wanted])
        results: list[AlignedPhoto | None | ImageError] = [None] * len(photos)
        for k, faces in zip(wanted, found):
            try:
                results[k] = self._aligned(photos[k], sources[k], faces)
            except ImageError as exc:
                results[k] = exc
        # The parser runs photo by photo (at 512 px a whole batch's faces would be a large pass); a face it finds too
        # little of keeps the ellipse (mask None).
        if self.parser is not None:
            for result in results:
                if isinstance(result, AlignedPhoto):
                    for item, mask in zip(result.faces, self.parser.paste_masks([item.crop for item in result.faces])):
                        item.mask = mask
        return results

    def _aligned(self, photo: Image.Image, source, faces: list[Face]) -> AlignedPhoto:
        """The chosen ones of `faces` (found in `photo`) aligned; ImageError when there are none to choose."""
        name = printable(source) if source is not None else "the photo"
        if not faces:
            raise ImageError(f"{name}: no face found (detector: {self.detector.name}; --align off uses the image "
                             "whole)")
        try:
            chosen = choose_faces(faces, self.face)
        except ValueError as exc:
            raise ImageError(f"{name}: {exc}") from None
        aligned = []
        for index, face in chosen:
            try:
                alignment = align(face, self.resolution, self.recipe)
                aligned.append(AlignedFace(index, face, alignment, crop_face(photo, alignment)))
            except ValueError as exc:  # degenerate landmarks, a crop entirely outside the photo
                raise ImageError(f"{name}: face {index}: {exc}") from None
        return AlignedPhoto(photo, aligned, self.recipe)
