"""F/W+ (BDInvert): base-code synthesis, the encoder and its official layout, the regularised optimisation, edits
that keep the base code, the trainer (resume, export with the P-space whitening), the converter and the command line."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from stylecli.core.networks import Generator
from stylecli.core.ops import upfirdn2d
from stylecli.data.domainnet import DomainNet
from stylecli.directions import load_directions
from stylecli.methods.fwplus import NETWORK, PSPACE
from stylecli.methods.fwplus.encoder import BaseCodeEncoder, BaseEncoderConfig
from stylecli.methods.fwplus.method import FWPlus, first_detail_row, generator_base, synthesize_from_base
from stylecli.methods.fwplus.pspace import PSpaceWhitening
from stylecli.methods.fwplus.spec import FWPlusTrainingConfig
from stylecli.packs import Pack, write_pack
from cli_runner import stylecli

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"
TINY_ENCODER = dict(widths=[4, 8, 8], convs_per_stage=1)


def cli(*args):
    return stylecli(*args, env={"COLUMNS": "200"})


def tiny_generator(seed=0):
    torch.manual_seed(seed)
    G = Generator(z_dim=16, w_dim=16, img_resolution=32, mapping_layers=2, channel_base=256, channel_max=16).eval()
    with torch.no_grad():  # a w_avg away from zero, so that "the rows before the base stay at w_avg" can show
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, 16))[:, 0].mean(0))
        for layer in (G.synthesis.layer(n) for n in G.synthesis.layer_names):
            layer.noise_strength.fill_(0.1)  # const noise that matters: the base must replace it too
    return G.requires_grad_(False)


@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    """A 32 px pack with a random generator and domain network (the loss slots), an 8 px base-code encoder with
    random weights and the generator's P-space whitening."""
    root = tmp_path_factory.mktemp("fw") / "tiny"
    G = tiny_generator()
    torch.manual_seed(1)
    E = BaseCodeEncoder(**dataclasses.asdict(BaseEncoderConfig.for_generator(G, 8, **TINY_ENCODER))).eval()
    white = PSpaceWhitening.fit(G.mapping, G.z_dim, samples=4000, batch=4000)
    write_pack(root, "tiny", {"generator": G, "domainnet": DomainNet(widths=(4, 8, 8, 8), embed_dim=8),
                              NETWORK: E, PSPACE: white}, 32, {"note": "test"})
    return Pack.open(root)


# ---------------------------------------------------------------------------------------------------------------
# The F/W+ synthesis

@pytest.mark.parametrize("base_size", [8, 16])
def test_the_generators_own_base_gives_its_image_less_exactly_the_coarse_skip(base_size):
    """Starting after b{b}.conv0 from the generator's own feature with the skip it had reproduces G(w); F/W+ drops
    that skip, so its image differs by exactly the coarse RGB image upsampled to the output."""
    G = tiny_generator()
    w = G.mapping(torch.randn(3, 16))
    w = w + 0.3 * torch.randn_like(w)  # distinct rows
    S = G.synthesis
    full = S.synthesize(w, capture=(f"b{base_size // 2}.img",))
    f = generator_base(G, w, base_size)
    assert f.shape == (3, S.channels[base_size], base_size, base_size)
    skip = full.features[f"b{base_size // 2}.img"]
    with_skip = S.synthesize(w, start_after=f"b{base_size}.conv0", x=f, img=skip).img
    torch.testing.assert_close(with_skip, full.img, atol=1e-5, rtol=0)
    dropped = synthesize_from_base(G, f, w)
    for _ in range(int(torch.log2(torch.tensor(32 / (base_size // 2))))):
        skip = upfirdn2d.upsample2d(skip, S.resample_filter)
    torch.testing.assert_close(dropped, full.img - skip, atol=1e-5, rtol=0)
    assert (skip.abs().mean() > 1e-3)  # the skip is not negligible: dropping it is a real difference


def test_only_the_rows_after_the_base_layer_reach_the_image():
    G = tiny_generator()
    first = first_detail_row(G, 8)
    assert first == G.synthesis.w_index("b8.conv0") + 1 == 2
    w = G.mapping(torch.randn(2, 16))
    f = torch.randn(2, 16, 8, 8)
    image = synthesize_from_base(G, f, w)
    before, after = w.clone(), w.clone()
    before[:, :first] += 5
    after[:, first] += 0.5
    torch.testing.assert_close(synthesize_from_base(G, f, before), image, atol=0, rtol=0)
    assert (synthesize_from_base(G, f, after) - image).abs().mean() > 1e-3
    with pytest.raises(AssertionError, match="base code"):
        synthesize_from_base(G, torch.randn(2, 8, 8, 8), w)  # channels the generator does not have there


# ---------------------------------------------------------------------------------------------------------------
# The encoder

def test_the_official_configuration_has_bdinverts_layout():
    """model.N: conv3x3 (bias) at 0,3,6 (128), 10,13,16 (256), 20,23,26,30 (512), 33 (512, no BN); BN after the
    others; AvgPool at 9, 19, 29; 128 px input for the 16 x 16 base code."""
    E = BaseCodeEncoder(**dataclasses.asdict(BaseEncoderConfig.official()))
    assert E.cfg.input_size == 128 and len(E.model) == 34
    convs = {i: m.out_channels for i, m in enumerate(E.model) if isinstance(m, nn.Conv2d)}
    assert convs == {0: 128, 3: 128, 6: 128, 10: 256, 13: 256, 16: 256, 20: 512, 23: 512, 26: 512, 30: 512, 33: 512}
    assert all(E.model[i].bias is not None and E.model[i].kernel_size == (3, 3) for i in convs)
    assert [i for i, m in enumerate(E.model) if isinstance(m, nn.AvgPool2d)] == [9, 19, 29]
    assert [i for i, m in enumerate(E.model) if isinstance(m, nn.BatchNorm2d)] == [i + 1 for i in convs if i != 33]


def test_encoder_resizes_any_input_to_its_own_and_writes_the_base_code():
    E = BaseCodeEncoder(base_size=8, base_channels=12, widths=[4, 6, 8], convs_per_stage=2).eval()
    assert E.cfg.input_size == 64
    for size in (32, 64, 128):
        assert E(torch.randn(2, 3, size, size)).shape == (2, 12, 8, 8)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(E(x)[1:], E(x[1:]), atol=1e-6, rtol=0)  # eval BN: images do not mix
    E16 = BaseCodeEncoder(base_size=16, base_channels=12, widths=[4, 6], convs_per_stage=1)
    assert E16.cfg.input_size == 64 and E16(torch.randn(1, 3, 64, 64)).shape == (1, 12, 16, 16)


# ---------------------------------------------------------------------------------------------------------------
# The method

def test_optimisation_improves_the_reconstruction_over_its_start(tiny_pack):
    G = tiny_pack.generator()
    method = FWPlus(tiny_pack, steps=40, lr=0.05)
    with torch.no_grad():
        x = G.synthesis(G.mapping(torch.randn(2, 16), truncation_psi=0.7)).clamp(-1, 1)
        f0 = method.E(x)
        start = synthesize_from_base(G, f0, G.w_avg.expand(2, G.num_ws, -1))
    inv = method.invert(x)
    assert set(inv.latents) == {"w_plus", "f_base"} and inv.latents["f_base"].shape == (2, 16, 8, 8)
    mse = lambda y: (y - x).square().mean(dim=[1, 2, 3])
    assert (mse(inv.image) < 0.7 * mse(start)).all(), (mse(inv.image), mse(start))
    # The rows that do not reach the image stay at w_avg; the image is the code's own synthesis.
    torch.testing.assert_close(inv.latents["w_plus"][:, :method.first], G.w_avg.expand(2, method.first, -1))
    torch.testing.assert_close(synthesize_from_base(G, inv.latents["f_base"], inv.latents["w_plus"]), inv.image)
    # With no steps the result is the encoder's base and w_avg: the start itself.
    torch.testing.assert_close(FWPlus(tiny_pack, steps=0).invert(x).image, start)


def test_an_image_gets_the_same_result_alone_or_in_a_batch(tiny_pack):
    """Chunks of a fixed shape: without them the batch-dependent summation order, amplified by Adam, moves the
    result by far more than this tolerance within a few dozen steps."""
    method = FWPlus(tiny_pack, steps=30, lr=0.05)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    together, alone = method.invert(x), method.invert(x[2:])
    torch.testing.assert_close(alone.latents["f_base"], together.latents["f_base"][2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.image, together.image[2:], atol=1e-5, rtol=0)


def test_the_loss_has_the_four_terms_weighted_per_image(tiny_pack):
    method = FWPlus(tiny_pack, steps=0)
    G = method.G
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f0 = method.E(x)
    detail = G.w_avg.expand(2, G.num_ws - method.first, -1).clone()
    t = method.loss_terms(x, f0, detail, f0)
    assert all(v.shape == (2,) for v in t.values())
    assert t["base"].abs().max() == 0 and (t["mse"] > 0).all() and (t["perceptual"] > 0).all()
    far = method.loss_terms(x, f0 + 1, detail * 10, f0)
    torch.testing.assert_close(far["base"], torch.ones(2))  # mean((f - f0)^2)
    assert (far["pspace"] > 10 * t["pspace"]).all()


def test_edits_move_only_the_rows_after_the_base_and_keep_the_base_code(tiny_pack):
    method = FWPlus(tiny_pack, steps=2)
    G = method.G
    inv = method.invert(torch.rand(2, 3, 32, 32) * 2 - 1)
    direction = torch.randn(G.num_ws, G.w_dim)
    edited = method.edit_inversion(inv, direction, 2.0)
    w, moved = inv.latents["w_plus"], edited.latents["w_plus"]
    assert torch.equal(moved[:, :method.first], w[:, :method.first])
    torch.testing.assert_close(moved[:, method.first:], w[:, method.first:] + 2.0 * direction[method.first:])
    assert torch.equal(edited.latents["f_base"], inv.latents["f_base"])
    assert (edited.image - inv.image).abs().mean() > 1e-3
    coarse_only = direction.clone()
    coarse_only[method.first:] = 0  # a direction on the rows the base code stands for changes nothing
    torch.testing.assert_close(method.edit(inv, coarse_only, 3.0), inv.image, atol=1e-6, rtol=0)
    # A code without its base (a latent file of another method) is one line.
    from stylecli.latents import LatentError
    with pytest.raises(LatentError, match="no base code latent.f_base"):
        method.edit(type(inv)(latents={"w_plus": w}, image=None), direction, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Training and export

def _config(run_dir, pack, **changes):
    return FWPlusTrainingConfig(run_dir=str(run_dir), model=str(pack.root), batch=2, encoder=TINY_ENCODER,
                                checkpoint_every=1, log_every=1, pspace_samples=2000, **changes)


def test_training_resumes_exactly_and_exports_the_encoder_with_the_whitening(tmp_path, tiny_pack):
    from stylecli.methods.fwplus.train import FWPlusTrainer, encoder_from_run

    straight = FWPlusTrainer(_config(tmp_path / "a", tiny_pack, steps=3))
    initial = {k: v.clone() for k, v in straight.E.state_dict().items()}
    straight.run()
    assert any(not torch.equal(v, initial[k]) for k, v in straight.E.state_dict().items() if "weight" in k)
    FWPlusTrainer(_config(tmp_path / "b", tiny_pack, steps=1)).run()
    with pytest.raises(ValueError, match=r"changed: --lr 0.1 \(the run has 0.001\)"):
        FWPlusTrainer(_config(tmp_path / "b", tiny_pack, steps=3, lr=0.1), resume=True)
    resumed = FWPlusTrainer(_config(tmp_path / "b", tiny_pack, steps=3), resume=True)
    resumed.run()
    for key, value in straight.E.state_dict().items():  # BatchNorm statistics included
        torch.testing.assert_close(resumed.E.state_dict()[key], value, atol=0, rtol=0, msg=key)

    networks, record = encoder_from_run(tmp_path / "a")
    assert set(networks) == {NETWORK, PSPACE} and record["steps"] == 3 and record["pspace"]["samples"] == 2000
    for key, value in straight.E.state_dict().items():
        torch.testing.assert_close(networks[NETWORK].state_dict()[key], value, atol=0, rtol=0)
    G = tiny_pack.generator()
    mapped = G.mapping(torch.randn(2000, 16, generator=torch.Generator().manual_seed(9)))
    assert abs(float(networks[PSPACE].penalty(mapped).mean()) - 1) < 0.1  # the pack's mapping, whitened


def test_training_setups_it_cannot_run_are_one_line_errors(tmp_path, tiny_pack):
    from stylecli.methods.fwplus.train import FWPlusTrainer

    with pytest.raises(ValueError, match="generator samples only"):
        FWPlusTrainer(_config(tmp_path / "r", tiny_pack, data="synth"))
    with pytest.raises(ValueError, match="no layer b64.conv0"):
        FWPlusTrainer(_config(tmp_path / "r", tiny_pack, base_size=64))


def test_train_export_invert_and_edit_from_the_command_line(tmp_path):
    """The chain a user runs on synthface-64: train (one step), from-runs (encoder + whitening), invert with
    --steps, edit the saved code."""
    pack = tmp_path / "pack"
    shutil.copytree(SHIPPED, pack)
    out = cli("train", "fwplus", "--model", str(pack), "--steps", "1", "--batch", "2", "--pspace-samples", "2000",
              "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    out = cli("weights", "from-runs", str(pack), str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert {NETWORK, PSPACE} <= set(Pack.open(pack).networks)
    face = Path(__file__).resolve().parents[1] / "examples" / "face.png"
    out = cli("invert", str(face), "--method", "fwplus", "--steps", "3", "-m", str(pack), "-o", str(tmp_path / "inv"))
    assert out.returncode == 0, out.stderr
    from stylecli.latents import load_latent
    inv, meta = load_latent(tmp_path / "inv" / "face.latent.safetensors")
    assert meta["method"] == "fwplus" and inv.latents["f_base"].shape == (1, 128, 8, 8)
    assert (tmp_path / "inv" / "face.png").is_file()
    out = cli("edit", str(tmp_path / "inv"), "--latent", "--method", "fwplus", "-d", "smile", "-s", "2", "-m",
              str(pack), "-o", str(tmp_path / "edit"))
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "edit").glob("face*.png"))
    refused = cli("invert", str(face), "--method", "fwplus", "--steps", "-1", "-m", str(pack), "-o",
                  str(tmp_path / "no"))
    assert refused.returncode == 2 and "--steps" in refused.stderr and "Traceback" not in refused.stderr


# ---------------------------------------------------------------------------------------------------------------
# The official checkpoint

def official_layout(widths, convs_per_stage, head, base_channels):
    """BDInvert's encoder as its release builds it: one Sequential whose modules are numbered in order (conv, BN,
    LReLU per unit; an AvgPool closing each stage; a head unit and a last conv without BN). Written here from the
    published layout, independently of stylecli's class."""
    layers, channels = [], 3
    for width in widths:
        for _ in range(convs_per_stage):
            layers += [nn.Conv2d(channels, width, 3, 1, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            channels = width
        layers.append(nn.AvgPool2d(2, 2))
    layers += [nn.Conv2d(channels, head, 3, 1, 1), nn.BatchNorm2d(head), nn.LeakyReLU(0.2),
               nn.Conv2d(head, base_channels, 3, 1, 1)]

    class BDInvertEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(*layers)

    return BDInvertEncoder()


def write_official_checkpoint(path, encoder, epoch=7):
    torch.manual_seed(3)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that eval mode is tested
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    torch.save({"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch}, path)
    return path


def test_the_official_checkpoint_layout_converts_with_its_shapes(tmp_path):
    from stylecli.methods.fwplus.convert import convert, detect

    official = official_layout([128, 256, 512], 3, 512, 512)
    path = write_official_checkpoint(tmp_path / "BDInvert_encoder.pth", official)
    assert detect(path)
    networks, reports = convert(path)
    E = networks[NETWORK]
    assert E.config == dataclasses.asdict(BaseEncoderConfig.official()) | {"widths": [128, 256, 512]}
    assert len(reports[NETWORK].mapped) == len(official.state_dict())
    for key, value in official.state_dict().items():
        assert torch.equal(E.state_dict()[key], value), key
    assert E.cfg.base_size == 16 and E.cfg.base_channels == 512  # FFHQ 1024's b16.conv0 feature: 512 x 16 x 16


def test_a_small_checkpoint_in_the_official_layout_computes_what_it_computed(tmp_path, tiny_pack):
    """A narrow encoder in the official layout (2 units per stage, a wider head) converts to the same function; it
    joins a pack whose generator has its base feature, with the whitening fitted there, and F/W+ runs on it."""
    from stylecli.methods.fwplus.convert import add_to_pack, convert, detect
    from stylecli.packs.convert import ConversionError

    official = official_layout([4, 6, 8], 2, 10, 16).eval()  # 128 px in, 16 x 16 x 16 out
    path = write_official_checkpoint(tmp_path / "small.pth", official)
    assert detect(path)
    E = convert(path)[0][NETWORK]
    assert (E.cfg.base_size, E.cfg.base_channels, E.cfg.head_channels) == (16, 16, 10)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(E(x), official.model(x), atol=1e-5, rtol=0)

    pack_root = tmp_path / "pack"
    shutil.copytree(tiny_pack.root, pack_root)
    pack = add_to_pack(path, Pack.open(pack_root), pspace_samples=2000)
    assert pack.manifest["provenance"][NETWORK]["converted_from"] == "small.pth"
    method = FWPlus(pack, steps=1)
    assert method.base_size == 16 and method.first == pack.generator().synthesis.w_index("b16.conv0") + 1
    assert method.invert(torch.rand(1, 3, 32, 32) * 2 - 1).latents["f_base"].shape == (1, 16, 16, 16)

    wrong = write_official_checkpoint(tmp_path / "wrong.pth", official_layout([4, 6, 8], 2, 10, 12))
    with pytest.raises(ConversionError, match=r"base code is 12 x 16x16; .* has 16 channels after b16.conv0"):
        add_to_pack(wrong, Pack.open(pack_root), pspace_samples=2000)


def test_other_files_are_not_taken_for_bdinvert_checkpoints(tmp_path):
    from stylecli.methods.fwplus.convert import detect

    torch.save({"state_dict": {"encoder.body.0.weight": torch.zeros(1)}}, tmp_path / "e4e.pt")
    torch.save({"encoder": {"model.0.weight": torch.zeros(4, 1, 3, 3)}}, tmp_path / "gray.pt")  # not an RGB input
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for name in ("e4e.pt", "gray.pt", "text.pth", "missing.pth"):
        assert not detect(tmp_path / name), name


# ---------------------------------------------------------------------------------------------------------------
# Edits in the aligned frame (--edit-mode aligned)

def test_crop_to_frame_maps_the_crops_corners_onto_the_matrixs_and_inverts():
    from stylecli.methods.fwplus.aligned import crop_to_frame, invert_theta
    # A 32 px crop covering the frame's pixels 8..24 (frame of 32), turned by 90 degrees.
    matrix = torch.tensor([[[0.0, -0.5, 24.0], [0.5, 0.0, 8.0]]], dtype=torch.float64)
    theta = crop_to_frame(matrix, 32, 32)
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)  # crop edges, normalised
    frame_px = ((corners @ theta[0].T) + 1) * 16  # back to frame edge pixels
    expected = torch.tensor([[0.0, 0.0], [32.0, 32.0]], dtype=torch.float64) @ matrix[0, :, :2].T + matrix[0, :, 2]
    torch.testing.assert_close(frame_px, expected)
    round_trip = invert_theta(invert_theta(theta))
    torch.testing.assert_close(round_trip, theta)


@pytest.fixture(scope="module")
def aligned_method():
    return FWPlus(Pack.open(SHIPPED), steps=2)


def test_an_aligned_edit_changes_the_head_where_it_is_and_nothing_beyond_its_mask(aligned_method):
    from stylecli.bench.inversion import load_set
    from stylecli.methods.fwplus.aligned import crop_to_frame, found_mask, invert_theta

    method = aligned_method
    assert method.aligned is not None  # the shipped pack has a face detector: auto edits in the aligned frame
    faces = load_set("geometric", 2, 64).images
    flat = torch.zeros(1, 3, 64, 64)  # no face in it
    inv = method.invert(torch.cat([faces, flat]))
    assert found_mask(inv.latents["aligned_matrix"]).tolist() == [True, True, False]
    direction = load_directions(Pack.open(SHIPPED))["smile-linear"].vector
    edited = method.edit_inversion(inv, direction, 2.0)
    # The codes stay the inversion's own; the edit so far is kept for the next one.
    for key in ("w_plus", "f_base", "aligned_w", "aligned_matrix"):
        assert torch.equal(edited.latents[key], inv.latents[key])
    torch.testing.assert_close(edited.latents["w_offset"][0], 2.0 * direction)
    # Beyond the warped face mask the frame is the reconstruction, exactly; inside it changes.
    theta = invert_theta(crop_to_frame(inv.latents["aligned_matrix"][:2], 64, 64)).float()
    grid = torch.nn.functional.affine_grid(theta, [2, 1, 64, 64], align_corners=False)
    reach = torch.nn.functional.grid_sample(method.aligned.mask.expand(2, 1, 64, 64), grid, align_corners=False) > 0
    change = (edited.image[:2] - inv.image[:2]).abs().amax(dim=1, keepdim=True)
    assert torch.equal(change[~reach], torch.zeros_like(change[~reach])) and change[reach].mean() > 1e-2
    # The frame without a face is edited by the rows after the base code, as --edit-mode rows edits it.
    rows = FWPlus(Pack.open(SHIPPED), steps=2, edit_mode="rows")
    torch.testing.assert_close(edited.image[2:], rows.edit(type(inv)(latents={k: inv.latents[k][2:] for k in (
        "w_plus", "f_base")}, image=inv.image[2:]), direction, 2.0))
    # Edits chain: +1 then +1 is +2.
    twice = method.edit_inversion(method.edit_inversion(inv, direction, 1.0), direction, 1.0)
    torch.testing.assert_close(twice.image, edited.image, atol=1e-5, rtol=0)


def test_edit_modes_are_checked(tiny_pack):
    from stylecli.methods.base import MethodUnavailable
    assert FWPlus(tiny_pack, steps=0).aligned is None  # auto: no detector for this pack, so rows
    with pytest.raises(MethodUnavailable, match="edit-mode aligned: pack .tiny. has no e4e_encoder"):
        FWPlus(tiny_pack, steps=0, edit_mode="aligned")
    with pytest.raises(MethodUnavailable, match="choose auto, aligned, rows"):
        FWPlus(tiny_pack, steps=0, edit_mode="sideways")
