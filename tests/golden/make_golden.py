"""Recipe that made the golden files in this folder; see README.md. Not a test, never imported by the tests.

It imports the official networks from a checkout outside this repository (nothing of theirs is copied here), builds
tiny generators/discriminators with fixed seeds, and writes per case:

  <case>.safetensors  -- the official state dicts under their official key names ("G_ema.*", "D.*" or "g_ema.*",
                         "d.*", "latent_avg") plus the inputs and outputs ("z", "ws_*", "img_*", "logits").
  <case>.json         -- provenance, the constructor kwargs, and (NVIDIA) the record of every persistent module as it
                         would be pickled: class name, _init_args/_init_kwargs, plain attributes, and which tensors
                         are parameters/buffers, so the tests can rebuild the official .pkl layout.

    python tests/golden/make_golden.py nvidia     --repo CHECKOUT --commit SHA
    python tests/golden/make_golden.py rosinality --repo CHECKOUT --commit SHA
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

BATCH = 4                                   # also the minibatch-stddev group of the default discriminator
TRUNCATIONS = [(1.0, None), (0.7, None), (0.5, 2)]  # (psi, cutoff); images for the first two, W codes for all


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Biases and noise strengths start at constants in both repos; make them non-trivial so that they matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("bias", "noise_strength", "noise.weight")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def tag(psi, cutoff) -> str:
    return f"psi{psi:g}" + ("" if cutoff is None else f"_cutoff{cutoff}")


def jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def module_records(net: torch.nn.Module) -> dict:
    """{module path: what NVIDIA's persistence pickles for it}, minus the tensors (in the safetensors file)."""
    records = {}
    for path, m in net.named_modules():
        attrs, numpy_attrs = {}, []
        for k, v in vars(m).items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, (np.floating, np.integer)):
                numpy_attrs.append(k)
            if isinstance(v, (bool, int, float, str, type(None), list, tuple, np.floating, np.integer)):
                attrs[k] = jsonable(v)
        records[path] = dict(class_name=type(m).__name__, persistent=hasattr(m, "_init_kwargs"),
                             init_args=jsonable(list(getattr(m, "_init_args", ()))),
                             init_kwargs=jsonable(dict(getattr(m, "_init_kwargs", {}))),
                             attrs=attrs, numpy_attrs=numpy_attrs,
                             parameters=[k for k, v in m._parameters.items() if v is not None],
                             buffers=[k for k, v in m._buffers.items() if v is not None],
                             modules=[k for k, v in m._modules.items() if v is not None])
    return records


def nvidia(repo: Path, commit: str, out: Path) -> None:
    sys.path.insert(0, str(repo))
    from training.networks import Discriminator, Generator  # the official classes

    cases = {
        # config-f's settings (no clamp, fp32), as stylegan2-ada-pytorch's train.py records them for --cfg=stylegan2.
        "nvidia": (dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                        mapping_kwargs=dict(num_layers=2),
                        synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None)),
                   dict(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16, num_fp16_res=0,
                        conv_clamp=None, block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4))),
        # ADA's paper settings (fp16 blocks, clamped convs) with a clamp small enough to cut real values, another
        # resolution, a deeper mapping, and minibatch-stddev groups of 2.
        "nvidia-ada": (dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
                            mapping_kwargs=dict(num_layers=3),
                            synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=2, conv_clamp=1.0)),
                       dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                            num_fp16_res=2, conv_clamp=1.0, block_kwargs={}, mapping_kwargs={},
                            epilogue_kwargs=dict(mbstd_group_size=2))),
    }
    for seed, (case, (g_kwargs, d_kwargs)) in enumerate(cases.items()):
        torch.manual_seed(100 + seed)
        G = Generator(**g_kwargs).eval()
        D = Discriminator(**d_kwargs).eval()
        perturb(G, 200 + seed)
        perturb(D, 300 + seed)
        c = torch.zeros([BATCH, 0])
        with torch.no_grad():
            # A converged w_avg: the mean W of many z (training tracks it with an EMA of the same quantity).
            G.mapping.w_avg.copy_(G.mapping(torch.randn(4096, G.z_dim), torch.zeros([4096, 0]))[:, 0].mean(0))
            z = torch.randn([BATCH, G.z_dim], generator=torch.Generator().manual_seed(400 + seed))
            tensors = {"z": z}
            for psi, cutoff in TRUNCATIONS:
                ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
                tensors[f"ws_{tag(psi, cutoff)}"] = ws
                if cutoff is None:
                    # force_fp32: their fp16 blocks are a CUDA speed path; stylecli computes in fp32.
                    tensors[f"img_{tag(psi, cutoff)}"] = G.synthesis(ws, noise_mode="const", force_fp32=True)
            tensors["logits"] = D(tensors["img_psi1"], c, force_fp32=True)
        clamp = g_kwargs["synthesis_kwargs"]["conv_clamp"]
        if clamp is not None:  # check that the clamp is active somewhere, else the case would test nothing
            hits = []
            G.synthesis.b16.conv1.register_forward_hook(
                lambda m, i, o, hits=hits, clamp=clamp: hits.append((o.abs() >= clamp).float().mean()))
            with torch.no_grad():
                G.synthesis(tensors["ws_psi1"], noise_mode="const", force_fp32=True)
            assert 0.01 < hits[0] < 0.5, f"clamp {clamp} cuts {hits[0]:.3f} of b16.conv1"
        tensors.update({f"G_ema.{k}": v for k, v in G.state_dict().items()})
        tensors.update({f"D.{k}": v for k, v in D.state_dict().items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, out / f"{case}.safetensors")
        meta = dict(repo="NVlabs/stylegan2-ada-pytorch", commit=commit, torch=torch.__version__,
                    G_kwargs=g_kwargs, D_kwargs=d_kwargs, truncations=TRUNCATIONS,
                    G_modules=module_records(G), D_modules=module_records(D))
        (out / f"{case}.json").write_text(json.dumps(meta, indent=1) + "\n")


def rosinality(repo: Path, commit: str, out: Path) -> None:
    sys.path.insert(0, str(repo))
    from model import Discriminator, Generator  # the official classes

    g_kwargs = dict(size=32, style_dim=32, n_mlp=2, channel_multiplier=2, blur_kernel=[1, 3, 3, 1], lr_mlp=0.01)
    d_kwargs = dict(size=32, channel_multiplier=2, blur_kernel=[1, 3, 3, 1])
    torch.manual_seed(500)
    g = Generator(**g_kwargs).eval()
    d = Discriminator(**d_kwargs).eval()
    assert g.channels[4] == 16 and g.channels[32] == 8, "model.py's width table is not patched (README.md)"
    perturb(g, 600)
    perturb(d, 700)
    with torch.no_grad():
        torch.manual_seed(800)
        latent_avg = g.mean_latent(4096)             # [1, style_dim], as their generate.py/projector.py make it
        z = torch.randn([BATCH, g.style_dim], generator=torch.Generator().manual_seed(900))
        tensors = {"z": z, "latent_avg": latent_avg}
        for psi, cutoff in TRUNCATIONS:
            if cutoff is not None:
                continue                             # rosinality truncates every row
            img, ws = g([z], truncation=psi, truncation_latent=latent_avg, randomize_noise=False, return_latents=True)
            tensors[f"ws_{tag(psi, cutoff)}"], tensors[f"img_{tag(psi, cutoff)}"] = ws, img
        tensors["logits"] = d(tensors["img_psi1"])
    tensors.update({f"g_ema.{k}": v for k, v in g.state_dict().items()})
    tensors.update({f"d.{k}": v for k, v in d.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "rosinality.safetensors")
    meta = dict(repo="rosinality/stylegan2-pytorch", commit=commit, torch=torch.__version__,
                g_kwargs=g_kwargs, d_kwargs=d_kwargs, widths=g.channels, truncations=[[1.0, None], [0.7, None]])
    (out / "rosinality.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=["nvidia", "rosinality"])
    parser.add_argument("--repo", type=Path, required=True, help="checkout of the official repository")
    parser.add_argument("--commit", required=True, help="the commit the checkout was made from (recorded)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    torch.set_num_threads(1)
    (nvidia if args.source == "nvidia" else rosinality)(args.repo.resolve(), args.commit, args.out)
