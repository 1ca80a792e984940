"""The paste-back mask from facexlib's face parser (stylecli/faces/parse.py, `--paste-mask`): its weights found
offline in facexlib's file layout and loaded into facexlib's own network, the mask's classes and bounds, pixels away
from the face bit-identical, the clear error when the weights are missing, and `auto` falling back to the ellipse.

The networks have random weights. One is rigged so that it parses every pixel as skin (its last features a constant,
its output layer reading only the skin class): whatever it sees, its mask is the bounding ellipse, which the tests can
compute. The mask's logic is tested on painted label maps."""

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylecli.faces.align import FFHQ_TEMPLATE_512, Face, align, face_mask, paste_faces
from stylecli.faces.detect import Detector
from stylecli.faces.parse import (CLASSES, FACE_CLASSES, GROW, FEATHER, PARSER_FILES, FaceParser, ParserUnavailable,
                                  mask_from_labels, open_parser, parser_weights, restriction)
from stylecli.faces.photos import PhotoAligner
from test_faces import SHIPPED, cli

pytest.importorskip("facexlib.parsing.bisenet")

S = 512  # the parsers' input size


def _ellipse(cx, cy, rx, ry, size=S):
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def painted_labels(model: str = "bisenet") -> np.ndarray:
    """A label map of an FFHQ crop: hair around a face (skin, brows, eyes, nose, mouth, lips, and a hole the parser
    left as background on the cheek), neck below, an ear, and a detached patch of skin (a hand) beside the chin."""
    names = CLASSES[model]
    labels = np.zeros((S, S), np.uint8)
    for cls, shape in (("hair", _ellipse(0.5, 0.42, 0.36, 0.36)), ("neck", _ellipse(0.5, 0.95, 0.16, 0.2)),
                       ("skin", _ellipse(0.5, 0.50, 0.25, 0.32)), ("l_ear", _ellipse(0.2, 0.5, 0.04, 0.07)),
                       ("l_brow", _ellipse(0.38, 0.38, 0.06, 0.012)), ("r_brow", _ellipse(0.62, 0.38, 0.06, 0.012)),
                       ("l_eye", _ellipse(0.38, 0.45, 0.04, 0.015)), ("r_eye", _ellipse(0.62, 0.45, 0.04, 0.015)),
                       ("nose", _ellipse(0.5, 0.56, 0.03, 0.06)), ("mouth", _ellipse(0.5, 0.70, 0.06, 0.012)),
                       ("u_lip", _ellipse(0.5, 0.685, 0.07, 0.01)), ("l_lip", _ellipse(0.5, 0.715, 0.07, 0.012)),
                       ("background", _ellipse(0.36, 0.62, 0.015, 0.015)), ("skin", _ellipse(0.2, 0.75, 0.03, 0.03))):
        labels[shape] = names.index(cls)
    return labels


def at(mask: np.ndarray, x: float, y: float) -> float:
    return float(mask[int(y * mask.shape[0]), int(x * mask.shape[1])])


class Painted(torch.nn.Module):
    """A stand-in parser network: the logits of `labels` for every image, whatever it shows."""

    def __init__(self, labels: np.ndarray, classes: int = 19):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), classes).permute(2, 0, 1).float()

    def forward(self, x):
        return self.logits.expand(len(x), -1, -1, -1), None


def _rigged_bisenet():
    """facexlib's BiSeNet with random weights, except that its output head sees a constant and reads only skin."""
    from facexlib.parsing.bisenet import BiSeNet
    torch.manual_seed(0)
    net = BiSeNet(num_class=19)
    with torch.no_grad():
        net.conv_out.conv.bn.weight.zero_()
        net.conv_out.conv.bn.bias.fill_(1.0)
        net.conv_out.conv_out.weight.zero_()
        net.conv_out.conv_out.weight[CLASSES["bisenet"].index("skin")] = 1.0
    return net


@pytest.fixture(scope="module")
def bisenet_file(tmp_path_factory):
    """parsing_bisenet.pth as facexlib releases it (a state dict saved with torch.save), from the rigged network."""
    path = tmp_path_factory.mktemp("facexlib") / PARSER_FILES["bisenet"]
    torch.save(_rigged_bisenet().state_dict(), path)
    return path


@pytest.fixture
def no_user_weights(tmp_path, monkeypatch):
    """An empty ~/.cache (XDG_CACHE_HOME); skips when facexlib's own weights folder holds a parser already."""
    import facexlib
    own = Path(facexlib.__file__).parent / "weights"
    if any((own / f).is_file() for f in PARSER_FILES.values()):
        pytest.skip(f"{own} holds face parser weights")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "stylecli" / "facexlib"


# --- the mask -----------------------------------------------------------------------------------------------------

def test_the_mask_is_the_face_grown_and_feathered_and_zero_away_from_it():
    labels = painted_labels()
    mask = mask_from_labels(labels, "bisenet")
    assert mask.shape == (S, S) and mask.dtype == np.float32 and mask.min() >= 0 and mask.max() <= 1
    for x, y in ((0.5, 0.5), (0.38, 0.45), (0.5, 0.7), (0.36, 0.62)):  # skin, eye, mouth, the hole (filled)
        assert at(mask, x, y) == 1.0, (x, y)
    assert at(mask, 0.5, 0.5 - 0.32 - GROW / 2) == 1.0                # just past the forehead: grown at full weight
    assert 0 < at(mask, 0.5, 0.5 - 0.32 - GROW - FEATHER / 2) < 1     # the feather
    # Hair, ear, neck and the detached patch of skin are not the face: exactly 0 once past the feather.
    for x, y in ((0.5, 0.1), (0.5, 0.9), (0.2, 0.75), (0.17, 0.5)):
        assert at(mask, x, y) == 0.0, (x, y)
    assert (mask[restriction(S) == 0] == 0).all()
    steps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steps < 0.12  # smoothstep's slopes, 1.5 / (0.05 * 512) and 1.5 / (0.06 * 512): no hard edge anywhere
    assert set(FACE_CLASSES) >= {"skin", "nose", "mouth"} and not {"hair", "neck", "l_ear"} & set(FACE_CLASSES)
    # ParseNet numbers the classes differently; the same parse gives the same mask.
    assert np.array_equal(mask_from_labels(painted_labels("parsenet"), "parsenet"), mask)


def test_a_parse_without_a_face_in_the_middle_gets_no_mask():
    labels = painted_labels()
    labels[_ellipse(0.5, 0.5, 0.3, 0.36)] = CLASSES["bisenet"].index("hair")  # the face covered: a head from behind
    assert mask_from_labels(labels, "bisenet") is None
    assert mask_from_labels(np.zeros((S, S), np.uint8), "bisenet") is None


def test_compose_pastes_through_the_parsers_mask_and_keeps_the_rest_bit_identical():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (140, 180, 3), dtype=np.uint8))
    points = FFHQ_TEMPLATE_512 * (96 / 512) + [40, 20]

    class Given(Detector):
        name = "given"

        def detect(self, photo, source=None):
            return [Face(box=[40, 20, 136, 116], points=points)]

    detector = Given()
    parser = FaceParser(Painted(painted_labels()), "bisenet")
    aligned = PhotoAligner(detector, "ffhq", 64, "on", parser=parser).prepare(photo)
    (face,) = aligned.faces
    assert face.mask is not None and face.mask.shape == (S, S)
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    out, weights = aligned.compose([grey])
    before, after = np.asarray(photo), np.asarray(out)
    assert out.size == photo.size
    assert np.array_equal(before[weights == 0], after[weights == 0])
    assert (after[weights > 0.999] == 128).all()
    hand = face.alignment.to_photo(np.array([[0.2, 0.75]]) * 64)[0].astype(int)   # the detached skin: the photo's
    hair = face.alignment.to_photo(np.array([[0.5, 0.1]]) * 64)[0].astype(int)
    for x, y in (hand, hair):
        assert weights[y, x] == 0 and (after[y, x] == before[y, x]).all()
    face.mask = None                                                     # no parser mask: the ellipse
    _, ellipse_weights = aligned.compose([grey])
    _, expected = paste_faces(photo, [(grey, face.alignment, face_mask(64, "ffhq"))])
    assert np.array_equal(ellipse_weights, expected) and not np.array_equal(ellipse_weights, weights)


# --- the weights: found offline, loaded into facexlib's network ---------------------------------------------------

def test_parser_weights_are_found_in_facexlibs_layout_and_loaded(tmp_path, bisenet_file, no_user_weights):
    from facexlib.parsing.parsenet import ParseNet
    pack = types.SimpleNamespace(root=tmp_path / "pack", name="p")
    pack.root.mkdir()
    assert parser_weights(pack) is None
    no_user_weights.mkdir(parents=True)
    net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    torch.save(net.state_dict(), no_user_weights / PARSER_FILES["parsenet"])   # the user's cache: ParseNet
    assert parser_weights(pack) == ("parsenet", no_user_weights / "parsing_parsenet.pth")
    loaded = FaceParser.load(parser_weights(pack))
    assert loaded.model == "parsenet" and all(torch.equal(a, b) for a, b in
                                               zip(loaded.net.state_dict().values(), net.state_dict().values()))
    shutil.copy(bisenet_file, pack.root / PARSER_FILES["bisenet"])              # the pack folder: BiSeNet first
    assert parser_weights(pack) == ("bisenet", pack.root / "parsing_bisenet.pth")
    parser = open_parser("parser", pack, "ffhq")
    saved = torch.load(bisenet_file, weights_only=True)
    assert parser.model == "bisenet" and all(torch.equal(v, saved[k]) for k, v in parser.net.state_dict().items())
    labels = parser.labels([Image.new("RGB", (64, 64), (200, 150, 120))])
    assert labels.shape == (1, S, S) and (labels == CLASSES["bisenet"].index("skin")).all()  # the rigged head
    assert np.array_equal(parser.paste_masks([Image.new("RGB", (32, 32))])[0], restriction(S))
    (pack.root / PARSER_FILES["bisenet"]).write_bytes(b"not a state dict")
    with pytest.raises(ParserUnavailable, match="parsing_bisenet.pth: not a face parser weights file"):
        open_parser("auto", pack, "ffhq")


def test_open_parser_auto_ellipse_and_the_missing_file(tmp_path, bisenet_file, no_user_weights):
    pack = types.SimpleNamespace(root=tmp_path / "pack", name="p")
    pack.root.mkdir()
    assert open_parser("auto", pack, "ffhq") is None and open_parser("ellipse", pack, "ffhq") is None
    with pytest.raises(ParserUnavailable) as missing:
        open_parser("parser", pack, "ffhq")
    assert "parsing_bisenet.pth" in str(missing.value) and str(no_user_weights) in str(missing.value)
    shutil.copy(bisenet_file, pack.root / PARSER_FILES["bisenet"])
    assert open_parser("auto", pack, "ffhq").model == "bisenet"
    assert open_parser("auto", pack, "synthetic") is None      # the synthetic domain: always the ellipse
    with pytest.raises(ParserUnavailable, match="synthetic domain"):
        open_parser("parser", pack, "synthetic")
    with pytest.raises(ParserUnavailable, match="use auto, ellipse, parser"):
        open_parser("hair", pack, "ffhq")


# --- the commands ------------------------------------------------------------------------------------------------

@pytest.fixture
def real_photo(tmp_path):
    """A copy of the shipped pack told to align like FFHQ (a real-face pack as far as the paste-back goes), and a
    random 180 x 140 photo whose five landmarks (a --landmarks file) put a 96 px FFHQ crop in it."""
    pack = tmp_path / "pack"
    shutil.copytree(SHIPPED, pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["alignment"] = "ffhq"
    (pack / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (140, 180, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    points = FFHQ_TEMPLATE_512 * (96 / 512) + [40, 20]
    (tmp_path / "faces.json").write_text(json.dumps({"photo.png": [{"points": (points - 0.5).tolist()}]}))
    face = Face(box=[40, 20, 136, 116], points=points)
    return pack, tmp_path / "photo.png", tmp_path / "faces.json", face


def _edit(tmp_path, pack, photo, landmarks, out, *extra):
    return cli("edit", photo, "-d", "smile", "-s", "2", "-m", pack, "--landmarks", landmarks, "-o", tmp_path / out,
               "--device", "cpu", *extra)


def test_edit_pastes_with_the_parser_and_auto_falls_back_to_the_ellipse(tmp_path, real_photo, bisenet_file,
                                                                        no_user_weights):
    pack, photo, landmarks, face = real_photo
    result = "photo_smile+2.png"
    # No weights anywhere: parser is a one-line usage error naming the file; auto is the ellipse.
    missing = _edit(tmp_path, pack, photo, landmarks, "x", "--paste-mask", "parser")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "parsing_bisenet.pth" in missing.stderr and "--paste-mask parser" in missing.stderr
    for out, mode in (("auto", "auto"), ("ellipse", "ellipse")):
        done = _edit(tmp_path, pack, photo, landmarks, out, "--paste-mask", mode)
        assert done.returncode == 0 and "mask)" not in done.stderr, done.stderr
    assert (tmp_path / "auto" / result).read_bytes() == (tmp_path / "ellipse" / result).read_bytes()
    # A file of that name that does not load: auto says so in a note and pastes with the ellipse.
    (pack / PARSER_FILES["bisenet"]).write_bytes(b"not weights")
    noted = _edit(tmp_path, pack, photo, landmarks, "noted")
    assert noted.returncode == 0 and "note: faces are pasted back with the ellipse mask" in noted.stderr
    assert "parsing_bisenet.pth: not a face parser weights file" in noted.stderr
    assert (tmp_path / "noted" / result).read_bytes() == (tmp_path / "ellipse" / result).read_bytes()
    # The weights in the pack folder: parser and auto paste through the parser's mask.
    shutil.copy(bisenet_file, pack / PARSER_FILES["bisenet"])
    for out, mode in (("parser", "parser"), ("auto2", "auto")):
        done = _edit(tmp_path, pack, photo, landmarks, out, "--paste-mask", mode)
        assert done.returncode == 0 and "bisenet mask" in done.stderr, done.stderr
    assert (tmp_path / "auto2" / result).read_bytes() == (tmp_path / "parser" / result).read_bytes()
    before = np.asarray(Image.open(photo))
    after = np.asarray(Image.open(tmp_path / "parser" / result))
    ellipse = np.asarray(Image.open(tmp_path / "ellipse" / result))
    assert after.shape == before.shape and not np.array_equal(after, ellipse)
    # The rigged parser finds skin everywhere: its mask is the bounding ellipse, exactly 0 outside.
    alignment = align(face, 64, "ffhq")
    _, weights = paste_faces(Image.fromarray(before), [(Image.new("RGB", (64, 64)), alignment, restriction(S))])
    assert np.array_equal(after[weights == 0], before[weights == 0]) and (weights == 0).mean() > 0.5
    assert (after[weights > 0.99] != before[weights > 0.99]).any(axis=-1).mean() > 0.9


def test_the_synthetic_pack_always_pastes_with_the_ellipse(tmp_path, bisenet_file, no_user_weights):
    no_user_weights.mkdir(parents=True)
    shutil.copy(bisenet_file, no_user_weights / PARSER_FILES["bisenet"])   # found, but not for the synthetic domain
    from stylecli.data.scenes import make_scene
    scene = make_scene(0)
    scene.image.save(tmp_path / "scene.png")
    faces = [{"points": f["points"], "template": f["template"]} for f in scene.faces]
    (tmp_path / "faces.json").write_text(json.dumps({"scene.png": faces}))
    outs = {}
    for mode in ("auto", "ellipse"):
        done = _edit(tmp_path, SHIPPED, tmp_path / "scene.png", tmp_path / "faces.json", mode, "--paste-mask", mode)
        assert done.returncode == 0 and "mask)" not in done.stderr, done.stderr
        outs[mode] = (tmp_path / mode / "scene_smile+2.png").read_bytes()
    assert outs["auto"] == outs["ellipse"]
    refused = _edit(tmp_path, SHIPPED, tmp_path / "scene.png", tmp_path / "faces.json", "p", "--paste-mask", "parser")
    assert refused.returncode == 2 and "synthetic domain" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
