"""The face region (stylecli/faces/region.py): the renderer's truth, the synthetic domain's network and its training
(`stylecli train faceregion`), the real-face route through facexlib's parser, and SFE's `--edit-mask face`."""

import dataclasses
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from stylecli.data.render import face_box, face_points, render_face_region, sample_params
from stylecli.faces.region import FaceRegionNet, FaceRegions, FaceRegionUnavailable
from stylecli.packs import Pack
from stylecli.train.configs import FaceRegionTrainingConfig
from stylecli.train.faceregion import FaceRegionTrainer, faceregion_from_run
from cli_runner import stylecli

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"
R = 64


def test_the_renderers_face_region_holds_the_features_and_leaves_out_hair_ears_and_background():
    rng = np.random.default_rng(5)
    for _ in range(12):
        p = sample_params(rng)
        region = render_face_region(p, R)
        assert region.shape == (R, R) and region.min() >= 0 and region.max() <= 1
        for x, y in face_points(p):  # eyes, nose tip, mouth corners
            assert region[int(y * R), int(x * R)] > 0.5
        box = face_box(p)  # the face's width, from the top of the hair to the chin
        x0, y0 = np.floor(box.min(0) * R).astype(int)
        x1, y1 = np.ceil(box.max(0) * R).astype(int)
        outside = np.ones((R, R), bool)
        outside[max(y0, 0):y1 + 1, max(x0 - 1, 0):x1 + 2] = False
        assert region[outside].max() == 0  # background, ears, neck and shoulders
        if p.hair_style != "bald":  # the hair on top of the head is not face
            assert region[max(y0, 0) + 1, (x0 + x1) // 2] < 0.5


def test_the_network_reads_any_size_and_answers_in_it():
    net = FaceRegionNet(input_size=32, width=4).eval()
    for side in (32, 64, 20):
        assert net(torch.zeros(2, 3, side, side)).shape == (2, 1, side, side)


def tiny(tmp_path, **changes):
    return FaceRegionTrainingConfig(**{**dict(run_dir=str(tmp_path / "run"), steps=3, batch=2, width=4,
                                              input_size=32, workers=0, checkpoint_every=1), **changes})


def test_training_learns_resumes_exactly_and_exports_with_its_figures(tmp_path):
    cfg = tiny(tmp_path)
    first = FaceRegionTrainer(cfg)
    before = {k: v.clone() for k, v in first.net.state_dict().items()}
    for _ in range(2):  # stopped after two steps, as by the end of a session (the checkpoint of step 2 written)
        first.train_step()
    first.save()
    assert any(not torch.equal(before[k], v) for k, v in first.net.state_dict().items())
    resumed = FaceRegionTrainer(cfg, resume=True)
    assert resumed.step == 2
    resumed.run()
    straight = FaceRegionTrainer(tiny(tmp_path / "b"))
    straight.run()
    for k, v in straight.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[k], v, msg=k)
    networks, record = faceregion_from_run(tmp_path / "run", eval_count=3)
    assert set(networks) == {"face_region"} and record["steps"] == 3
    assert record["evaluation"]["faces"] == 3 and 0 <= record["evaluation"]["iou"] <= 1
    with pytest.raises(ValueError, match="--resume continues a run with its own settings"):
        FaceRegionTrainer(dataclasses.replace(cfg, width=8), resume=True)
    with pytest.raises(ValueError, match="--input-size 36: a multiple of 8"):
        FaceRegionTrainer(tiny(tmp_path / "c", input_size=36))


def _pack_without_region(tmp_path) -> Pack:
    shutil.copytree(SHIPPED, tmp_path / "pack", ignore=shutil.ignore_patterns("face_region.safetensors"))
    manifest = (tmp_path / "pack" / "manifest.json")
    import json
    data = json.loads(manifest.read_text())
    for section in ("networks", "provenance"):
        data.get(section, {}).pop("face_region", None)
    data["files"].pop("face_region.safetensors", None)
    manifest.write_text(json.dumps(data))
    return Pack.open(tmp_path / "pack")


def test_a_synthetic_pack_needs_its_network_and_the_shipped_one_finds_the_face(tmp_path):
    from stylecli.methods import METHODS, MethodUnavailable

    bare = _pack_without_region(tmp_path)
    with pytest.raises(FaceRegionUnavailable, match="no face_region network; train it with `stylecli train faceregion"):
        FaceRegions.open(bare)
    with pytest.raises(MethodUnavailable) as refused:
        METHODS["sfe"].load(bare, edit_mask="face")
    assert str(refused.value).startswith("--edit-mask face: pack") and str(refused.value).count("--edit-mask") == 1
    from stylecli.bench.inversion import load_set
    from stylecli.data.render import FaceParams

    data = load_set("indomain", 8, R)
    masks = FaceRegions.open(Pack.open(SHIPPED)).masks(data.images)
    assert masks.shape == (8, 1, R, R) and masks.min() >= 0 and masks.max() <= 1
    fields = FaceParams.__dataclass_fields__
    truth = torch.stack([torch.from_numpy(render_face_region(FaceParams(**{
        k: v for k, v in label.items() if k in fields}), R)) for label in data.labels])[:, None] >= 0.5
    predicted = masks >= 0.5
    assert float((predicted & truth).sum() / (predicted | truth).sum()) > 0.9


def test_a_real_face_pack_takes_the_face_parsers_face_classes(tmp_path, monkeypatch):
    pytest.importorskip("facexlib.parsing.bisenet")
    from test_parser_mask import _rigged_bisenet  # parses every pixel as skin
    from stylecli.faces.parse import PARSER_FILES

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import facexlib
    if any((Path(facexlib.__file__).parent / "weights" / f).is_file() for f in PARSER_FILES.values()):
        pytest.skip("facexlib's own weights folder holds a face parser")
    pack = types.SimpleNamespace(root=tmp_path / "pack", name="real", manifest={"alignment": "ffhq"},
                                 has=lambda name: False)
    pack.root.mkdir()
    with pytest.raises(FaceRegionUnavailable, match=r"^no face parser weights found offline: put "
                                                    r"facexlib's parsing_bisenet.pth") as missing:
        FaceRegions.open(pack)
    assert "--paste-mask" not in str(missing.value)
    torch.save(_rigged_bisenet().state_dict(), pack.root / PARSER_FILES["bisenet"])
    masks = FaceRegions.open(pack).masks(torch.zeros(2, 3, 48, 48))
    assert masks.shape == (2, 1, 48, 48) and float(masks.min()) == 1.0  # all skin: all face


@pytest.fixture(scope="module")
def sfe():
    from stylecli.methods import METHODS
    return METHODS["sfe"].load(Pack.open(SHIPPED))


def test_sfe_edit_mask_zeroes_delta_outside_the_face(sfe):
    from stylecli.directions import get_direction
    from stylecli.methods.sfe.method import skip_name, synthesize_from_feature

    x = torch.stack([torch.rand(3, R, R) * 2 - 1 for _ in range(2)])
    inv = sfe.invert(x)
    d = get_direction(Pack.open(SHIPPED), "smile-linear").vector
    plain = sfe.edit(inv, d, 2.0)
    saved = sfe.regions
    try:
        sfe.regions = FaceRegions(lambda images: torch.ones(len(images), 1, *images.shape[-2:]))
        torch.testing.assert_close(sfe.edit(inv, d, 2.0), plain, atol=1e-6, rtol=0)  # a mask of ones: no change
        sfe.regions = FaceRegions(lambda images: torch.zeros(len(images), 1, *images.shape[-2:]))
        edited = sfe.edit_inversion(inv, d, 2.0)
        # A mask of zeros: Delta = 0, F_k' = H(F_k, 0); only the W+ rows after F_k move.
        w, f_k = edited.latents["w_plus"], inv.latents["f_k"]
        skip = sfe.G.synthesis.synthesize(w, capture=(skip_name(sfe.layer),), stop_after=sfe.layer).features[
            skip_name(sfe.layer)]
        expected = synthesize_from_feature(sfe.G, w, sfe.editor(f_k, torch.zeros_like(f_k)), sfe.layer, skip)
        torch.testing.assert_close(edited.image, expected, atol=1e-5, rtol=0)
        assert (edited.image - plain).abs().mean() > 1e-3
        # A mask of the inverted face (here: its left half), the same for every edit of a chain: +1 then +1 is +2.
        sfe.regions = FaceRegions(lambda images: (torch.arange(images.shape[-1]) < images.shape[-1] // 2).float()
                                  .expand(len(images), 1, *images.shape[-2:]))
        torch.testing.assert_close(sfe.edit(sfe.edit_inversion(inv, d, 1.0), d, 1.0), sfe.edit(inv, d, 2.0),
                                   atol=1e-5, rtol=0)
    finally:
        sfe.regions = saved


def test_sfe_edit_mask_face_keeps_the_background_of_an_edit(sfe):
    from stylecli.bench.inversion import load_set
    from stylecli.directions import get_direction
    from stylecli.methods import METHODS

    pack = Pack.open(SHIPPED)
    masked = METHODS["sfe"].load(pack, edit_mask="face")
    x = load_set("indomain", 6, R).images
    inv = sfe.invert(x)
    d = get_direction(pack, "smile-linear").vector  # a linear edit moves every row: it spills onto the background
    face = FaceRegions.open(pack).masks(inv.image) >= 0.5
    far = torch.nn.functional.max_pool2d(face.float(), 9, 1, 4) == 0  # 4 px away from the face
    change = lambda edited: (edited - inv.image).abs().mean(dim=1, keepdim=True)[far].mean()
    assert change(masked.edit(inv, d, 2.0)) < 0.9 * change(sfe.edit(inv, d, 2.0))


def test_edit_mask_on_the_command_line(tmp_path):
    face = Path(__file__).resolve().parents[1] / "examples" / "face.png"
    ok = stylecli("edit", str(face), "-d", "smile", "-s", "2", "--method", "sfe", "--edit-mask", "face",
                  "-o", str(tmp_path / "a"))
    assert ok.returncode == 0 and len(list((tmp_path / "a").glob("*.png"))) == 1
    for args, message in ((("--method", "sfe", "--edit-mask", "hair"), "--edit-mask: 'hair' is not one of none, face"),
                          (("--method", "e4e", "--edit-mask", "face"), "--edit-mask: not an option of method 'e4e'")):
        out = stylecli("edit", str(face), "-d", "smile", *args, "-o", str(tmp_path / "b"))
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    for command in ("invert", "blend"):  # an option of `edit` only (blend's methods make masks; sfe does not)
        assert "No such option: --edit-mask" in stylecli(command, str(face), "--edit-mask", "face",
                                                         "-o", str(tmp_path / "c")).stderr
