"""Converted official checkpoints reproduce the official code's own outputs (tests/golden, made by NVIDIA's and
rosinality's code; see tests/golden/README.md), within 1e-4.

Each test writes the official on-disk layout from the stored state dict, converts it with `weights convert`'s
converter, and runs stylecli's networks on the stored inputs: W codes (every truncation), images (noise_mode const /
the stored noise maps) and discriminator logits.
"""

import pytest
import torch

from checkpoint_fixtures import golden_case, write_golden_nvidia_pkl, write_golden_rosinality_pt
from stylecli.packs.convert import convert_checkpoint

ATOL = 1e-4


def tag(psi, cutoff) -> str:
    return f"psi{psi:g}" + ("" if cutoff is None else f"_cutoff{cutoff}")


def assert_matches_golden(conv, meta: dict, tensors: dict) -> None:
    """W codes, images and logits of the converted networks equal the official ones within ATOL."""
    G, D = conv.generator.eval(), conv.discriminator.eval()
    z = tensors["z"]
    compared = 0
    with torch.no_grad():
        for psi, cutoff in meta["truncations"]:
            ws = G.mapping(z, truncation_psi=psi, truncation_cutoff=cutoff)
            torch.testing.assert_close(ws, tensors[f"ws_{tag(psi, cutoff)}"], atol=ATOL, rtol=0)
            if f"img_{tag(psi, cutoff)}" in tensors:
                want = tensors[f"img_{tag(psi, cutoff)}"]
                assert want.std() > 0.1  # a real image, not a constant a broken network could also produce
                torch.testing.assert_close(G(z, truncation_psi=psi, noise_mode="const"), want, atol=ATOL, rtol=0)
                compared += 1
        torch.testing.assert_close(D(tensors["img_psi1"]), tensors["logits"], atol=ATOL, rtol=0)
    assert compared == 2


@pytest.mark.parametrize("case", ["nvidia", "nvidia-ada"])
def test_nvidia_pickle_reproduces_the_official_networks(case, tmp_path):
    meta, tensors = golden_case(case)
    pkl = write_golden_nvidia_pkl(tmp_path / "network-snapshot.pkl", meta, tensors, tmp_path / "code_ran.txt")
    conv = convert_checkpoint(pkl)
    assert not (tmp_path / "code_ran.txt").exists()
    assert conv.generator.config["conv_clamp"] == meta["G_kwargs"]["synthesis_kwargs"]["conv_clamp"]
    assert conv.reports["generator"].checked  # the official filters were compared with the core's, not skipped
    assert_matches_golden(conv, meta, tensors)


def test_the_ada_golden_depends_on_the_clamp(tmp_path):
    """The clamp case has teeth: without the clamp the same weights miss the official images by far more than 1e-4."""
    meta, tensors = golden_case("nvidia-ada")
    G = convert_checkpoint(write_golden_nvidia_pkl(tmp_path / "s.pkl", meta, tensors, tmp_path / "m")).generator.eval()
    for module in G.modules():
        if hasattr(module, "conv_clamp"):
            module.conv_clamp = None
    with torch.no_grad():
        err = (G(tensors["z"], noise_mode="const") - tensors["img_psi1"]).abs().max().item()
    assert err > 1e-2


def test_stylegan3_repository_layout_and_class_defaults(tmp_path):
    """stylegan3's networks_stylegan2.Generator takes the synthesis settings as its own keywords, and its block
    default conv_clamp=256 is recorded only by the layers: the clamp is read from them, not assumed None."""
    meta, tensors = golden_case("nvidia-ada")
    kwargs = meta["G_modules"][""]["init_kwargs"]
    synthesis = kwargs.pop("synthesis_kwargs")
    del synthesis["conv_clamp"]  # left to the class default; the layers' records hold the value used (1.0)
    kwargs.update(synthesis, fused_modconv_default="inference_only")
    del meta["D_modules"][""]["init_kwargs"]["conv_clamp"]
    conv = convert_checkpoint(write_golden_nvidia_pkl(tmp_path / "sg3.pkl", meta, tensors, tmp_path / "m"))
    assert conv.generator.config["conv_clamp"] == 1.0 and conv.discriminator.config["conv_clamp"] == 1.0
    assert_matches_golden(conv, meta, tensors)


def test_rosinality_checkpoint_reproduces_the_official_networks(tmp_path):
    meta, tensors = golden_case("rosinality")
    conv = convert_checkpoint(write_golden_rosinality_pt(tmp_path / "550000.pt", tensors))
    widths = {int(k): v for k, v in meta["widths"].items() if int(k) <= meta["g_kwargs"]["size"]}
    assert conv.generator.synthesis.channels == widths  # channel widths inferred from the tensors
    assert conv.generator.mapping.num_layers == meta["g_kwargs"]["n_mlp"]
    assert {k for k in conv.reports["generator"].checked} >= {"convs.0.conv.blur.kernel", "to_rgbs.0.upsample.kernel"}
    assert_matches_golden(conv, meta, tensors)
