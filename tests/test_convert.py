"""Importing official checkpoints: both layouts, strict filling, and no code ever run from a file."""

import os
import pickle

import pytest
import torch

from checkpoint_fixtures import random_networks, rosinality_generator_state, write_nvidia_pkl, write_rosinality_pt
from stylecli.packs import Pack, write_pack
from stylecli.packs.convert import ConversionError, convert_checkpoint


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    G, D = random_networks()
    marker = root / "code_ran.txt"
    write_nvidia_pkl(root / "network-snapshot.pkl", G, D, marker)
    write_rosinality_pt(root / "550000.pt", G, D)
    return root, G, D, marker


def test_nvidia_pickle_converts_exactly_and_runs_no_code(fixtures):
    root, G, D, marker = fixtures
    conv = convert_checkpoint(root / "network-snapshot.pkl")
    assert conv.source_format == "nvidia-pkl"
    assert not marker.exists(), "the module_src embedded in the pickle was executed"
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(conv.generator(z), G(z))
        img = torch.randn(4, 3, 32, 32)
        torch.testing.assert_close(conv.discriminator(img), D(img))
    assert conv.generator.config == G.config
    assert conv.reports["generator"].regenerated  # filter buffers are rebuilt, not copied


def test_rosinality_and_nvidia_layouts_of_the_same_weights_generate_the_same_image(fixtures):
    root, G, D, _ = fixtures
    ros = convert_checkpoint(root / "550000.pt")
    nv = convert_checkpoint(root / "network-snapshot.pkl")
    assert ros.source_format == "rosinality"
    assert ros.generator.config == nv.generator.config  # config inferred from tensor shapes
    z = torch.randn(3, G.z_dim)
    with torch.no_grad():
        torch.testing.assert_close(ros.generator(z, truncation_psi=0.7), nv.generator(z, truncation_psi=0.7))
        img = torch.randn(4, 3, 32, 32)
        torch.testing.assert_close(ros.discriminator(img), nv.discriminator(img))
    ignored = ros.reports["generator"].ignored
    assert any(k.endswith("blur.kernel") for k in ignored) and any(k.endswith("upsample.kernel") for k in ignored)


def test_a_missing_tensor_is_an_error_not_a_random_weight(tmp_path):
    G, _ = random_networks(1)
    state = rosinality_generator_state(G)
    del state["convs.1.conv.modulation.bias"]
    torch.save({"g_ema": state, "latent_avg": G.mapping.w_avg}, tmp_path / "broken.pt")
    with pytest.raises(ConversionError, match="left unfilled"):
        convert_checkpoint(tmp_path / "broken.pt")


def test_a_wrong_shape_is_an_error(tmp_path):
    G, _ = random_networks(2)
    state = rosinality_generator_state(G)
    state["to_rgbs.0.bias"] = torch.zeros(1, 4, 1, 1)
    torch.save({"g_ema": state, "latent_avg": G.mapping.w_avg}, tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match="shape"):
        convert_checkpoint(tmp_path / "bad.pt")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"G_ema": _Exploit(marker)}, fh)
    with pytest.raises(ConversionError, match="refusing to load builtins.exec"):
        convert_checkpoint(path)
    assert not marker.exists()
    # The same trick inside a torch .pt is refused by the weights-only loader.
    torch.save({"g_ema": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="weights-only"):
        convert_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConversionError, match="neither"):
        convert_checkpoint(tmp_path / "notes.txt")


def test_pack_round_trip_verify_and_fp16(tmp_path, fixtures):
    _, G, D, _ = fixtures
    pack = write_pack(tmp_path / "mini", "mini", {"generator": G, "discriminator": D}, 32, {"how": "test"},
                      dtype=torch.float16)
    assert pack.verify() == []
    loaded = Pack.open(tmp_path / "mini")
    g16 = loaded.generator()
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        diff = (g16(z) - G(z)).abs().max().item()
    assert 0 < diff < 0.05  # fp16 storage: close to, not identical with, the fp32 weights
    assert loaded.manifest["w_avg"] == {"file": "generator.safetensors", "key": "mapping.w_avg"}
    assert (tmp_path / "mini" / "generator.safetensors").stat().st_size < sum(
        v.numel() * 4 for v in G.state_dict().values())
    # Tampering is found.
    path = tmp_path / "mini" / "discriminator.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("sha256" in p for p in loaded.verify())
    os.remove(tmp_path / "mini" / "generator.safetensors")
    assert any("missing" in p for p in loaded.verify())


def test_official_e4e_checkpoint_layout_converts_exactly(tmp_path):
    """encoder.* with the official module names, decoder.* in rosinality's layout, latent_avg [num_ws, w_dim]."""
    import subprocess
    import sys

    from checkpoint_fixtures import rosinality_generator_state
    from stylecli.methods.e4e.encoder import Encoder4Editing
    from stylecli.packs import Pack

    G, _ = random_networks(5)
    torch.manual_seed(6)
    E = Encoder4Editing(input_size=32, widths=[8, 16, 24, 32], units=[1, 2, 1, 1], stem=8, w_dim=32, num_ws=G.num_ws,
                        coarse_ind=3, middle_ind=7).eval()
    with torch.no_grad():
        for name, buf in E.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
        E.latent_avg.normal_()
    sd = {f"encoder.{k}": v for k, v in E.state_dict().items() if k != "latent_avg"}
    sd.update({f"decoder.{k}": v for k, v in rosinality_generator_state(G).items()})
    torch.save({"state_dict": sd, "opts": {"stylegan_size": 32, "encoder_type": "Encoder4Editing"},
                "latent_avg": E.latent_avg.clone()}, tmp_path / "e4e_tiny_encode.pt")
    out = subprocess.run([sys.executable, "-m", "stylecli", "weights", "convert", str(tmp_path / "e4e_tiny_encode.pt"),
                          str(tmp_path / "pack")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pack = Pack.open(tmp_path / "pack")
    E2, G2 = pack.load("e4e_encoder"), pack.generator()
    assert E2.config == E.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(E2(x), E(x))
        torch.testing.assert_close(G2.synthesis(E2(x)), G.synthesis(E(x)))
