"""The synthetic face domain: determinism, attributes, evaluation sets and their ground truth."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from stylecli.data.render import ATTRIBUTES, render, render_seed, sample_params
from stylecli.data.sets import SET_SEEDS, TRAIN_SEED_LIMIT, make_sample
from cli_runner import stylecli


def pixels(img):
    return np.asarray(img, dtype=np.int16)


def test_a_seed_names_an_image_exactly():
    a, pa = render_seed(7)
    b, pb = render_seed(7)
    c, _ = render_seed(8)
    assert a.tobytes() == b.tobytes() and pa == pb
    assert np.abs(pixels(a) - pixels(c)).mean() > 5


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_any_resolution(resolution):
    img, _ = render_seed(3, resolution)
    assert img.size == (resolution, resolution) and img.mode == "RGB"


def test_labels_hold_every_attribute_in_range():
    for seed in range(50):
        p = sample_params(np.random.default_rng(seed))
        for name, (lo, hi) in ATTRIBUTES.items():
            assert lo <= getattr(p, name) <= hi, name
        assert p.glasses in (0.0, 1.0)


@pytest.mark.parametrize("attribute, a, b, region", [
    ("smile", -1.0, 1.0, (20, 36, 44, 52)),      # mouth
    ("glasses", 0.0, 1.0, (12, 22, 52, 38)),     # eyes
    ("age", 0.0, 1.0, (14, 14, 50, 40)),         # wrinkles, grey hair
    ("beard", 0.0, 1.0, (14, 36, 50, 62)),       # lower face
    ("eyebrows", -1.0, 1.0, (16, 18, 48, 32)),
])
def test_each_editable_attribute_changes_its_region(attribute, a, b, region):
    p = sample_params(np.random.default_rng(11))
    p.yaw = 0.0
    p.hair_style = "short"
    setattr(p, attribute, a)
    img_a = render(p)
    setattr(p, attribute, b)
    img_b = render(p)
    diff = np.abs(pixels(img_a) - pixels(img_b)).sum(-1)
    x0, y0, x1, y1 = region
    inside = diff[y0:y1, x0:x1].mean()
    assert inside > 3, f"{attribute} barely changes its region ({inside:.2f})"
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert inside > 3 * outside.mean()


def test_yaw_moves_the_features():
    p = sample_params(np.random.default_rng(5))
    p.yaw = -0.8
    left = pixels(render(p)).astype(float)
    p.yaw = 0.8
    right = pixels(render(p)).astype(float)
    assert np.abs(left - right).mean() > 5


def test_evaluation_sets_use_disjoint_seeds():
    starts = sorted(SET_SEEDS.values())
    assert starts[0] == 0 and starts[1] >= TRAIN_SEED_LIMIT
    assert all(b - a >= 100_000_000 for a, b in zip(starts, starts[1:]))
    assert make_sample("indomain", 0).label["seed"] == SET_SEEDS["indomain"]
    with pytest.raises(ValueError):
        make_sample("train", TRAIN_SEED_LIMIT)
    with pytest.raises(ValueError, match="unknown set"):
        make_sample("holiday", 0)


def test_detail_set_has_more_fine_detail():
    count = lambda s: np.mean([len(make_sample(s, i).label["freckles"]) + len(make_sample(s, i).label["moles"])
                               for i in range(30)])
    assert count("detail") > 2 * count("indomain")


def test_ood_mask_is_exactly_where_pixels_were_added():
    for i in range(12):
        sample = make_sample("ood", i)
        assert sample.label["ood"]
        mask = np.asarray(sample.mask) > 0
        assert 0 < mask.mean() < 0.9
        # Away from the mask (one pixel of margin for anti-aliasing) the image is the clean face.
        from stylecli.data.render import FaceParams
        params = {k: v for k, v in sample.label.items() if k in FaceParams.__dataclass_fields__}
        clean = render(FaceParams(**params))
        margin = np.asarray(sample.mask.filter(ImageFilter.MaxFilter(5))) > 0  # partly covered edge pixels
        diff = np.abs(pixels(sample.image) - pixels(clean)).max(-1)
        assert diff[~margin].max() <= 2, sample.label["ood"]
        assert diff[mask].mean() > 10


def test_geometric_set_records_its_transform():
    sample = make_sample("geometric", 4)
    t = sample.label["transform"]
    assert set(t) == {"dx", "dy", "angle", "scale"}
    assert -0.12 <= t["dx"] <= 0.12 and 0.8 <= t["scale"] <= 1.2 and -25 <= t["angle"] <= 25
    from stylecli.data.render import FaceParams
    params = {k: v for k, v in sample.label.items() if k in FaceParams.__dataclass_fields__}
    assert np.abs(pixels(sample.image) - pixels(render(FaceParams(**params)))).mean() > 3


def test_data_synth_command_writes_images_labels_and_masks(tmp_path):
    out = stylecli("data", "synth", "--set", "ood", "--count", "3", "--out", tmp_path, "--resolution", "32")
    assert out.returncode == 0, out.stderr
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [l["file"] for l in labels] == ["000000.png", "000001.png", "000002.png"]
    assert all("smile" in l and "ood" in l for l in labels)
    assert Image.open(tmp_path / "000001_mask.png").size == (32, 32)


def test_rerender_reproduces_a_sample_and_applies_the_edit():
    from stylecli.data.sets import make_sample, rerender
    sample = make_sample("indomain", 3, 32)
    assert rerender(sample.label, 32).tobytes() == sample.image.tobytes()
    edited = rerender(sample.label, 32, smile=-sample.label["smile"] if abs(sample.label["smile"]) > 0.3 else 1.0)
    assert edited.tobytes() != sample.image.tobytes()


# --- training source ---------------------------------------------------------------------------------------------

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def face_folder(root):
    """Four flat-coloured 'faces' of assorted sizes and types in nested folders, a corrupt file, a hidden file, a
    mask beside an image, and a text file."""
    (root / "sub" / "deep").mkdir(parents=True)
    Image.new("RGB", (40, 30), COLOURS[0]).save(root / "a.png")
    Image.new("RGB", (20, 20), COLOURS[1]).save(root / "sub" / "b.jpg", quality=100)
    Image.new("RGB", (64, 64), COLOURS[2]).save(root / "sub" / "deep" / "c.png")
    Image.new("L", (64, 64), 255).save(root / "sub" / "deep" / "c_mask.png")
    Image.new("RGB", (16, 16), COLOURS[3]).save(root / "d.bmp")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("RGB", (8, 8)).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def colour_of(image):
    """Index into COLOURS of a flat [3, R, R] image."""
    rgb = ((image.mean(dim=(1, 2)) + 1) * 127.5).tolist()
    return int(np.argmin([sum((a - b) ** 2 for a, b in zip(rgb, c)) for c in COLOURS]))


def test_folder_source_reads_recursively_resizes_and_counts_unreadable_files(tmp_path):
    from stylecli.data.loader import ImageSource
    from stylecli.data.sets import find_images

    root = face_folder(tmp_path)
    assert [p.relative_to(root).as_posix() for p in find_images(root)] == [
        "a.png", "broken.png", "d.bmp", "sub/b.jpg", "sub/deep/c.png"]  # masks, hidden and other files left out
    source = ImageSource(str(root), 16, seed=3)
    batch = source.batch(24)
    assert batch.shape == (24, 3, 16, 16) and source.position == 24
    # Every drawn image is one of the four readable ones; the broken file's draws were replaced and counted.
    drawn = [colour_of(x) for x in batch]
    assert set(drawn) == {0, 1, 2, 3}
    assert source.skipped > 0
    for x in batch:
        assert float((x - x.mean(dim=(1, 2), keepdim=True)).abs().max()) < 0.02  # flat: resized, not cropped
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        ImageSource(str(tmp_path / "empty"), 16)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("data", ["synth", "folder"])
def test_source_resumes_exactly_from_its_position(tmp_path, data, workers):
    """Batches after restoring the checkpointed position equal the uninterrupted stream, also while workers
    prefetch ahead of what was consumed."""
    from stylecli.data.loader import ImageSource

    data = str(face_folder(tmp_path)) if data == "folder" else "synth"
    straight = ImageSource(data, 16, seed=5, workers=workers)
    expected = [straight.batch(3) for _ in range(5)]
    first = ImageSource(data, 16, seed=5, workers=workers)
    for _ in range(2):
        first.batch(3)
    checkpoint = first.position
    first.batch(3)  # drawn after the checkpoint, then lost with the process
    resumed = ImageSource(data, 16, seed=5, workers=workers)
    resumed.position = checkpoint
    for want in expected[2:]:
        torch.testing.assert_close(resumed.batch(3), want, rtol=0, atol=0)
    assert not torch.equal(expected[0], expected[1])


def test_ranks_draw_disjoint_streams(tmp_path):
    from stylecli.data.loader import ImageSource

    renders = [ImageSource("synth", 16, seed=0, rank=r, world_size=2).batch(6) for r in range(2)]
    assert all(not torch.equal(a, b) for a in renders[0] for b in renders[1])
    assert not torch.equal(renders[0], ImageSource("synth", 16, seed=0).batch(6))
    root = face_folder(tmp_path)
    (root / "broken.png").unlink()
    # Sorted files a, d, sub/b, sub/deep/c: rank 0 of 2 reads a and sub/b, rank 1 reads d and sub/deep/c.
    seen = [{colour_of(x) for x in ImageSource(str(root), 8, seed=0, rank=r, world_size=2).batch(12)} for r in range(2)]
    assert seen == [{0, 1}, {2, 3}]


def test_workers_run_single_threaded():
    from stylecli.data.loader import ImageSource

    class Threads:  # stands in for the stream: each sample reports its process's torch thread count
        def __getitem__(self, j):
            return torch.full((3, 1, 1), float(torch.get_num_threads())), 0

    source = ImageSource("synth", 8, workers=2)
    source.stream = Threads()
    assert source.batch(4).unique().tolist() == [1.0]


# --- evaluation folders ------------------------------------------------------------------------------------------

def test_a_data_synth_folder_is_the_same_evaluation_set(tmp_path):
    from stylecli.data.sets import evaluation_set

    out = stylecli("data", "synth", "--set", "ood", "--count", "3", "--out", tmp_path / "ood", "--resolution", "32")
    assert out.returncode == 0, out.stderr
    rendered, read = evaluation_set("ood", 3, 32), evaluation_set(str(tmp_path / "ood"), 3, 32)
    assert read.labelled and read.masked and len(read.samples) == 3
    for a, b in zip(rendered.samples, read.samples):
        assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
        assert json.loads(json.dumps(a.label)) == b.label
    assert evaluation_set(str(tmp_path / "ood"), 2, 32).samples[1].label["seed"] == rendered.samples[1].label["seed"]


def test_evaluation_folder_without_labels_and_its_errors(tmp_path):
    from stylecli.data.sets import evaluation_set

    root = face_folder(tmp_path / "faces")
    found = evaluation_set(str(root), 10)
    assert not found.labelled and found.masked  # c.png has a mask; the others added nothing
    assert [s.image.size for s in found.samples] == [(40, 30), (16, 16), (20, 20), (64, 64)]
    assert [np.asarray(s.mask).max() for s in found.samples] == [0, 0, 0, 255]
    assert len(found.unreadable) == 1 and "broken.png" in found.unreadable[0]
    (root / "labels.jsonl").write_text(json.dumps({"file": "a.png", "smile": 0.5}) + "\n")
    with pytest.raises(ValueError, match="no line for 4 image"):
        evaluation_set(str(root), 10)
    (root / "labels.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"labels.jsonl:1: not a JSON object"):
        evaluation_set(str(root), 10)
    with pytest.raises(ValueError, match="neither a set"):
        evaluation_set(str(tmp_path / "nowhere"), 2)
