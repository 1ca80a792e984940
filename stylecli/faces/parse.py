"""The paste-back mask from a face parser: the face's own outline instead of an ellipse (`--paste-mask`).

facexlib ships two face parsers, both with the 19 classes of CelebAMask-HQ (in different orders): BiSeNet
(`parsing_bisenet.pth`, the face-parsing.PyTorch network) and ParseNet (`parsing_parsenet.pth`, PSFRGAN's, what
facexlib's FaceRestoreHelper pastes with). Their networks are built here from facexlib's own classes and loaded from a
local file; facexlib's `init_parsing_model` is not used because it downloads the weights. Nothing is downloaded.

The mask of an aligned crop (`FaceParser.paste_masks`):
1. the crop is parsed at 512 x 512 (what both networks were trained on);
2. the face is the pixels of FACE_CLASSES -- skin, brows, eyes, glasses, nose, mouth and lips: what an edit of the
   generator's face changes. Hair, ears, earrings, neck, necklace, clothes, hat and background are left out: an
   inversion reproduces them worst (strands, jewellery, backgrounds blur), and face edits barely move them, so the
   photo's own pixels are better there. Glasses are in, or the eyes behind them would be holes in the mask;
3. only the parts that reach the middle of the crop (where the alignment puts eyes, nose and mouth) are kept, holes
   inside them filled: skin elsewhere in the crop (a hand, a neighbour's face, a skin-coloured wall) is not pasted;
4. the region grows by GROW of the crop's side (the edited outline may move a little) and then falls smoothly to
   exactly 0 over FEATHER;
5. it is multiplied by a feathered ellipse a little wider than the face (`restriction`), exactly 0 outside: whatever
   the parser finds, pixels away from the face keep the photo's own values, bit for bit.
A crop whose parse holds less than MIN_FACE of the crop in kept face pixels gets no parser mask (None): the caller
pastes it with the ellipse.

One mask per face, from the input's crop: every strength of a sweep and the invertibility mask picture paste through
the same mask (no flicker in a sweep's GIF). Only for crops aligned by the FFHQ recipe: the parsers know real faces,
not the synthetic domain's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import printable
from .align import ellipse_mask

PASTE_MASKS = ("auto", "ellipse", "parser")
# facexlib's release file names (those `init_parsing_model` downloads); the faster BiSeNet first (0.3 s per face on
# one CPU thread against ParseNet's 5 s, whose decoder runs at the full 512 px).
PARSER_FILES = {"bisenet": "parsing_bisenet.pth", "parsenet": "parsing_parsenet.pth"}
# Each network's 19 outputs by name: BiSeNet in face-parsing.PyTorch's order, ParseNet in PSFRGAN's (facexlib's
# inference scripts list both).
CLASSES = {
    "bisenet": ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
                "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"),
    "parsenet": ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                 "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"),
}
FACE_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "nose", "mouth", "u_lip", "l_lip")
# The input each was trained on: RGB in [0, 1] normalised by (mean, std).
NORMALIZE = {"bisenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
             "parsenet": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
INPUT_SIZE = 512
CORE = (0.35, 0.40, 0.65, 0.78)     # x0, y0, x1, y1 of an FFHQ crop: eyes, nose and mouth of FFHQ's template
GROW = 0.015                        # of the crop's side: the mask reaches this far past the parsed face at full weight
FEATHER = 0.05                      # then falls to 0 over this much
MIN_FACE = 0.03                     # of the crop's area: less parsed face than this is no face
# The ellipse that bounds the parser's mask in an FFHQ crop: a little wider than `face_mask`'s (forehead to chin,
# cheek to cheek, with room for the face's outline to grow and feather), exactly 0 outside.
RESTRICTION = ((0.5, 0.54), (0.40, 0.44), 0.06)


class ParserUnavailable(Exception):
    """The face parser cannot run here (no weights found, not loadable); the message says what to do."""


def weight_folders(pack=None) -> list[Path]:
    """Where facexlib's weights are looked for, in order (RetinaFace's too): the pack folder,
    ~/.cache/stylecli/facexlib, and facexlib's own download folder (its package's weights/)."""
    folders = []
    if pack is not None:
        folders.append(Path(pack.root))
    from ..packs.pack import user_packs_folder
    folders.append(user_packs_folder().parent / "facexlib")
    try:
        import facexlib
        folders.append(Path(facexlib.__file__).parent / "weights")
    except ImportError:
        pass
    return folders


def find_weights(files: dict, pack=None) -> tuple[str, Path] | None:
    """(model name, weights file) of the first of `files` ({model: file name}, in order of preference) found in
    `weight_folders`, or None."""
    folders = weight_folders(pack)
    for model, file in files.items():
        for folder in folders:
            if (folder / file).is_file():
                return model, folder / file
    return None


def parser_weights(pack=None) -> tuple[str, Path] | None:
    """(model name, weights file) of a face parser found offline (see `weight_folders`), BiSeNet first."""
    return find_weights(PARSER_FILES, pack)


def restriction(size: int) -> np.ndarray:
    """[size, size] float32: the ellipse outside which the parser's mask is 0 (RESTRICTION)."""
    centre, radii, feather = RESTRICTION
    return ellipse_mask(size, centre, radii, feather)


def face_region(labels: np.ndarray, model: str) -> np.ndarray:
    """[S, S] bool: the pixels of FACE_CLASSES in a label map of `model`, only the parts that reach the crop's middle
    (CORE), with the holes inside them filled."""
    from scipy import ndimage  # installed with facexlib

    names = CLASSES[model]
    region = np.isin(labels, [names.index(c) for c in FACE_CLASSES])
    S = labels.shape[0]
    x0, y0, x1, y1 = (round(v * S) for v in CORE)
    parts, _ = ndimage.label(region)
    kept = np.unique(parts[y0:y1, x0:x1])
    region = np.isin(parts, kept[kept > 0])
    return ndimage.binary_fill_holes(region)


def mask_from_labels(labels: np.ndarray, model: str) -> np.ndarray | None:
    """[S, S] float32 in [0, 1]: the paste mask of a crop's label map (the module's steps 2-5), or None when the parse
    holds too little face (MIN_FACE)."""
    from scipy import ndimage

    region = face_region(labels, model)
    if region.mean() < MIN_FACE:
        return None
    S = labels.shape[0]
    distance = ndimage.distance_transform_edt(~region) / S   # in crop sides, 0 on the face
    t = np.clip((GROW + FEATHER - distance) / FEATHER, 0, 1)
    mask = t * t * (3 - 2 * t)                                # smoothstep: 1 up to GROW, exactly 0 past GROW + FEATHER
    return (mask * restriction(S)).astype(np.float32)


class FaceParser:
    """One of facexlib's face parsers: `labels(crops)` parses aligned crops, `paste_masks(crops)` makes their paste
    masks. Build it with `FaceParser.load` (from a weights file) or around any network with the same outputs."""

    def __init__(self, net, model: str, device="cpu"):
        assert model in CLASSES, model
        self.net, self.model, self.device = net.eval(), model, device
        self.name = model

    @classmethod
    def load(cls, weights: tuple[str, Path], device="cpu") -> "FaceParser":
        """The network facexlib's `init_parsing_model` would make, built with facexlib's class and loaded from the
        local file (a state dict saved with torch.save, as facexlib's releases are)."""
        import torch
        model, path = weights
        try:
            if model == "bisenet":
                from facexlib.parsing.bisenet import BiSeNet
                net = BiSeNet(num_class=len(CLASSES[model]))
            else:
                from facexlib.parsing.parsenet import ParseNet
                net = ParseNet(in_size=INPUT_SIZE, out_size=INPUT_SIZE, parsing_ch=len(CLASSES[model]))
        except ImportError as exc:
            raise ParserUnavailable(f"facexlib's face parser does not import here ({exc})") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k.removeprefix("module."): v for k, v in state.items()}
        except Exception as exc:
            raise ParserUnavailable(f"{printable(path)}: not a face parser weights file ({type(exc).__name__})") \
                from None
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError:
            raise ParserUnavailable(f"{printable(path)}: does not fit facexlib's {model}") from None
        return cls(net.to(device), model, device)

    def labels(self, crops: list[Image.Image]) -> np.ndarray:
        """[N, 512, 512] uint8: the class of each pixel of each crop (resized to 512 x 512)."""
        import torch
        mean, std = NORMALIZE[self.model]
        x = np.stack([np.asarray(c.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR), np.float32)
                      for c in crops]) / 255.0
        x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(self.device)
        with torch.no_grad():
            logits = self.net(x)[0]   # both networks return the labels' logits first
        return logits.argmax(1).to(torch.uint8).cpu().numpy()

    def paste_masks(self, crops: list[Image.Image]) -> list[np.ndarray | None]:
        """Per crop: its paste mask [512, 512] (see `mask_from_labels`), or None to paste it with the ellipse."""
        return [mask_from_labels(labels, self.model) for labels in self.labels(crops)]


def missing_message(pack=None) -> str:
    """Where to put a parser's weights, in one line."""
    from ..packs.pack import user_packs_folder
    where = f"the pack folder ({printable(pack.root)})" if pack is not None else "the pack folder"
    cache = user_packs_folder().parent / "facexlib"
    cache_text = "~/.cache/stylecli/facexlib/" if cache == Path.home() / ".cache" / "stylecli" / "facexlib" \
        else f"{printable(cache)}/"
    return (f"no face parser weights found offline: put facexlib's {PARSER_FILES['bisenet']} (or "
            f"{PARSER_FILES['parsenet']}) in {where} or {cache_text}")


def open_parser(name: str, pack=None, recipe: str = "ffhq", device="cpu") -> FaceParser | None:
    """The face parser `--paste-mask NAME` asks for, or None for the ellipse: `ellipse` never opens one; `parser`
    opens one or raises ParserUnavailable (one line: the pack is synthetic, no weights, a bad file); `auto` opens one
    for a real-face pack when weights are found (a bad file raises ParserUnavailable too) and is None otherwise."""
    if name not in PASTE_MASKS:
        raise ParserUnavailable(f"--paste-mask {name!r}: use {', '.join(PASTE_MASKS)}")
    if name == "ellipse" or (name == "auto" and recipe != "ffhq"):
        return None
    if recipe != "ffhq":
        which = f"pack {pack.name!r}" if pack is not None else "this model"
        raise ParserUnavailable(f"--paste-mask parser: {which} is of the synthetic domain, which facexlib's face "
                                "parser (trained on real faces) does not know; use --paste-mask ellipse")
    weights = parser_weights(pack)
    if weights is None:
        if name == "auto":
            return None
        raise ParserUnavailable(f"--paste-mask parser: {missing_message(pack)} (--paste-mask ellipse needs none)")
    from ..models import resolve_device
    return FaceParser.load(weights, resolve_device(device))

