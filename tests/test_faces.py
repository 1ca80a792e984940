"""Real photos in, real photos out (stylecli/faces): landmarks, alignment by both recipes, paste-back, the detectors
(the user's landmarks file, a mocked dlib, facexlib's RetinaFace with random weights, the synthetic domain's network
trained a few steps), scenes, EXIF and ICC profiles, and the commands on folders of photos."""

import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylecli.data.render import face_points, render, sample_params
from stylecli.data.scenes import aligned_truth, make_scene
from stylecli.faces.align import (FFHQ_TEMPLATE_512, Alignment, Face, align, crop_face, face_mask, ffhq_alignment,
                                  paste_faces, seam_ratio, similarity)
from stylecli.faces.detect import DlibDetector, LandmarkError, LandmarkFile, open_detector
from stylecli.faces.photos import PhotoAligner, choose_faces, parse_face_choice, recipe_of
from stylecli.imageio import load_image
from stylecli.packs import Pack
from cli_runner import stylecli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "synthface-64"
GRACE_HOPPER = Path(__import__("matplotlib").__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
# Grace Hopper's landmarks in matplotlib's sample photo (512 x 600), placed by hand: eyes, nose tip, mouth corners.
GRACE_POINTS = np.array([[222.5, 189.0], [307.5, 186.0], [267.5, 242.5], [230.0, 277.5], [310.0, 276.0]])


def cli(*args, env=None):
    """`stylecli ARGS` in this process, or in a new one when `env` adds to the environment (a fake module on
    PYTHONPATH must be there at import)."""
    if env is not None:
        return subprocess.run([sys.executable, "-m", "stylecli", *map(str, args)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, **env})
    return stylecli(*args)


def psnr_on(a, b, mask):
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return 10 * np.log10(255 ** 2 / d[mask >= 0.99].mean())


def scene_face(label: dict) -> Face:
    """A scene label's face as a detector would report it (edge coordinates)."""
    return Face(box=np.array(label["box"]) + 0.5, points=np.array(label["points"]) + 0.5,
                template=np.array(label["template"]) + 0.5)


# --- the renderer's landmarks and the scenes ---------------------------------------------------------------------

def test_landmarks_sit_on_the_features_the_renderer_draws():
    for seed in range(6):
        p = sample_params(np.random.default_rng(seed))
        p.glasses, p.beard = 0.0, 0.0
        img = np.asarray(render(p, 256), dtype=float)
        points = face_points(p) * 256
        for x, y in points[:2]:   # eye centres: white, iris or pupil, never skin
            pixel = img[int(y), int(x)]
            assert pixel.max() > 200 or pixel.sum() < 300, (seed, pixel)
        for x, y in points[3:]:   # mouth corners: on the lip line (another colour than the cheek above it)
            patch = img[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3].reshape(-1, 3)
            cheek = img[int(y) - 12, int(x)]
            assert np.abs(patch - cheek).sum(1).max() > 30, (seed, patch, cheek)


def test_scenes_place_zero_to_three_faces_with_labels():
    counts = set()
    for i in range(10):
        scene = make_scene(i)
        W, H = scene.image.size
        counts.add(len(scene.faces))
        for face in scene.faces:
            x0, y0, x1, y1 = face["box"]
            assert -0.5 <= x0 < x1 <= W and -0.5 <= y0 < y1 <= H
            assert 0.2 * min(W, H) * 0.95 <= x1 - x0  # 20-70 % of the short side wide (rotation widens the box)
            assert 0 <= face["visible"] <= 1
            assert abs(face["angle"]) <= 35
    assert counts >= {0, 1, 2}
    assert make_scene(3).image.tobytes() == make_scene(3).image.tobytes()  # a seed names a scene exactly


def test_alignment_recovers_the_renderers_aligned_face_from_a_scene():
    """Given the true landmarks, the synthetic recipe's crop of a scene face is the renderer's own aligned render on
    the head (>= 28 dB); the five points alone (no template) give a rougher crop."""
    exact, rough = [], []
    for i in range(12):
        scene = make_scene(i)
        for label in scene.faces:
            if label["visible"] < 0.99:
                continue
            truth, mask = aligned_truth(label, 64)
            face = scene_face(label)
            exact.append(psnr_on(crop_face(scene.image, align(face, 64, "synthetic")), truth, mask))
            if len(exact) == 1:
                first = (scene.image, align(face, 64, "synthetic"), truth, mask)
            five = Face(box=face.box, points=face.points)
            rough.append(psnr_on(crop_face(scene.image, align(five, 64, "synthetic")), truth, mask))
    assert len(exact) >= 8
    assert np.median(exact) >= 30 and min(exact) >= 28, exact
    assert np.median(rough) < np.median(exact)
    # Without supersampling (what the refiner's crops use) the crop is rougher but close: the same face, aliased.
    image, alignment, truth, mask = first
    assert 26 <= psnr_on(crop_face(image, alignment, max_supersample=1), truth, mask) < exact[0]


def test_data_synth_scenes_writes_photos_and_labels_the_landmarks_option_reads(tmp_path):
    out = cli("data", "synth", "--set", "scenes", "--count", "3", "--out", tmp_path / "sc")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(l) for l in (tmp_path / "sc" / "labels.jsonl").read_text().splitlines()]
    assert [l["file"] for l in lines] == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(tmp_path / "sc" / "000000.png").size == tuple(lines[0]["size"])
    faces = LandmarkFile(tmp_path / "sc" / "labels.jsonl").detect(None, tmp_path / "sc" / "000001.png")
    assert len(faces) == len(lines[1]["faces"]) == 2
    assert np.allclose(faces[0].template, np.array(lines[1]["faces"][0]["template"]) + 0.5)


# --- the FFHQ recipe ---------------------------------------------------------------------------------------------

def test_ffhq_recipe_puts_the_ffhq_template_back_on_itself():
    """Landmarks of FFHQ's own template, moved anywhere in a photo by a similarity, align back onto the template
    within 2 % of the crop (the recipe is not a fit to the template, so not exactly)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.2, 3)
        rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        photo_points = FFHQ_TEMPLATE_512 @ rot.T + rng.uniform(-300, 300, 2)
        alignment = ffhq_alignment(Face(box=[0, 0, 1, 1], points=photo_points), 256)
        back = alignment.to_crop(photo_points)
        assert np.abs(back - FFHQ_TEMPLATE_512 / 2).max() <= 0.02 * 256


def test_ffhq_recipe_prefers_the_68_point_eye_contours():
    points68 = np.zeros((68, 2))
    five = FFHQ_TEMPLATE_512.copy()
    ring = np.array([[-6, 0], [-3, -2], [3, -2], [6, 0], [3, 2], [-3, 2]], dtype=float)
    points68[36:42] = five[0] + ring
    points68[42:48] = five[1] + ring
    points68[30], points68[48], points68[54] = five[2], five[3], five[4]
    a = ffhq_alignment(Face(box=[0, 0, 1, 1], points=five + 40, points68=points68), 64)  # 5 points ignored
    b = ffhq_alignment(Face(box=[0, 0, 1, 1], points=five), 64)
    assert np.allclose(a.matrix, b.matrix)


def test_similarity_fit_is_exact_for_a_similarity():
    src = np.random.default_rng(1).uniform(0, 10, (5, 2))
    matrix = np.array([[1.5, -0.4, 3.0], [0.4, 1.5, -2.0]])
    dst = src @ matrix[:, :2].T + matrix[:, 2]
    assert np.allclose(similarity(src, dst), matrix)


# --- paste-back --------------------------------------------------------------------------------------------------

def test_paste_back_leaves_every_pixel_outside_the_mask_bit_identical():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8))
    crops = []
    for centre, side, angle in (((60, 70), 90, 0.3), ((170, 40), 120, -0.5)):  # the second reaches past the photo
        c, a = np.array(centre, float), angle
        x = side / 2 * np.array([math.cos(a), math.sin(a)])
        alignment = Alignment(np.stack([2 * x / 32, 2 * np.array([-x[1], x[0]]) / 32,
                                        c - x - np.array([-x[1], x[0]])], axis=1), 32)
        crop = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        crops.append((crop, alignment, face_mask(32, "synthetic")))
    out, weights = paste_faces(photo, crops)
    before, after = np.asarray(photo), np.asarray(out)
    assert out.size == photo.size
    assert (weights == 0).mean() > 0.4
    assert np.array_equal(before[weights == 0], after[weights == 0])
    assert (before[weights > 0.5] != after[weights > 0.5]).any(axis=-1).mean() > 0.9


def test_compose_pastes_the_crop_itself_back_without_a_seam():
    """Pasting a face's own aligned crop back changes only what resampling changes, and leaves no seam."""
    from stylecli.faces.photos import AlignedFace, AlignedPhoto
    scene = make_scene(0)
    label = scene.faces[0]
    alignment = align(scene_face(label), 128, "synthetic")
    photo = AlignedPhoto(scene.image, [AlignedFace(0, scene_face(label), alignment, crop_face(scene.image, alignment))],
                         "synthetic")
    out, weights = photo.compose([photo.faces[0].crop])
    assert np.array_equal(np.asarray(out)[weights == 0], np.asarray(scene.image)[weights == 0])
    assert seam_ratio(scene.image, out, weights) <= 1.5


# --- the user's landmarks ----------------------------------------------------------------------------------------

def test_landmarks_file_object_and_json_lines_and_their_errors(tmp_path):
    five = FFHQ_TEMPLATE_512.tolist()
    (tmp_path / "a.json").write_text(json.dumps({"photo.jpg": [{"points": five, "box": [0, 0, 10, 10]}, five],
                                                 "sub/other.png": {"faces": []}}))
    faces = LandmarkFile(tmp_path / "a.json").detect(None, tmp_path / "photo.jpg")
    assert len(faces) == 2 and np.allclose(faces[0].points, FFHQ_TEMPLATE_512 + 0.5)
    assert LandmarkFile(tmp_path / "a.json").detect(None, tmp_path / "unknown.jpg") == []
    points68 = np.tile(FFHQ_TEMPLATE_512.mean(0), (68, 1)).tolist()
    (tmp_path / "b.jsonl").write_text(json.dumps({"file": "x.png", "faces": [{"landmarks": points68}]}) + "\n")
    (face,) = LandmarkFile(tmp_path / "b.jsonl").detect(None, "x.png")
    assert face.points68 is not None and face.points.shape == (5, 2)
    for bad, message in (({"p.jpg": [{"points": [[1, 2]] * 4}]}, "expected 5 or 68"),
                         ({"p.jpg": [{"points": [["a", "b"]] * 5}]}, "list of \\[x, y\\] numbers"),
                         ({"p.jpg": 3}, "expected a list of faces")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(LandmarkError, match=message):
            LandmarkFile(tmp_path / "bad.json")
    (tmp_path / "worse.json").write_text("not json\n")
    with pytest.raises(LandmarkError, match="worse.json:1"):
        LandmarkFile(tmp_path / "worse.json")


def test_face_choice_orders_faces_left_to_right():
    faces = [Face(box=[100, 0, 150, 50], points=np.zeros((5, 2))), Face(box=[0, 0, 30, 30], points=np.zeros((5, 2)))]
    assert [i for i, _ in choose_faces(faces, "all")] == [0, 1]
    assert choose_faces(faces, "all")[0][1] is faces[1]
    assert choose_faces(faces, "largest")[0][1] is faces[0]
    assert choose_faces(faces, 1)[0][1] is faces[0]
    with pytest.raises(ValueError, match="has 2 faces"):
        choose_faces(faces, 2)
    assert parse_face_choice("3") == 3
    with pytest.raises(ValueError):
        parse_face_choice("left")


# --- the commands on folders of photos ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three scene photos (one without a face) and their landmarks, as `data synth --set scenes` writes them."""
    root = tmp_path_factory.mktemp("photos")
    out = cli("data", "synth", "--set", "scenes", "--count", "4", "--out", root)
    assert out.returncode == 0, out.stderr
    labels = [json.loads(l) for l in (root / "labels.jsonl").read_text().splitlines()]
    assert [len(l["faces"]) for l in labels] == [1, 2, 0, 1]
    (root / "000003.png").unlink()
    return root


def test_edit_photos_pastes_edited_faces_back_and_a_photo_without_a_face_fails_alone(tmp_path, photos):
    out = cli("edit", photos, "-d", "smile", "-s", "2", "--landmarks", photos / "labels.jsonl", "-o", tmp_path / "ed",
              "--save-aligned", "--device", "cpu", "--json")
    assert out.returncode == 1, out.stderr
    assert f"failed: {photos}/000002.png: no face found" in out.stderr
    assert "edited: 2 done, 1 failed" in out.stderr
    assert "Traceback" not in out.stderr
    labels = [json.loads(l) for l in (photos / "labels.jsonl").read_text().splitlines()]
    for label in labels[:2]:
        name = label["file"][:-4]
        src = np.asarray(load_image(photos / label["file"]))
        result = np.asarray(Image.open(tmp_path / "ed" / f"{name}_smile+2.png"))
        assert result.shape == src.shape                           # the same photo, same size
        assert (result != src).any()                               # with its faces edited
        for k in range(len(label["faces"])):
            assert Image.open(tmp_path / "ed" / f"{name}_smile+2_face{k}.aligned.png").size == (64, 64)
        # Farther from every face's canvas centre than its mask reaches (0.4 canvas): the input's own pixels.
        yy, xx = np.mgrid[0:src.shape[0], 0:src.shape[1]]
        far = np.ones(src.shape[:2], bool)
        for face in label["faces"]:
            far &= np.hypot(xx - face["centre"][0], yy - face["centre"][1]) > 0.42 * face["side"]
        assert far.sum() > 100 and np.array_equal(result[far], src[far])


def test_invert_photos_writes_the_photo_and_a_latent_per_face_then_skips(tmp_path, photos):
    from stylecli.latents import load_latent
    args = ("invert", photos / "000001.png", "--landmarks", photos / "labels.jsonl", "-o", tmp_path / "inv",
            "--device", "cpu", "--compare")
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert Image.open(tmp_path / "inv" / "000001.png").size == Image.open(photos / "000001.png").size
    for k in (0, 1):
        inversion, meta = load_latent(tmp_path / "inv" / f"000001_face{k}.latent.safetensors")
        assert json.loads(meta["face"])["face"] == k and len(json.loads(meta["face"])["quad"]) == 4
    assert not (tmp_path / "inv" / "000001.latent.safetensors").exists()
    again = cli(*args)
    assert again.returncode == 0 and "1 skipped" in again.stderr
    largest = cli("invert", photos / "000001.png", "--landmarks", photos / "labels.jsonl", "-o", tmp_path / "big",
                  "--face", "largest", "--device", "cpu")
    assert largest.returncode == 0, largest.stderr
    assert len(list((tmp_path / "big").glob("*.latent.safetensors"))) == 1
    beyond = cli("invert", photos / "000001.png", "--landmarks", photos / "labels.jsonl", "-o", tmp_path / "no",
                 "--face", "5", "--device", "cpu")
    assert beyond.returncode == 1 and "--face 5: the photo has 2 faces (0 to 1)" in beyond.stderr


def test_align_off_and_auto_keep_aligned_crops_as_they_were(tmp_path, photos):
    """--align off resizes a photo whole (the old behaviour); auto leaves a crop of the pack's size alone and opens no
    detector for it; auto with no detector for a photo says so once and uses it whole."""
    off = cli("invert", photos / "000000.png", "-o", tmp_path / "off", "--align", "off", "--device", "cpu")
    assert off.returncode == 0, off.stderr
    assert Image.open(tmp_path / "off" / "000000.png").size == (64, 64)
    crop = cli("invert", ROOT / "examples" / "face.png", "-o", tmp_path / "crop", "--device", "cpu")
    assert crop.returncode == 0 and "note:" not in crop.stderr and "aligning" not in crop.stderr
    # A pack without a detector (the shipped one, less its face_detector): auto says so once and uses photos whole;
    # --align on makes that a usage error.
    bare = tmp_path / "bare-pack"
    shutil.copytree(SHIPPED, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    for section in ("networks", "provenance"):
        manifest.get(section, {}).pop("face_detector", None)
    manifest["files"].pop("face_detector.safetensors")
    (bare / "manifest.json").write_text(json.dumps(manifest))
    (bare / "face_detector.safetensors").unlink()
    auto = cli("invert", photos / "000000.png", "-o", tmp_path / "auto", "--device", "cpu", "-m", bare)
    assert auto.returncode == 0 and "note: images that are not 64x64 aligned crops are used whole" in auto.stderr
    on = cli("invert", photos / "000000.png", "-o", tmp_path / "on", "--align", "on", "--device", "cpu", "-m", bare)
    assert on.returncode == 2 and "face_detector" in on.stderr and len(on.stderr.strip().splitlines()) == 1


def test_the_shipped_detector_finds_and_aligns_scene_faces(tmp_path, photos):
    """The shipped synth detector meets the issue's figures on scenes it was not measured on at export (TRAINING.md:
    200 scenes) and is what a plain command opens (no --landmarks, the default --device auto)."""
    from stylecli.faces.detect import SynthDetector
    from stylecli.train.detector import evaluate_detector

    report = evaluate_detector(SynthDetector(Pack.open("synthface-64").load("face_detector")), count=12, start=500)
    assert report["recall_iou50"] >= 0.95 and report["false_per_photo"] <= 0.1
    assert report["landmark_error_iod"] <= 0.04 and report["aligned_psnr_db"] >= 28
    out = cli("invert", photos / "000001.png", "-o", tmp_path / "auto")
    assert out.returncode == 0 and "note:" not in out.stderr, out.stderr
    assert len(list((tmp_path / "auto").glob("000001_face*.latent.safetensors"))) == 2


def test_photos_prepared_together_match_one_by_one_and_a_faceless_photo_fails_in_its_place(photos):
    """The batched path (the refiner over a batch's faces at once, `prepare_many`) finds the same faces as photo by
    photo; the photo without a face is an ImageError in its own place, the others are aligned."""
    from stylecli.faces.detect import SynthDetector
    from stylecli.faces.photos import AlignedPhoto, PhotoAligner

    detector = SynthDetector(Pack.open("synthface-64").load("face_detector"))
    images = [load_image(photos / f"00000{k}.png") for k in range(3)]
    together = detector.detect_many(images)
    for image, faces in zip(images, together):
        alone = detector.detect(image)
        assert len(alone) == len(faces)
        for a, b in zip(alone, faces):
            assert np.allclose(a.points, b.points, atol=1e-3) and np.allclose(a.template, b.template, atol=1e-3)
    results = PhotoAligner(detector, "synthetic", 64, "on").prepare_many(images, ["a.png", "b.png", "c.png"])
    assert [type(r).__name__ for r in results] == ["AlignedPhoto", "AlignedPhoto", "ImageError"]
    assert "c.png: no face found" in str(results[2])
    assert [len(r.faces) for r in results[:2]] == [1, 2] and all(isinstance(r, AlignedPhoto) for r in results[:2])


def test_a_detector_that_breaks_on_one_photo_fails_that_photo_alone(tmp_path, photos):
    """An internal error while finding faces in a batch of photos: the batch is redone photo by photo, so only the
    photo that breaks the detector fails (with its traceback kept for --debug); the others are written."""
    from stylecli.faces.detect import Detector, LandmarkFile
    from stylecli.faces.photos import PhotoAligner
    from stylecli.methods import get_method
    from stylecli.pipeline import invert_files

    given = LandmarkFile(photos / "labels.jsonl")

    class Breaks(Detector):
        name = "breaks"

        def detect(self, photo, source=None):
            if Path(source).name == "000001.png":
                raise RuntimeError("detector bug")
            return given.detect(photo, source)

    pack = Pack.open("synthface-64")
    method = get_method("e4e").load(pack, "cpu")
    files = [photos / "000000.png", photos / "000001.png"]
    results = invert_files(method, pack.name, files, tmp_path / "out", batch=8,
                           aligner=PhotoAligner(Breaks(), "synthetic", 64, "on"))
    status = {Path(r.source).name: r for r in results}
    assert status["000000.png"].status == "done" and (tmp_path / "out" / "000000.png").exists()
    assert status["000001.png"].status == "failed" and "detector bug" in status["000001.png"].error
    assert status["000001.png"].traceback is not None


def test_read_ahead_yields_every_chunk_in_order_and_passes_errors_on():
    from stylecli.pipeline import _read_ahead

    assert list(_read_ahead([[1, 2], [3], [4, 5]], lambda chunk: (chunk[::-1], []))) == \
        [([2, 1], []), ([3], []), ([5, 4], [])]
    assert list(_read_ahead([], lambda chunk: (chunk, []))) == []

    def load(chunk):
        if chunk == [3]:
            raise RuntimeError("bug")
        return chunk, []
    with pytest.raises(RuntimeError, match="bug"):
        list(_read_ahead([[1], [3], [4]], load))


def test_blend_pastes_faces_and_a_photo_sized_mask(tmp_path, photos):
    out = cli("blend", photos / "000001.png", "--landmarks", photos / "labels.jsonl", "-o", tmp_path / "bl",
              "--device", "cpu", "--compare")
    assert out.returncode == 0, out.stderr
    size = Image.open(photos / "000001.png").size
    mask = np.asarray(Image.open(tmp_path / "bl" / "000001.mask.png"))
    assert mask.shape == size[::-1] and (mask == 255).mean() > 0.2 and mask.min() < 128
    assert Image.open(tmp_path / "bl" / "000001_compare.png").size[1] == size[1]


def test_exif_orientation_of_a_photo_is_respected(tmp_path, photos):
    """A photo stored sideways with an EXIF orientation is read upright: landmarks refer to the upright photo and the
    output is upright, pixels away from the face the upright input's."""
    upright = load_image(photos / "000000.png")
    sideways = upright.transpose(Image.ROTATE_90)      # stored rotated; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "in").mkdir()
    sideways.save(tmp_path / "in" / "000000.png", exif=exif)
    assert load_image(tmp_path / "in" / "000000.png").tobytes() == upright.tobytes()
    out = cli("edit", tmp_path / "in" / "000000.png", "-d", "smile", "-s", "2", "--landmarks",
              photos / "labels.jsonl", "-o", tmp_path / "ed", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    result = Image.open(tmp_path / "ed" / "000000_smile+2.png")
    assert result.size == upright.size
    assert np.array_equal(np.asarray(result)[:, :3], np.asarray(upright)[:, :3])


def _rgb_profile(description: str = "stylecli test wide RGB") -> bytes:
    """A minimal ICC v2 display profile (matrix/TRC): Adobe RGB (1998)-like primaries (D50), gamma 2.2."""
    def s15(v):
        return struct.pack(">i", int(round(v * 65536)))

    def xyz(x, y, z):
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    desc = description.encode() + b"\0"
    tags = [(b"desc", b"desc" + b"\0" * 4 + struct.pack(">I", len(desc)) + desc + b"\0" * 8 + b"\0" * 3 + b"\0" * 67),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(0.6097, 0.3111, 0.0195)),
            (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)), (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)),
            (b"cprt", b"text" + b"\0" * 4 + b"none\0")]
    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", int(2.2 * 256)) + b"\0\0"
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" +
              b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def test_icc_profiles_are_converted_to_srgb_on_read_and_kept_on_write(tmp_path):
    from PIL import ImageCms

    from stylecli.imageio import encode_image
    profile = _rgb_profile()
    assert "wide RGB" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    Image.new("RGB", (4, 4), (40, 200, 60)).save(tmp_path / "wide.png", icc_profile=profile)
    Image.new("RGB", (4, 4), (40, 200, 60)).save(tmp_path / "plain.png")
    wide, plain = load_image(tmp_path / "wide.png"), load_image(tmp_path / "plain.png")
    assert plain.getpixel((0, 0)) == (40, 200, 60) and "icc_profile" not in plain.info
    r, g, b = wide.getpixel((0, 0))
    assert g > 200 and r < 40  # a wide-gamut green is more saturated in sRGB
    assert "sRGB" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(wide.info["icc_profile"])))
    for suffix in (".png", ".jpg", ".webp"):
        written = Image.open(io.BytesIO(encode_image(wide, tmp_path / f"out{suffix}")))
        assert written.info.get("icc_profile") == wide.info["icc_profile"], suffix


# --- detectors ---------------------------------------------------------------------------------------------------

def _fake_dlib(points: np.ndarray, box: tuple[int, int, int, int], predictor_file: Path) -> dict:
    """Modules with dlib's and face_recognition_models' interface whose detector finds one face with `points` [5, 2]
    (pixel indices) spread into 68 iBUG points: eye contours around the eyes, the nose tip, the mouth corners."""
    ring = np.array([[-6, 0], [-3, -2], [3, -2], [6, 0], [3, 2], [-3, 2]], dtype=float)
    p68 = np.repeat(points[2:3], 68, axis=0)
    p68[36:42], p68[42:48] = points[0] + ring, points[1] + ring
    p68[30], p68[48], p68[54] = points[2], points[3], points[4]

    class Rect:
        def left(self): return box[0]
        def top(self): return box[1]
        def right(self): return box[2]
        def bottom(self): return box[3]

    class Shape:
        num_parts = 68

        def part(self, i):
            return types.SimpleNamespace(x=int(round(p68[i][0])), y=int(round(p68[i][1])))

    dlib = types.ModuleType("dlib")
    dlib.calls = []
    dlib.get_frontal_face_detector = lambda: (lambda image, upsample: dlib.calls.append(image.shape) or [Rect()])
    dlib.shape_predictor = lambda path: (lambda image, rect: Shape())
    models = types.ModuleType("face_recognition_models")
    models.pose_predictor_model_location = lambda: str(predictor_file)
    return {"dlib": dlib, "face_recognition_models": models}


def test_a_mocked_dlib_aligns_a_real_photo_to_the_ffhq_template(tmp_path, monkeypatch):
    """dlib's path with a stand-in of its interface (dlib itself is an optional extra, not installed here) on a real
    public-domain photo: the FFHQ crop puts the eyes and mouth where FFHQ's template has them (within 2 %)."""
    (tmp_path / "shape_predictor_68_face_landmarks.dat").write_bytes(b"stand-in")
    fakes = _fake_dlib(GRACE_POINTS - 0.5, (170, 120, 370, 330), tmp_path / "shape_predictor_68_face_landmarks.dat")
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    detector = open_detector("auto", None, "ffhq")
    assert isinstance(detector, DlibDetector)
    photo = load_image(GRACE_HOPPER)
    aligned = PhotoAligner(detector, "ffhq", 256, "on").prepare(photo, GRACE_HOPPER)
    assert fakes["dlib"].calls == [(600, 512, 3)]
    (face,) = aligned.faces
    assert face.crop.size == (256, 256)
    in_crop = face.alignment.to_crop(face.face.points)
    template = FFHQ_TEMPLATE_512 / 2
    for k in (0, 1, 3, 4):  # eyes and mouth corners: what the recipe uses
        assert np.linalg.norm(in_crop[k] - template[k]) <= 0.02 * 256 * 2, (k, in_crop[k], template[k])
    out, weights = aligned.compose([face.crop.resize((64, 64))])
    assert out.size == photo.size and np.array_equal(np.asarray(out)[weights == 0], np.asarray(photo)[weights == 0])


def test_missing_dlib_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import fails
    from stylecli.faces.detect import DetectorUnavailable
    with pytest.raises(DetectorUnavailable, match=r"pip install 'stylecli\[faces\]'"):
        open_detector("dlib")


def test_edit_a_real_photo_with_a_mocked_dlib_from_the_command_line(tmp_path):
    """The whole edit pipeline on a real photo through the dlib path (stand-in modules on PYTHONPATH) and the FFHQ
    recipe, on a copy of the shipped pack told to align like FFHQ (a pipeline test, not a quality claim)."""
    fake = tmp_path / "fake"
    fake.mkdir()
    points = (GRACE_POINTS - 0.5).round().astype(int).tolist()
    (fake / "dlib.py").write_text(
        "class _R:\n    left=lambda s: 170\n    top=lambda s: 120\n    right=lambda s: 370\n    bottom=lambda s: 330\n"
        f"_P = {points}\n"
        "_RING = [(-6, 0), (-3, -2), (3, -2), (6, 0), (3, 2), (-3, 2)]\n"
        "def _point(i):\n"
        "    if 36 <= i < 42: e = _P[0]; d = _RING[i - 36]; return (e[0] + d[0], e[1] + d[1])\n"
        "    if 42 <= i < 48: e = _P[1]; d = _RING[i - 42]; return (e[0] + d[0], e[1] + d[1])\n"
        "    return {48: _P[3], 54: _P[4]}.get(i, _P[2])\n"
        "class _Pt:\n    def __init__(s, xy): s.x, s.y = xy\n"
        "class _S:\n    num_parts = 68\n    def part(s, i): return _Pt(_point(i))\n"
        "def get_frontal_face_detector():\n    return lambda image, upsample: [_R()]\n"
        "def shape_predictor(path):\n    return lambda image, rect: _S()\n")
    (fake / "predictor.dat").write_bytes(b"stand-in")
    (fake / "face_recognition_models.py").write_text(
        f"def pose_predictor_model_location():\n    return {str(fake / 'predictor.dat')!r}\n")
    pack = tmp_path / "pack"
    shutil.copytree(SHIPPED, pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["alignment"] = "ffhq"
    (pack / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(GRACE_HOPPER, tmp_path / "grace.jpg")
    out = cli("edit", tmp_path / "grace.jpg", "-d", "smile", "-s", "2", "-m", pack, "-o", tmp_path / "ed",
              "--device", "cpu", env={"PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert out.returncode == 0, out.stderr
    assert "aligning faces (dlib)" in out.stderr
    result = Image.open(tmp_path / "ed" / "grace_smile+2.png")
    assert result.size == (512, 600)


def test_retinaface_loads_offline_from_a_pack_folder(tmp_path):
    """facexlib's RetinaFace is built here and loaded from a weights file found in the pack folder (random weights:
    the wiring, not the detections)."""
    pytest.importorskip("facexlib.detection.retinaface")
    from facexlib.detection.retinaface import RetinaFace

    from stylecli.faces.detect import RetinaFaceDetector, retinaface_weights
    net = RetinaFace(network_name="mobile0.25", device=torch.device("cpu"))
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()},
               tmp_path / "detection_mobilenet0.25_Final.pth")
    pack = types.SimpleNamespace(root=tmp_path)
    found = retinaface_weights(pack)
    assert found == ("retinaface_mobile0.25", tmp_path / "detection_mobilenet0.25_Final.pth")
    detector = RetinaFaceDetector(found, threshold=0.0)
    faces = detector.detect(Image.new("RGB", (96, 64), (128, 100, 90)))
    assert all(f.points.shape == (5, 2) and f.box.shape == (4,) for f in faces)


def test_the_detector_trains_a_few_steps_resumes_exports_and_detects(tmp_path):
    from stylecli.faces.detect import SynthDetector
    from stylecli.faces.net import FaceDetectorNet
    from stylecli.train.configs import DetectorTrainingConfig
    from stylecli.train.detector import DetectorTrainer, detector_from_run, evaluate_detector

    cfg = DetectorTrainingConfig(run_dir=str(tmp_path / "run"), steps=2, batch=2, width=8, input_size=64, crop=16,
                                 workers=0, log_every=1)
    trainer = DetectorTrainer(cfg)
    trainer.run()
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    cfg.steps = 3
    resumed = DetectorTrainer(cfg, resume=True)
    assert resumed.step == 2 and resumed.position == 4
    resumed.run()
    with pytest.raises(ValueError, match="--width"):
        DetectorTrainer(DetectorTrainingConfig(**{**cfg.__dict__, "width": 16}), resume=True)
    networks, record = detector_from_run(tmp_path / "run", eval_count=2)
    assert isinstance(networks["face_detector"], FaceDetectorNet) and "recall_iou50" in record["evaluation"]
    # Through a pack: the synth detector is what --detector auto picks for the synthetic recipe.
    pack = tmp_path / "pack"
    shutil.copytree(SHIPPED, pack)
    out = cli("weights", "from-runs", pack, tmp_path / "run")
    assert out.returncode == 0, out.stderr
    from stylecli.packs import Pack
    opened = Pack.open(pack)
    assert recipe_of(opened) == "synthetic"
    detector = open_detector("auto", opened, "synthetic")
    assert isinstance(detector, SynthDetector)
    detector.threshold = 0.0  # a net trained three steps: every local maximum is a face
    faces = detector.detect(make_scene(0).image)
    assert faces and all(f.template.shape == (2, 2) and np.isfinite(f.points).all() for f in faces)
    report = evaluate_detector(detector, count=1)
    assert set(report) >= {"recall_iou50", "false_per_photo", "landmark_error_iod", "aligned_psnr_db"}
