"""The ops' reference paths against naive loop implementations; gradients to second order; the CUDA kernels' math."""

import math
import os

import numpy as np
import pytest
import torch

from stylecli.core.ops import _plugin, bias_act, upfirdn2d
from stylecli.core.ops.bias_act import ACTIVATIONS
from stylecli.core.ops.upfirdn2d import downsample2d, setup_filter, upsample2d


def naive_upfirdn2d(x, f, up, down, pad, flip_filter, gain):
    """The op's definition, step by step, with explicit loops over numpy arrays."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f2 = np.outer(f, f)
        scale = gain  # gain**(1/2) per pass, two passes
    else:
        f2, scale = f, gain
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    # 1. zero insertion
    u = np.zeros((n, c, h * upy, w * upx))
    for i in range(h):
        for j in range(w):
            u[:, :, i * upy, j * upx] = x[:, :, i, j]
    # 2. pad / crop
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    p = np.zeros((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            si, sj = i - py0, j - px0
            if 0 <= si < h * upy and 0 <= sj < w * upx:
                p[:, :, i, j] = u[:, :, si, sj]
    # 3. true convolution (correlation when flip_filter), valid region
    fh, fw = f2.shape
    k = f2 if flip_filter else f2[::-1, ::-1]
    oh, ow = hp - fh + 1, wp - fw + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = np.einsum("ncab,ab->nc", p[:, :, i:i + fh, j:j + fw], k)
    # 4. keep every down-th pixel
    return y[:, :, ::downy, ::downx] * scale


CASES = [
    # (shape, taps, 2-D?, up, down, padding, flip, gain)
    ((1, 2, 5, 6), [1, 3, 3, 1], True, (1, 1), (1, 1), (2, 1, 2, 1), False, 1.0),
    ((2, 3, 4, 4), [1, 3, 3, 1], True, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
    ((1, 1, 6, 7), [1, 3, 3, 1], True, (1, 1), (2, 2), (1, 1, 1, 1), False, 1.0),
    ((1, 2, 5, 5), [1, 2, 3], False, (3, 1), (1, 2), (0, -1, 2, 0), True, 2.0),
    ((2, 1, 7, 3), [1, 2, 2, 1, 1, 3, 2, 1], False, (1, 2), (2, 1), (3, 4, 1, -2), False, 0.5),
    ((1, 3, 3, 5), [[1, 2], [3, 4], [5, 6]], True, (2, 3), (3, 2), (1, 0, -1, 2), True, 1.5),
]


@pytest.mark.parametrize("case", CASES)
def test_upfirdn2d_reference_matches_naive(case):
    shape, taps, two_d, up, down, pad, flip, gain = case
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    f = torch.tensor(taps, dtype=torch.float32)
    if f.ndim == 1 and two_d:
        f = f.ger(f)
    f = f / f.sum()
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    expected = naive_upfirdn2d(x.numpy(), f.numpy(), up, down, pad, flip, gain)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_upfirdn2d_random_configurations_match_naive():
    rng = np.random.default_rng(1)
    for _ in range(25):
        up = tuple(int(v) for v in rng.integers(1, 4, 2))
        down = tuple(int(v) for v in rng.integers(1, 4, 2))
        taps = int(rng.integers(1, 6))
        separable = bool(rng.integers(0, 2))
        f = torch.rand(taps) + 0.1 if separable else torch.rand(taps, int(rng.integers(1, 6))) + 0.1
        h, w = (int(v) for v in rng.integers(2, 7, 2))
        pad = tuple(int(v) for v in rng.integers(-1, 4, 4))
        x = torch.randn(1, 2, h, w, dtype=torch.float64)
        fw, fh = upfirdn2d.filter_size(f)
        if (h * up[1] + pad[2] + pad[3] - fh) < 0 or (w * up[0] + pad[0] + pad[1] - fw) < 0:
            continue
        flip = bool(rng.integers(0, 2))
        y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.7)
        expected = naive_upfirdn2d(x.numpy(), f.numpy(), up, down, pad, flip, 1.7)
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_resampling_helpers_keep_size_and_mean():
    f = setup_filter([1, 3, 3, 1])
    x = torch.full((1, 1, 8, 8), 2.0)
    up = upsample2d(x, f)
    down = downsample2d(x, f)
    assert up.shape == (1, 1, 16, 16) and down.shape == (1, 1, 4, 4)
    # Away from the zero-padded border, a constant image stays constant.
    assert torch.allclose(up[..., 3:-3, 3:-3], torch.tensor(2.0))
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.tensor(2.0))


def test_upfirdn2d_gradients_first_and_second_order():
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    for up, down, pad in [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)), ((3, 1), (1, 2), (0, 2, 1, -1))]:
        fn = lambda t: upfirdn2d.upfirdn2d(t, f.float(), up=up, down=down, padding=pad) ** 2
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def naive_bias_act(x, b, act, alpha, gain, clamp):
    x = np.asarray(x, dtype=np.float64) + np.asarray(b, dtype=np.float64).reshape(1, -1, 1)
    out = np.empty_like(x)
    for idx, v in np.ndenumerate(x):
        if act == "linear": r = v
        elif act == "relu": r = max(v, 0.0)
        elif act == "lrelu": r = v if v > 0 else v * alpha
        elif act == "tanh": r = math.tanh(v)
        elif act == "sigmoid": r = 1 / (1 + math.exp(-v))
        elif act == "elu": r = v if v > 0 else math.exp(v) - 1
        elif act == "selu": r = 1.0507009873554805 * (v if v > 0 else 1.6732632423543772 * (math.exp(v) - 1))
        elif act == "softplus": r = math.log1p(math.exp(v))
        elif act == "swish": r = v / (1 + math.exp(-v))
        r *= gain
        if clamp is not None:
            r = min(max(r, -clamp), clamp)
        out[idx] = r
    return out


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_bias_act_reference_matches_naive(act):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, dtype=torch.float64) * 2
    b = torch.randn(3, dtype=torch.float64)
    for alpha, gain, clamp in [(None, None, None), (0.1, 1.3, 0.8)]:
        y = bias_act.bias_act(x, b, dim=1, act=act, alpha=alpha, gain=gain, clamp=clamp)
        spec = ACTIVATIONS[act]
        expected = naive_bias_act(x.numpy(), b.numpy(), act, spec.default_alpha if alpha is None else alpha,
                                  spec.default_gain if gain is None else gain, clamp)
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "softplus"])
def test_bias_act_gradients_first_and_second_order(act):
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act.bias_act(x, b, act=act, clamp=5.0)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_unknown_activation_and_mode_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act.bias_act(torch.zeros(1, 1), act="gelu-ish")
    monkeypatch.setenv("STYLECLI_OPS", "fast")
    with pytest.raises(ValueError, match="STYLECLI_OPS"):
        _plugin.ops_mode()


def test_failed_build_warns_once_then_uses_reference(monkeypatch):
    """In auto mode a failed build gives one warning and is never retried; in cuda mode it is an error."""
    calls = []

    def failing_build(name, verbose=False):
        calls.append(name)
        raise _plugin.PluginBuildError("no compiler here")

    monkeypatch.setattr(_plugin, "build", failing_build)
    _plugin.get_plugin.cache_clear()
    try:
        monkeypatch.setenv("STYLECLI_OPS", "auto")
        with pytest.warns(RuntimeWarning, match="no compiler here"):
            assert _plugin.get_plugin("upfirdn2d") is None
        assert _plugin.get_plugin("upfirdn2d") is None
        assert calls == ["upfirdn2d"]
        _plugin.get_plugin.cache_clear()
        monkeypatch.setenv("STYLECLI_OPS", "cuda")
        with pytest.raises(_plugin.PluginBuildError):
            _plugin.get_plugin("upfirdn2d")
        _plugin.get_plugin.cache_clear()
        monkeypatch.setenv("STYLECLI_OPS", "ref")
        assert _plugin.get_plugin("upfirdn2d") is None and calls == ["upfirdn2d", "upfirdn2d"]
    finally:
        _plugin.get_plugin.cache_clear()


def test_nothing_compiles_at_import():
    import subprocess
    import sys
    code = ("import torch.utils.cpp_extension as c; c.load = None; "
            "import stylecli.core.networks, stylecli.core.ops; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


# --- CUDA sources --------------------------------------------------------------------------------------------------

def _can_compile():
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA support"
    if _plugin.find_cuda_home() is None:
        return "no CUDA toolkit (set CUDA_HOME to the folder that holds bin/nvcc)"
    return None


@pytest.fixture(scope="module")
def compiled_plugins(tmp_path_factory):
    reason = _can_compile()
    if reason:
        pytest.skip(f"cannot compile the CUDA ops: {reason}")
    if not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # no device to ask: build for one arch (H100)
    return {name: _plugin.build(name) for name in ("upfirdn2d", "bias_act")}


@pytest.mark.slow
def test_cuda_sources_compile_and_their_math_matches_the_reference(compiled_plugins):
    """Compiles both extensions; the host twin runs the kernels' per-element math on the CPU."""
    up = compiled_plugins["upfirdn2d"]
    for shape, taps, two_d, (upx, upy), (dx, dy), (px0, px1, py0, py1), flip, gain in CASES:
        x = torch.randn(shape)
        f = torch.tensor(taps, dtype=torch.float32)
        f = (f.ger(f) if f.ndim == 1 and two_d else f) / f.sum()
        f2 = f if f.ndim == 2 else f.ger(f)
        got = up.upfirdn2d(x, f2, upx, upy, dx, dy, px0, px1, py0, py1, flip, gain)
        want = upfirdn2d._upfirdn2d_ref(x, f2, (upx, upy), (dx, dy), (px0, px1, py0, py1), flip, gain)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    ba = compiled_plugins["bias_act"]
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    for name, spec in ACTIVATIONS.items():
        for clamp in (-1.0, 0.7):
            ref = bias_act._bias_act_ref(s, None, 1, name, 0.2, 1.3, clamp)
            got = ba.bias_act(s.detach(), s.new_empty(0), 0, spec.cuda_index, 0.2, 1.3, clamp)
            torch.testing.assert_close(got, ref.detach())
            dy = torch.randn_like(s)
            (g1,) = torch.autograd.grad(ref, s, dy, create_graph=True)
            torch.testing.assert_close(ba.bias_act(dy, s.detach(), 1, spec.cuda_index, 0.2, 1.3, clamp), g1.detach())
            if clamp < 0:  # second derivative: d/ds of (dy * act'(s) * gain), contracted with v
                v = torch.randn_like(s)
                g2 = (torch.autograd.grad(g1, s, v, allow_unused=True, materialize_grads=True)[0]
                      if g1.requires_grad else torch.zeros_like(s))  # act'' == 0: linear
                torch.testing.assert_close(ba.bias_act(v * dy, s.detach(), 2, spec.cuda_index, 0.2, 1.3, clamp), g2)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@needs_gpu
@pytest.mark.parametrize("case", CASES)
def test_cuda_upfirdn2d_matches_reference_with_gradients(case):
    shape, taps, two_d, up, down, pad, flip, gain = case
    f = torch.tensor(taps, dtype=torch.float32)
    f = ((f.ger(f) if f.ndim == 1 and two_d else f) / f.sum()).cuda()
    x = torch.randn(shape, dtype=torch.float64, device="cuda", requires_grad=True)
    got = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    want = upfirdn2d._upfirdn2d_ref(x, f, up, down, pad, flip, gain)
    torch.testing.assert_close(got, want)
    fn = lambda t: upfirdn2d.upfirdn2d(t, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain) ** 2
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@needs_gpu
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_cuda_bias_act_matches_reference_with_gradients(act):
    x = torch.randn(3, 4, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.testing.assert_close(bias_act.bias_act(x, b, act=act, clamp=3.0), bias_act._bias_act_ref(x, b, 1, act, ACTIVATIONS[act].default_alpha, ACTIVATIONS[act].default_gain, 3.0))
    fn = lambda x, b: bias_act.bias_act(x, b, act=act, clamp=3.0)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@needs_gpu
def test_bfloat16_on_cuda_takes_the_reference_path():
    """The kernels dispatch on float, double and half; bfloat16 (idinvert --precision bf16 under autocast) goes the
    reference way instead of failing."""
    from stylecli.core.ops import _plugin

    x = torch.randn(2, 4, 8, 8, device="cuda", dtype=torch.bfloat16)
    assert not _plugin.use_cuda_kernel("bias_act", x) and not _plugin.use_cuda_kernel("upfirdn2d", x)
    b = torch.randn(4, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(bias_act.bias_act(x, b, act="lrelu"),
                               bias_act._bias_act_ref(x, b, 1, "lrelu", 0.2, ACTIVATIONS["lrelu"].default_gain, None))
    f = torch.ones(4, device="cuda") / 4
    assert upfirdn2d.upfirdn2d(x, f, padding=[2, 1, 2, 1]).dtype == torch.bfloat16
