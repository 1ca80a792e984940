"""The inversion and editing bench on any evaluation set and any pack: folders with or without labels and masks,
attribute kinds from the predictor, and packs without an attribute predictor."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stylecli.bench.inversion import (attribute_std, evaluate_editing, evaluate_inversion,
                                      evaluate_reference_editing, load_set, predictions)
from stylecli.data.domainnet import DomainNet, id_similarity, perceptual_distance
from stylecli.losses import LossNetworks

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 32


def cli(*args):
    return subprocess.run([sys.executable, "-m", "stylecli", *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO)


class Blur:
    """A stand-in inversion method: the reconstruction is the image blurred; an edit brightens it."""
    resolution, device = RESOLUTION, "cpu"

    def invert(self, x):
        return SimpleNamespace(image=F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))

    def edit(self, inversion, vector, strength):
        return (inversion.image + 0.05 * strength).clamp(-1, 1)


def domain_losses(seed=0):
    torch.manual_seed(seed)
    net = DomainNet().eval()
    return LossNetworks(lambda a, b: perceptual_distance(net, a, b), lambda a, b: id_similarity(net, a, b), net,
                        RESOLUTION)


def predictor_free_losses():
    """The loss slots of a pack without an attribute predictor (stand-ins for LPIPS and ArcFace)."""
    return LossNetworks(lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)),
                        lambda a, b: F.cosine_similarity(a.flatten(1), b.flatten(1)), None, RESOLUTION)


@pytest.fixture(scope="module")
def ood_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sets") / "ood"
    done = cli("data", "synth", "--set", "ood", "--count", "4", "--out", str(out), "--resolution", str(RESOLUTION))
    assert done.returncode == 0, done.stderr
    return out


def comparable(row):
    return {k: v for k, v in row.items() if k not in ("set", "seconds_per_image", "peak_rss_bytes")}


def test_a_data_synth_folder_scores_as_its_rendered_set(ood_folder):
    losses = domain_losses()
    rendered, _ = evaluate_inversion(Blur(), losses, "ood", 4, timing_images=1)
    read, _ = evaluate_inversion(Blur(), losses, str(ood_folder), 4, timing_images=1)
    assert comparable(read) == comparable(rendered)
    assert "psnr_unmasked" in read and read["psnr_unmasked"] != read["psnr"]  # masks read and used
    assert read["skipped"] == {"domain_fid": "fewer than 10 images"}
    directions = {"smile": SimpleNamespace(vector=None, info={"attribute": "smile"})}
    assert ([comparable(r) for r in evaluate_editing(Blur(), losses, directions, 4, set_name=str(ood_folder))] ==
            [comparable(r) for r in evaluate_editing(Blur(), losses, directions, 4, set_name="ood")])
    # The renderer's exact edit re-renders each face from the folder's labels as from the rendered ones.
    assert ([comparable(r) for r in evaluate_reference_editing(losses, {"smile": "smile"}, 4, RESOLUTION,
                                                               set_name=str(ood_folder))] ==
            [comparable(r) for r in evaluate_reference_editing(losses, {"smile": "smile"}, 4, RESOLUTION,
                                                               set_name="ood")])


def test_inversion_on_an_unlabelled_folder_with_a_pack_without_attribute_predictor(tmp_path):
    (tmp_path / "nested").mkdir()
    for i, size in enumerate((48, 32, 20)):
        Image.new("RGB", (size, size), (60 * i, 100, 200 - 50 * i)).save(tmp_path / "nested" / f"{i}.png")
    row, grid = evaluate_inversion(Blur(), predictor_free_losses(), str(tmp_path), 10, timing_images=1)
    assert row["count"] == 3 and row["psnr"] > 20 and 0 < row["ssim"] <= 1 and row["id_similarity"] > 0.9
    assert {"domain_fid", "attribute_error_std", "psnr_unmasked"}.isdisjoint(row)
    assert set(row["skipped"]) == {"domain_fid", "attribute_error_std", "psnr_unmasked"}
    assert "no attribute predictor" in row["skipped"]["domain_fid"] and "no masks" in row["skipped"]["psnr_unmasked"]
    with pytest.raises(ValueError, match="need an attribute predictor"):
        evaluate_editing(Blur(), predictor_free_losses(), {}, 3, set_name=str(tmp_path))


def test_edit_scale_comes_from_labels_else_from_predictions(ood_folder, tmp_path):
    losses = domain_losses()
    labelled = load_set(str(ood_folder), 4, RESOLUTION)
    std = attribute_std(losses.attributes, labelled, ["smile", "glasses"])
    assert std["smile"] == pytest.approx(float(torch.tensor([l["smile"] for l in labelled.labels]).std(unbiased=False)))
    for path in ood_folder.glob("0*.png"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    unlabelled = load_set(str(tmp_path), 4, RESOLUTION)
    assert unlabelled.labels is None and unlabelled.masks is not None
    predicted = predictions(losses.attributes, unlabelled.images, ["smile"])["smile"]
    assert attribute_std(losses.attributes, unlabelled, ["smile"]) == {
        "smile": pytest.approx(float(predicted.std(unbiased=False)))}
    with pytest.raises(ValueError, match="no renderer labels"):
        evaluate_reference_editing(losses, {"smile": "smile"}, 4, RESOLUTION, set_name=str(tmp_path))


def test_editing_measures_what_the_predictor_declares_editable():
    losses = domain_losses()
    losses.attributes.editable_attributes = ("smile", "glasses", "hair_style")  # a categorical is never a scalar
    directions = {"wide": SimpleNamespace(vector=None, info={"attribute": "face_width"}),
                  "pca0": SimpleNamespace(vector=None, info={})}
    rows = {r["direction"]: r for r in evaluate_editing(Blur(), losses, directions, 3)}
    assert set(rows["wide"]["drift_std"]) == {"smile", "glasses"}  # the target is measured, not counted as drift
    assert rows["wide"]["target_change_std"] == rows["wide"]["target_change_std"]  # a number, not NaN
    assert set(rows["pca0"]["drift_std"]) == {"smile", "glasses"} and rows["pca0"]["target_change_std"] != \
        rows["pca0"]["target_change_std"]  # no attribute: NaN


def test_bench_inversion_command_on_a_folder_notes_what_it_skipped(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 120, 90)).save(faces / f"{i}.jpg")
    out = cli("bench", "inversion", "--model", "synthface-64", "--set", str(faces), "--count", "3",
              "-o", str(tmp_path / "bench"))
    assert out.returncode == 0, out.stderr
    assert "psnr_unmasked: '-' where the set has no masks" in out.stderr
    assert "domain_fid: '-' where fewer than 10 images" in out.stderr
    row, = json.loads((tmp_path / "bench" / "inversion.json").read_text())
    assert row["set"] == str(faces) and row["count"] == 3 and "attribute_error_std" in row
    assert (tmp_path / "bench" / f"e4e_{str(faces).strip('/').replace('/', '_')}.png").is_file()
    bad = cli("bench", "inversion", "--model", "synthface-64", "--set", "holiday", "--count", "2",
              "-o", str(tmp_path / "bench"))
    assert bad.returncode == 2 and "holiday: neither a set" in bad.stderr and "Traceback" not in bad.stderr
