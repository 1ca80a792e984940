"""Real-face loss slots: LPIPS(alex) and ArcFace IR-SE50 from their usual downloads, in a pack, used by e4e training."""

from pathlib import Path

import lpips
import pytest
import torch

from stylecli.core.networks import Generator
from stylecli.irse import ArcFace
from stylecli.losses import AlexNetFeatures, LossNetworks
from stylecli.packs import Pack, PackError, write_pack
from cli_runner import stylecli as cli

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"


def torchvision_alexnet_state(seed=0):
    """A state dict in the layout of torchvision's alexnet-owt-7be5be79.pth (random values)."""
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) * 0.05 for k, v in AlexNetFeatures().state_dict().items()}
    state.update({"classifier.1.weight": torch.randn(8, 9216), "classifier.1.bias": torch.zeros(8)})
    return state


def insightface_ir_se50_state(seed=0):
    """A state dict in the layout of model_ir_se50.pth (InsightFace IR-SE50, random values, BN statistics set)."""
    torch.manual_seed(seed)
    state = ArcFace().state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif value.is_floating_point() and not key.endswith("running_mean"):
            value.normal_(0, 0.05)
    return state


class Exploit:
    def __reduce__(self):
        return (print, ("code ran",))


def tiny_real_pack(root):
    """A real-face-like pack: a generator and nothing else (no domain network)."""
    G = Generator(z_dim=16, w_dim=16, img_resolution=32, mapping_layers=2, channel_base=256, channel_max=16)
    return write_pack(root / "tinyreal", "tinyreal", {"generator": G}, 32, {"how": "test"}).root


@pytest.fixture(scope="module")
def real_pack(tmp_path_factory):
    """Folder with the tiny pack, the two downloads in their official layouts, and the pack with both added."""
    root = tmp_path_factory.mktemp("real")
    tiny_real_pack(root)
    torch.save(torchvision_alexnet_state(), root / "alexnet-owt-7be5be79.pth")
    torch.save(insightface_ir_se50_state(), root / "model_ir_se50.pth")
    out = cli("weights", "add-loss-nets", str(root / "tinyreal"), "--lpips-alexnet",
              str(root / "alexnet-owt-7be5be79.pth"), "--arcface", str(root / "model_ir_se50.pth"))
    assert out.returncode == 0, out.stderr
    return root


def test_missing_loss_files_are_named(tmp_path):
    with pytest.raises(PackError, match="lpips_alexnet.safetensors, arcface.safetensors.*add-loss-nets"):
        LossNetworks.from_pack(Pack.open(tiny_real_pack(tmp_path)))


def test_official_layouts_are_checked(tmp_path):
    pack = tiny_real_pack(tmp_path)
    state = insightface_ir_se50_state()
    state["output_layer.3.weight"] = state["output_layer.3.weight"][:, :100]
    torch.save(state, tmp_path / "bad.pth")
    out = cli("weights", "add-loss-nets", str(pack), "--arcface", str(tmp_path / "bad.pth"))
    assert out.returncode == 2 and "wrong shape ['output_layer.3.weight']" in out.stderr and "Traceback" not in out.stderr
    assert not Pack.open(pack).has("arcface")
    torch.save({"input_layer.0.weight": Exploit()}, tmp_path / "code.pth")
    out = cli("weights", "add-loss-nets", str(pack), "--arcface", str(tmp_path / "code.pth"))
    assert out.returncode == 2 and "not a state dict of tensors" in out.stderr and "code ran" not in out.stdout
    out = cli("weights", "add-loss-nets", str(pack))
    assert out.returncode == 2 and "name at least one file" in out.stderr


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_and_arcface_slots_from_the_official_files(real_pack):
    pack = Pack.open(real_pack / "tinyreal")
    assert pack.verify() == [] and {"lpips_alexnet", "arcface"} <= set(pack.networks)
    losses = LossNetworks.from_pack(pack)
    assert losses.attributes is None and losses.resolution == 256

    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    # The perceptual slot is the lpips package's LPIPS(alex) with the file's backbone, computed on the same input.
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    alexnet = torchvision_alexnet_state()
    reference.net.load_state_dict({f"slice{AlexNetFeatures.LPIPS_SLICES[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
                                   for k, v in alexnet.items() if k.startswith("features.")})
    torch.testing.assert_close(losses.perceptual(x, y), reference(x, y).flatten())
    assert float(losses.perceptual(y, y).abs().max()) == 0
    torch.testing.assert_close(losses.perceptual_to(y)(x), losses.perceptual(x, y))
    # The identity slot: the file's IR-SE50 on pSp's crop, unit embeddings.
    arcface = ArcFace().eval()
    arcface.load_state_dict(insightface_ir_se50_state())
    torch.testing.assert_close(losses.identity(x, y), (arcface.embed_aligned(x) * arcface.embed_aligned(y)).sum(1))
    assert torch.allclose(losses.identity(y, y), torch.ones(2), atol=1e-5)
    # Both are differentiable with respect to the image, as e4e training needs.
    (losses.perceptual(x, y).sum() - losses.identity(x, y).sum()).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_e4e_trains_on_a_real_face_pack(real_pack, tmp_path):
    from stylecli.methods.e4e.train import E4ETrainer, E4ETrainingConfig

    images = tmp_path / "faces"
    assert cli("data", "synth", "--count", "4", "--out", str(images), "--resolution", "32").returncode == 0
    cfg = E4ETrainingConfig(run_dir=str(tmp_path / "run"), model=str(real_pack / "tinyreal"), data=str(images), batch=2,
                            steps=1, encoder=dict(widths=[8, 8, 16, 16], units=[1, 1, 1, 1], stem=8),
                            checkpoint_every=1, log_every=1)
    trainer = E4ETrainer(cfg)
    trainer.run()
    assert trainer.step == 1 and (tmp_path / "run" / "checkpoint.pt").is_file()


def test_arcface_embeds_official_shapes():
    net = ArcFace().eval()
    keys = net.state_dict()
    assert keys["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert keys["body.23.res_layer.5.fc2.weight"].shape == (512, 32, 1, 1)
    assert keys["output_layer.3.weight"].shape == (512, 512 * 7 * 7) and "output_layer.4.running_var" in keys
    with torch.no_grad():
        e = net(torch.randn(3, 3, 112, 112))
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    with pytest.raises(AssertionError, match="112"):
        net(torch.randn(1, 3, 64, 64))


def test_attribute_kinds_are_asked_of_the_predictor():
    from stylecli.losses import AttributeKind, attribute_kinds

    class Declared:
        attribute_kinds = {"smile": AttributeKind("continuous", editable=True)}

    assert attribute_kinds(None) == {}
    assert attribute_kinds(Declared()) == {"smile": AttributeKind("continuous", editable=True)}
    with pytest.raises(TypeError, match="declares no attribute_kinds"):
        attribute_kinds(object())
    with pytest.raises(AssertionError, match="not one of"):
        AttributeKind("ordinal")


def test_a_fixed_targets_distance_is_the_distance_with_its_features_computed_once():
    """`perceptual_to(target)`, what per-image optimisation calls every step, is `perceptual(x, target)` with its
    gradient to x (the synthface slot caches the target's features; at another size both are resized alike)."""
    losses = LossNetworks.from_pack(Pack.open(SHIPPED))
    target = torch.rand(3, 3, 64, 64) * 2 - 1
    for size in (64, 128):
        x = (torch.rand(3, 3, size, size) * 2 - 1).requires_grad_(True)
        tgt = torch.nn.functional.interpolate(target, size=(size, size), mode="bilinear") if size != 64 else target
        to_target = losses.perceptual_to(tgt)
        expected = losses.perceptual(x, tgt)
        torch.testing.assert_close(to_target(x), expected)
        assert float(to_target(tgt).detach().abs().max()) == 0 and float(expected.detach().min()) > 0
        grad, = torch.autograd.grad(to_target(x).sum(), x)
        reference, = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(grad, reference)
