"""The inversion and editing bench on any evaluation set and any pack: folders with or without labels and masks,
attribute kinds from the predictor, and packs without an attribute predictor."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stylecli.bench.inversion import (attribute_std, evaluate_editing, evaluate_inversion,
                                      evaluate_reference_editing, load_set, predictions)
from stylecli.bench.masks import mask_agreement, masked_psnr
from stylecli.data.domainnet import DomainNet, id_similarity, perceptual_distance
from stylecli.losses import LossNetworks
from stylecli.methods.base import Inversion
from cli_runner import stylecli

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 32


def cli(*args):
    """The command's result; tables as wide as they need (the test run sets COLUMNS=80, which would wrap headers)."""
    return stylecli(*args, cwd=REPO, env={"COLUMNS": "200"})


class Blur:
    """A stand-in inversion method: the reconstruction is the image blurred; an edit brightens it."""
    resolution, device = RESOLUTION, "cpu"

    def invert(self, x):
        return Inversion(latents={}, image=F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))

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
    return {k: v for k, v in row.items() if k not in ("set", "seconds_per_image", "peak_rss_bytes",
                                                       "edit_seconds_per_image")}


def test_a_data_synth_folder_scores_as_its_rendered_set(ood_folder):
    losses = domain_losses()
    rendered, _ = evaluate_inversion(Blur(), losses, "ood", 4, timing_images=1)
    read, _ = evaluate_inversion(Blur(), losses, str(ood_folder), 4, timing_images=1)
    assert comparable(read) == comparable(rendered)
    assert "psnr_outside" in read and read["psnr_outside"] != read["psnr"]  # masks read and used
    no_masks = "the method makes no masks"
    assert read["skipped"] == {"domain_fid": "fewer than 10 images", "mask_area": no_masks, "mask_iou": no_masks,
                               "mask_iou_per_image": no_masks}
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
    measures = {"domain_fid", "attribute_error_std", "psnr_inside", "psnr_outside", "mask_area", "mask_iou",
                "mask_iou_per_image"}
    assert measures.isdisjoint(row) and set(row["skipped"]) == measures
    assert "no attribute predictor" in row["skipped"]["domain_fid"]
    assert row["skipped"]["psnr_inside"] == "the set has no masks" and "makes no masks" in row["skipped"]["mask_iou"]
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
    out = cli("bench", "inversion", "--timing-calls=2", "--model", "synthface-64", "--set", str(faces), "--count", "3",
              "-o", str(tmp_path / "bench"))
    assert out.returncode == 0, out.stderr
    # No set masks, no method masks: none of their columns, and no notes about them.
    assert "PSNR" in out.stdout and "mask" not in out.stdout and "psnr_inside" not in out.stderr
    assert "domain_fid: '-' where fewer than 10 images" in out.stderr
    row, = json.loads((tmp_path / "bench" / "inversion.json").read_text())
    assert row["set"] == str(faces) and row["count"] == 3 and "attribute_error_std" in row
    assert (tmp_path / "bench" / f"e4e_{str(faces).strip('/').replace('/', '_')}.png").is_file()
    bad = cli("bench", "inversion", "--timing-calls=2", "--model", "synthface-64", "--set", "holiday", "--count", "2",
              "-o", str(tmp_path / "bench"))
    assert bad.returncode == 2 and "holiday: neither a set" in bad.stderr and "Traceback" not in bad.stderr


# --- masks: a stand-in method with a known mask on a folder with known ground truth ---------------------------------

GRAY = 128  # every input pixel; 128 / 127.5 - 1 is about 0, so offsets below never clip


class Masked:
    """A stand-in method that makes masks. The reconstruction is the input plus 0.2 on the left half (columns < 16)
    and 0.1 on the right, in [-1, 1]; the mask is 0.5 (exactly the threshold: counts as marked) on columns < 12 and
    0.3 (below it) elsewhere; an edit adds 0.1 * strength everywhere."""
    resolution, device = RESOLUTION, "cpu"

    def invert(self, x):
        offset = torch.full_like(x, 0.1)
        offset[..., :16] = 0.2
        mask = torch.full((len(x), 1, RESOLUTION, RESOLUTION), 0.3)
        mask[..., :12] = 0.5
        return Inversion(latents={"w_plus": torch.zeros(len(x), 1, 1)}, image=x + offset, extras={"mask": mask})

    def edit(self, inversion, vector, strength):
        return inversion.image + 0.1 * strength


def psnr_of(*errors):
    """PSNR in dB of pixels (given as (count, error in [-1, 1])) pooled into one MSE, scored in [0, 1]."""
    mse01 = sum(n * (e / 2) ** 2 for n, e in errors) / sum(n for n, _ in errors)
    return 10 * math.log10(1 / mse01)


@pytest.fixture
def masked_folder(tmp_path):
    """Four gray 32x32 faces with ground truths: the left half; the top-left 8x8; none (no mask file); all."""
    truths = {"0": (0, 0, 16, 32), "1": (0, 0, 8, 8), "2": None, "3": (0, 0, 32, 32)}  # PIL boxes (x0, y0, x1, y1)
    for name, box in truths.items():
        Image.new("RGB", (RESOLUTION, RESOLUTION), (GRAY,) * 3).save(tmp_path / f"{name}.png")
        if box is not None:
            mask = Image.new("L", (RESOLUTION, RESOLUTION), 0)
            mask.paste(255, box)
            mask.save(tmp_path / f"{name}_mask.png")
    return tmp_path


def test_mask_measures_on_known_masks(masked_folder):
    row, _ = evaluate_inversion(Masked(), domain_losses(), str(masked_folder), 4, timing_images=1)
    # Predicted (mask >= 0.5): columns < 12, 384 pixels. Per image: intersection / union with the ground truth.
    # 0: 384 / 512; 1: 64 / 384; 2 (empty truth): 0 / 384; 3 (whole image): 384 / 1024.
    assert row["mask_iou"] == pytest.approx((384 + 64 + 0 + 384) / (512 + 384 + 384 + 1024))
    assert row["mask_iou_per_image"] == pytest.approx((384 / 512 + 64 / 384 + 384 / 1024) / 3)  # empty truth out
    assert row["truth_empty"] == 1 and row["truth_area"] == pytest.approx((512 + 64 + 0 + 1024) / 4096)
    assert row["mask_area"] == pytest.approx((384 * 0.5 + 640 * 0.3) / 1024)
    # Inside: 0 and 1 lie in the left half (error 0.2), 3 is the whole image; 2 has no pixel inside and is left out.
    whole = psnr_of((512, 0.2), (512, 0.1))
    assert row["psnr_inside"] == pytest.approx((psnr_of((1, 0.2)) * 2 + whole) / 3, abs=1e-4)
    # Outside: 0 is the right half, 1 everything but its corner, 2 the whole image; 3 has no pixel outside.
    assert row["psnr_outside"] == pytest.approx(
        (psnr_of((1, 0.1)) + psnr_of((448, 0.2), (512, 0.1)) + whole) / 3, abs=1e-4)
    assert {"mask_iou", "mask_area", "psnr_inside", "psnr_outside"}.isdisjoint(row["skipped"])

    # Editing adds 0.2 at strength 2: inside the ground truth, the edit differs from the input by 0.4 on the left half
    # and 0.3 on the right.
    directions = {"smile": SimpleNamespace(vector=None, info={"attribute": "smile"})}
    edit, = evaluate_editing(Masked(), domain_losses(), directions, 4, strength=2.0, set_name=str(masked_folder))
    assert edit["psnr_kept"] == pytest.approx(
        (psnr_of((1, 0.4)) * 2 + psnr_of((512, 0.4), (512, 0.3))) / 3, abs=1e-4)
    # A method without masks gets the same ground-truth PSNRs (it is the baseline), none of the mask's own measures.
    blur, _ = evaluate_inversion(Blur(), domain_losses(), str(masked_folder), 4, timing_images=1)
    assert "psnr_inside" in blur and "psnr_outside" in blur and "mask_iou" not in blur and "mask_area" not in blur
    blur_edit, = evaluate_editing(Blur(), domain_losses(), directions, 4, set_name=str(masked_folder))
    assert "psnr_kept" in blur_edit


def test_mask_area_on_a_set_without_masks_and_empty_ground_truths():
    row, _ = evaluate_inversion(Masked(), domain_losses(), "indomain", 2, timing_images=1)
    assert row["mask_area"] == pytest.approx((384 * 0.5 + 640 * 0.3) / 1024)
    assert row["skipped"]["mask_iou"] == "the set has no masks" and "psnr_inside" not in row
    directions = {"smile": SimpleNamespace(vector=None, info={"attribute": "smile"})}
    assert "psnr_kept" not in evaluate_editing(Masked(), domain_losses(), directions, 2)[0]
    # Every ground truth empty: nothing inside to score, the per-image IoU undefined; the pooled IoU is 0 (the
    # prediction marks pixels, all of them false positives) and the empty truths are counted.
    truth = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    scores, skipped = mask_agreement(torch.full((2, 1, 4, 4), 0.7), truth)
    assert scores == {"mask_iou": 0.0, "truth_empty": 2, "truth_area": 0.0}
    assert skipped == {"mask_iou_per_image": "every ground-truth mask is empty"}
    assert masked_psnr(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), truth) is None


def test_bench_inversion_command_without_masks_on_ood_shows_only_the_set_mask_columns(tmp_path):
    done = cli("bench", "inversion", "--timing-calls=2", "--model", "synthface-64", "--method", "e4e", "--set", "ood",
               "--count", "4", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    header = done.stdout
    assert "PSNR inside" in header and "PSNR outside" in header  # the set has masks
    assert "mask IoU" not in header and "mask area" not in header  # no method makes them: no columns, no notes
    assert "mask_iou" not in done.stderr and "mask_area" not in done.stderr
    row, = json.loads((tmp_path / "inversion.json").read_text())
    assert row["psnr_inside"] < row["psnr_outside"]  # e4e cannot reconstruct what was added to the face
    assert {"mask_iou", "mask_iou_per_image", "mask_area"}.isdisjoint(row)
    assert row["skipped"]["mask_iou"] == row["skipped"]["mask_area"] == "the method makes no masks"


def test_bench_inversion_table_shows_dashes_for_a_method_without_masks(masked_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stylecli.cli import app
    from stylecli.cli import bench as bench_cli

    stand_ins = {"masked": Masked(), "blur": Blur()}
    monkeypatch.setattr(bench_cli, "_method_and_losses", lambda name, model, device: (stand_ins[name], None,
                                                                                       domain_losses()))
    monkeypatch.setattr(bench_cli, "parse_method", lambda name: (name, {}))  # stand-ins, not registered methods
    done = CliRunner().invoke(app, ["bench", "inversion", "--method", "masked", "--method", "blur", "--set",
                                    str(masked_folder), "--count", "4", "-o", str(tmp_path / "out")],
                              env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "mask IoU" in done.output and "PSNR inside" in done.output
    cells = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
             for line in done.output.splitlines() if line.startswith("│")}
    iou = f"{(384 + 64 + 384) / (512 + 384 + 384 + 1024):.3f}"
    assert cells["masked"].count("-") == 1 and iou in cells["masked"] and "0.375" in cells["masked"]  # FID: 4 images
    assert cells["blur"].count("-") == 3  # FID, mask IoU, mask area
    assert f"mask_iou: '-' where the method makes no masks ({masked_folder})" in done.output
    rows = json.loads((tmp_path / "out" / "inversion.json").read_text())
    assert "mask_iou" in rows[0] and "mask_iou" not in rows[1]


class RendererEdit:
    """A stand-in method whose edit is the renderer's own (each face rendered again with smile at its maximum): it
    changes nothing outside the attribute's region. `spill` adds an offset everywhere on top."""
    resolution, device = RESOLUTION, "cpu"

    def __init__(self, labels, spill=0.0):
        self.labels, self.spill = labels, spill

    def invert(self, x):
        return Inversion(latents={}, image=x.clone())

    def edit(self, inversion, vector, strength):
        from stylecli.data.render import ATTRIBUTES
        from stylecli.data.sets import rerender
        from stylecli.imageio import image_to_tensor

        n = len(inversion.image)
        labels, self.labels = self.labels[:n], self.labels[n:]
        moved = torch.cat([image_to_tensor(rerender(label, RESOLUTION, smile=ATTRIBUTES["smile"][1]))
                           for label in labels])
        return (moved + self.spill).clamp(-1, 1)


def test_edit_locality_is_measured_outside_the_renderers_own_edit_region():
    from stylecli.bench.inversion import attribute_regions
    from stylecli.data.render import ATTRIBUTES
    from stylecli.data.sets import rerender
    from stylecli.imageio import image_to_tensor

    data = load_set("indomain", 3, RESOLUTION)
    regions = attribute_regions(data.labels, "smile", RESOLUTION)
    assert regions.shape == (3, 1, RESOLUTION, RESOLUTION)
    area = regions.float().mean()
    assert 0.005 < area < 0.5  # the mouth and its margin, not the whole face
    assert attribute_regions(data.labels, "no_such_attribute", RESOLUTION) is None
    assert attribute_regions(None, "smile", RESOLUTION) is None
    # A moved head's region moves with it: the renderer's edit of that very image stays inside it.
    moved = load_set("geometric", 3, RESOLUTION)
    moved_regions = attribute_regions(moved.labels, "smile", RESOLUTION)
    assert 0.005 < moved_regions.float().mean() < 0.5
    assert not torch.equal(moved_regions, regions)
    smiling = torch.cat([image_to_tensor(rerender(label, RESOLUTION, smile=ATTRIBUTES["smile"][1]))
                         for label in moved.labels])
    changed = (smiling - moved.images).abs().amax(dim=1, keepdim=True) > 2 / 255
    assert changed.any() and not (changed & ~moved_regions).any()

    directions = {"smile": SimpleNamespace(vector=None, info={"attribute": "smile"})}
    # (not timed: the stand-in's edits consume its labels)
    local, = evaluate_editing(RendererEdit(list(data.labels)), domain_losses(), directions, 3, strength=2.0,
                              timing_calls=0)
    spilled, = evaluate_editing(RendererEdit(list(data.labels), spill=0.1), domain_losses(), directions, 3,
                                strength=2.0, timing_calls=0)
    assert "edit_seconds_per_image" not in local
    assert local["psnr_outside_edit"] > 60  # nothing changed outside: at the PSNR floor of 1e-10
    assert spilled["psnr_outside_edit"] == pytest.approx(psnr_of((1, 0.1)), abs=0.5)  # clipping aside
    blur_edit, = evaluate_editing(Blur(), domain_losses(), directions, 3, strength=2.0, timing_calls=5)
    assert blur_edit["psnr_outside_edit"] < local["psnr_outside_edit"]
    assert 0 < blur_edit["edit_seconds_per_image"] < 1  # a batch-1 edit timed


def test_moved_heads_are_brought_back_to_the_aligned_frame_for_the_predictor():
    """`unmoved` undoes each geometric face's recorded transform: the head comes back where the aligned render of the
    same face has it; images without a transform pass unchanged."""
    from stylecli.bench.inversion import load_set, unmoved
    from stylecli.data.sets import rerender
    from stylecli.imageio import image_to_tensor

    data = load_set("geometric", 4, 64)
    back = unmoved(data.images, data.labels)
    aligned = torch.cat([image_to_tensor(rerender({k: v for k, v in label.items() if k != "transform"}, 64))
                         for label in data.labels])
    centre = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    mse_back = (back[centre] - aligned[centre]).square().mean(dim=[1, 2, 3])
    mse_moved = (data.images[centre] - aligned[centre]).square().mean(dim=[1, 2, 3])
    assert (10 * torch.log10(4 / mse_back)).min() > 27 and (mse_back < mse_moved / 4).all()
    plain = load_set("indomain", 2, 64)
    assert torch.equal(unmoved(plain.images, plain.labels), plain.images)
    mixed = [data.labels[0], {k: v for k, v in data.labels[1].items() if k != "transform"}]
    assert torch.equal(unmoved(data.images[:2], mixed)[1], data.images[1])


def test_bench_methods_take_their_options_and_a_batch_is_timed_on_request(tmp_path):
    """--method NAME:OPTION=VALUE,... loads the method with those options (checked as `invert`'s flags are);
    --batch-timing N adds the per-image time of calls on N images at once."""
    from stylecli.cli.bench import parse_method
    from stylecli.cli.common import UsageError

    assert parse_method("e4e") == ("e4e", {})
    assert parse_method("idinvert:steps=3,precision=bf16,no-domain-reg=true") == (
        "idinvert", {"steps": "3", "precision": "bf16", "no_domain_reg": True})
    for bad, message in (("idinvert:stepz=3", "'stepz=3' is not OPTION=VALUE with an option of idinvert"),
                         ("idinvert:steps", "'steps' is not OPTION=VALUE"),
                         ("idinvert:precision=fp16", "'fp16' is not one of fp32, bf16"),
                         ("idinvert:no_domain_reg=maybe", "no_domain_reg takes true or false"),
                         ("e4e:steps=3", "it takes none")):
        with pytest.raises(UsageError, match=message):
            parse_method(bad)
    from stylecli.cli.bench import _method_and_losses
    runner = _method_and_losses("idinvert:steps=2,chunk=4,precision=bf16", "synthface-64", "cpu")[0]
    assert (runner.steps, runner.chunk, runner.precision) == (2, 4, "bf16")
    first_bad = cli("bench", "inversion", "--model", "synthface-64", "--method", "e4e", "--method",
                    "idinvert:stepz=3", "--set", "indomain", "--count", "2", "-o", str(tmp_path / "bad"))
    assert first_bad.returncode == 2 and "stepz=3" in first_bad.stderr
    assert not (tmp_path / "bad").exists()  # refused before e4e was benched
    done = cli("bench", "inversion", "--timing-calls=2", "--model", "synthface-64", "--method",
               "idinvert:steps=2,chunk=4", "--set", "indomain", "--count", "4", "--batch-timing", "4",
               "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "batch s/img" in done.stdout
    row, = json.loads((tmp_path / "inversion.json").read_text())
    assert row["method"] == "idinvert:steps=2,chunk=4" and row["batch_seconds_per_image"] > 0
    assert (tmp_path / "idinvert_steps_2_chunk_4_indomain.png").is_file()
