"""The synthetic face domain: determinism, attributes, evaluation sets and their ground truth."""

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from stylecli.data.render import ATTRIBUTES, render, render_seed, sample_params
from stylecli.data.sets import SET_SEEDS, TRAIN_SEED_LIMIT, make_sample


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
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "stylecli", "data", "synth", "--set", "ood", "--count", "3",
                          "--out", str(tmp_path), "--resolution", "32"], capture_output=True, text=True)
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
