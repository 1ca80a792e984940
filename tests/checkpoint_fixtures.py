"""Writers of small checkpoints in the official layouts, for the converter tests.

- NVIDIA stylegan2-ada-pytorch `.pkl`: persistent objects pickled through `torch_utils.persistence.
  _reconstruct_persistent_obj(meta)`, whose meta carries `module_src` (here: code that would leave a marker file if it
  were ever executed), `class_name` and `state` (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`). Tensors are
  pickled by torch itself, exactly as in the official files.
- rosinality `.pt`: {g_ema, d, latent_avg} with rosinality's own module names, written here by walking rosinality's
  structure (conv1, to_rgb1, convs.i, to_rgbs.k, noises.noise_j; convs.0 + ResBlocks, final_conv, final_linear).
- Golden checkpoints (tests/golden): the official networks' state dicts and module records, made by NVIDIA's and
  rosinality's own code, written back into the official on-disk layouts by `write_golden_nvidia_pkl` and
  `write_golden_rosinality_pt`.
"""

from __future__ import annotations

import collections
import copy
import json
import pickle
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from stylecli.core.networks import Discriminator, Generator


@contextmanager
def official_modules():
    """Temporarily provide the module names an official pickle refers to (torch_utils, dnnlib)."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # only its name is pickled
        raise AssertionError("never called while writing")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    added = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}
    sys.modules.update(added)
    try:
        yield persistence, EasyDict
    finally:
        for name in added:
            sys.modules.pop(name, None)


class _Persistent:
    def __init__(self, reconstruct, class_name, state, marker):
        self.reconstruct, self.class_name, self.state, self.marker = reconstruct, class_name, state, marker

    def __reduce__(self):
        src = f"open({str(self.marker)!r}, 'w').write('code from a checkpoint ran')\n"
        meta = dict(type="class", version=4, module_src=src, class_name=self.class_name, state=self.state)
        return self.reconstruct, (meta,)


def _persistent_tree(module: torch.nn.Module, class_name: str, init_kwargs, reconstruct, marker) -> _Persistent:
    state = {
        "training": False,
        "_parameters": collections.OrderedDict((k, v) for k, v in module._parameters.items()),
        "_buffers": collections.OrderedDict((k, v) for k, v in module._buffers.items()),
        "_modules": collections.OrderedDict(
            (k, _persistent_tree(m, type(m).__name__, {}, reconstruct, marker)) for k, m in module._modules.items()),
        "_init_args": (),
        "_init_kwargs": init_kwargs,
    }
    return _Persistent(reconstruct, class_name, state, marker)


def write_nvidia_pkl(path: Path, G: Generator, D: Discriminator, marker: Path) -> None:
    c = G.config
    with official_modules() as (persistence, EasyDict):
        rec = persistence._reconstruct_persistent_obj
        g_kwargs = EasyDict(z_dim=c["z_dim"], c_dim=0, w_dim=c["w_dim"], img_resolution=c["img_resolution"],
                            img_channels=c["img_channels"], mapping_kwargs=EasyDict(num_layers=c["mapping_layers"]),
                            synthesis_kwargs=EasyDict(channel_base=c["channel_base"], channel_max=c["channel_max"],
                                                      num_fp16_res=0, conv_clamp=None, architecture="skip"))
        d_kwargs = EasyDict(c_dim=0, img_resolution=D.config["img_resolution"], img_channels=3, architecture="resnet",
                            channel_base=D.config["channel_base"], channel_max=D.config["channel_max"],
                            epilogue_kwargs=EasyDict(mbstd_group_size=4))
        data = {
            "G": _persistent_tree(G, "Generator", g_kwargs, rec, marker),
            "D": _persistent_tree(D, "Discriminator", d_kwargs, rec, marker),
            "G_ema": _persistent_tree(G, "Generator", g_kwargs, rec, marker),
            "augment_pipe": None,
            "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=c["img_resolution"]),
        }
        with open(path, "wb") as fh:
            pickle.dump(data, fh)


def rosinality_generator_state(G: Generator) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in G.state_dict().items()}
    out = {}
    for i in range(G.mapping.num_layers):  # style.0 is PixelNorm (no parameters)
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)
    blur = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1]))
    blur = blur / blur.sum() * 4  # rosinality stores its upsampling kernels scaled by factor**2

    def styled_conv(src, dst, upsample):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        if upsample:
            out[f"{dst}.conv.blur.kernel"] = blur

    def to_rgb(src, dst, upsample):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)
        if upsample:
            out[f"{dst}.upsample.kernel"] = blur

    styled_conv("synthesis.b4.conv1", "conv1", False)
    to_rgb("synthesis.b4.torgb", "to_rgb1", False)
    out["noises.noise_0"] = sd["synthesis.b4.conv1.noise_const"].reshape(1, 1, 4, 4)
    layer = 1
    for k, res in enumerate(G.synthesis.block_resolutions[1:]):
        for j, conv in enumerate(("conv0", "conv1")):
            styled_conv(f"synthesis.b{res}.{conv}", f"convs.{2 * k + j}", upsample=(j == 0))
            out[f"noises.noise_{layer}"] = sd[f"synthesis.b{res}.{conv}.noise_const"].reshape(1, 1, res, res)
            layer += 1
        to_rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}", upsample=True)
    return out


def rosinality_discriminator_state(D: Discriminator) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in D.state_dict().items()}
    kernel = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1]))
    kernel = kernel / kernel.sum()
    top = D.img_resolution
    out = {"convs.0.0.weight": sd[f"b{top}.fromrgb.weight"], "convs.0.1.bias": sd[f"b{top}.fromrgb.bias"]}
    for j, res in enumerate(D.block_resolutions, start=1):  # ResBlocks from the top resolution down to 8
        out[f"convs.{j}.conv1.0.weight"] = sd[f"b{res}.conv0.weight"]
        out[f"convs.{j}.conv1.1.bias"] = sd[f"b{res}.conv0.bias"]
        out[f"convs.{j}.conv2.0.kernel"] = kernel
        out[f"convs.{j}.conv2.1.weight"] = sd[f"b{res}.conv1.weight"]
        out[f"convs.{j}.conv2.2.bias"] = sd[f"b{res}.conv1.bias"]
        out[f"convs.{j}.skip.0.kernel"] = kernel
        out[f"convs.{j}.skip.1.weight"] = sd[f"b{res}.skip.weight"]
    out["final_conv.0.weight"] = sd["b4.conv.weight"]
    out["final_conv.1.bias"] = sd["b4.conv.bias"]
    out["final_linear.0.weight"], out["final_linear.0.bias"] = sd["b4.fc.weight"], sd["b4.fc.bias"]
    out["final_linear.1.weight"], out["final_linear.1.bias"] = sd["b4.out.weight"], sd["b4.out.bias"]
    return out


def write_rosinality_pt(path: Path, G: Generator, D: Discriminator) -> None:
    g = rosinality_generator_state(G)
    torch.save({"g": g, "d": rosinality_discriminator_state(D), "g_ema": g,
                "latent_avg": G.mapping.w_avg.clone()}, path)


def random_networks(seed=0):
    """A small G and D with every parameter non-trivial (noise strengths and biases too)."""
    torch.manual_seed(seed)
    G = Generator(z_dim=32, w_dim=32, img_resolution=32, mapping_layers=2, channel_base=512, channel_max=32)
    D = Discriminator(img_resolution=32, channel_base=512, channel_max=32)
    with torch.no_grad():
        for name, p in list(G.named_parameters()) + list(D.named_parameters()):
            if name.endswith(("noise_strength", "bias")):
                p.normal_(0, 0.2)
        G.mapping.w_avg.normal_()
    return G.eval(), D.eval()


# ----------------------------------------------------------------------------------------------------------------
# Golden checkpoints made by the official code (tests/golden/README.md)

GOLDEN = Path(__file__).parent / "golden"


def golden_case(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a golden case; the metadata is a fresh copy that a test may change."""
    return json.loads((GOLDEN / f"{name}.json").read_text()), load_file(GOLDEN / f"{name}.safetensors")


def _easydicts(value, EasyDict):
    if isinstance(value, dict):
        return EasyDict({k: _easydicts(v, EasyDict) for k, v in value.items()})
    return value


def _recorded_tree(records: dict, tensors: dict, prefix: str, path: str, rec, EasyDict, marker):
    """The object NVIDIA's persistence pickles for the module at `path`: its recorded __dict__ with the tensors."""
    r = records[path]
    key = f"{prefix}.{path}." if path else f"{prefix}."
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, torch.nn.Parameter(tensors[key + k].clone(), requires_grad=False)) for k in r["parameters"]),
        "_buffers": collections.OrderedDict((k, tensors[key + k].clone()) for k in r["buffers"]),
        "_modules": collections.OrderedDict(
            (k, _recorded_tree(records, tensors, prefix, f"{path}.{k}" if path else k, rec, EasyDict, marker))
            for k in r["modules"]),
        "_init_args": tuple(r["init_args"]),
        "_init_kwargs": _easydicts(r["init_kwargs"], EasyDict),
    }
    # Gains are numpy scalars in the official objects (np.sqrt), pickled through numpy's own reconstructors.
    state.update({k: np.float64(v) if k in r["numpy_attrs"] else copy.deepcopy(v) for k, v in r["attrs"].items()})
    return _Persistent(rec, r["class_name"], state, marker)


def write_golden_nvidia_pkl(path: Path, meta: dict, tensors: dict[str, torch.Tensor], marker: Path) -> Path:
    """A stylegan2-ada-pytorch network-snapshot pickle {G, D, G_ema, augment_pipe, training_set_kwargs} rebuilt from
    a golden case's records (meta["G_modules"], meta["D_modules"]) and state dicts ("G_ema.*", "D.*")."""
    with official_modules() as (persistence, EasyDict):
        rec = persistence._reconstruct_persistent_obj
        G = lambda: _recorded_tree(meta["G_modules"], tensors, "G_ema", "", rec, EasyDict, marker)
        data = {"G": G(), "D": _recorded_tree(meta["D_modules"], tensors, "D", "", rec, EasyDict, marker),
                "G_ema": G(), "augment_pipe": None,
                "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=meta["G_kwargs"]["img_resolution"])}
        with open(path, "wb") as fh:
            pickle.dump(data, fh)
    return path


def write_golden_rosinality_pt(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """rosinality's converted-checkpoint layout {g_ema, d, latent_avg} (as convert_weight.py writes it)."""
    part = lambda prefix: {k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}
    torch.save({"g_ema": part("g_ema."), "d": part("d."), "latent_avg": tensors["latent_avg"].clone()}, path)
    return path
