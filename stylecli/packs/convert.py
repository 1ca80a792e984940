"""Import official StyleGAN2 checkpoints into stylecli networks, without running any code from the file.

Sources:
- NVIDIA stylegan2-ada-pytorch / stylegan3 `.pkl` (StyleGAN2 networks): a pickle of "persistent" module objects whose
  metadata carries their source code. `SafeUnpickler` maps the reconstruct function to a stub that keeps only the
  recorded state and allows a short list of tensor/container constructors; anything else is refused.
- rosinality stylegan2-pytorch `.pt`: a torch.save dict {g_ema, latent_avg, g?, d?}, read with weights_only=True.

Each conversion walks a table of key rules (below), asserts every tensor's shape, and fails when any destination
tensor is left unfilled. Resampling-filter buffers are regenerated, never copied.
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

from ..core.networks import Discriminator, Generator


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
    regenerated: list[str] = field(default_factory=list)          # destination buffers rebuilt, not copied


Rule = tuple[str, Callable[[re.Match], str | None]]  # (source key regex, match -> destination key or None to ignore)


def fill(dest: nn.Module, source: dict[str, torch.Tensor], rules: list[Rule], what: str) -> ConversionReport:
    """Copy `source` tensors into `dest` following `rules`; every destination tensor must be filled exactly once."""
    target = dest.state_dict()
    report = ConversionReport()
    filled = {}
    for src_key, tensor in source.items():
        for pattern, to_dest in rules:
            match = re.fullmatch(pattern, src_key)
            if match:
                break
        else:
            raise ConversionError(f"{what}: no rule for source tensor {src_key!r}")
        dest_key = to_dest(match)
        if dest_key is None:
            report.ignored.append(src_key)
            continue
        if dest_key not in target:
            raise ConversionError(f"{what}: {src_key!r} maps to {dest_key!r}, which the network does not have")
        if dest_key in filled:
            raise ConversionError(f"{what}: {dest_key!r} filled twice ({filled[dest_key]!r} and {src_key!r})")
        want = target[dest_key].shape
        if tensor.numel() != want.numel():
            raise ConversionError(f"{what}: {src_key!r} has shape {tuple(tensor.shape)}, {dest_key!r} needs {tuple(want)}")
        target[dest_key] = tensor.reshape(want).to(target[dest_key].dtype)
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


# NVIDIA names are ours, so the rules are the identity, minus the filters we regenerate.
NVIDIA_RULES: list[Rule] = [
    (r".*resample_filter", lambda m: None),
    (r".*", lambda m: m[0]),
]


def _res(k: int) -> int:
    return 2 ** (k + 3)  # rosinality's k-th conv pair / toRGB works at 8, 16, 32, ...


ROSINALITY_G_RULES: list[Rule] = [
    (r"style\.(\d+)\.(weight|bias)", lambda m: f"mapping.fc{int(m[1]) - 1}.{m[2]}"),
    (r"latent_avg", lambda m: "mapping.w_avg"),
    (r"input\.input", lambda m: "synthesis.b4.const"),
    (r"conv1\.conv\.weight", lambda m: "synthesis.b4.conv1.weight"),
    (r"conv1\.conv\.modulation\.(weight|bias)", lambda m: f"synthesis.b4.conv1.affine.{m[1]}"),
    (r"conv1\.activate\.bias", lambda m: "synthesis.b4.conv1.bias"),
    (r"conv1\.noise\.weight", lambda m: "synthesis.b4.conv1.noise_strength"),
    (r"to_rgb1\.conv\.weight", lambda m: "synthesis.b4.torgb.weight"),
    (r"to_rgb1\.conv\.modulation\.(weight|bias)", lambda m: f"synthesis.b4.torgb.affine.{m[1]}"),
    (r"to_rgb1\.bias", lambda m: "synthesis.b4.torgb.bias"),
    (r"convs\.(\d+)\.conv\.weight", lambda m: f"synthesis.b{_res(int(m[1]) // 2)}.conv{int(m[1]) % 2}.weight"),
    (r"convs\.(\d+)\.conv\.modulation\.(weight|bias)",
     lambda m: f"synthesis.b{_res(int(m[1]) // 2)}.conv{int(m[1]) % 2}.affine.{m[2]}"),
    (r"convs\.(\d+)\.activate\.bias", lambda m: f"synthesis.b{_res(int(m[1]) // 2)}.conv{int(m[1]) % 2}.bias"),
    (r"convs\.(\d+)\.noise\.weight", lambda m: f"synthesis.b{_res(int(m[1]) // 2)}.conv{int(m[1]) % 2}.noise_strength"),
    (r"convs\.\d+\.conv\.blur\.kernel", lambda m: None),
    (r"noises\.noise_0", lambda m: "synthesis.b4.conv1.noise_const"),
    (r"noises\.noise_(\d+)", lambda m: f"synthesis.b{_res((int(m[1]) - 1) // 2)}.conv{(int(m[1]) - 1) % 2}.noise_const"),
    (r"to_rgbs\.(\d+)\.conv\.weight", lambda m: f"synthesis.b{_res(int(m[1]))}.torgb.weight"),
    (r"to_rgbs\.(\d+)\.conv\.modulation\.(weight|bias)", lambda m: f"synthesis.b{_res(int(m[1]))}.torgb.affine.{m[2]}"),
    (r"to_rgbs\.(\d+)\.bias", lambda m: f"synthesis.b{_res(int(m[1]))}.torgb.bias"),
    (r"to_rgbs\.\d+\.upsample\.kernel", lambda m: None),
]


def rosinality_d_rules(resolution: int) -> list[Rule]:
    block = lambda j: f"b{resolution // 2 ** (int(j) - 1)}"  # convs.1 is the block at full resolution
    return [
        (r"convs\.0\.0\.weight", lambda m: f"b{resolution}.fromrgb.weight"),
        (r"convs\.0\.1\.bias", lambda m: f"b{resolution}.fromrgb.bias"),
        (r"convs\.(\d+)\.conv1\.0\.weight", lambda m: f"{block(m[1])}.conv0.weight"),
        (r"convs\.(\d+)\.conv1\.1\.bias", lambda m: f"{block(m[1])}.conv0.bias"),
        (r"convs\.(\d+)\.conv2\.1\.weight", lambda m: f"{block(m[1])}.conv1.weight"),
        (r"convs\.(\d+)\.conv2\.2\.bias", lambda m: f"{block(m[1])}.conv1.bias"),
        (r"convs\.(\d+)\.skip\.1\.weight", lambda m: f"{block(m[1])}.skip.weight"),
        (r"convs\.\d+\.(conv2|skip)\.0\.kernel", lambda m: None),
        (r"final_conv\.0\.weight", lambda m: "b4.conv.weight"),
        (r"final_conv\.1\.bias", lambda m: "b4.conv.bias"),
        (r"final_linear\.0\.(weight|bias)", lambda m: f"b4.fc.{m[1]}"),
        (r"final_linear\.1\.(weight|bias)", lambda m: f"b4.out.{m[1]}"),
    ]


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
        return "nvidia-pkl"          # a pickle stream
    raise ConversionError(f"{path}: neither a NVIDIA .pkl nor a torch .pt checkpoint")


def convert_checkpoint(path: str | Path) -> Converted:
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    fmt = detect_format(path)
    return _convert_nvidia(path) if fmt == "nvidia-pkl" else _convert_rosinality(path)


def _convert_nvidia(path: Path) -> Converted:
    try:
        data = safe_load_pickle(path)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"{path}: {exc}") from exc
    if isinstance(data, tuple):
        raise ConversionError(f"{path}: a legacy TensorFlow pickle (G, D, Gs); convert it with NVIDIA's legacy.py first")
    if not isinstance(data, dict) or "G_ema" not in data:
        raise ConversionError(f"{path}: no G_ema in this pickle")
    g_src = data["G_ema"]
    if not isinstance(g_src, PersistentObject) or g_src.class_name != "Generator":
        raise ConversionError(f"{path}: G_ema is not a StyleGAN2 Generator")
    kwargs = g_src.state.get("_init_kwargs") or {}
    if kwargs.get("c_dim", 0):
        raise ConversionError(f"{path}: conditional generators (c_dim={kwargs['c_dim']}) are not supported")
    syn = kwargs.get("synthesis_kwargs") or {}
    flat = flatten_module(g_src)
    if any(k.startswith("synthesis.input.") for k in flat):
        raise ConversionError(f"{path}: a StyleGAN3 (alias-free) generator; only StyleGAN2 networks are supported")
    if syn.get("architecture", "skip") != "skip":
        raise ConversionError(f"{path}: only the skip synthesis architecture (config-f) is supported")
    generator = Generator(z_dim=kwargs["z_dim"], w_dim=kwargs["w_dim"], img_resolution=kwargs["img_resolution"],
                          img_channels=kwargs.get("img_channels", 3),
                          mapping_layers=(kwargs.get("mapping_kwargs") or {}).get("num_layers", 8),
                          channel_base=syn.get("channel_base", 32768), channel_max=syn.get("channel_max", 512),
                          conv_clamp=syn.get("conv_clamp"))
    reports = {"generator": fill(generator, flat, NVIDIA_RULES, "G_ema")}
    discriminator = None
    d_src = data.get("D")
    if isinstance(d_src, PersistentObject) and d_src.class_name == "Discriminator":
        dk = d_src.state.get("_init_kwargs") or {}
        if dk.get("architecture", "resnet") != "resnet" or dk.get("c_dim", 0):
            raise ConversionError(f"{path}: only unconditional resnet discriminators are supported")
        discriminator = Discriminator(img_resolution=dk["img_resolution"], img_channels=dk.get("img_channels", 3),
                                      channel_base=dk.get("channel_base", 32768), channel_max=dk.get("channel_max", 512),
                                      mbstd_group_size=(dk.get("epilogue_kwargs") or {}).get("mbstd_group_size", 4),
                                      conv_clamp=dk.get("conv_clamp"))
        reports["discriminator"] = fill(discriminator, flatten_module(d_src), NVIDIA_RULES, "D")
    return Converted(generator, discriminator, "nvidia-pkl", reports)


def _infer_rosinality_config(g: dict[str, torch.Tensor]) -> dict:
    mapping_layers = len([k for k in g if re.fullmatch(r"style\.\d+\.weight", k)])
    num_pairs = len([k for k in g if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
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
    config = _infer_rosinality_config(g)
    if "latent_avg" in data:
        g["latent_avg"] = data["latent_avg"]
    else:
        raise ConversionError(f"{path}: no latent_avg (needed for truncation)")
    generator = Generator(**config)
    reports = {"generator": fill(generator, g, ROSINALITY_G_RULES, "g_ema")}
    discriminator = None
    if "d" in data:
        d = dict(data["d"])
        channels_top = d["convs.0.0.weight"].shape[0]
        assert channels_top == min(config["channel_base"] // config["img_resolution"], config["channel_max"])
        discriminator = Discriminator(img_resolution=config["img_resolution"], img_channels=config["img_channels"],
                                      channel_base=config["channel_base"], channel_max=config["channel_max"])
        reports["discriminator"] = fill(discriminator, d, rosinality_d_rules(config["img_resolution"]), "d")
    return Converted(generator, discriminator, "rosinality", reports)
