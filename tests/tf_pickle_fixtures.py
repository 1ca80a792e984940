"""A writer of NVIDIA's legacy TensorFlow StyleGAN2 pickle layout, for the converter and fetch tests.

The file NVIDIA published (stylegan2-ffhq-config-f.pkl) is a pickle of the tuple (G, D, Gs) of
`dnnlib.tflib.network.Network` objects whose state is {version, name, static_kwargs, components, build_module_src,
build_func_name, variables [(TF name, numpy array)]}. This writer makes the same stream from stylecli networks, with
each tensor moved into TF's layout (the inverse of the converter's transforms, written here from the TF side):
dense [in, out], conv [kh, kw, in, out], Conv0_up stored mirrored, the style bias without TF's run-time +1, the
constant and noise maps with their leading axes. `build_module_src` is code that would leave a marker file if it ever
ran.
"""

from __future__ import annotations

import pickle
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from stylecli.core.networks import Discriminator, Generator


@contextmanager
def tf_modules():
    """Temporarily provide `dnnlib.tflib.network.Network`, the class name every TF pickle refers to."""
    network_module = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, state):
            self._state = state

        def __getstate__(self):
            return self._state

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    network_module.Network = Network
    tflib = types.ModuleType("dnnlib.tflib")
    tflib.network = network_module
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.tflib = tflib
    added = {"dnnlib": dnnlib, "dnnlib.tflib": tflib, "dnnlib.tflib.network": network_module}
    saved = {name: sys.modules.get(name) for name in added}
    sys.modules.update(added)
    try:
        yield Network
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def dense(w):  # [out, in] -> TF [in, out]
    return np.ascontiguousarray(_np(w).T)


def conv(w):  # [out, in, kh, kw] -> TF [kh, kw, in, out]
    return np.ascontiguousarray(_np(w).transpose(2, 3, 1, 0))


def conv_up(w):  # TF keeps the upsampling conv's kernel mirrored
    return np.ascontiguousarray(conv(w)[::-1, ::-1])


def tf_generator_variables(G: Generator) -> tuple[list, list, list]:
    """(Gs own variables, mapping variables, synthesis variables) in TF's names and layouts."""
    sd = G.state_dict()
    own = [("dlatent_avg", _np(sd["mapping.w_avg"])), ("lod", np.float32(0))]  # G_main's non-trainable lod too
    mapping = []
    for i in range(G.mapping.num_layers):
        mapping += [(f"Dense{i}/weight", dense(sd[f"mapping.fc{i}.weight"])), (f"Dense{i}/bias", _np(sd[f"mapping.fc{i}.bias"]))]
    synthesis = []

    def layer(scope, ours, weight_layout):
        synthesis.extend([
            (f"{scope}/weight", weight_layout(sd[f"{ours}.weight"])),
            (f"{scope}/mod_weight", dense(sd[f"{ours}.affine.weight"])),
            (f"{scope}/mod_bias", _np(sd[f"{ours}.affine.bias"]) - 1),   # TF adds the 1 at run time
            (f"{scope}/bias", _np(sd[f"{ours}.bias"])),
        ])
        if f"{ours}.noise_strength" in sd:
            synthesis.append((f"{scope}/noise_strength", _np(sd[f"{ours}.noise_strength"])))

    synthesis.append(("4x4/Const/const", _np(sd["synthesis.b4.const"])[None]))
    layer("4x4/Conv", "synthesis.b4.conv1", conv)
    layer("4x4/ToRGB", "synthesis.b4.torgb", conv)
    noise = [("noise0", _np(sd["synthesis.b4.conv1.noise_const"])[None, None])]
    for res in G.synthesis.block_resolutions[1:]:
        layer(f"{res}x{res}/Conv0_up", f"synthesis.b{res}.conv0", conv_up)
        layer(f"{res}x{res}/Conv1", f"synthesis.b{res}.conv1", conv)
        layer(f"{res}x{res}/ToRGB", f"synthesis.b{res}.torgb", conv)
        log2 = int(np.log2(res))
        noise.append((f"noise{2 * log2 - 5}", _np(sd[f"synthesis.b{res}.conv0.noise_const"])[None, None]))
        noise.append((f"noise{2 * log2 - 4}", _np(sd[f"synthesis.b{res}.conv1.noise_const"])[None, None]))
    return own, mapping, synthesis + noise


def tf_discriminator_variables(D: Discriminator) -> list:
    sd = D.state_dict()
    top = D.img_resolution
    out = [(f"{top}x{top}/FromRGB/weight", conv(sd[f"b{top}.fromrgb.weight"])),
           (f"{top}x{top}/FromRGB/bias", _np(sd[f"b{top}.fromrgb.bias"]))]
    for res in D.block_resolutions:
        out += [(f"{res}x{res}/Conv0/weight", conv(sd[f"b{res}.conv0.weight"])),
                (f"{res}x{res}/Conv0/bias", _np(sd[f"b{res}.conv0.bias"])),
                (f"{res}x{res}/Conv1_down/weight", conv(sd[f"b{res}.conv1.weight"])),
                (f"{res}x{res}/Conv1_down/bias", _np(sd[f"b{res}.conv1.bias"])),
                (f"{res}x{res}/Skip/weight", conv(sd[f"b{res}.skip.weight"]))]
    out += [("4x4/Conv/weight", conv(sd["b4.conv.weight"])), ("4x4/Conv/bias", _np(sd["b4.conv.bias"])),
            ("4x4/Dense0/weight", dense(sd["b4.fc.weight"])), ("4x4/Dense0/bias", _np(sd["b4.fc.bias"])),
            ("Output/weight", dense(sd["b4.out.weight"])), ("Output/bias", _np(sd["b4.out.bias"]))]
    return out


def tf_kwargs(G: Generator, D: Discriminator) -> tuple[dict, dict]:
    """The static_kwargs NVIDIA's training loop records (num_channels, resolution, label_size, fmap_base) plus what
    the tiny config changes from the defaults."""
    c = G.config
    g = dict(num_channels=c["img_channels"], resolution=c["img_resolution"], label_size=0,
             fmap_base=c["channel_base"] // 2, fmap_max=c["channel_max"], latent_size=c["z_dim"],
             dlatent_size=c["w_dim"], mapping_layers=c["mapping_layers"], mapping_fmaps=c["w_dim"])
    d = dict(num_channels=3, resolution=D.config["img_resolution"], label_size=0,
             fmap_base=D.config["channel_base"] // 2, fmap_max=D.config["channel_max"],
             mbstd_group_size=D.config["mbstd_group_size"])
    return g, d


def write_tf_pickle(path: Path, G: Generator, D: Discriminator, marker: Path, g_kwargs: dict | None = None,
                    d_kwargs: dict | None = None, build_funcs: dict | None = None, extra_variable=None) -> Path:
    """(G, D, Gs) in the legacy TF layout. g_kwargs/d_kwargs replace the recorded kwargs; build_funcs overrides the
    build function names ({"Gs", "mapping", "synthesis", "D"}); extra_variable (name, value) is added to Gs."""
    source = f"open({str(marker)!r}, 'w').write('code from a TF pickle ran')\n"
    funcs = {"Gs": "G_main", "mapping": "G_mapping", "synthesis": "G_synthesis_stylegan2", "D": "D_stylegan2",
             **(build_funcs or {})}
    default_g, default_d = tf_kwargs(G, D)
    gk = default_g if g_kwargs is None else g_kwargs
    dk = default_d if d_kwargs is None else d_kwargs
    own, mapping, synthesis = tf_generator_variables(G)
    if extra_variable is not None:
        own = own + [extra_variable]

    def state(name, func, kwargs, variables, components=None):
        return dict(version=4, name=name, static_kwargs=dict(kwargs), components=components or {},
                    build_module_src=source, build_func_name=func, variables=variables,
                    input_shapes=[[None, 3, 4, 4]], output_shapes=[[None, 1]], input_names=["x"], output_names=["y"])

    with tf_modules() as Network:
        def generator(name):
            components = {"mapping": Network(state("G_mapping", funcs["mapping"],
                                                   {**gk, "dlatent_broadcast": G.num_ws}, mapping)),
                          "synthesis": Network(state("G_synthesis", funcs["synthesis"], gk, synthesis))}
            return Network(state(name, funcs["Gs"], gk, own, components))

        data = (generator("G"), Network(state("D", funcs["D"], dk, tf_discriminator_variables(D))), generator("Gs"))
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=4)  # what Python 3.6's HIGHEST_PROTOCOL wrote
    return path


def exact_affine_biases(G: Generator, seed: int = 0) -> Generator:
    """Style biases in [0.6, 1.4]: there TF's `- 1` and the converter's `+ 1` are exact in float32 (Sterbenz), so the
    round trip through the TF layout can be compared bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("affine.bias"):
                p.copy_(1 + (torch.rand(p.shape, generator=gen) - 0.5) * 0.8)
    return G
