"""Importing official checkpoints: both layouts, strict filling, and no code ever run from a file."""

import os
import pickle

import pytest
import torch

from checkpoint_fixtures import (golden_case, random_networks, rosinality_generator_state, write_golden_nvidia_pkl,
                                 write_golden_rosinality_pt, write_nvidia_pkl, write_rosinality_pt)
from stylecli.packs import Pack, write_pack
from stylecli.packs.convert import ConversionError, convert_checkpoint
from cli_runner import stylecli


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
    checked = ros.reports["generator"].checked  # rosinality's kernels are compared with the core's filter
    assert any(k.endswith("blur.kernel") for k in checked) and any(k.endswith("upsample.kernel") for k in checked)
    assert not ros.reports["generator"].ignored


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
    out = stylecli("weights", "convert", tmp_path / "e4e_tiny_encode.pt", tmp_path / "pack")
    assert out.returncode == 0, out.stderr
    pack = Pack.open(tmp_path / "pack")
    E2, G2 = pack.load("e4e_encoder"), pack.generator()
    assert E2.config == E.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(E2(x), E(x))
        torch.testing.assert_close(G2.synthesis(E2(x)), G.synthesis(E(x)))


# ----------------------------------------------------------------------------------------------------------------
# Exact shapes and architecture settings, on official-looking checkpoints (tests/golden: the official code's records)

def test_a_same_size_tensor_with_swapped_dimensions_is_refused(tmp_path):
    """[16, 8, 3, 3] and [8, 16, 3, 3] hold as many numbers; the converter compares shapes, not element counts."""
    meta, tensors = golden_case("nvidia")
    key = "G_ema.synthesis.b32.conv0.weight"
    assert tensors[key].shape == (8, 16, 3, 3)
    tensors[key] = tensors[key].transpose(0, 1).contiguous()
    with pytest.raises(ConversionError, match=r"synthesis\.b32\.conv0\.weight' has shape \(16, 8, 3, 3\), expected "
                                              r"\(8, 16, 3, 3\)"):
        convert_checkpoint(write_golden_nvidia_pkl(tmp_path / "s.pkl", meta, tensors, tmp_path / "m"))
    # rosinality: a modulation weight [in_channels, w_dim] stored as [w_dim, in_channels].
    _, tensors = golden_case("rosinality")
    key = "g_ema.to_rgbs.2.conv.modulation.weight"
    assert tensors[key].shape == (8, 32)
    tensors[key] = tensors[key].t().contiguous()
    with pytest.raises(ConversionError, match=r"has shape \(32, 8\), expected \(8, 32\)"):
        convert_checkpoint(write_golden_rosinality_pt(tmp_path / "r.pt", tensors))


def test_documented_rosinality_layouts_must_match_exactly(tmp_path):
    """The [1, C, 1, 1] ToRGB bias is a documented layout; the same numbers as [C, 1, 1, 1] are not."""
    _, tensors = golden_case("rosinality")
    tensors["g_ema.to_rgbs.0.bias"] = tensors["g_ema.to_rgbs.0.bias"].reshape(3, 1, 1, 1)
    with pytest.raises(ConversionError, match=r"'to_rgbs\.0\.bias' has shape \(3, 1, 1, 1\), expected \(1, 3, 1, 1\)"):
        convert_checkpoint(write_golden_rosinality_pt(tmp_path / "r.pt", tensors))


def _g_kwargs(meta):
    return meta["G_modules"][""]["init_kwargs"]


def _d_kwargs(meta):
    return meta["D_modules"][""]["init_kwargs"]


def _lr_multiplier_recorded_only(meta):
    """What a pickle trained with lr_multiplier=0.1 records in its layers, with the top-level kwargs silent on it."""
    for name, rec in meta["G_modules"].items():
        if name.startswith("mapping.fc"):
            rec["init_kwargs"]["lr_multiplier"] = 0.1
            rec["attrs"]["bias_gain"] = 0.1
            rec["attrs"]["weight_gain"] *= 10


def _one_layer_attribute(meta):
    meta["G_modules"]["mapping.fc1"]["attrs"]["bias_gain"] = 0.1  # fc0 (read for the setting) is fine


REFUSED = {
    "mapping lr_multiplier 0.1": (lambda m: _g_kwargs(m)["mapping_kwargs"].update(lr_multiplier=0.1),
                                  r"G_ema: mapping_kwargs\.lr_multiplier=0\.1 is not supported; .* 0\.01 only"),
    "lr_multiplier recorded only by the layers": (_lr_multiplier_recorded_only, r"mapping_kwargs\.lr_multiplier=0\.1"),
    "one layer's recorded gain": (_one_layer_attribute, r"mapping\.fc1\.bias_gain is 0\.1 in the checkpoint"),
    "conditional generator": (lambda m: _g_kwargs(m).update(c_dim=10), r"G_ema: c_dim=10 is not supported"),
    "mapping activation": (lambda m: _g_kwargs(m)["mapping_kwargs"].update(activation="relu"),
                           r"mapping_kwargs\.activation='relu'"),
    "mapping layer_features": (lambda m: _g_kwargs(m)["mapping_kwargs"].update(layer_features=64),
                               r"mapping_kwargs\.layer_features=64 .* w_dim only"),
    "no w_avg": (lambda m: _g_kwargs(m)["mapping_kwargs"].update(w_avg_beta=None), r"mapping_kwargs\.w_avg_beta=None"),
    "synthesis architecture": (lambda m: _g_kwargs(m)["synthesis_kwargs"].update(architecture="resnet"),
                               r"synthesis_kwargs\.architecture='resnet' .* 'skip' only"),
    "resample filter": (lambda m: _g_kwargs(m)["synthesis_kwargs"].update(resample_filter=[1, 2, 1]),
                        r"synthesis_kwargs\.resample_filter=\[1, 2, 1\]"),
    "kernel size": (lambda m: _g_kwargs(m)["synthesis_kwargs"].update(kernel_size=1),
                    r"synthesis_kwargs\.kernel_size=1"),
    "no noise": (lambda m: _g_kwargs(m)["synthesis_kwargs"].update(use_noise=False),
                 r"synthesis_kwargs\.use_noise=False"),
    "layer activation": (lambda m: _g_kwargs(m)["synthesis_kwargs"].update(activation="elu"),
                         r"synthesis_kwargs\.activation='elu'"),
    "an alias-free (stylegan3) setting": (lambda m: _g_kwargs(m).update(magnitude_ema_beta=0.999),
                                          r"G_ema: unknown setting magnitude_ema_beta=0\.999"),
    "D architecture": (lambda m: _d_kwargs(m).update(architecture="orig"), r"D: architecture='orig' .* 'resnet' only"),
    "conditional D": (lambda m: _d_kwargs(m).update(c_dim=10), r"D: c_dim=10"),
    "D activation": (lambda m: _d_kwargs(m)["block_kwargs"].update(activation="relu"), r"D: block_kwargs\.activation"),
    "mbstd over the whole batch": (lambda m: _d_kwargs(m)["epilogue_kwargs"].update(mbstd_group_size=None),
                                   r"epilogue_kwargs\.mbstd_group_size=None"),
    "two mbstd channels": (lambda m: _d_kwargs(m)["epilogue_kwargs"].update(mbstd_num_channels=2),
                           r"epilogue_kwargs\.mbstd_num_channels=2 .* 1 only"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_settings_the_core_cannot_honour_are_refused_by_name(name, tmp_path):
    mutate, message = REFUSED[name]
    meta, tensors = golden_case("nvidia")
    mutate(meta)
    with pytest.raises(ConversionError, match=message) as err:
        convert_checkpoint(write_golden_nvidia_pkl(tmp_path / "s.pkl", meta, tensors, tmp_path / "m"))
    assert "\n" not in str(err.value)


def test_lr_multiplier_refusal_through_the_cli(tmp_path):
    """The issue's case: `weights convert` of a mapping with lr_multiplier 0.1 ends with one error line and exit 2."""

    meta, tensors = golden_case("nvidia")
    _g_kwargs(meta)["mapping_kwargs"]["lr_multiplier"] = 0.1
    pkl = write_golden_nvidia_pkl(tmp_path / "s.pkl", meta, tensors, tmp_path / "m")
    out = stylecli("weights", "convert", pkl, tmp_path / "pack")
    assert out.returncode == 2
    assert "mapping_kwargs.lr_multiplier=0.1 is not supported" in out.stderr
    assert not (tmp_path / "pack").exists()


def test_a_filter_buffer_other_than_the_cores_is_refused(tmp_path):
    """Filters are compared, not regenerated over: a pickle whose kwargs are silent but whose buffer differs."""
    meta, tensors = golden_case("nvidia")
    f = torch.tensor([1.0, 2, 1])
    tensors["G_ema.synthesis.b16.conv0.resample_filter"] = (f.outer(f) / f.outer(f).sum())
    with pytest.raises(ConversionError, match=r"'synthesis\.b16\.conv0\.resample_filter' is not the \[1, 3, 3, 1\]"):
        convert_checkpoint(write_golden_nvidia_pkl(tmp_path / "s.pkl", meta, tensors, tmp_path / "m"))
    _, tensors = golden_case("rosinality")
    tensors["g_ema.convs.2.conv.blur.kernel"] = tensors["g_ema.convs.2.conv.blur.kernel"] / 4  # unscaled upsampling
    with pytest.raises(ConversionError, match=r"'convs\.2\.conv\.blur\.kernel' is not the \[1, 3, 3, 1\]"):
        convert_checkpoint(write_golden_rosinality_pt(tmp_path / "r.pt", tensors))


def test_training_and_speed_settings_are_accepted_and_change_nothing(tmp_path):
    meta, tensors = golden_case("nvidia")
    g, d = _g_kwargs(meta), _d_kwargs(meta)
    g["mapping_kwargs"].update(w_avg_beta=0.998, embed_features=64)
    g["synthesis_kwargs"].update(num_fp16_res=4, fp16_channels_last=True, fused_modconv_default="inference_only")
    d.update(num_fp16_res=4, cmap_dim=64, mapping_kwargs={"num_layers": 4})
    d["block_kwargs"].update(fp16_channels_last=True, freeze_layers=2)
    conv = convert_checkpoint(write_golden_nvidia_pkl(tmp_path / "s.pkl", meta, tensors, tmp_path / "m"))
    with torch.no_grad():
        img = conv.generator.eval()(tensors["z"], truncation_psi=0.7, noise_mode="const")
        torch.testing.assert_close(img, tensors["img_psi0.7"], atol=1e-4, rtol=0)
        torch.testing.assert_close(conv.discriminator.eval()(tensors["img_psi1"]), tensors["logits"], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# NVIDIA's legacy TensorFlow pickle (stylegan2-ffhq-config-f.pkl), written in its layout by tests/tf_pickle_fixtures.py

@pytest.fixture(scope="module")
def tf_networks():
    from tf_pickle_fixtures import exact_affine_biases

    G, D = random_networks(11)
    return exact_affine_biases(G), D


def test_tf_pickle_converts_bit_for_bit_and_runs_no_code(tf_networks, tmp_path):
    """stylecli -> TF layout (dense/conv transposes, mirrored Conv0_up, style bias - 1, noise maps) -> back."""
    from tf_pickle_fixtures import write_tf_pickle

    G, D = tf_networks
    marker = tmp_path / "code_ran.txt"
    conv = convert_checkpoint(write_tf_pickle(tmp_path / "config-f.pkl", G, D, marker))
    assert not marker.exists(), "build_module_src of the TF pickle was executed"
    assert conv.source_format == "nvidia-tf-pkl"
    assert conv.generator.config == G.config and conv.discriminator.config == D.config
    for ours, theirs in ((conv.generator, G), (conv.discriminator, D)):
        expected = theirs.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        assert torch.equal(conv.generator(z, truncation_psi=0.7, noise_mode="const"),
                           G(z, truncation_psi=0.7, noise_mode="const"))
        img = torch.randn(4, 3, 32, 32)
        assert torch.equal(conv.discriminator(img), D(img))
    # Every noise map went to its own layer (noise{2 log2 R - 5} -> conv0, noise{2 log2 R - 4} -> conv1).
    mapped = dict(conv.reports["generator"].mapped)
    assert mapped["synthesis/noise0"] == "synthesis.b4.conv1.noise_const"
    assert mapped["synthesis/noise1"] == "synthesis.b8.conv0.noise_const"
    assert mapped["synthesis/noise5"] == "synthesis.b32.conv0.noise_const"
    assert mapped["synthesis/noise6"] == "synthesis.b32.conv1.noise_const"


def test_tf_conv0_up_must_be_mirrored(tf_networks, tmp_path):
    """Reading Conv0_up without the flip would give another network: the flip is what makes the round trip exact."""
    import tf_pickle_fixtures as tf

    G, D = tf_networks
    original = tf.conv_up
    tf.conv_up = tf.conv  # a writer that forgets TF's mirrored storage
    try:
        conv = convert_checkpoint(tf.write_tf_pickle(tmp_path / "s.pkl", G, D, tmp_path / "m"))
    finally:
        tf.conv_up = original
    z = torch.randn(1, G.z_dim)
    with torch.no_grad():
        assert not torch.allclose(conv.generator(z, noise_mode="const"), G(z, noise_mode="const"), atol=1e-3)


class _TFExploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_tf_pickle_that_would_run_code_is_refused_and_nothing_runs(tf_networks, tmp_path):
    from tf_pickle_fixtures import write_tf_pickle

    G, D = tf_networks
    marker = tmp_path / "pwned.txt"
    path = write_tf_pickle(tmp_path / "evil.pkl", G, D, marker, extra_variable=("trojan", _TFExploit(marker)))
    with pytest.raises(ConversionError, match="refusing to load builtins.exec: not an allowed type in a TensorFlow"):
        convert_checkpoint(path)
    assert not marker.exists()


TF_REFUSED = {
    "conditional": (dict(g={"label_size": 10}), r"Gs: label_size=10 is not supported"),
    "resnet generator": (dict(g={"architecture": "resnet"}), r"Gs: architecture='resnet' .* 'skip' only"),
    "mapping lr": (dict(g={"mapping_lrmul": 0.1}), r"mapping_lrmul=0\.1"),
    "unknown kwarg": (dict(g={"magnitude_ema_beta": 0.5}), r"unknown setting magnitude_ema_beta=0\.5"),
    "mbstd features": (dict(d={"mbstd_num_features": 2}), r"D: mbstd_num_features=2"),
    "StyleGAN1 synthesis": (dict(funcs={"synthesis": "G_synthesis"}), r"Gs/synthesis: built by 'G_synthesis'"),
    "another D": (dict(funcs={"D": "D_basic"}), r"D: built by 'D_basic'"),
}


@pytest.mark.parametrize("name", list(TF_REFUSED))
def test_tf_settings_the_core_cannot_honour_are_refused(name, tf_networks, tmp_path):
    from tf_pickle_fixtures import tf_kwargs, write_tf_pickle

    G, D = tf_networks
    change, message = TF_REFUSED[name]
    g, d = tf_kwargs(G, D)
    g.update(change.get("g", {}))
    d.update(change.get("d", {}))
    path = write_tf_pickle(tmp_path / "s.pkl", G, D, tmp_path / "m", g, d, change.get("funcs"))
    with pytest.raises(ConversionError, match=message) as err:
        convert_checkpoint(path)
    assert "\n" not in str(err.value)


def test_tf_dropped_settings_change_nothing(tf_networks, tmp_path):
    """Truncation, style mixing, noise randomisation and fp16 are how TF ran the graph, not what it computes."""
    from tf_pickle_fixtures import tf_kwargs, write_tf_pickle

    G, D = tf_networks
    g, d = tf_kwargs(G, D)
    g.update(truncation_psi=0.5, style_mixing_prob=0.9, randomize_noise=True, dlatent_avg_beta=0.995, dtype="float32",
             num_fp16_res=0, fused_modconv=True, structure="auto")
    conv = convert_checkpoint(write_tf_pickle(tmp_path / "s.pkl", G, D, tmp_path / "m", g, d))
    z = torch.randn(1, G.z_dim)
    with torch.no_grad():
        assert torch.equal(conv.generator(z, noise_mode="const"), G(z, noise_mode="const"))


def test_a_tf_tensor_with_swapped_dimensions_is_refused(tf_networks, tmp_path):
    """A dense weight stored [out, in] instead of TF's [in, out] holds as many numbers; the shape is what counts."""
    import tf_pickle_fixtures as tf

    G, D = tf_networks
    original = tf.dense
    tf.dense = tf._np  # a writer that forgets TF's [in, out] layout
    try:
        path = tf.write_tf_pickle(tmp_path / "s.pkl", G, D, tmp_path / "m")
    finally:
        tf.dense = original
    with pytest.raises(ConversionError, match=r"'synthesis/32x32/Conv1/mod_weight' has shape \(16, 32\), expected "
                                              r"\(32, 16\) for 'synthesis\.b32\.conv1\.affine\.weight' \(dense"):
        convert_checkpoint(path)
