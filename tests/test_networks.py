"""The StyleGAN2 core: official sizes, the resampling convolution's definition, and the synthesis entry points."""

import pytest
import torch
import torch.nn.functional as F

from stylecli.core.layers import conv2d_resample, modulated_conv2d
from stylecli.core.networks import Discriminator, Generator
from stylecli.core.ops import upfirdn2d
from stylecli.models import CONFIGS


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_config_f_has_the_official_sizes():
    G, D = Generator(**CONFIGS["ffhq-1024"]), Discriminator()
    assert count(G) == 30_370_060
    assert count(G.mapping) == 2_101_248
    assert count(D) == 29_012_513
    assert G.num_ws == 18
    assert [G.synthesis.channels[r] for r in (4, 64, 128, 256, 512, 1024)] == [512, 512, 256, 128, 64, 32]
    assert tuple(D.b4.conv.weight.shape) == (512, 513, 3, 3) and tuple(D.b4.fc.weight.shape) == (512, 8192)


@pytest.fixture(scope="module")
def small_g():
    torch.manual_seed(0)
    G = Generator(**CONFIGS["tiny-32"]).eval()
    with torch.no_grad():  # non-zero noise strengths and biases so every path matters
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.normal_(0, 0.1)
    return G


@pytest.mark.parametrize("flip_weight", [True, False])
def test_upsampling_conv_fast_path_matches_its_definition(flip_weight):
    """conv_transpose + FIR filter == zero-insert, pad, filter (gain 4), valid conv."""
    torch.manual_seed(1)
    x, w = torch.randn(2, 5, 6, 7, dtype=torch.float64), torch.randn(4, 5, 3, 3, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    fast = conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=flip_weight)
    ref = upfirdn2d.upfirdn2d(x, f, up=2, padding=[1 + 2, 1 + 1, 1 + 2, 1 + 1], gain=4)
    ref = F.conv2d(ref, w if flip_weight else w.flip([2, 3]))
    assert fast.shape == (2, 4, 12, 14)
    torch.testing.assert_close(fast, ref)
    # Channels-last input takes the same arithmetic.
    fast_cl = conv2d_resample(x.contiguous(memory_format=torch.channels_last), w, f=f, up=2, padding=1,
                              flip_weight=flip_weight)
    torch.testing.assert_close(fast_cl, ref)


def test_downsampling_conv_matches_its_definition():
    torch.manual_seed(2)
    x, w = torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    fast = conv2d_resample(x, w, f=f, down=2, padding=1)
    ref = F.conv2d(upfirdn2d.upfirdn2d(x, f, padding=[2, 2, 2, 2]), w)[:, :, ::2, ::2]
    torch.testing.assert_close(fast, ref)
    w1 = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(conv2d_resample(x, w1, f=f, down=2),
                               F.conv2d(upfirdn2d.upfirdn2d(x, f, padding=[1, 1, 1, 1]), w1)[:, :, ::2, ::2])


@pytest.mark.parametrize("up", [1, 2])
def test_fused_and_unfused_modulated_conv_agree(up):
    torch.manual_seed(3)
    x, w = torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.randn(6, 4, 3, 3, dtype=torch.float64)
    styles, noise = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 1, 5 * up, 5 * up, dtype=torch.float64)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    kw = dict(noise=noise, up=up, padding=1, resample_filter=f, flip_weight=(up == 1))
    torch.testing.assert_close(modulated_conv2d(x, w, styles, fused=True, **kw),
                               modulated_conv2d(x, w, styles, fused=False, **kw))


def test_a_batch_of_one_takes_the_unfused_path_when_differentiated():
    """Inference of one image runs one grouped convolution; per-image optimisation (gradients at a batch of one) the
    unfused form, which does not differentiate a per-sample weight; both give the same values and gradients."""
    torch.manual_seed(0)
    x, w, styles = torch.randn(1, 8, 6, 6), torch.randn(4, 8, 3, 3), torch.randn(1, 8) + 2
    with torch.no_grad():
        assert torch.equal(modulated_conv2d(x, w, styles, padding=1), modulated_conv2d(x, w, styles, padding=1, fused=True))
    s = styles.clone().requires_grad_(True)
    assert torch.equal(modulated_conv2d(x, w, s, padding=1), modulated_conv2d(x, w, s, padding=1, fused=False))
    grads = [torch.autograd.grad(modulated_conv2d(x, w, s, padding=1, fused=fused).square().sum(), s)[0]
             for fused in (True, False)]
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_matches_the_papers_per_sample_weights(fused):
    # StyleGAN2 eqs. 1-3 written out per sample: w' = w * s_i, w'' = w' / sqrt(sum w'^2 + eps), then a plain conv.
    torch.manual_seed(5)
    x, w = torch.randn(3, 4, 6, 6, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    expected = []
    for n in range(3):
        modulated = w * styles[n].reshape(1, -1, 1, 1)
        demodulated = modulated / (modulated.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        expected.append(F.conv2d(x[n:n + 1], demodulated, padding=1))
    torch.testing.assert_close(modulated_conv2d(x, w, styles, padding=1, fused=fused), torch.cat(expected))


def test_demodulation_normalises_output_scale():
    torch.manual_seed(4)
    x = torch.randn(4, 64, 8, 8)
    w = torch.randn(32, 64, 3, 3)
    y_small = modulated_conv2d(x, w, torch.full((4, 64), 0.01), padding=1)
    y_big = modulated_conv2d(x, w, torch.full((4, 64), 100.0), padding=1)
    torch.testing.assert_close(y_small, y_big, rtol=1e-4, atol=1e-4)
    assert 0.5 < y_small.std().item() < 2.0


def test_generator_shapes_truncation_and_noise_modes(small_g):
    G = small_g
    z = torch.randn(3, G.z_dim)
    with torch.no_grad():
        img = G(z)
        ws = G.mapping(z)
        ws_trunc = G.mapping(z, truncation_psi=0.0)
        a, b = G(z, noise_mode="random"), G(z, noise_mode="random")
    assert img.shape == (3, 3, 32, 32) and torch.isfinite(img).all()
    assert ws.shape == (3, G.num_ws, G.w_dim)
    torch.testing.assert_close(ws_trunc, G.w_avg.expand_as(ws_trunc))  # psi 0 collapses to w_avg
    assert not torch.equal(a, b)                                       # random noise differs per call
    torch.testing.assert_close(G(z, noise_mode="const"), img)         # const noise is deterministic


def test_batch_results_do_not_depend_on_batch_size_or_layout(small_g):
    """Batch 1 takes the fused path, batches the unfused one; both and grad mode must agree."""
    z = torch.randn(4, small_g.z_dim)
    with torch.no_grad():
        batch = small_g(z)
        singles = torch.cat([small_g(z[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, singles, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(small_g(z).detach(), batch, rtol=1e-4, atol=1e-4)


def test_capture_and_restart_from_a_feature_reproduce_the_image(small_g):
    S = small_g.synthesis
    ws = small_g.mapping(torch.randn(2, small_g.z_dim)).detach()
    with torch.no_grad():
        full = S.synthesize(ws, capture=("b16.conv1", "b8.img", "b16.conv0"))
        # Restarting after b16.conv1 with the captured feature and the skip image entering the block reproduces it.
        resumed = S.synthesize(ws, start_after="b16.conv1", x=full.features["b16.conv1"], img=full.features["b8.img"])
        # Restarting after the upsampling conv works the same way.
        resumed0 = S.synthesize(ws, start_after="b16.conv0", x=full.features["b16.conv0"], img=full.features["b8.img"])
        dropped = S.synthesize(ws, start_after="b16.conv0", x=full.features["b16.conv0"], img=None)
        early = S.synthesize(ws, capture=("b8.conv1",), stop_after="b8.conv1")
    assert full.features["b16.conv1"].shape == (2, *S.feature_shape("b16.conv1"))
    torch.testing.assert_close(resumed.img, full.img)
    torch.testing.assert_close(resumed0.img, full.img)
    assert not torch.allclose(dropped.img, full.img)  # the coarse RGB skip was dropped
    assert early.img is None and early.features["b8.conv1"].shape == (2, *S.feature_shape("b8.conv1"))
    # Rows before the start do not matter.
    ws2 = ws.clone()
    ws2[:, :S.w_index("b16.conv1")] = 0
    with torch.no_grad():
        again = S.synthesize(ws2, start_after="b16.conv1", x=full.features["b16.conv1"], img=full.features["b8.img"])
    torch.testing.assert_close(again.img, full.img)


def test_layer_hook_can_replace_the_pre_activation_feature(small_g):
    S = small_g.synthesis
    ws = small_g.mapping(torch.randn(1, small_g.z_dim)).detach()
    seen = []

    def record(name, x):
        seen.append((name, tuple(x.shape)))
        return x

    with torch.no_grad():
        plain = S(ws)
        S.synthesize(ws, layer_hook=record)
        zeroed = S.synthesize(ws, layer_hook=lambda n, x: torch.zeros_like(x) if n == "b32.conv0" else x)
    assert [n for n, _ in seen] == S.layer_names
    assert dict(seen)["b32.conv0"] == (1, *S.feature_shape("b32.conv0"))
    assert not torch.allclose(zeroed.img, plain)


def test_bad_inputs_fail_with_clear_assertions(small_g):
    with pytest.raises(AssertionError, match="ws"):
        small_g.synthesis(torch.randn(1, 3, small_g.w_dim))
    with pytest.raises(KeyError, match="unknown synthesis layer"):
        small_g.synthesis.synthesize(torch.randn(1, small_g.num_ws, small_g.w_dim), capture=("b7.conv9",))


def test_second_order_gradients_flow_for_r1_and_path_length():
    torch.manual_seed(5)
    G = Generator(**CONFIGS["tiny-32"])
    D = Discriminator(img_resolution=32, channel_base=256, channel_max=32)
    img = torch.randn(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(D(img).sum(), img, create_graph=True)
    r1 = grad.square().sum()
    r1.backward()
    assert D.b32.fromrgb.weight.grad is not None and D.b32.fromrgb.weight.grad.abs().sum() > 0
    ws = G.mapping(torch.randn(2, G.z_dim))
    out = G.synthesis(ws)
    (gw,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), ws, create_graph=True)
    gw.square().sum().backward()
    assert G.synthesis.b8.conv0.weight.grad.abs().sum() > 0


def test_every_tensor_a_module_holds_moves_with_it():
    """A tensor kept as a plain attribute stays behind on .to(): the CUDA reference path once failed that way."""
    G = Generator(**CONFIGS["tiny-32"])
    D = Discriminator(img_resolution=32, channel_base=256, channel_max=32)
    for net in (G, D):
        for name, module in net.named_modules():
            loose = [k for k, v in vars(module).items() if isinstance(v, torch.Tensor)]
            assert not loose, f"{name or 'root'} holds {loose} outside its parameters and buffers"
    assert G.synthesis.resample_filter is G.synthesis.block(4).resample_filter
