"""SFE: the inverter and feature editor, the F_k synthesis, the two training phases, resume, export and the method."""

import dataclasses
from pathlib import Path

import pytest
import torch

from stylecli.methods.sfe import EDITOR, INVERTER
from stylecli.methods.sfe.method import (edit_delta, feature_layer, generator_feature, rows_up_to,
                                         synthesize_from_feature)
from stylecli.methods.sfe.model import FeatureEditor, Inverter, InverterConfig
from stylecli.methods.sfe.spec import SFETrainingConfig
from stylecli.methods.sfe.train import SFETrainer, inverter_config_for, sfe_from_run
from stylecli.packs import Pack, write_pack
from cli_runner import stylecli

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"
TINY = dict(stem=8, widths=[8, 8, 16, 16], units=[1, 1, 1, 1], pool=2)


@pytest.fixture(scope="module")
def G():
    return Pack.open(SHIPPED).generator()


def test_feature_synthesis_with_the_generators_own_feature_is_plain_synthesis(G):
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)))
    for layer in ("b16.conv1", "b32.conv1"):
        f_w, skip = generator_feature(G, ws, layer)
        assert f_w.shape[1:] == G.synthesis.feature_shape(layer) and skip.shape[-1] == int(layer[1:3]) // 2
        torch.testing.assert_close(synthesize_from_feature(G, ws, f_w, layer, skip), G.synthesis(ws),
                                   atol=1e-5, rtol=0)
        # F_k drives its block's toRGB: another feature changes the image.
        assert (synthesize_from_feature(G, ws, f_w + 1, layer, skip) - G.synthesis(ws)).abs().mean() > 1e-2


def test_inverter_shapes_for_64_px_and_the_official_configuration(G):
    for size, strides in ((16, [2, 2, 1, 2]), (32, [2, 1, 1, 2])):
        cfg = inverter_config_for(G, size, TINY)
        assert cfg["strides"] == strides and cfg["feature_channels"] == G.synthesis.channels[size]
        inv = Inverter(**cfg).eval()
        assert feature_layer(inv) == f"b{size}.conv1"
        w, f_pred = inv(torch.zeros(2, 3, 64, 64))
        assert w.shape == (2, G.num_ws, G.w_dim) and f_pred.shape == (2, cfg["feature_channels"], size, size)
    with pytest.raises(ValueError, match="feature-size 4"):
        inverter_config_for(G, 4)
    official = InverterConfig.official()
    assert official.feature_size == 64 and sum(official.widths) * official.pool ** 2 == 8640
    big = Inverter(**dataclasses.asdict(official))
    assert big.fs_backbone.styles[0].weight.shape == (512, 8640)
    assert big.fuser.conv.weight.shape == (512, 1024, 1, 1) and len(big.fuser.body) == 5
    # The first stage-3 block keeps the size (stride 1) and projects 128 -> 256 channels, as the official replaces it.
    assert big.fs_backbone.block_3[0].conv2.stride == (1, 1)
    assert big.fs_backbone.block_3[0].downsample[0].weight.shape == (256, 128, 1, 1)


def test_an_inverter_on_e4e_starts_from_e4es_code_and_reads_its_residual(G):
    inv = Inverter(**inverter_config_for(G, 16, {**TINY, "on_e4e": True})).eval()
    w_e4e, x = torch.randn(2, G.num_ws, G.w_dim), torch.rand(2, 3, 64, 64) * 2 - 1
    w, f_pred = inv(x, w_e4e, x)
    torch.testing.assert_close(w, w_e4e)
    assert inv.fs_backbone.conv[0].weight.shape[1] == 6
    _, f_other = inv(x, w_e4e, torch.zeros_like(x))
    assert (f_pred - f_other).abs().mean() > 0  # the residual reaches F_pred
    with pytest.raises(AssertionError, match="given exactly when"):
        inv(x)


def test_the_detail_shortcut_joins_at_zero_and_carries_each_residual_pixel_to_its_feature_position(G):
    inv = Inverter(**inverter_config_for(G, 16, {**TINY, "on_e4e": True})).eval()
    grown = inv.reconfigured(detail_shortcut=True).eval()
    assert grown.cfg.detail_shortcut and grown.detail[1].weight.shape == (G.synthesis.channels[16], 3 * 4 * 4, 3, 3)
    w_e4e, x, y = torch.randn(2, G.num_ws, G.w_dim), torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    for a, b in zip(inv(x, w_e4e, y), grown(x, w_e4e, y)):  # nothing changes until it trains
        torch.testing.assert_close(a, b)
    # Trained (here: random weights), one residual pixel reaches F_pred at its 4 x 4 patch's position and neighbours
    # (and, far more weakly, everywhere through the backbone, which reads the residual too).
    torch.nn.init.normal_(grown.detail[1].weight)
    bumped = y.clone()
    bumped[0, :, 37, 22] += 0.5  # pixel (37, 22) lies in F_k's cell (9, 5)
    change = (grown(x, w_e4e, y)[1] - grown(x, w_e4e, bumped)[1]).abs().sum(dim=1)[0]
    assert change[8:11, 4:7].min() > 1 and change.sum() - change[8:11, 4:7].sum() < 0.01 * change[8:11, 4:7].sum()
    (grown(x, w_e4e, y)[1].square().sum()).backward()
    assert grown.detail[1].weight.grad.abs().sum() > 0
    with pytest.raises(AssertionError, match="builds on e4e"):
        Inverter(**inverter_config_for(G, 16, TINY)).reconfigured(detail_shortcut=True)


def test_the_feature_editor_starts_by_carrying_e4es_feature_change_over():
    H = FeatureEditor(16, 2).eval()
    f, delta = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(H(f, torch.zeros_like(f)), f)  # no edit: F_k as it is
    torch.testing.assert_close(H(f, delta), f - delta)       # F_k + F(w_E + d) - F(w_E)
    out = H(f, delta)
    out.sum().backward()
    assert H.encoder.conv.weight.grad[:, 16:].abs().sum() > 0 and H.encoder.body[0].body[-1].weight.grad.abs().sum() > 0


def test_edit_delta_is_zero_without_an_edit_and_per_image(G):
    ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(1)))
    d = torch.randn(G.num_ws, G.w_dim)
    # Zero up to float rounding: both codes go through G in one batch, and with several threads oneDNN may sum the two
    # halves of a batch in different orders (~1e-6 on an AMD EPYC with 2 threads; exactly 0 with one).
    assert edit_delta(G, ws, 0 * d, "b16.conv1")[0].abs().max() < 1e-5
    per_image, skips = edit_delta(G, ws, torch.tensor([0.0, 1.0, -1.0]).view(3, 1, 1) * d, "b16.conv1")
    assert per_image[0].abs().max() < 1e-5 and per_image[1].abs().mean() > 1e-3
    torch.testing.assert_close(per_image[2:], edit_delta(G, ws[2:], -d, "b16.conv1")[0])
    # The skip is the edited code's: what the image synthesised from the edited F_k continues from.
    torch.testing.assert_close(skips[1:2], generator_feature(G, ws[1:2] + d, "b16.conv1")[1], atol=1e-5, rtol=0)


def test_an_inverter_can_keep_e4es_rows_up_to_f_k(G):
    cfg = inverter_config_for(G, 16, {**TINY, "on_e4e": True})
    inv = Inverter(**cfg).eval()
    for style in inv.fs_backbone.styles:
        torch.nn.init.normal_(style.weight, std=0.1)
    rows = rows_up_to(G, "b16.conv1")
    assert rows == G.synthesis.w_index("b16.conv1") + 1 == 5  # b4.conv1, b8.conv0/1, b16.conv0/1
    kept = inv.reconfigured(e4e_rows=rows).eval()
    assert sum(isinstance(s, torch.nn.Linear) for s in kept.fs_backbone.styles) == G.num_ws - rows
    w_e4e, x, y = torch.randn(2, G.num_ws, G.w_dim), torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    (w, f_pred), (w_kept, f_kept) = inv(x, w_e4e, y), kept(x, w_e4e, y)
    assert torch.equal(w_kept[:, :rows], w_e4e[:, :rows]) and (w[:, :rows] - w_e4e[:, :rows]).abs().min() > 0
    torch.testing.assert_close(w_kept[:, rows:], w[:, rows:])  # the later rows' heads are the loaded ones
    torch.testing.assert_close(f_kept, f_pred)
    assert "fs_backbone.styles.4.weight" not in kept.state_dict() and "fs_backbone.styles.5.weight" in kept.state_dict()
    with pytest.raises(AssertionError, match="need on_e4e"):
        Inverter(**{**cfg, "on_e4e": False, "e4e_rows": 2})


def tiny_config(tmp_path, **changes):
    base = dict(run_dir=str(tmp_path / "run"), steps=2, batch=2, workers=0, checkpoint_every=1, log_every=1,
                inverter_config=TINY, editor_blocks=1, adv_start=1, blend_steps=2)
    return SFETrainingConfig(**{**base, **changes})


def test_widths_choose_the_backbone_of_a_new_inverter(tmp_path):
    rest = {k: v for k, v in TINY.items() if k != "widths"}
    trainer = SFETrainer(tiny_config(tmp_path, widths="8,8,12,16", feature_size=32, inverter_config=rest))
    assert list(trainer.inverter.cfg.widths) == [8, 8, 12, 16] and trainer.inverter.cfg.feature_size == 32
    assert trainer.inverter.fs_backbone.content_layer[0].num_features == 12  # it reads the third stage
    for bad in ("8,8,12", "8,x,12,16", "8,8,0,16"):
        with pytest.raises(ValueError, match="--widths"):
            SFETrainer(tiny_config(tmp_path / bad.replace(",", "_"), widths=bad, inverter_config=rest))


def test_a_loaded_inverter_keeps_its_shape_and_the_record_says_it(tmp_path):
    rest = {k: v for k, v in TINY.items() if k != "widths"}
    SFETrainer(tiny_config(tmp_path, steps=1, widths="8,8,12,16", feature_size=32, inverter_config=rest)).run()
    run = str(tmp_path / "run")
    editor = tiny_config(tmp_path, run_dir=str(tmp_path / "editor"), phase="editor", inverter=run, steps=1)
    for options in (dict(phase="editor", inverter=run), dict(init=run)):
        for wrong, said in ((dict(feature_size=16), "--feature-size 16 (it has 32)"),
                            (dict(widths="8,8,16,16"), "--widths 8,8,16,16 (it has 8,8,12,16)")):
            with pytest.raises(ValueError, match=rf"{options.get('init') and '--init' or '--inverter'} .* "
                                                 rf"{said.replace('(', '[(]').replace(')', '[)]')}"):
                SFETrainer(tiny_config(tmp_path, run_dir=str(tmp_path / "x"), **options, **wrong))
    trainer = SFETrainer(editor)  # options left out: the inverter's own, written into the record
    assert (trainer.cfg.feature_size, trainer.cfg.widths) == (32, "8,8,12,16")
    trainer.run()
    record = sfe_from_run(tmp_path / "editor")[1]
    assert record["config"]["feature_size"] == 32 and record["config"]["widths"] == "8,8,12,16"
    # A resume takes the run's shape without repeating it; asking for another is the same error.
    assert SFETrainer(dataclasses.replace(editor, steps=2), resume=True).cfg.feature_size == 32
    with pytest.raises(ValueError, match="its own shape: --feature-size 16"):
        SFETrainer(dataclasses.replace(editor, feature_size=16), resume=True)


def test_phase_one_trains_resumes_exactly_and_exports_an_inverting_pack(tmp_path):
    cfg = tiny_config(tmp_path, steps=3)
    trainer = SFETrainer(cfg)
    before = {k: v.clone() for k, v in trainer.inverter.state_dict().items()}
    trainer.cfg = dataclasses.replace(cfg, steps=2)
    trainer.run()
    after = trainer.inverter.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "phase 1 trains the inverter"
    resumed = SFETrainer(cfg, resume=True)
    assert resumed.step == 2
    resumed.run()
    straight = SFETrainer(tiny_config(tmp_path / "b", steps=3))
    straight.run()
    for k, v in straight.inverter.state_dict().items():
        torch.testing.assert_close(resumed.inverter.state_dict()[k], v, msg=k)
    networks, record = sfe_from_run(tmp_path / "run")
    assert set(networks) == {INVERTER, EDITOR} and record["steps"] == 3 and "not trained" in record["editor"]
    with pytest.raises(ValueError, match="--resume continues a run with its own settings"):
        SFETrainer(dataclasses.replace(cfg, lr=1e-3), resume=True)


def test_phase_one_from_init_grows_the_detail_shortcut(tmp_path):
    SFETrainer(tiny_config(tmp_path, steps=1)).run()
    trainer = SFETrainer(tiny_config(tmp_path, run_dir=str(tmp_path / "grown"), init=str(tmp_path / "run"),
                                     detail_shortcut=True, steps=3, blend_steps=0))
    loaded = sfe_from_run(tmp_path / "run")[0][INVERTER].state_dict()
    assert trainer.inverter.cfg.detail_shortcut and float(trainer.inverter.detail[1].weight.detach().abs().sum()) == 0
    assert all(torch.equal(trainer.inverter.state_dict()[k], v) for k, v in loaded.items())
    trainer.run()
    exported = sfe_from_run(tmp_path / "grown")[0][INVERTER]
    assert exported.cfg.detail_shortcut and float(exported.detail[1].weight.detach().abs().sum()) > 0


def test_phase_two_trains_only_the_editor_on_a_frozen_inverter(tmp_path):
    SFETrainer(tiny_config(tmp_path, steps=1)).run()
    cfg = tiny_config(tmp_path, run_dir=str(tmp_path / "editor"), phase="editor", inverter=str(tmp_path / "run"))
    trainer = SFETrainer(cfg)
    inverter_before = {k: v.clone() for k, v in trainer.inverter.state_dict().items()}
    editor_before = {k: v.clone() for k, v in trainer.editor.state_dict().items()}
    trainer.run()
    assert all(torch.equal(inverter_before[k], v) for k, v in trainer.inverter.state_dict().items())
    assert any(not torch.equal(editor_before[k], v) for k, v in trainer.editor.state_dict().items())
    networks, record = sfe_from_run(tmp_path / "editor")
    assert "editor" not in record
    for k, v in networks[INVERTER].state_dict().items():
        torch.testing.assert_close(v, inverter_before[k])
    with pytest.raises(ValueError, match="phase"):
        SFETrainer(tiny_config(tmp_path, run_dir=str(tmp_path / "x"), phase="both"))


def test_the_method_inverts_and_edits_from_saved_codes(tmp_path):
    from stylecli.methods import METHODS

    SFETrainer(tiny_config(tmp_path, steps=1)).run()
    networks, record = sfe_from_run(tmp_path / "run")
    import shutil
    shutil.copytree(SHIPPED, tmp_path / "pack")
    write_pack(tmp_path / "pack", "synthface-64", networks, 64, record)
    method = METHODS["sfe"].load(Pack.open(tmp_path / "pack"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    inv = method.invert(x)
    G = method.G
    assert inv.latents["f_k"].shape == (2, G.synthesis.channels[16], 16, 16)
    assert inv.latents["w_e4e"].shape == inv.latents["w_plus"].shape
    d = torch.randn(G.num_ws, G.w_dim)
    with torch.no_grad():  # a trained editor (not the identity start): chaining must hold whatever H does
        for block in method.editor.encoder.body:
            block.body[-1].weight.fill_(0.5)
    inv = method.invert(x)
    edited = method.edit_inversion(inv, d, 1.5)
    assert (edited.latents["w_offset"] - 1.5 * d).abs().max() < 1e-6
    # Chained edits: +1.5 then -1.5 gives the inversion back; +1.5 twice is the +3 edit.
    torch.testing.assert_close(method.edit(edited, d, -1.5), inv.image, atol=1e-5, rtol=0)
    torch.testing.assert_close(method.edit(edited, d, 1.5), method.edit(inv, d, 3.0), atol=1e-5, rtol=0)
    from stylecli.latents import LatentError
    from stylecli.methods.base import Inversion
    with pytest.raises(LatentError, match="invert the image again with --method sfe"):
        method.edit(Inversion(latents={"w_plus": inv.latents["w_plus"]}, image=None), d, 1.0)


def test_e4e_early_rows_take_f_w_and_the_skip_from_e4es_synthesis_exactly(tmp_path):
    """`train sfe --e4e-early-rows`: the rows up to F_k stay e4e's, and the method reads F_w and the RGB skip from the
    synthesis of G(w_E) instead of synthesising them from w: the same inversion and edits as the general path."""
    from stylecli.methods import METHODS

    SFETrainer(tiny_config(tmp_path / "a", steps=1)).run()
    trainer = SFETrainer(tiny_config(tmp_path, init=str(tmp_path / "a" / "run"), e4e_early_rows=True, steps=1))
    rows = rows_up_to(trainer.G, "b16.conv1")
    loaded = sfe_from_run(tmp_path / "a" / "run")[0][INVERTER].state_dict()
    assert trainer.inverter.cfg.e4e_rows == rows and all(
        torch.equal(v, loaded[k]) for k, v in trainer.inverter.state_dict().items())
    trainer.run()
    networks, record = sfe_from_run(tmp_path / "run")
    assert record["config"]["e4e_early_rows"] and networks[INVERTER].cfg.e4e_rows == rows
    with torch.no_grad():  # trained heads and fuser (not their zero starts): every path must agree whatever they hold
        for style in networks[INVERTER].fs_backbone.styles[rows:]:
            style.weight.normal_(std=0.05)
        networks[INVERTER].fuser.conv.weight.normal_(std=0.1)
        for block in networks[EDITOR].encoder.body:
            block.body[-1].weight.fill_(0.5)
    import shutil
    shutil.copytree(SHIPPED, tmp_path / "pack")
    write_pack(tmp_path / "pack", "synthface-64", networks, 64, record)
    method = METHODS["sfe"].load(Pack.open(tmp_path / "pack"))
    G, layer, x = method.G, method.layer, torch.rand(2, 3, 64, 64) * 2 - 1
    inv = method.invert(x)
    w, w_e4e, f_k = inv.latents["w_plus"], inv.latents["w_e4e"], inv.latents["f_k"]
    assert torch.equal(w[:, :rows], w_e4e[:, :rows]) and (w[:, rows:] - w_e4e[:, rows:]).abs().mean() > 1e-3
    d = torch.randn(G.num_ws, G.w_dim)
    with torch.no_grad():  # the general path: F_w and the skip synthesised from w (and from the edited code)
        _, f_pred = method.inverter(x, w_e4e, G.synthesis(w_e4e))
        f_w, skip = generator_feature(G, w, layer)
        torch.testing.assert_close(f_k, method.inverter.fuse(f_pred, f_w), atol=1e-5, rtol=0)
        image = synthesize_from_feature(G, w, method.editor(f_k, torch.zeros_like(f_k)), layer, skip)
        torch.testing.assert_close(inv.image, image, atol=1e-5, rtol=0)
        delta = generator_feature(G, w_e4e, layer)[0] - generator_feature(G, w_e4e + 1.5 * d, layer)[0]
        _, skip_edit = generator_feature(G, w + 1.5 * d, layer)
        edit = synthesize_from_feature(G, w + 1.5 * d, method.editor(f_k, delta), layer, skip_edit)
    edited = method.edit_inversion(inv, d, 1.5)
    torch.testing.assert_close(edited.image, edit, atol=1e-5, rtol=0)
    torch.testing.assert_close(edited.latents["w_plus"], w + 1.5 * d, atol=1e-6, rtol=0)
    torch.testing.assert_close(method.edit(edited, d, -1.5), inv.image, atol=1e-5, rtol=0)
    # Codes whose early rows are not e4e's (e.g. saved by an inverter without e4e_rows) take the general path.
    other = dict(inv.latents, w_plus=w + 0.3 * torch.randn_like(w))
    from stylecli.methods.base import Inversion
    with torch.no_grad():
        moved = other["w_plus"] + 1.5 * d
        _, skip_other = generator_feature(G, moved, layer)
        expected = synthesize_from_feature(G, moved, method.editor(f_k, delta), layer, skip_other)
    torch.testing.assert_close(method.edit(Inversion(latents=other, image=None), d, 1.5), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="shape the inverter of phase 1"):
        SFETrainer(tiny_config(tmp_path, run_dir=str(tmp_path / "x"), phase="editor", inverter=str(tmp_path / "run"),
                               e4e_early_rows=True))


def official_layout_state(stem=8, widths=(8, 8, 16, 16), units=(1, 2, 1, 1), styles=3, w_dim=16, feature=12, blocks=2,
                          prefix="encoder."):
    """A state dict written key by key after the official modules (insightface's iresnet IBasicBlock, the SFE
    FSLikeBackbone with stage 3 at stride 1, ContentLayerDeepFast), random values: what `sfe_inverter_light.pt` holds."""
    g = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    sd = {}

    def bn(key, c):
        sd.update({f"{key}.weight": rand(c), f"{key}.bias": rand(c), f"{key}.running_mean": rand(c),
                   f"{key}.running_var": rand(c).abs() + 0.5, f"{key}.num_batches_tracked": torch.tensor(7)})

    def body(key, c):  # BN, conv3 (no bias), BN, PReLU, conv3 (no bias), BN
        bn(f"{key}.0", c)
        sd[f"{key}.1.weight"] = rand(c, c, 3, 3)
        bn(f"{key}.2", c)
        sd[f"{key}.3.weight"] = rand(c)
        sd[f"{key}.4.weight"] = rand(c, c, 3, 3)
        bn(f"{key}.5", c)

    p = prefix + "fs_backbone."
    sd[p + "conv.0.weight"] = rand(stem, 3, 3, 3)
    bn(p + "conv.1", stem)
    sd[p + "conv.2.weight"] = rand(stem)
    c_in = stem
    for k, (w, n) in enumerate(zip(widths, units), start=1):
        for i in range(n):
            key = f"{p}block_{k}.{i}"
            c = c_in if i == 0 else w
            bn(f"{key}.bn1", c)
            sd[f"{key}.conv1.weight"] = rand(w, c, 3, 3)
            bn(f"{key}.bn2", w)
            sd[f"{key}.prelu.weight"] = rand(w)
            sd[f"{key}.conv2.weight"] = rand(w, w, 3, 3)
            bn(f"{key}.bn3", w)
            if i == 0:  # every first block projects (a stride or a width change)
                sd[f"{key}.downsample.0.weight"] = rand(w, c, 1, 1)
                bn(f"{key}.downsample.1", w)
        c_in = w
    bn(p + "content_layer.0", widths[2])
    sd[p + "content_layer.1.weight"] = rand(feature, widths[2], 3, 3)
    bn(p + "content_layer.2", feature)
    sd[p + "content_layer.3.weight"] = rand(feature)
    sd[p + "content_layer.4.weight"] = rand(feature, feature, 3, 3)
    bn(p + "content_layer.5", feature)
    for i in range(styles):
        sd[f"{p}styles.{i}.weight"] = rand(w_dim, sum(widths) * 9)
        sd[f"{p}styles.{i}.bias"] = rand(w_dim)
    f = prefix + "fuser."
    sd[f + "conv.weight"], sd[f + "conv.bias"] = rand(feature, 2 * feature, 1, 1), rand(feature)
    for i in range(blocks):
        body(f"{f}body.{i}.body", feature)
    return sd


def test_official_checkpoints_import_with_every_tensor_in_place(tmp_path):
    from stylecli.methods.sfe.convert import convert, detect
    from stylecli.packs.convert import ConversionError

    sd = official_layout_state()
    sd["discriminator.b4.fc.weight"] = torch.zeros(2, 2)  # the fine-tuned D travels along; not part of SFE
    torch.save({"state_dict": sd, "latent_avg": torch.randn(16)}, tmp_path / "sfe_inverter_light.pt")
    editor_sd = {}
    for k, v in official_layout_state(prefix="").items():
        if k.startswith("fuser."):
            editor_sd["encoder." + k[len("fuser."):]] = v
    torch.save({"state_dict": editor_sd, "latent_avg": torch.randn(3, 16)}, tmp_path / "sfe_editor_light.pt")
    assert detect(tmp_path / "sfe_inverter_light.pt") and detect(tmp_path / "sfe_editor_light.pt")
    assert not detect(SHIPPED / "generator.safetensors")

    networks, reports = convert(tmp_path / "sfe_inverter_light.pt")
    inverter = networks[INVERTER]
    cfg = inverter.cfg
    assert (cfg.stem, list(cfg.widths), list(cfg.units), cfg.pool, cfg.num_ws, cfg.w_dim, cfg.feature_channels,
            cfg.fuser_blocks) == (8, [8, 8, 16, 16], [1, 2, 1, 1], 3, 3, 16, 12, 2)
    mine = inverter.state_dict()
    for key, value in sd.items():
        if key.startswith("encoder."):
            torch.testing.assert_close(mine[key[len("encoder."):]], value.to(mine[key[len("encoder."):]].dtype))
    assert len(reports[INVERTER].mapped) == len([k for k in sd if k.startswith("encoder.")]) + 1  # + latent_avg
    w, f_pred = inverter(torch.zeros(1, 3, 256, 256))
    assert w.shape == (1, 3, 16) and f_pred.shape == (1, 12, 64, 64)  # F_k at 64 px from 256 px, as released

    networks, _ = convert(tmp_path / "sfe_editor_light.pt")
    assert set(networks) == {EDITOR} and networks[EDITOR].config == {"channels": 12, "blocks": 2}
    torch.testing.assert_close(networks[EDITOR].state_dict()["encoder.conv.weight"], editor_sd["encoder.conv.weight"])

    broken = dict(sd)
    broken["encoder.fuser.conv.weight"] = torch.zeros(12, 20, 1, 1)
    torch.save({"state_dict": broken, "latent_avg": torch.randn(16)}, tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match="fuser.conv.weight"):
        convert(tmp_path / "bad.pt")
    torch.save({"state_dict": sd}, tmp_path / "no_avg.pt")
    with pytest.raises(ConversionError, match="latent_avg"):
        convert(tmp_path / "no_avg.pt")


def test_weights_convert_adds_official_sfe_files_to_an_existing_pack_only(tmp_path):
    import shutil

    torch.save({"state_dict": official_layout_state(), "latent_avg": torch.randn(16)}, tmp_path / "inv.pt")
    shutil.copytree(SHIPPED, tmp_path / "pack")
    added = stylecli("weights", "convert", str(tmp_path / "inv.pt"), str(tmp_path / "pack"))
    assert added.returncode == 0, added.stderr
    assert Pack.open(tmp_path / "pack").has(INVERTER)
    editor_sd = {"encoder." + k[len("fuser."):]: v for k, v in official_layout_state(prefix="").items()
                 if k.startswith("fuser.")}
    torch.save({"state_dict": editor_sd}, tmp_path / "ed.pt")
    assert stylecli("weights", "convert", str(tmp_path / "ed.pt"), str(tmp_path / "pack")).returncode == 0
    refused = stylecli("weights", "convert", str(tmp_path / "inv.pt"), str(tmp_path / "new"))
    assert refused.returncode == 2 and "no generator" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (tmp_path / "new").exists()
    # Made for the 1024 px generator (F_k at 64 px): on the 64 px pack the method says so in one line.
    wrong = stylecli("invert", str(SHIPPED.parent.parent / "examples" / "face.png"), "--model", str(tmp_path / "pack"),
                     "--method", "sfe", "-o", str(tmp_path / "out"))
    assert wrong.returncode == 2 and "made for another generator" in wrong.stderr, wrong.stderr
