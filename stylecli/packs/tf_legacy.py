"""Import NVIDIA's legacy TensorFlow StyleGAN2 pickles (`stylegan2-ffhq-config-f.pkl`) without TensorFlow and without
running any code from the file.

The file is a pickle of the tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects. Each network's pickled state
is a dict: version, name, static_kwargs (the constructor's keyword arguments), components ({mapping, synthesis} for a
generator, each a Network of its own), build_module_src (the Python source that builds the graph: never executed
here), build_func_name, and variables, a list of (TF variable name, numpy array).

How it is read:

1. `TFPickleUnpickler` resolves exactly three kinds of global: the Network class, mapped to `TFNetworkStub` (an inert
   object that keeps the pickled state and nothing else), numpy's array and dtype reconstructors, and dnnlib's
   EasyDict (a dict). Anything else a pickle names (os.system, builtins.exec, a TF class...) is refused before it can
   be called.
2. Each network's build function and keyword arguments are checked against a table (`TF_G_SETTINGS`,
   `TF_D_SETTINGS`): a setting is passed to the core, dropped (it changes only training or how the graph runs:
   truncation, style mixing, noise randomisation), allowed with one value only, or unknown and refused by name.
3. The variables of a network and of its components are flattened to `component/scope/name` keys
   (`synthesis/64x64/Conv0_up/weight`) and mapped by a table of key rules to the stylecli parameter they fill,
   through one of the layout transforms below. The TF shape each transform expects is computed from the destination
   and must equal the variable's shape exactly; every destination tensor must be filled exactly once.

Layout transforms (TF -> stylecli, the stylegan2-ada-pytorch conventions that stylecli's core shares):

- DENSE: dense weights [in, out] are transposed to [out, in].
- CONV: conv weights [kh, kw, in, out] become [out, in, kh, kw].
- CONV_FLIPPED: the generator's upsampling convs (Conv0_up) are flipped in both spatial axes first: TF runs them as
  a transposed convolution whose kernel is stored mirrored relative to the core's.
- MOD_BIAS: TF adds 1 to the style (modulation) bias at run time; the core's affine bias starts at 1, so 1 is added.
- CONST: the 4x4 constant input [1, C, 4, 4] loses its batch axis.
- NOISE: the constant noise maps `synthesis/noise{i}` [1, 1, R, R] become [R, R]; noise 0 feeds b4.conv1, and for a
  block of resolution R conv0 reads noise 2*log2(R)-5 and conv1 noise 2*log2(R)-4.
- SAME: biases, noise strengths and dlatent_avg (the core's mapping.w_avg) are stored as they are.

The resampling filters are constants of the architecture (resample_kernel [1, 3, 3, 1], checked as a setting): the
core builds its own.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.networks import Discriminator, Generator
from .convert import ConversionError, ConversionReport, Converted, EasyDict, _same

TF_NETWORK_CLASS = ("dnnlib.tflib.network", "Network")


# ----------------------------------------------------------------------------------------------------------------
# 1. Restricted unpickling

class TFNetworkStub:
    """Stands in for `dnnlib.tflib.network.Network`: keeps the pickled state dict; has no behaviour at all."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a TF network's state is not a dict")
        self.state = state

    @property
    def name(self) -> str:
        return str(self.state.get("name", "?"))


def _numpy_reconstruct():
    try:  # numpy >= 2 moved the module; the official files (numpy 1.x) name numpy.core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    return _reconstruct, scalar


_RECONSTRUCT, _SCALAR = _numpy_reconstruct()

_TF_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    TF_NETWORK_CLASS: TFNetworkStub,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): dict,
    # numpy arrays pickle as _reconstruct(ndarray, (0,), b'b') followed by ndarray.__setstate__(raw bytes): no code.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class TFPickleUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals above; anything else is refused before it can run."""

    def find_class(self, module: str, name: str):
        target = _TF_ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not an allowed type in a TensorFlow "
                                         f"StyleGAN2 pickle")
        return target


def is_tf_pickle(path: str | Path) -> bool:
    """True when the pickle's first class is dnnlib's TF Network (it is pickled before any state: the head suffices)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    return head[:1] == b"\x80" and b"dnnlib.tflib.network" in head


def load_tf_pickle(path: str | Path):
    with open(path, "rb") as fh:
        return TFPickleUnpickler(fh).load()


# ----------------------------------------------------------------------------------------------------------------
# 2. Settings: every keyword argument of the official build functions is passed, dropped, limited or refused

PASSED = "passed to the core"
DROPPED = "dropped (training or graph-building only)"
ONLY = "one value only"
REQUIRED = object()


@dataclass(frozen=True)
class TFSetting:
    default: object = REQUIRED        # the official build function's default
    handling: str = PASSED
    allows: Callable | None = None    # (value, settings) -> bool
    needs: str = ""                   # what the core implements, for the refusal message


def _only(value) -> TFSetting:
    return TFSetting(value, ONLY, lambda v, s: _same(v, value), repr(value))


# G_main (training/networks_stylegan2.py) and the G_mapping / G_synthesis_stylegan2 keyword arguments it forwards.
TF_G_SETTINGS: dict[str, TFSetting] = {
    "latent_size":          TFSetting(512),
    "dlatent_size":         TFSetting(512),
    "num_channels":         TFSetting(3),
    "resolution":           TFSetting(1024),
    "mapping_layers":       TFSetting(8),
    "fmap_base":            TFSetting(16 << 10),   # channels min(fmap_base / 2**(log2 R - 1), fmap_max): 2x channel_base
    "fmap_max":             TFSetting(512),
    "conv_clamp":           TFSetting(None),       # stylegan2-ada's TF code; absent from config-f
    "label_size":           _only(0),
    "mapping_fmaps":        TFSetting(512, ONLY, lambda v, s: v == s["dlatent_size"], "the W width (dlatent_size)"),
    "mapping_lrmul":        _only(0.01),
    "mapping_nonlinearity": _only("lrelu"),
    "normalize_latents":    _only(True),
    "nonlinearity":         _only("lrelu"),
    "architecture":         _only("skip"),
    "resample_kernel":      _only([1, 3, 3, 1]),
    "fmap_decay":           _only(1.0),
    "fmap_min":             _only(1),
    "use_noise":            _only(True),
    "mapping_func":         _only("G_mapping"),
    "synthesis_func":       _only("G_synthesis_stylegan2"),
    "dlatent_avg_beta":     TFSetting(0.995, DROPPED, lambda v, s: v is not None, "a running dlatent_avg"),
    "dlatent_broadcast":    TFSetting(None, DROPPED),  # rows of W+: the core derives them from the resolution
    "truncation_psi":       TFSetting(0.5, DROPPED),   # run-time choices of the sampling graph
    "truncation_cutoff":    TFSetting(None, DROPPED),
    "truncation_psi_val":   TFSetting(None, DROPPED),
    "truncation_cutoff_val": TFSetting(None, DROPPED),
    "style_mixing_prob":    TFSetting(0.9, DROPPED),   # training regulariser
    "randomize_noise":      TFSetting(True, DROPPED),  # run-time: stylecli picks noise_mode per call
    "fused_modconv":        TFSetting(True, DROPPED),  # grouped vs plain convolutions: the same function
    "dtype":                TFSetting("float32", DROPPED),
    "num_fp16_res":         TFSetting(0, DROPPED),
    "is_training":          TFSetting(False, DROPPED),
    "is_validation":        TFSetting(False, DROPPED),
    "is_template_graph":    TFSetting(False, DROPPED),
    "return_dlatents":      TFSetting(False, DROPPED),
    "structure":            TFSetting("auto", DROPPED),  # progressive-growing switch of StyleGAN1-era code
}

# D_stylegan2.
TF_D_SETTINGS: dict[str, TFSetting] = {
    "num_channels":         TFSetting(3),
    "resolution":           TFSetting(1024),
    "fmap_base":            TFSetting(16 << 10),
    "fmap_max":             TFSetting(512),
    "conv_clamp":           TFSetting(None),
    "mbstd_group_size":     TFSetting(4, PASSED, lambda v, s: isinstance(v, int) and v > 0, "a fixed group size"),
    "label_size":           _only(0),
    "architecture":         _only("resnet"),
    "nonlinearity":         _only("lrelu"),
    "mbstd_num_features":   _only(1),
    "resample_kernel":      _only([1, 3, 3, 1]),
    "fmap_decay":           _only(1.0),
    "fmap_min":             _only(1),
    "dtype":                TFSetting("float32", DROPPED),
    "num_fp16_res":         TFSetting(0, DROPPED),
    "is_template_graph":    TFSetting(False, DROPPED),
    "structure":            TFSetting("auto", DROPPED),
}

# build_func_name of each network: anything else (StyleGAN1's G_style, configs a-d's G_synthesis_stylegan_revised,
# another D) computes a function the core does not implement.
G_BUILD_FUNCS = {"": "G_main", "mapping": "G_mapping", "synthesis": "G_synthesis_stylegan2"}
D_BUILD_FUNC = "D_stylegan2"


def read_tf_settings(net: TFNetworkStub, table: dict[str, TFSetting], what: str) -> dict:
    """The network's keyword arguments resolved against `table` (official default where absent), each checked."""
    kwargs = net.state.get("static_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConversionError(f"{what}: static_kwargs is not a dict")
    for name, value in kwargs.items():
        if name not in table:
            raise ConversionError(f"{what}: unknown setting {name}={value!r}; stylecli cannot tell what it changes")
    settings = {}
    for name, rule in table.items():
        if name in kwargs:
            settings[name] = kwargs[name]
        elif rule.default is REQUIRED:
            raise ConversionError(f"{what}: the pickle does not record {name}")
        else:
            settings[name] = rule.default
    for name, rule in table.items():
        if rule.allows is not None and not rule.allows(settings[name], settings):
            raise ConversionError(f"{what}: {name}={settings[name]!r} is not supported; stylecli's networks implement "
                                  f"{rule.needs} only")
    return settings


# ----------------------------------------------------------------------------------------------------------------
# 3. Variables: flattening and the key rules

def tf_variables(net: TFNetworkStub, what: str, prefix: str = "") -> dict[str, np.ndarray]:
    """{component/scope/name: array} of a network and its components (legacy.py's naming)."""
    out = {}
    variables = net.state.get("variables")
    if not isinstance(variables, (list, tuple)):
        raise ConversionError(f"{what}: no variables list in the pickled network {net.name!r}")
    for entry in variables:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ConversionError(f"{what}: a variable entry of {net.name!r} is not (name, array)")
        name, value = entry
        if isinstance(value, np.floating):  # a scalar variable (e.g. lod) comes out of the session as a numpy scalar
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ConversionError(f"{what}: variable {prefix + name!r} is not a float array")
        out[prefix + name] = value
    for comp_name, comp in (net.state.get("components") or {}).items():
        if not isinstance(comp, TFNetworkStub):
            raise ConversionError(f"{what}: component {comp_name!r} is not a pickled network")
        out.update(tf_variables(comp, what, f"{prefix}{comp_name}/"))
    return out


@dataclass(frozen=True)
class Transform:
    """How a TF variable becomes a stylecli tensor: the TF shape expected for a destination shape, and the mapping."""
    name: str
    source_shape: Callable[[tuple], tuple]
    apply: Callable[[np.ndarray], np.ndarray]


SAME = Transform("same", lambda d: d, lambda a: a)
DENSE = Transform("dense [in, out] -> [out, in]", lambda d: (d[1], d[0]), lambda a: a.T)
CONV = Transform("conv [kh, kw, in, out] -> [out, in, kh, kw]", lambda d: (d[2], d[3], d[1], d[0]),
                 lambda a: a.transpose(3, 2, 0, 1))
CONV_FLIPPED = Transform("flipped conv [kh, kw, in, out] -> [out, in, kh, kw]", lambda d: (d[2], d[3], d[1], d[0]),
                         lambda a: a[::-1, ::-1].transpose(3, 2, 0, 1))
MOD_BIAS = Transform("modulation bias + 1", lambda d: d, lambda a: a + 1)
CONST = Transform("const [1, C, 4, 4] -> [C, 4, 4]", lambda d: (1, *d), lambda a: a[0])
NOISE = Transform("noise [1, 1, R, R] -> [R, R]", lambda d: (1, 1, *d), lambda a: a[0, 0])

TFRule = tuple  # (source key regex, match -> destination key, Transform)

_G_LAYER = {"Conv": "conv1", "Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}


def _g_layer(m) -> str:
    return f"synthesis.b{m[1]}.{_G_LAYER[m[2]]}"


def _noise_layer(index: int) -> str:
    """synthesis/noise{i}: even i feed conv1 of resolution 2**((i+4)/2) (b4's conv for i = 0), odd i conv0 of
    resolution 2**((i+5)/2)."""
    if index % 2 == 0:
        return f"synthesis.b{2 ** ((index + 4) // 2)}.conv1"
    return f"synthesis.b{2 ** ((index + 5) // 2)}.conv0"


_RES = r"(\d+)x\1"  # the scope of a block: "64x64"
_GL = r"(Conv|Conv0_up|Conv1|ToRGB)"

# Non-trainable bookkeeping a pickled network keeps with its variables: the level-of-detail input of progressive
# growing (`lod`, 0 for a trained StyleGAN2). Nothing of the network's arithmetic: left out (report.ignored).
_BOOKKEEPING = (r"(?:\w+/)*lod", lambda m: None, SAME)

TF_G_RULES: list[TFRule] = [
    _BOOKKEEPING,
    (r"dlatent_avg", lambda m: "mapping.w_avg", SAME),
    (r"mapping/Dense(\d+)/weight", lambda m: f"mapping.fc{m[1]}.weight", DENSE),
    (r"mapping/Dense(\d+)/bias", lambda m: f"mapping.fc{m[1]}.bias", SAME),
    (r"synthesis/4x4/Const/const", lambda m: "synthesis.b4.const", CONST),
    (rf"synthesis/{_RES}/Conv0_up/weight", lambda m: f"synthesis.b{m[1]}.conv0.weight", CONV_FLIPPED),
    (rf"synthesis/{_RES}/{_GL}/weight", lambda m: f"{_g_layer(m)}.weight", CONV),
    (rf"synthesis/{_RES}/{_GL}/mod_weight", lambda m: f"{_g_layer(m)}.affine.weight", DENSE),
    (rf"synthesis/{_RES}/{_GL}/mod_bias", lambda m: f"{_g_layer(m)}.affine.bias", MOD_BIAS),
    (rf"synthesis/{_RES}/{_GL}/bias", lambda m: f"{_g_layer(m)}.bias", SAME),
    (rf"synthesis/{_RES}/{_GL}/noise_strength", lambda m: f"{_g_layer(m)}.noise_strength", SAME),
    (r"synthesis/noise(\d+)", lambda m: f"{_noise_layer(int(m[1]))}.noise_const", NOISE),
]

_DL = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip"}

TF_D_RULES: list[TFRule] = [
    (r"4x4/Conv/(weight)", lambda m: "b4.conv.weight", CONV),
    (r"4x4/Conv/(bias)", lambda m: "b4.conv.bias", SAME),
    (r"4x4/Dense0/weight", lambda m: "b4.fc.weight", DENSE),
    (r"4x4/Dense0/bias", lambda m: "b4.fc.bias", SAME),
    (r"Output/weight", lambda m: "b4.out.weight", DENSE),
    (r"Output/bias", lambda m: "b4.out.bias", SAME),
    (rf"{_RES}/(FromRGB|Conv0|Conv1_down|Skip)/weight", lambda m: f"b{m[1]}.{_DL[m[2]]}.weight", CONV),
    (rf"{_RES}/(FromRGB|Conv0|Conv1_down)/bias", lambda m: f"b{m[1]}.{_DL[m[2]]}.bias", SAME),
]


def fill_from_tf(dest: torch.nn.Module, source: dict[str, np.ndarray], rules: list[TFRule],
                 what: str) -> ConversionReport:
    """Copy TF variables into `dest` by `rules`: every source variable must match a rule, every shape must equal the
    transform's expected TF shape, every destination tensor (but the resampling filters) must be filled once."""
    target = dest.state_dict()
    report = ConversionReport()
    filled: dict[str, str] = {}
    for src_key, array in source.items():
        for pattern, destination, transform in rules:
            match = re.fullmatch(pattern, src_key)
            if match:
                break
        else:
            raise ConversionError(f"{what}: no rule for TF variable {src_key!r}")
        dest_key = destination(match)
        if dest_key is None:
            report.ignored.append(src_key)
            continue
        if dest_key not in target:
            raise ConversionError(f"{what}: {src_key!r} maps to {dest_key!r}, which the network does not have")
        if dest_key in filled:
            raise ConversionError(f"{what}: {dest_key!r} filled twice ({filled[dest_key]!r} and {src_key!r})")
        want = target[dest_key]
        expected = tuple(transform.source_shape(tuple(want.shape)))
        if tuple(array.shape) != expected:
            raise ConversionError(f"{what}: {src_key!r} has shape {tuple(array.shape)}, expected {expected} for "
                                  f"{dest_key!r} ({transform.name})")
        value = np.array(transform.apply(array.astype(np.float32, copy=False)), order="C")  # copies; keeps 0-d
        assert tuple(value.shape) == tuple(want.shape), (src_key, value.shape, want.shape)
        target[dest_key] = torch.from_numpy(value).to(want.dtype)
        filled[dest_key] = src_key
        report.mapped.append((src_key, dest_key))
    report.regenerated = [k for k in target if k not in filled and k.endswith("resample_filter")]
    unfilled = [k for k in target if k not in filled and k not in report.regenerated]
    if unfilled:
        raise ConversionError(f"{what}: {len(unfilled)} destination tensors left unfilled, e.g. {unfilled[:4]}")
    dest.load_state_dict(target)
    return report


# ----------------------------------------------------------------------------------------------------------------
# The whole file

def _check_network(net, build_func: str, what: str) -> None:
    if not isinstance(net, TFNetworkStub):
        raise ConversionError(f"{what}: not a pickled TF network")
    version = net.state.get("version")
    if not isinstance(version, int) or version < 2:
        raise ConversionError(f"{what}: unsupported TF network pickle version {version!r}")
    found = net.state.get("build_func_name")
    if found != build_func:
        raise ConversionError(f"{what}: built by {found!r}, not {build_func!r}: not a StyleGAN2 config-e/f network "
                              f"(StyleGAN1 and configs a-d are not supported)")


def convert_tf_pickle(path: str | Path) -> Converted:
    """Generator (Gs, the moving average) and discriminator (D) of a legacy TF StyleGAN2 pickle.

    1. Unpickle with the allow-list (no code runs; build_module_src is never read).
    2. Check the (G, D, Gs) tuple, the build functions and every keyword argument.
    3. Build the core networks from the honoured settings and fill them by the key rules.
    """
    path = Path(path)
    try:
        data = load_tf_pickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as exc:
        raise ConversionError(f"{path}: {exc}") from None
    if not (isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkStub) for n in data)):
        raise ConversionError(f"{path}: expected NVIDIA's (G, D, Gs) tuple of TF networks")
    _, d_net, gs_net = data
    for comp, build_func in G_BUILD_FUNCS.items():
        net = gs_net if not comp else (gs_net.state.get("components") or {}).get(comp)
        _check_network(net, build_func, f"{path}: Gs{'/' + comp if comp else ''}")
    _check_network(d_net, D_BUILD_FUNC, f"{path}: D")

    s = read_tf_settings(gs_net, TF_G_SETTINGS, f"{path}: Gs")
    generator = Generator(z_dim=s["latent_size"], w_dim=s["dlatent_size"], img_resolution=s["resolution"],
                          img_channels=s["num_channels"], mapping_layers=s["mapping_layers"],
                          channel_base=2 * s["fmap_base"], channel_max=s["fmap_max"], conv_clamp=s["conv_clamp"])
    if s["dlatent_broadcast"] not in (None, generator.num_ws):
        raise ConversionError(f"{path}: Gs: dlatent_broadcast={s['dlatent_broadcast']!r}, but the resolution gives "
                              f"{generator.num_ws} W+ rows")
    reports = {"generator": fill_from_tf(generator, tf_variables(gs_net, f"{path}: Gs"), TF_G_RULES, f"{path}: Gs")}

    s = read_tf_settings(d_net, TF_D_SETTINGS, f"{path}: D")
    discriminator = Discriminator(img_resolution=s["resolution"], img_channels=s["num_channels"],
                                  channel_base=2 * s["fmap_base"], channel_max=s["fmap_max"],
                                  mbstd_group_size=s["mbstd_group_size"], conv_clamp=s["conv_clamp"])
    reports["discriminator"] = fill_from_tf(discriminator, tf_variables(d_net, f"{path}: D"), TF_D_RULES, f"{path}: D")
    if discriminator.img_resolution != generator.img_resolution:
        raise ConversionError(f"{path}: D is for {discriminator.img_resolution}px, Gs for {generator.img_resolution}px")
    return Converted(generator.eval(), discriminator.eval(), "nvidia-tf-pkl", reports)
