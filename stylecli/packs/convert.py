"""Import official StyleGAN2 checkpoints into stylecli networks, without running any code from the file.

Sources:
- NVIDIA stylegan2-ada-pytorch / stylegan3 `.pkl` (StyleGAN2 networks): a pickle of "persistent" module objects whose
  metadata carries their source code. `SafeUnpickler` maps the reconstruct function to a stub that keeps only the
  recorded state and allows a short list of tensor/container constructors; anything else is refused.
- NVIDIA's legacy TensorFlow `.pkl` (a (G, D, Gs) tuple of dnnlib.tflib Networks, e.g. stylegan2-ffhq-config-f.pkl):
  recognised by `detect_format` and read by `tf_legacy.py` (its own allow-list and key rules).
- rosinality stylegan2-pytorch `.pt`: a torch.save dict {g_ema, latent_avg, g?, d?}, read with weights_only=True.

Tensors: each conversion walks a table of key rules. A rule names the destination tensor and the official layout of
the source: the same shape (most tensors), or one of the documented reshapes of rosinality's layout (a leading axis of
1, a [1, C, 1, 1] bias, a [1] noise weight, [1, 1, R, R] noise maps); every source shape must equal the layout's shape
exactly, so a tensor with the right element count in other dimensions is refused, never reshaped. Resampling filters
are constants of the architecture: the core builds its own, and the official buffers (NVIDIA resample_filter,
rosinality blur/upsample kernels) must equal them. Every destination tensor must be filled exactly once.

Settings: every constructor argument of the official classes is read (NVIDIA's `_init_kwargs`, with the value each
module recorded where the kwargs leave a class default, because stylegan2-ada-pytorch and stylegan3 have different
defaults; rosinality's from the tensors, since a .pt records none) and is either passed to the core, accepted, or
refused with one line naming it (tables NVIDIA_G_SETTINGS and NVIDIA_D_SETTINGS). Afterwards, the arithmetic constants
each NVIDIA module recorded (gains, activations, clamps, padding, up/down factors, minibatch-stddev groups) must equal
those of the network the core built.

- Passed to the core: z_dim, w_dim, img_resolution, img_channels, mapping num_layers, channel_base, channel_max,
  conv_clamp (G and D), mbstd_group_size.
- Accepted, because they change only training or speed, not the function computed: num_fp16_res and
  fp16_channels_last (stylecli runs fp32 or its own --fp16), fused_modconv_default (grouped vs plain convolutions),
  w_avg_beta (the decay of the running w average during training; its value, w_avg, is copied), D freeze_layers;
  and those that NVIDIA's classes ignore when c_dim == 0: embed_features, cmap_dim, D mapping_kwargs.
- Refused: c_dim != 0, mapping lr_multiplier != 0.01, mapping or layer activation != lrelu, layer_features != w_dim,
  w_avg_beta None (no w_avg), synthesis architecture != skip, D architecture != resnet, resample_filter or
  blur_kernel != [1, 3, 3, 1], kernel_size != 3, use_noise False, mbstd_group_size None, mbstd_num_channels != 1,
  and any argument this table does not know.
- rosinality: size, style_dim, n_mlp and channel_multiplier are read off the tensor shapes, blur_kernel off the stored
  kernels. lr_mlp is recorded nowhere in a .pt; 0.01 (the default, and the only value rosinality's scripts use) is
  assumed.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.layers import RESAMPLE_FILTER
from ..core.networks import Discriminator, Generator
from ..core.ops import upfirdn2d


class ConversionError(Exception):
    """A checkpoint cannot be converted (unknown layout, unsupported config, unfilled tensors)."""


# ----------------------------------------------------------------------------------------------------------------
# Restricted unpickling of NVIDIA pickles

@dataclass
class PersistentObject:
    """What a NVIDIA persistent object's pickle records, minus its source code (which is never executed)."""
    class_name: str
    state: dict


class ModuleState:
    """Stand-in for plain torch.nn modules found inside a pickle: keeps their __dict__ only."""

    def __setstate__(self, state):
        self.state = state


class EasyDict(dict):
    pass


def _reconstruct_persistent_obj(meta: dict) -> PersistentObject:
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
    return PersistentObject(class_name=str(meta["class_name"]), state=meta["state"])


def _load_storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


try:  # numpy >= 2 moved the module; pickles may name either
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar

_ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
}


class SafeUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; a pickle that names anything else is refused before it can run."""

    def find_class(self, module: str, name: str):
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is not None:
            return target
        if module.startswith("torch.nn.modules.") and name[:1].isupper():
            return ModuleState
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not an allowed type in a checkpoint")


def safe_load_pickle(path: str | Path):
    with open(path, "rb") as fh:
        return SafeUnpickler(fh).load()


def flatten_module(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict of a PersistentObject/ModuleState tree (parameters and buffers, recursively)."""
    state = obj.state
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is not None:
                out[prefix + name] = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(flatten_module(child, f"{prefix}{name}."))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Filling a destination network by key rules

@dataclass
class ConversionReport:
    mapped: list[tuple[str, str]] = field(default_factory=list)   # (source key, destination key)
    ignored: list[str] = field(default_factory=list)              # source keys deliberately not copied
    regenerated: list[str] = field(default_factory=list)          # destination filter buffers built by the core
    checked: list[str] = field(default_factory=list)              # source filters found equal to the core's own


Layout = Callable[[tuple[int, ...]], tuple[tuple[int, ...], ...]]  # destination shape -> accepted source shapes


def SAME(shape):  # stored exactly as stylecli's tensor
    return (tuple(shape),)


def LEAD1(shape):  # rosinality keeps a leading axis of 1: ConstantInput [1, C, 4, 4], conv weights [1, O, I, k, k]
    return ((1, *shape),)


def RGB_BIAS(shape):  # rosinality's ToRGB bias is [1, C, 1, 1]
    return ((1, shape[0], 1, 1),)


def NOISE_WEIGHT(shape):  # rosinality's NoiseInjection weight is [1], ours a scalar
    return ((1,),)


def NOISE_MAP(shape):  # rosinality's noise buffers are [1, 1, R, R]
    return ((1, 1, *shape),)


def W_AVG(shape):  # latent_avg: [w_dim] (convert_weight.py, e4e) or [1, w_dim] (Generator.mean_latent)
    return (tuple(shape), (1, *shape))


@dataclass(frozen=True)
class Filter:
    """A constant of the architecture: the source must equal the core's filter times `gain`; nothing is copied."""
    gain: float = 1.0  # rosinality stores its upsampling kernels multiplied by factor ** 2


Rule = tuple  # (source key regex, match -> destination key or None to ignore[, Layout or Filter; default SAME])


def fill(dest: nn.Module, source: dict[str, torch.Tensor], rules: list[Rule], what: str) -> ConversionReport:
    """Copy `source` tensors into `dest` following `rules`; every destination tensor must be filled exactly once."""
    target = dest.state_dict()
    report = ConversionReport()
    filled = {}
    for src_key, tensor in source.items():
        for rule in rules:
            match = re.fullmatch(rule[0], src_key)
            if match:
                break
        else:
            raise ConversionError(f"{what}: no rule for source tensor {src_key!r}")
        dest_key, layout = rule[1](match), rule[2] if len(rule) > 2 else SAME
        if dest_key is None:
            report.ignored.append(src_key)
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ConversionError(f"{what}: {src_key!r} is a {type(tensor).__name__}, not a tensor")
        if isinstance(layout, Filter):
            # Compared with the core's one filter: some official buffers (NVIDIA's per-block filter of D) have no
            # counterpart in our modules.
            ours = upfirdn2d.setup_filter(RESAMPLE_FILTER) * layout.gain
            if tensor.shape != ours.shape or not torch.allclose(tensor.to(ours.dtype), ours, rtol=1e-5, atol=1e-7):
                raise ConversionError(f"{what}: {src_key!r} is not the [1, 3, 3, 1] resampling filter stylecli "
                                      f"implements (resample_filter / blur_kernel)")
            report.checked.append(src_key)
            continue
        if dest_key not in target:
            raise ConversionError(f"{what}: {src_key!r} maps to {dest_key!r}, which the network does not have")
        want = target[dest_key]
        if dest_key in filled:
            raise ConversionError(f"{what}: {dest_key!r} filled twice ({filled[dest_key]!r} and {src_key!r})")
        shapes = layout(tuple(want.shape))
        if tuple(tensor.shape) not in shapes:
            raise ConversionError(f"{what}: {src_key!r} has shape {tuple(tensor.shape)}, expected "
                                  f"{' or '.join(str(s) for s in shapes)} for {dest_key!r}")
        # The layouts differ from ours only by axes of size 1, so this reshape never reorders elements.
        target[dest_key] = tensor.reshape(want.shape).to(want.dtype)
        filled[dest_key] = src_key
        report.mapped.append((src_key, dest_key))
    for key in target:
        if key not in filled and key.endswith("resample_filter"):
            report.regenerated.append(key)
    unfilled = [k for k in target if k not in filled and k not in report.regenerated]
    if unfilled:
        raise ConversionError(f"{what}: {len(unfilled)} destination tensors left unfilled, e.g. {unfilled[:4]}")
    dest.load_state_dict(target)
    return report


# NVIDIA names are ours, so the rules are the identity; the filters are checked, not copied.
NVIDIA_RULES: list[Rule] = [
    (r".*resample_filter", lambda m: m[0], Filter()),
    (r".*", lambda m: m[0], SAME),
]


def _res(k: int) -> int:
    return 2 ** (k + 3)  # rosinality's k-th conv pair / toRGB works at 8, 16, 32, ...


def _conv(i: int) -> str:
    return f"synthesis.b{_res(i // 2)}.conv{i % 2}"  # rosinality's convs.i: even ones upsample


ROSINALITY_G_RULES: list[Rule] = [
    (r"style\.(\d+)\.(weight|bias)", lambda m: f"mapping.fc{int(m[1]) - 1}.{m[2]}", SAME),  # style.0 is PixelNorm
    (r"latent_avg", lambda m: "mapping.w_avg", W_AVG),
    (r"input\.input", lambda m: "synthesis.b4.const", LEAD1),
    (r"conv1\.conv\.weight", lambda m: "synthesis.b4.conv1.weight", LEAD1),
    (r"conv1\.conv\.modulation\.(weight|bias)", lambda m: f"synthesis.b4.conv1.affine.{m[1]}", SAME),
    (r"conv1\.activate\.bias", lambda m: "synthesis.b4.conv1.bias", SAME),
    (r"conv1\.noise\.weight", lambda m: "synthesis.b4.conv1.noise_strength", NOISE_WEIGHT),
    (r"to_rgb1\.conv\.weight", lambda m: "synthesis.b4.torgb.weight", LEAD1),
    (r"to_rgb1\.conv\.modulation\.(weight|bias)", lambda m: f"synthesis.b4.torgb.affine.{m[1]}", SAME),
    (r"to_rgb1\.bias", lambda m: "synthesis.b4.torgb.bias", RGB_BIAS),
    (r"convs\.(\d+)\.conv\.weight", lambda m: f"{_conv(int(m[1]))}.weight", LEAD1),
    (r"convs\.(\d+)\.conv\.modulation\.(weight|bias)", lambda m: f"{_conv(int(m[1]))}.affine.{m[2]}", SAME),
    (r"convs\.(\d+)\.activate\.bias", lambda m: f"{_conv(int(m[1]))}.bias", SAME),
    (r"convs\.(\d+)\.noise\.weight", lambda m: f"{_conv(int(m[1]))}.noise_strength", NOISE_WEIGHT),
    (r"convs\.(\d+)\.conv\.blur\.kernel", lambda m: f"{_conv(int(m[1]))}.resample_filter", Filter(gain=4)),
    (r"noises\.noise_0", lambda m: "synthesis.b4.conv1.noise_const", NOISE_MAP),
    (r"noises\.noise_(\d+)", lambda m: f"{_conv(int(m[1]) - 1)}.noise_const", NOISE_MAP),
    (r"to_rgbs\.(\d+)\.conv\.weight", lambda m: f"synthesis.b{_res(int(m[1]))}.torgb.weight", LEAD1),
    (r"to_rgbs\.(\d+)\.conv\.modulation\.(weight|bias)",
     lambda m: f"synthesis.b{_res(int(m[1]))}.torgb.affine.{m[2]}", SAME),
    (r"to_rgbs\.(\d+)\.bias", lambda m: f"synthesis.b{_res(int(m[1]))}.torgb.bias", RGB_BIAS),
    # The skip image is upsampled with the block's filter, times 4 in rosinality's Upsample.
    (r"to_rgbs\.(\d+)\.upsample\.kernel", lambda m: f"synthesis.b{_res(int(m[1]))}.resample_filter", Filter(gain=4)),
]


def rosinality_d_rules(resolution: int) -> list[Rule]:
    block = lambda j: f"b{resolution // 2 ** (int(j) - 1)}"  # convs.1 is the block at full resolution
    return [
        (r"convs\.0\.0\.weight", lambda m: f"b{resolution}.fromrgb.weight", SAME),
        (r"convs\.0\.1\.bias", lambda m: f"b{resolution}.fromrgb.bias", SAME),
        (r"convs\.(\d+)\.conv1\.0\.weight", lambda m: f"{block(m[1])}.conv0.weight", SAME),
        (r"convs\.(\d+)\.conv1\.1\.bias", lambda m: f"{block(m[1])}.conv0.bias", SAME),
        (r"convs\.(\d+)\.conv2\.0\.kernel", lambda m: f"{block(m[1])}.conv1.resample_filter", Filter()),
        (r"convs\.(\d+)\.conv2\.1\.weight", lambda m: f"{block(m[1])}.conv1.weight", SAME),
        (r"convs\.(\d+)\.conv2\.2\.bias", lambda m: f"{block(m[1])}.conv1.bias", SAME),
        (r"convs\.(\d+)\.skip\.0\.kernel", lambda m: f"{block(m[1])}.skip.resample_filter", Filter()),
        (r"convs\.(\d+)\.skip\.1\.weight", lambda m: f"{block(m[1])}.skip.weight", SAME),
        (r"final_conv\.0\.weight", lambda m: "b4.conv.weight", SAME),
        (r"final_conv\.1\.bias", lambda m: "b4.conv.bias", SAME),
        (r"final_linear\.0\.(weight|bias)", lambda m: f"b4.fc.{m[1]}", SAME),
        (r"final_linear\.1\.(weight|bias)", lambda m: f"b4.out.{m[1]}", SAME),
    ]


# ----------------------------------------------------------------------------------------------------------------
# NVIDIA architecture settings

HONOURED = "passed to the core"         # the core builds the network the setting describes
ACCEPTED = "accepted"                   # changes training or speed only (or nothing, given c_dim == 0)
ONLY = "only what `allows` admits"      # the core implements one value (or a few)
REQUIRED = object()                     # no default: the official constructor requires the argument


@dataclass(frozen=True)
class Setting:
    """What stylecli does with one constructor argument of an official class."""
    default: object = REQUIRED                 # the official default, when neither kwargs nor modules record it
    handling: str = HONOURED                   # HONOURED, ACCEPTED or ONLY
    allows: Callable | None = None             # (value, all settings) -> bool; None: any value
    needs: str = ""                            # what the core implements, for the refusal message
    recorded: tuple[str, str] | None = None    # (module path, attribute) holding the effective value in the pickle


def _only(value, recorded=None) -> Setting:
    """A setting whose one supported value is also the official default."""
    return Setting(default=value, handling=ONLY, allows=lambda v, s: _same(v, value), needs=repr(value),
                   recorded=recorded)


def _same(a, b) -> bool:
    """Equality of setting values as pickles hold them: lists or arrays of taps, numpy or Python floats."""
    if isinstance(a, (list, tuple, np.ndarray, torch.Tensor)) or isinstance(b, (list, tuple)):
        try:
            return np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        except (TypeError, ValueError):
            return False
    if isinstance(a, (float, np.floating)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(a, b, rtol=1e-6, atol=0))
    return a == b


FILTER = [1, 3, 3, 1]

# stylegan2-ada-pytorch training/networks.py Generator, and stylegan3 training/networks_stylegan2.py Generator (which
# takes the synthesis arguments as keywords of its own: they are read as synthesis_kwargs.*). Layer arguments reach
# SynthesisLayer through synthesis_kwargs as well.
NVIDIA_G_SETTINGS: dict[str, Setting] = {
    "z_dim":                                Setting(),
    "c_dim":                                _only(0, recorded=("", "c_dim")),
    "w_dim":                                Setting(),
    "img_resolution":                       Setting(),
    "img_channels":                         Setting(),
    "mapping_kwargs.num_layers":            Setting(8),
    "mapping_kwargs.embed_features":        Setting(None, ACCEPTED),   # unused when c_dim == 0
    "mapping_kwargs.layer_features":        Setting(None, ONLY, lambda v, s: v is None or v == s["w_dim"], "w_dim"),
    "mapping_kwargs.activation":            _only("lrelu", recorded=("mapping.fc0", "activation")),
    "mapping_kwargs.lr_multiplier":         _only(0.01, recorded=("mapping.fc0", "bias_gain")),
    "mapping_kwargs.w_avg_beta":            Setting(0.995, ACCEPTED, lambda v, s: v is not None, "a running w_avg",
                                                    recorded=("mapping", "w_avg_beta")),
    "synthesis_kwargs.channel_base":        Setting(32768),
    "synthesis_kwargs.channel_max":         Setting(512),
    "synthesis_kwargs.num_fp16_res":        Setting(0, ACCEPTED),
    "synthesis_kwargs.conv_clamp":          Setting(None, recorded=("synthesis.b4.conv1", "conv_clamp")),
    "synthesis_kwargs.architecture":        _only("skip", recorded=("synthesis.b4", "architecture")),
    "synthesis_kwargs.resample_filter":     _only(FILTER),
    "synthesis_kwargs.fp16_channels_last":  Setting(False, ACCEPTED),
    "synthesis_kwargs.fused_modconv_default": Setting(True, ACCEPTED),
    "synthesis_kwargs.kernel_size":         _only(3),
    "synthesis_kwargs.use_noise":           _only(True, recorded=("synthesis.b4.conv1", "use_noise")),
    "synthesis_kwargs.activation":          _only("lrelu", recorded=("synthesis.b4.conv1", "activation")),
}

# The Discriminator of both repositories ("{top}" is the block at full resolution).
NVIDIA_D_SETTINGS: dict[str, Setting] = {
    "c_dim":                                _only(0, recorded=("", "c_dim")),
    "img_resolution":                       Setting(),
    "img_channels":                         Setting(),
    "architecture":                         _only("resnet", recorded=("b{top}", "architecture")),
    "channel_base":                         Setting(32768),
    "channel_max":                          Setting(512),
    "num_fp16_res":                         Setting(0, ACCEPTED),
    "conv_clamp":                           Setting(None, recorded=("b{top}.conv0", "conv_clamp")),
    "cmap_dim":                             Setting(None, ACCEPTED),  # unused when c_dim == 0
    "block_kwargs.activation":              _only("lrelu", recorded=("b{top}.conv0", "activation")),
    "block_kwargs.resample_filter":         _only(FILTER),
    "block_kwargs.fp16_channels_last":      Setting(False, ACCEPTED),
    "block_kwargs.freeze_layers":           Setting(0, ACCEPTED),     # which layers training updates
    "mapping_kwargs.*":                     Setting(None, ACCEPTED),  # the label mapping exists only when c_dim > 0
    "epilogue_kwargs.mbstd_group_size":     Setting(4, HONOURED, lambda v, s: isinstance(v, int) and v > 0,
                                                    "a fixed group size", recorded=("b4.mbstd", "group_size")),
    "epilogue_kwargs.mbstd_num_channels":   _only(1, recorded=("b4.mbstd", "num_channels")),
    "epilogue_kwargs.activation":           _only("lrelu", recorded=("b4.conv", "activation")),
}

_G_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
_D_POSITIONAL = ("c_dim", "img_resolution", "img_channels")
_NESTED = ("mapping_kwargs", "synthesis_kwargs", "block_kwargs", "epilogue_kwargs")


def _module(obj, path: str):
    """The PersistentObject/ModuleState at a dotted path ("" is `obj`), or None."""
    for name in filter(None, path.split(".")):
        obj = ((getattr(obj, "state", None) or {}).get("_modules") or {}).get(name)
        if obj is None:
            return None
    return obj


def read_settings(obj: PersistentObject, table: dict[str, Setting], positional: tuple[str, ...], what: str) -> dict:
    """The object's constructor arguments under the table's names, each resolved and checked; refuses with one line.

    Precedence: the recorded kwargs, then the attribute the named module recorded (it holds the class default that
    the constructor used), then the table's default.
    """
    state = obj.state
    kwargs = dict(zip(positional, state.get("_init_args") or ()))
    kwargs.update(state.get("_init_kwargs") or {})
    given, shown = {}, {}  # setting name -> value, and -> the name as the checkpoint spells it
    top = {name for name in table if "." not in name}
    flat_into = "synthesis_kwargs" if "synthesis_kwargs.channel_base" in table else None
    for key, value in kwargs.items():
        if key in _NESTED and isinstance(value, dict):
            names = {f"{key}.{k}": (f"{key}.{k}", v) for k, v in value.items()}
        elif key in top or flat_into is None:
            names = {key: (key, value)}
        else:
            names = {f"{flat_into}.{key}": (key, value)}  # stylegan3's Generator(**synthesis_kwargs)
        for name, (spelt, v) in names.items():
            given[name], shown[name] = v, spelt
    for name, value in given.items():
        if name not in table and f"{name.split('.')[0]}.*" not in table:
            raise ConversionError(f"{what}: unknown setting {shown[name]}={value!r}; stylecli cannot tell what it "
                                  f"changes")
    resolution = given.get("img_resolution")
    settings = {}
    for name, rule in table.items():
        if name.endswith(".*"):
            continue
        module_state = (_state_of(obj, rule.recorded[0], resolution) or {}) if rule.recorded else {}
        if name in given:
            value = given[name]
        elif rule.recorded and rule.recorded[1] in module_state:
            value = module_state[rule.recorded[1]]
        elif rule.default is REQUIRED:
            raise ConversionError(f"{what}: the checkpoint does not record {name}")
        else:
            value = rule.default
        settings[name] = value
    for name, rule in table.items():
        if rule.allows is not None and not rule.allows(settings.get(name), settings):
            raise ConversionError(f"{what}: {shown.get(name, name)}={settings[name]!r} is not supported; stylecli's "
                                  f"networks implement {rule.needs} only")
    return settings


def _state_of(obj, path: str, resolution: int | None) -> dict | None:
    """The recorded state of the module at `path`, where "{top}" is the block at `resolution`."""
    module = _module(obj, path.format(top=resolution))
    return None if module is None else module.state


# Plain attributes of NVIDIA's modules that fix the arithmetic; the core's modules at the same path use the same names.
CHECKED_ATTRIBUTES = ("activation", "act_gain", "weight_gain", "bias_gain", "conv_clamp", "up", "down", "padding",
                      "use_noise", "resolution", "in_channels", "in_features", "out_features", "group_size",
                      "num_channels", "num_layers", "num_ws", "z_dim", "w_dim", "img_channels", "img_resolution")


def check_recorded_attributes(src, dest: nn.Module, what: str, path: str = "") -> None:
    """Every arithmetic constant a source module recorded must equal the destination module's (where both have it)."""
    state = getattr(src, "state", None) or {}
    for name in CHECKED_ATTRIBUTES:
        if name in state and hasattr(dest, name) and not _same(state[name], getattr(dest, name)):
            where = f"{path}.{name}" if path else name
            raise ConversionError(f"{what}: {where} is {state[name]!r} in the checkpoint, but stylecli's network has "
                                  f"{getattr(dest, name)!r}: a setting stylecli cannot honour")
    for name, child in (state.get("_modules") or {}).items():
        if child is not None and isinstance(getattr(dest, name, None), nn.Module):
            check_recorded_attributes(child, getattr(dest, name), what, f"{path}.{name}" if path else name)


# ----------------------------------------------------------------------------------------------------------------
# Whole checkpoints

@dataclass
class Converted:
    generator: Generator
    discriminator: Discriminator | None
    source_format: str
    reports: dict[str, ConversionReport]


def detect_format(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK":
        return "rosinality"          # torch.save zip archive
    if head[:1] == b"\x80":
        from .tf_legacy import is_tf_pickle
        return "nvidia-tf-pkl" if is_tf_pickle(path) else "nvidia-pkl"  # a pickle stream: TF (G, D, Gs) or PyTorch
    raise ConversionError(f"{path}: neither a NVIDIA .pkl nor a torch .pt checkpoint")


def convert_checkpoint(path: str | Path) -> Converted:
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    fmt = detect_format(path)
    if fmt == "nvidia-tf-pkl":
        from .tf_legacy import convert_tf_pickle
        return convert_tf_pickle(path)
    return _convert_nvidia(path) if fmt == "nvidia-pkl" else _convert_rosinality(path)


def _convert_nvidia(path: Path) -> Converted:
    try:
        data = safe_load_pickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"{path}: {exc}") from exc
    if isinstance(data, tuple):
        raise ConversionError(f"{path}: a legacy TensorFlow pickle (G, D, Gs); convert it with NVIDIA's legacy.py "
                              f"first")
    if not isinstance(data, dict) or "G_ema" not in data:
        raise ConversionError(f"{path}: no G_ema in this pickle")
    g_src = data["G_ema"]
    if not isinstance(g_src, PersistentObject) or g_src.class_name != "Generator":
        raise ConversionError(f"{path}: G_ema is not a StyleGAN2 Generator")
    flat = flatten_module(g_src)
    if any(k.startswith("synthesis.input.") for k in flat):
        raise ConversionError(f"{path}: a StyleGAN3 (alias-free) generator; only StyleGAN2 networks are supported")
    s = read_settings(g_src, NVIDIA_G_SETTINGS, _G_POSITIONAL, f"{path}: G_ema")
    generator = Generator(z_dim=s["z_dim"], w_dim=s["w_dim"], img_resolution=s["img_resolution"],
                          img_channels=s["img_channels"], mapping_layers=s["mapping_kwargs.num_layers"],
                          channel_base=s["synthesis_kwargs.channel_base"],
                          channel_max=s["synthesis_kwargs.channel_max"],
                          conv_clamp=s["synthesis_kwargs.conv_clamp"])
    check_recorded_attributes(g_src, generator, f"{path}: G_ema")
    reports = {"generator": fill(generator, flat, NVIDIA_RULES, f"{path}: G_ema")}
    discriminator = None
    d_src = data.get("D")
    if isinstance(d_src, PersistentObject) and d_src.class_name == "Discriminator":
        s = read_settings(d_src, NVIDIA_D_SETTINGS, _D_POSITIONAL, f"{path}: D")
        discriminator = Discriminator(img_resolution=s["img_resolution"], img_channels=s["img_channels"],
                                      channel_base=s["channel_base"], channel_max=s["channel_max"],
                                      mbstd_group_size=s["epilogue_kwargs.mbstd_group_size"],
                                      conv_clamp=s["conv_clamp"])
        check_recorded_attributes(d_src, discriminator, f"{path}: D")
        reports["discriminator"] = fill(discriminator, flatten_module(d_src), NVIDIA_RULES, f"{path}: D")
    return Converted(generator, discriminator, "nvidia-pkl", reports)


def _infer_rosinality_config(g: dict[str, torch.Tensor]) -> dict:
    """Generator config from rosinality's tensors: size, style_dim, n_mlp and channel_multiplier are not stored."""
    mapping_layers = len([k for k in g if re.fullmatch(r"style\.\d+\.weight", k)])
    num_pairs = len([k for k in g if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
    for key in ("conv1.conv.weight", "style.1.weight", "to_rgb1.conv.weight",
                *(f"convs.{2 * k}.conv.weight" for k in range(num_pairs))):
        if key not in g:
            raise ConversionError(f"no {key!r}: not a rosinality generator")
    channels = {4: g["conv1.conv.weight"].shape[1]}
    for k in range(num_pairs):
        channels[_res(k)] = g[f"convs.{2 * k}.conv.weight"].shape[1]
    resolution = _res(num_pairs - 1) if num_pairs else 4
    # Recover channel_base/channel_max from the widths: max is the widest, base fits the first narrowed layer.
    channel_max = max(channels.values())
    narrowed = [r for r, c in channels.items() if c < channel_max]
    channel_base = channels[min(narrowed)] * min(narrowed) if narrowed else channel_max * resolution
    config = dict(z_dim=g["style.1.weight"].shape[1], w_dim=g["style.1.weight"].shape[0], img_resolution=resolution,
                  img_channels=g["to_rgb1.conv.weight"].shape[1], mapping_layers=mapping_layers,
                  channel_base=channel_base, channel_max=channel_max)
    derived = {r: min(channel_base // r, channel_max) for r in channels}
    if derived != channels:
        raise ConversionError(f"channel widths {channels} do not follow min(base / res, max)")
    return config


def _convert_rosinality(path: Path) -> Converted:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise ConversionError(f"{path}: not a weights-only torch checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or "g_ema" not in data:
        raise ConversionError(f"{path}: no g_ema in this checkpoint (expected rosinality's {{g_ema, latent_avg, ...}})")
    g = dict(data["g_ema"])
    try:
        config = _infer_rosinality_config(g)
    except ConversionError as exc:
        raise ConversionError(f"{path}: g_ema: {exc}") from None
    if "latent_avg" in data:
        g["latent_avg"] = data["latent_avg"]
    else:
        raise ConversionError(f"{path}: no latent_avg (needed for truncation)")
    generator = Generator(**config)
    reports = {"generator": fill(generator, g, ROSINALITY_G_RULES, f"{path}: g_ema")}
    discriminator = None
    if "d" in data:
        d = dict(data["d"])
        discriminator = Discriminator(img_resolution=config["img_resolution"], img_channels=config["img_channels"],
                                      channel_base=config["channel_base"], channel_max=config["channel_max"])
        reports["discriminator"] = fill(discriminator, d, rosinality_d_rules(config["img_resolution"]), f"{path}: d")
    return Converted(generator, discriminator, "rosinality", reports)
