"""SAMM: the alignment and masking arithmetic against the paper's algorithms, the method, and its training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylecli.methods.samm.model import SAMM, SAMMBlock, fuse, gather_mask, warp
from stylecli.methods.samm.train import build_samm, default_scales, mask_loss, parse_scales
from stylecli.packs import Pack
from cli_runner import stylecli

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"


def cli(*args):
    return stylecli(*args, env={"COLUMNS": "200"})


def test_fuse_is_the_papers_update_and_keeps_zeros():
    previous, new = torch.tensor([0.0, 0.3, 1.0, 0.6]), torch.tensor([1.0, 0.5, 0.0, 0.9])
    torch.testing.assert_close(fuse(previous, new), new * previous + previous * (1 - previous))
    assert fuse(previous, new)[0] == 0  # an area the coarser scale leaves alone stays alone


def test_gather_mask_is_algorithm_2():
    a8, a16 = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 16, 16)
    up = lambda a: torch.nn.functional.interpolate(a, size=(64, 64), mode="bilinear", align_corners=False)
    m = up(a8)
    m = m * (up(a16) - m + 1)
    torch.testing.assert_close(gather_mask({16: a16, 8: a8}, 64), m.clamp(0, 1))


def test_warp_with_zero_flow_is_the_identity_and_a_flow_shifts():
    x = torch.randn(2, 5, 16, 16)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 16, 16)), x, atol=1e-5, rtol=0)
    shift = torch.zeros(2, 2, 16, 16)
    shift[:, 0] = 2 / 15  # one pixel to the right in normalised units (align_corners: 15 steps span [-1, 1])
    moved = warp(x, shift)
    torch.testing.assert_close(moved[..., :-1], x[..., 1:], atol=1e-5, rtol=0)


def test_block_follows_algorithm_1():
    """N cycles, each warping the ORIGINAL g with the summed, clipped flow and the fused alpha; the coarser alpha
    fused in on the last cycle."""
    torch.manual_seed(0)
    block = SAMMBlock(channels=4, hidden=8, cycles=2, max_flow=0.08, alpha_bias=0.0).eval()
    with torch.no_grad():
        block.align.head.weight.normal_(std=0.5)
    g, f, coarse = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.rand(1, 1, 4, 4)
    with torch.no_grad():
        out, flow, alpha = block(g, f, coarse)
        fn = block.align.norm(f)
        s1 = block.align(g, fn)
        flow1, alpha1 = s1[:, :2], s1[:, 2:]
        g1 = warp(g, flow1) * alpha1 + g * (1 - alpha1)
        s2 = block.align(g1, fn)
        flow2 = (flow1 + s2[:, :2]).clamp(-0.08, 0.08)
        up = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
        alpha2 = fuse(up, fuse(alpha1, s2[:, 2:]))
        expected = warp(g, flow2) * alpha2 + g * (1 - alpha2)
    torch.testing.assert_close(flow, flow2)
    torch.testing.assert_close(alpha, alpha2)
    torch.testing.assert_close(out, expected)
    assert flow.abs().max() <= 0.08 + 1e-6 and 0 <= alpha.min() and alpha.max() <= 1


@pytest.fixture(scope="module")
def pack():
    return Pack.open(SHIPPED)


def test_blocks_sit_in_the_first_conv_of_their_blocks_and_a_closed_mask_is_e4e(pack):
    from stylecli.methods.samm.method import encode, samm_pass, scale_features
    from stylecli.methods.samm.spec import SAMMTrainingConfig

    G, E = pack.generator(), pack.load("e4e_encoder")
    net = build_samm(G, E, [8, 16, 32, 64], SAMMTrainingConfig(run_dir="unused")).eval()
    assert net.layer_names() == ["b8.conv0", "b16.conv0", "b32.conv0", "b64.conv0"]
    with torch.no_grad():
        for block in net.blocks:
            block.align.head.bias[2] = -30.0  # alpha = 0: no warp, no mask
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        codes, features = encode(E, x, with_features=True)
        result = samm_pass(G, net, x, codes, scale_features(net, features))
        e4e = G.synthesis(E(x), noise_mode="const")
    assert result.mask.shape == (2, 1, 64, 64) and result.mask.max() < 1e-6
    torch.testing.assert_close(result.image, e4e, atol=1e-4, rtol=0)
    assert set(result.alphas) == {8, 16, 32, 64}
    with torch.no_grad():
        coarse_only = samm_pass(G, net, x, codes, scale_features(net, features), active=1)
    assert set(coarse_only.alphas) == {8}


def test_a_restricted_samm_is_the_coarse_scales_alone(pack):
    """Restricting to the coarsest scales gives what the full SAMM gives with only those scales active."""
    from stylecli.methods.e4e.method import encode
    from stylecli.methods.samm.method import samm_pass, scale_features

    E, G = pack.load("e4e_encoder"), pack.generator()
    gen = [G.synthesis.feature_shape(f"b{r}.conv0")[0] for r in (8, 16)]
    full = SAMM([8, 16], gen, [E.feature_channels()[8], E.feature_channels()[16]])
    for block in full.blocks:
        torch.nn.init.normal_(block.align.head.weight, std=0.1)  # a mask that is not uniform
    coarse = full.restricted(1)
    assert coarse.scales == [8] and coarse.config["gen_channels"] == gen[:1]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes, features = encode(E, x, with_features=True)
        want = samm_pass(G, full, x, codes, scale_features(full, features), active=1)
        got = samm_pass(G, coarse, x, codes, scale_features(coarse, features))
    torch.testing.assert_close(got.image, want.image)
    torch.testing.assert_close(got.mask, want.mask)


def test_mask_loss_terms():
    m = torch.full((2, 1, 4, 4), 0.5)
    torch.testing.assert_close(mask_loss(m, cap=0.3, binary_weight=0.04), torch.tensor(0.04 * 0.5 + 0.2))
    m = torch.zeros(2, 1, 4, 4)
    assert mask_loss(m, 0.3, 0.04) == 0
    from stylecli.methods.samm.train import parse_area_caps
    assert parse_area_caps("0.3,0.3,0.2,0.2") == ([0.3, 0.3, 0.2, 0.2], 0.2)
    assert parse_area_caps("0.5/0.4") == ([0.5], 0.4)
    caps, final = parse_area_caps("off")
    assert mask_loss(torch.ones(2, 1, 4, 4), caps[0], 0.0) == 0 and final == 1.0  # no mean mask exceeds them
    for bad in ("0.3,big", "0,0.5", "0.3/2"):
        with pytest.raises(ValueError, match="--area-caps"):
            parse_area_caps(bad)


def test_scales_follow_the_encoders_features():
    from dataclasses import asdict

    from stylecli.methods.e4e.encoder import Encoder4Editing, EncoderConfig

    sizes = lambda resolution: Encoder4Editing(**asdict(EncoderConfig.for_generator(resolution, 16, 8))
                                               ).feature_channels()
    assert default_scales(64, sizes(64)) == [8, 16, 32, 64]
    assert default_scales(1024, sizes(1024)) == [32, 64, 128, 256]
    assert default_scales(32, sizes(32)) == [8, 16, 32]              # no 4 px block has an upsampling conv
    assert default_scales(128, sizes(128)) == [16, 32, 64, 128]
    assert default_scales(512, sizes(512)) == [32, 64, 128, 256]     # the encoder sees at most 256 px
    assert parse_scales("16,8,32", 64, sizes(64)) == [8, 16, 32]
    for bad in ("12", "4,8", "128", "x"):
        with pytest.raises(ValueError):
            parse_scales(bad, 64, sizes(64))


def test_the_blur_keeps_full_alpha_at_the_borders():
    """Zero padding (the official code's) fades a full alpha to half on the top row of an 8 px map; new runs pad
    with the border values, so an occluder at the edge of the picture can be blended back whole."""
    from stylecli.methods.samm.model import AlignNet

    for padding, top_row in (("zero", 0.5), ("replicate", 1.0)):
        net = AlignNet(4, 8, 0.08, alpha_bias=30.0, blur_padding=padding)  # alpha = 1 everywhere before the blur
        with torch.no_grad():
            alpha = net(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8))[0, 2]
        assert alpha[0, 3] == pytest.approx(top_row) and alpha[4, 4] == pytest.approx(1.0)


def test_the_kept_source_is_exact_8_bit_and_checked():
    from stylecli.latents import LatentError
    from stylecli.methods.samm.method import from_source, to_source

    x = torch.randint(0, 256, (2, 3, 8, 8)).float() / 127.5 - 1
    kept = to_source(x)
    assert kept.dtype == torch.uint8 and torch.allclose(from_source(kept, 8), x, atol=1e-6)
    for bad, message in ((None, "no source image"), (kept.float(), "expected uint8"), (kept[:, :1], "expected uint8")):
        with pytest.raises(LatentError, match=message):
            from_source(bad, 8)


def test_a_block_without_flow_masks_only():
    """max_flow 0 (a scale outside --flow-scales): g passes through unwarped while alpha is still predicted."""
    torch.manual_seed(0)
    block = SAMMBlock(channels=4, hidden=8, cycles=2, max_flow=0.0, alpha_bias=0.0).eval()
    with torch.no_grad():
        block.align.head.weight.normal_(std=0.5)
        g, f = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
        out, flow, alpha = block(g, f)
    assert torch.equal(out, g) and flow.abs().max() == 0 and alpha.std() > 0
    with torch.no_grad():  # one cycle gives what N would: the same input each time, and fuse(a, a) = a
        step = block.align(g, block.align.norm(f))
    torch.testing.assert_close(alpha, fuse(step[:, 2:], step[:, 2:]))
    net = SAMM([8, 16], [4, 4], [4, 4], flow_scales=[8])
    assert net.blocks[0].max_flow == 0.08 and net.blocks[1].max_flow == 0.0
    assert net.restricted(1).config["flow_scales"] == [8]
    with pytest.raises(AssertionError, match="not among the scales"):
        SAMM([8, 16], [4, 4], [4, 4], flow_scales=[32])


def test_the_mask_target_marks_missed_pixels_and_teaches_every_scale():
    from stylecli.methods.samm.method import Pass
    from stylecli.methods.samm.model import missed_pixels
    from stylecli.methods.samm.train import target_loss

    x = torch.zeros(1, 3, 8, 8)
    generated = x.clone()
    generated[..., :4, :] = 0.3      # squared error 0.09 on the top half: missed at threshold 0.04
    generated[..., 4:, :4] = 0.1     # 0.01: within the threshold
    target = missed_pixels(x, generated, 0.04)
    assert target[0, 0, :4].eq(1).all() and target[0, 0, 4:].eq(0).all()
    # cleanup 3 (closing, then opening): a hole in a missed region is filled and a lone missed speck dropped
    speckled = generated.clone()
    speckled[..., 1, 3] = 0.0     # a hole in the top half
    speckled[..., 7, 6] = 0.3     # a speck in the bottom half, away from the top half
    assert missed_pixels(x, speckled, 0.04)[0, 0, 1, 3] == 0 and missed_pixels(x, speckled, 0.04)[0, 0, 7, 6] == 1
    torch.testing.assert_close(missed_pixels(x, speckled, 0.04, cleanup=3), target)
    bce = lambda m, t: torch.nn.functional.binary_cross_entropy(m, t)
    good = Pass(image=x, generated=generated, mask=target.clamp(0.01, 0.99), alphas={4: torch.full((1, 1, 4, 4), 0.5)})
    # the 4 px alpha is judged against the target's share of each of its cells (here 1 or 0)
    coarse_target = torch.nn.functional.adaptive_avg_pool2d(target, 4)
    torch.testing.assert_close(target_loss(good, target), bce(target.clamp(0.01, 0.99), target)
                               + bce(torch.full((1, 1, 4, 4), 0.5), coarse_target))
    flipped = Pass(image=x, generated=generated, mask=1 - good.mask, alphas=good.alphas)
    assert target_loss(flipped, target) > target_loss(good, target) + 4  # -ln(0.01) + ln(0.99) per pixel
    # --scale-target max: a cell with any missed pixel is a 1 for the coarse alpha (a lone pixel: 1/4 by area)
    lone = torch.zeros(1, 1, 8, 8)
    lone[..., 5, 2] = 1
    covering = Pass(image=x, generated=generated, mask=lone.clamp(0.01, 0.99),
                    alphas={4: torch.nn.functional.max_pool2d(lone, 2).clamp(0.01, 0.99)})
    assert target_loss(covering, lone, "max") < target_loss(covering, lone, "area") - 0.1
    torch.testing.assert_close(target_loss(covering, lone, "max"), 2 * bce(lone.clamp(0.01, 0.99), lone))


def test_edited_passes_learn_the_unedited_mask(tmp_path, pack, monkeypatch):
    """--edit-share: part of the batch is synthesised again with a random pack direction, and its mask is pulled to
    the unedited pass's target; the setting needs the target and a share of at most 1."""
    from stylecli.methods.samm import train as samm_train

    trainer = samm_train.SAMMTrainer(_config(tmp_path / "run", steps=1, progressive=False, target_weight=1.0,
                                             edit_share=0.5, flow_scales="8"))
    assert [b.max_flow > 0 for b in trainer.net.blocks] == [True] + [False] * (len(trainer.net.scales) - 1)
    calls, real_pass = [], samm_train.samm_pass
    monkeypatch.setattr(samm_train, "samm_pass",
                        lambda G, net, x, codes, *a, **kw: calls.append(codes) or real_pass(G, net, x, codes, *a, **kw))
    trainer.run()
    assert len(calls) == 2 and len(calls[1]) == 1  # the batch, then its edited half
    assert not torch.allclose(calls[1], calls[0][:1])  # moved by a direction
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["target"] > 0 and record["edit_target"] > 0
    for bad, message in ((dict(edit_share=0.5, target_weight=0.0), "needs --target-weight"),
                         (dict(edit_share=1.5, target_weight=1.0), "at most 1"),
                         (dict(flow_scales="24", target_weight=1.0), "--flow-scales '24'"),
                         (dict(flow_scales="16,x", target_weight=1.0), "--flow-scales '16,x': expected resolutions"),
                         (dict(scale_target="min", target_weight=1.0), "--scale-target 'min': choose area or max")):
        with pytest.raises(ValueError, match=message):
            samm_train.SAMMTrainer(_config(tmp_path / "bad", **bad))


def _config(tmp_path, **kw):
    from stylecli.methods.samm.spec import SAMMTrainingConfig

    base = dict(run_dir=str(tmp_path), model=str(SHIPPED), batch=2, steps=2, workers=0, checkpoint_every=1,
                log_every=1, progressive_start=1, progressive_step=1)
    return SAMMTrainingConfig(**{**base, **kw})


def test_training_moves_only_the_taps_and_blocks_and_resumes_exactly(tmp_path, pack):
    from stylecli.methods.samm.train import SAMMTrainer

    straight = SAMMTrainer(_config(tmp_path / "a", steps=3))
    G_before = {k: v.clone() for k, v in straight.G.state_dict().items()}
    E_before = {k: v.clone() for k, v in straight.E.state_dict().items()}
    start = {k: v.clone() for k, v in straight.net.state_dict().items()}
    straight.run()
    assert all(torch.equal(v, straight.G.state_dict()[k]) for k, v in G_before.items())
    assert all(torch.equal(v, straight.E.state_dict()[k]) for k, v in E_before.items())
    assert any(not torch.equal(v, straight.net.state_dict()[k]) for k, v in start.items())
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["active_scales"] for r in records] == [1, 2, 3]  # progressive mask resolution

    first = SAMMTrainer(_config(tmp_path / "b", steps=2))
    first.run()
    with pytest.raises(ValueError, match=r"changed: --batch 4 \(the run has 2\)"):
        SAMMTrainer(_config(tmp_path / "b", steps=3, batch=4), resume=True)
    resumed = SAMMTrainer(_config(tmp_path / "b", steps=3), resume=True)
    assert resumed.step == 2
    resumed.run()
    for key, value in straight.ema.state_dict().items():
        torch.testing.assert_close(resumed.ema.state_dict()[key], value, msg=key)


def test_no_progressive_trains_every_scale_and_the_perceptual_terms_judge_the_chosen_image(tmp_path, pack,
                                                                                           monkeypatch):
    """--no-progressive: every scale aligns and masks from the first step. `perceptual_on` picks the image the
    perceptual, style and identity terms see: G's aligned output (the default) or the blend (the official)."""
    from stylecli.methods.samm import train as samm_train

    seen, real_pass = {}, samm_train.samm_pass
    for judged in ("generated", "blend"):
        trainer = samm_train.SAMMTrainer(_config(tmp_path / judged, steps=1, progressive=False, perceptual_on=judged,
                                                 edit_share=0.0))
        assert trainer.active_scales() == len(trainer.net.scales) > 1

        def spy(*args, **kw):
            seen["result"] = real_pass(*args, **kw)
            return seen["result"]

        monkeypatch.setattr(samm_train, "samm_pass", spy)
        calls = []
        monkeypatch.setattr(trainer.losses, "perceptual", lambda y, x: calls.append(y) or (y - x).abs().mean([1, 2, 3]))
        trainer.run()
        want = seen["result"].generated if judged == "generated" else seen["result"].image
        assert len(calls) == 1 and torch.equal(calls[0], want)
    with pytest.raises(ValueError, match="perceptual_on 'both'"):
        samm_train.SAMMTrainer(_config(tmp_path / "bad", perceptual_on="both"))


def test_bad_training_setups_are_one_line_errors(tmp_path, pack):
    from stylecli.methods.samm.train import SAMMTrainer
    from stylecli.packs import write_pack

    with pytest.raises(ValueError, match="must divide by the discriminator's minibatch-stddev group"):
        SAMMTrainer(_config(tmp_path / "a", batch=6))
    # --init from a pack: a trainable copy (packs hand out frozen networks)
    SAMMTrainer(_config(tmp_path / "run", steps=1)).run()
    from stylecli.methods.samm.train import samm_from_run
    networks, record = samm_from_run(tmp_path / "run")
    write_pack(tmp_path / "with-samm", "with-samm", {"generator": pack.generator(), **networks}, 64, record)
    trainer = SAMMTrainer(_config(tmp_path / "b", steps=1, init=str(tmp_path / "with-samm")))
    assert all(p.requires_grad for p in trainer.net.parameters())
    trainer.run()
    loaded = ",".join(map(str, trainer.net.scales))
    same = SAMMTrainer(_config(tmp_path / "d", init=str(tmp_path / "with-samm"), scales=loaded, flow_scales=loaded))
    assert same.net.scales == trainer.net.scales
    with pytest.raises(ValueError, match=f"--scales 16,32: the SAMM of --init .* has its blocks at {loaded}"):
        SAMMTrainer(_config(tmp_path / "e", init=str(tmp_path / "with-samm"), scales="16,32"))
    with pytest.raises(ValueError, match=f"--flow-scales 16: the SAMM of --init .* aligns at {loaded}"):
        SAMMTrainer(_config(tmp_path / "f", init=str(tmp_path / "with-samm"), flow_scales="16"))
    wrong = SAMM([8, 16], [64, 64], [128, 64])
    write_pack(tmp_path / "wrong", "wrong", {"generator": pack.generator(), "samm": wrong}, 64, {"how": "test"})
    with pytest.raises(ValueError, match="trained for another generator or encoder"):
        SAMMTrainer(_config(tmp_path / "c", init=str(tmp_path / "wrong")))


def test_train_export_invert_edit_and_blend_from_the_command_line(tmp_path):
    """The whole chain a user runs: train a few steps, put the run into a copy of the pack, invert with masks and
    edit with the mask recomputed; ground-truth masks are never read."""
    import shutil

    from PIL import Image

    from stylecli.data.sets import make_sample

    pack_dir = tmp_path / "pack"
    shutil.copytree(SHIPPED, pack_dir)
    out = cli("train", "samm", "--model", str(pack_dir), "--steps", "2", "--batch", "2", "--workers", "0",
              "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    out = cli("weights", "from-runs", str(pack_dir), str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    assert manifest["networks"]["samm"]["class"] == "stylecli.methods.samm.model.SAMM"
    assert manifest["provenance"]["samm"]["steps"] == 2

    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(2):
        make_sample("ood", i).image.save(faces / f"face{i}.png")
    out = cli("invert", str(faces), "--method", "samm", "--model", str(pack_dir), "-o", str(tmp_path / "inv"))
    assert out.returncode == 0, out.stderr
    mask = Image.open(tmp_path / "inv" / "face0.mask.png")
    # Inverting that folder again with face0's mask beside it: the mask is not a face (it would also write
    # face0.mask.png, which face0.png's own mask claims).
    shutil.copy(tmp_path / "inv" / "face0.mask.png", faces / "face0.mask.png")
    again = cli("invert", str(faces), "--method", "samm", "--model", str(pack_dir), "-o", str(tmp_path / "inv2"))
    assert again.returncode == 0 and "2 done, 0 failed" in again.stderr, again.stderr
    assert not list((tmp_path / "inv2").glob("face0.mask.*.png")) and not list((tmp_path / "inv2").glob("*mask.mask*"))
    (faces / "face0.mask.png").unlink()
    other = tmp_path / "other"
    shutil.copytree(SHIPPED, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "name": "other"}))
    refused = cli("weights", "from-runs", str(other), str(tmp_path / "run"))
    assert refused.returncode == 2 and "trained against pack 'synthface-64', not 'other'" in refused.stderr
    assert mask.mode == "L" and mask.size == (64, 64)
    out = cli("edit", str(tmp_path / "inv"), "--latent", "--method", "samm", "--model", str(pack_dir),
              "-d", "smile", "-s", "2", "-o", str(tmp_path / "edit"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "edit" / "face0_smile+2.png").is_file()
    out = cli("blend", str(faces), "--model", str(pack_dir), "-d", "smile", "-s", "2", "--compare",
              "-o", str(tmp_path / "blend"))
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "blend").iterdir())
    assert names == sorted(f"face{i}_smile+2{end}" for i in range(2)
                           for end in (".png", ".mask.png", "_overlay.png", "_compare.png"))
    assert Image.open(tmp_path / "blend" / "face0_smile+2_compare.png").size == (4 * 64 + 3 * 2, 64)
    again = cli("blend", str(faces), "--model", str(pack_dir), "-d", "smile", "-s", "2", "--compare",
                "-o", str(tmp_path / "blend"))
    assert again.returncode == 0 and "blended: 0 done, 2 skipped" in again.stderr


@pytest.mark.slow
def test_samm_at_1024_on_a_real_face_pack(tmp_path):
    """The paper's setting with random weights: config-f 1024 generator and discriminator, the official e4e encoder
    configuration (IR-SE50 at 256 px), LPIPS and ArcFace loss slots; SAMM at 32..256 px. One forward pass and one
    training step at batch 1 on the CPU; the peak memory is printed (docs/samm.md records it)."""
    import resource
    from dataclasses import asdict

    from test_losses import insightface_ir_se50_state, torchvision_alexnet_state
    from stylecli.core.networks import Discriminator, Generator
    from stylecli.losses import loss_network_from_file
    from stylecli.methods.e4e.encoder import Encoder4Editing, EncoderConfig
    from stylecli.methods.samm.method import SAMMMethod
    from stylecli.methods.samm.train import SAMMTrainer
    from stylecli.models import CONFIGS
    from stylecli.packs import write_pack

    torch.manual_seed(0)
    cfg = CONFIGS["ffhq-1024"]
    G = Generator(**cfg)
    D = Discriminator(img_resolution=1024, channel_base=cfg["channel_base"], channel_max=cfg["channel_max"])
    E = Encoder4Editing(**asdict(EncoderConfig.ffhq()))
    torch.save(torchvision_alexnet_state(), tmp_path / "alexnet.pth")
    torch.save(insightface_ir_se50_state(), tmp_path / "arcface.pth")
    nets = {"generator": G, "discriminator": D, "e4e_encoder": E,
            "lpips_alexnet": loss_network_from_file("lpips_alexnet", tmp_path / "alexnet.pth"),
            "arcface": loss_network_from_file("arcface", tmp_path / "arcface.pth")}
    pack = write_pack(tmp_path / "real1024", "real1024", nets, 1024, {"how": "random weights for a test"})
    del G, D, E, nets

    faces = tmp_path / "faces"
    faces.mkdir()
    from PIL import Image
    for i in range(2):
        Image.fromarray((torch.rand(1024, 1024, 3) * 255).to(torch.uint8).numpy()).save(faces / f"{i}.png")
    with pytest.raises(ValueError, match="has no edit directions for --edit-share 0.5: add some"):
        SAMMTrainer(_config(tmp_path / "run", model=str(pack.root), data=str(faces), batch=1))
    trainer = SAMMTrainer(_config(tmp_path / "run", model=str(pack.root), data=str(faces), batch=1, steps=1,
                                  progressive_start=0, edit_share=0.0))
    assert trainer.net.scales == [32, 64, 128, 256]
    trainer.run()
    assert trainer.step == 1
    train_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    samm_from = tmp_path / "run"
    from stylecli.methods.samm.train import samm_from_run
    networks, record = samm_from_run(samm_from)
    write_pack(pack.root, "real1024", networks, 1024, record)
    method = SAMMMethod.load(Pack.open(pack.root))
    with torch.no_grad():
        inversion = method.invert(torch.rand(1, 3, 1024, 1024) * 2 - 1)
    assert inversion.image.shape == (1, 3, 1024, 1024) and inversion.extras["mask"].shape == (1, 1, 1024, 1024)
    print(f"SAMM at 1024 px, batch 1, CPU: peak RSS {train_peak:.2f} GB after a training step")


@pytest.mark.slow
def test_two_processes_train_samm_under_torchrun(tmp_path):
    """torchrun, gloo on the CPU: two ranks train in step (averaged gradients), rank 0 writes the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stylecli",
           "train", "samm", "--model", str(SHIPPED), "--steps", "2", "--batch", "2", "--workers", "0",
           "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["source_position"] == 2  # each rank drew batch / 2 = 1 image per step


def test_the_edited_share_of_a_batch_carries_its_fraction_over_the_steps():
    from stylecli.methods.samm.train import edited_count

    assert [edited_count(0.5, 8, s) for s in range(3)] == [4, 4, 4]
    assert [edited_count(0.5, 1, s) for s in range(4)] == [0, 1, 0, 1]  # a batch of one still sees edited passes
    for share, batch in ((0.3, 2), (0.5, 3), (1.0, 5), (0.0, 4)):
        counts = [edited_count(share, batch, s) for s in range(100)]
        assert all(0 <= c <= batch for c in counts) and abs(sum(counts) - share * batch * 100) < 1


def test_a_run_starts_the_same_whatever_the_process_loaded_before(tmp_path):
    """The seed alone fixes a run's start: loading the pack's directions (its learned edits are networks) draws
    nothing from torch's random stream, so a second run in one process starts where the first did."""
    from stylecli.methods.samm.train import SAMMTrainer

    first, second = (SAMMTrainer(_config(tmp_path / name)) for name in ("a", "b"))
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key


def test_the_sharp_mask_is_the_missed_pixels_inside_the_blocks_region():
    """sharpen_mask: 1 exactly where the input differs from the reference beyond the threshold (specks cleaned away),
    inside the region the blocks' mask marks (>= 0.5, grown by R/32 px); misses outside that region are not masked;
    a thin occluder survives the cleanup at any resolution."""
    from stylecli.methods.samm.model import sharpen_mask

    x = torch.zeros(1, 3, 64, 64)
    reference = x.clone()
    reference[..., 10:20, 6:40] = 0.5     # an occluder the generator misses, wider than the region below...
    reference[..., 40:46, 40:46] = 0.5    # ...a miss of its own, away from the blocks' region...
    reference[..., 15, 13] = 0.0          # ...a pixel inside the occluder that happens to match (a hole)...
    reference[..., 3, 20] = 0.5           # ...and a lone speck just above it, inside the grown region
    blocks = torch.zeros(1, 1, 64, 64)
    blocks[..., 2:18, 12:28] = 0.7        # the blocks mark part of the occluder (a soft 16 px mask)
    blocks[..., 40:46, 40:46] = 0.3       # and the other miss faintly
    sharp = sharpen_mask(blocks, x, reference)
    want = torch.zeros(1, 1, 64, 64)
    want[..., 10:20, 10:30] = 1           # the occluder inside the region grown by 2 px, the hole filled, no speck
    assert torch.equal(sharp, want)
    assert sharpen_mask(blocks, x, x).max() == 0  # nothing missed, nothing masked
    with pytest.raises(AssertionError, match="mask"):
        sharpen_mask(blocks[..., :32], x, reference)
    big = torch.zeros(1, 3, 1024, 1024)   # at 1024 px a 6 px cable inside the blocks' region is kept whole
    cable = big.clone()
    cable[..., 500:506, 100:900] = 0.5
    region = torch.zeros(1, 1, 1024, 1024)
    region[..., 400:600, 50:950] = 0.9
    assert sharpen_mask(region, big, cable)[0, 0, 500:506, 100:900].eq(1).all()


def test_sharp_and_soft_masks_and_edits_that_keep_the_inversions_reference(pack, monkeypatch):
    """--mask sharp (the default) blends the sharp mask over G's aligned output; --mask soft is Algorithm 2's blend.
    An edit's sharp mask reads the unedited inversion's G output (kept 8-bit in the inversion), so an edit at strength
    0 is the inversion; an inversion without it (a latent file of --mask soft) has it synthesised again."""
    from stylecli.data.sets import make_sample
    from stylecli.imageio import image_to_tensor
    from stylecli.methods import METHODS
    from stylecli.methods.samm import method as samm_method
    from stylecli.methods.samm.model import sharpen_mask

    x = torch.cat([image_to_tensor(make_sample("ood", i).image, 64) for i in range(3)])
    sharp, soft = METHODS["samm"].load(pack), METHODS["samm"].load(pack, mask="soft")
    a, b = sharp.invert(x), soft.invert(x)
    assert "reference" not in b.extras and a.extras["reference"].dtype == torch.uint8
    torch.testing.assert_close(a.latents["w_plus"], b.latents["w_plus"])
    reference = samm_method.from_source(a.extras["reference"], 64)
    torch.testing.assert_close(a.extras["mask"], sharpen_mask(b.extras["mask"], x, reference))
    assert set(a.extras["mask"].unique().tolist()) <= {0.0, 1.0} and a.extras["mask"].sum() > 0
    m = a.extras["mask"]
    torch.testing.assert_close(a.image.clamp(-1, 1), m * x + (1 - m) * reference, atol=1e-2, rtol=0)  # 8-bit apart
    direction = torch.zeros(sharp.G.num_ws, sharp.G.w_dim)
    unmoved = sharp.edit_inversion(a, direction, 1.0)
    torch.testing.assert_close(unmoved.image, a.image, atol=1e-5, rtol=0)
    assert torch.equal(unmoved.extras["mask"], a.extras["mask"])
    from stylecli.directions import get_direction

    smile = get_direction(pack, "smile-linear").vector * 2  # moves the mouth, which must not be masked
    edited = sharp.edit_inversion(a, smile, 2.0)
    assert torch.equal(edited.extras["reference"], a.extras["reference"])  # a chain keeps reading it
    soft_edit = soft.edit_inversion(b, smile, 2.0)  # the same edited pass, Algorithm 2's mask
    taps = samm_method.scale_features(sharp.net, samm_method.encode(sharp.E, x, with_features=True)[1])
    edited_generated = samm_method.samm_pass(sharp.G, sharp.net, x, soft_edit.latents["w_plus"], taps).generated
    torch.testing.assert_close(edited.extras["mask"], sharpen_mask(soft_edit.extras["mask"], x, reference))
    against_edit = sharpen_mask(soft_edit.extras["mask"], x, edited_generated)
    assert not torch.equal(edited.extras["mask"], against_edit)  # the edited face would have been masked
    seen, real = [], samm_method.samm_pass
    monkeypatch.setattr(samm_method, "samm_pass", lambda *args, **kw: seen.append(args[3]) or real(*args, **kw))
    older = sharp.edit_inversion(samm_method.Inversion(latents=a.latents, image=None, extras={
        k: v for k, v in a.extras.items() if k != "reference"}), smile, 2.0)
    assert len(seen) == 2 and torch.equal(seen[0], a.latents["w_plus"])  # the unedited pass first
    torch.testing.assert_close(older.image, edited.image)
    with pytest.raises(Exception, match="--mask: 'hard' is not one of sharp, soft"):
        METHODS["samm"].load(pack, mask="hard")
