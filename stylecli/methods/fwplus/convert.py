"""Import of BDInvert's released base-code encoder: a torch checkpoint {'encoder', 'optimizer', 'scheduler',
'epoch'} whose 'encoder' is the state dict of a Sequential `model.N` (see encoder.py), read with weights_only=True.

The configuration is read off the tensors: conv weights sit at indices that advance by 3 inside a stage (conv, BN,
LReLU) and by 4 across a stage's closing pool; the last run of convs is the head. The official file gives 3 stages of 3
convs (128, 256, 512) and a 512-channel head, for the 512 x 16 x 16 base code of FFHQ 1024 read from 128 px input:
BDInvert's input is 8x its base code, so the base size is the input size it was trained at over 8.

The checkpoint holds no generator (BDInvert's genforce-format FFHQ generator is no longer hosted): convert NVIDIA's
FFHQ generator into the pack first, then add this encoder with `add_to_pack`, which also checks that the encoder's
base code fits the pack's generator and fits the pack's P-space whitening.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...packs.convert import ConversionError, ConversionReport, fill
from . import NETWORK, PSPACE
from .encoder import BaseCodeEncoder

OFFICIAL_INPUT = 128       # the image size BDInvert's released encoder was trained at
_KEY = re.compile(r"model\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")


def _encoder_state(data) -> dict | None:
    """The encoder's tensors (an optional DataParallel `module.` prefix removed), or None for another layout."""
    if not isinstance(data, dict) or not isinstance(data.get("encoder"), dict):
        return None
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in data["encoder"].items()}
    if not state or not all(isinstance(k, str) and _KEY.fullmatch(k) for k in state):
        return None
    first = state.get("model.0.weight")
    if not isinstance(first, torch.Tensor) or first.ndim != 4 or first.shape[1] != 3:
        return None
    return state


def detect(path: Path) -> bool:
    """True for a file holding BDInvert's encoder checkpoint layout (read weights-only, memory-mapped)."""
    from ...packs.convert import detect_format

    try:
        if not Path(path).is_file() or detect_format(path) != "rosinality":   # a torch.save zip archive
            return False
        return _encoder_state(torch.load(path, map_location="cpu", weights_only=True, mmap=True)) is not None
    except Exception:
        return False


def infer_config(state: dict[str, torch.Tensor], input_size: int = OFFICIAL_INPUT) -> dict:
    """The BaseEncoderConfig of an encoder state (ConversionError naming what does not follow the layout)."""
    convs = sorted(int(m[1]) for k, v in state.items() if (m := _KEY.fullmatch(k)) and m[2] == "weight"
                   and v.ndim == 4)
    runs: list[list[int]] = [[convs[0]]] if convs else []
    for index in convs[1:]:
        step = index - runs[-1][-1]
        if step == 3:
            runs[-1].append(index)
        elif step == 4:
            runs.append([index])
        else:
            raise ConversionError(f"BDInvert encoder: conv model.{index} follows model.{runs[-1][-1]}; expected 3 "
                                  f"(conv, BN, LReLU) or 4 (and a pool) places later")
    if len(runs) < 2 or len(runs[-1]) != 2 or len({len(r) for r in runs[:-1]}) != 1:
        raise ConversionError(f"BDInvert encoder: conv runs {runs}: expected equal stages and a head of two convs")
    stages = len(runs) - 1
    if input_size % 2 ** stages:
        raise ConversionError(f"BDInvert encoder: input {input_size} does not divide by its {stages} pools")
    widths = [state[f"model.{r[0]}.weight"].shape[0] for r in runs[:-1]]
    head, last = runs[-1]
    return dict(base_size=input_size // 2 ** stages, base_channels=state[f"model.{last}.weight"].shape[0],
                widths=widths, convs_per_stage=len(runs[0]), head_channels=state[f"model.{head}.weight"].shape[0])


def convert_encoder(path: Path, input_size: int = OFFICIAL_INPUT) -> tuple[BaseCodeEncoder, ConversionReport]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"{path}: not a weights-only torch checkpoint ({str(exc).splitlines()[0]})") from None
    state = _encoder_state(data)
    if state is None:
        raise ConversionError(f"{path}: no BDInvert encoder (a dict whose 'encoder' holds model.N.* tensors)")
    config = infer_config(state, input_size)
    if config["head_channels"] == config["base_channels"]:
        config["head_channels"] = None   # the official head (and the default of BaseEncoderConfig)
    encoder = BaseCodeEncoder(**config)
    report = fill(encoder, state, [(r".*", lambda m: m[0])], "encoder")
    return encoder.eval(), report


def convert(path: Path) -> tuple[dict, dict[str, ConversionReport]]:
    """The pack network of a BDInvert encoder checkpoint: {"fwplus_encoder"} and its report. It holds no generator:
    `add_to_pack` puts it into a pack that has one."""
    encoder, report = convert_encoder(path)
    return {NETWORK: encoder}, {NETWORK: report}


def add_to_pack(path: Path, pack, dtype: torch.dtype = torch.float32, pspace_samples: int = 1_000_000):
    """Add the encoder of BDInvert checkpoint `path` to `pack` (a Pack with a generator, e.g. FFHQ 1024 converted
    from NVIDIA's) together with the P-space whitening fitted on `pspace_samples` codes of its mapping network.

    1. convert the encoder (config read off the tensors);
    2. check that its base code has the shape of the generator's feature after b{base}.conv0;
    3. fit the whitening and write both networks with their provenance.
    Returns the reopened pack."""
    from ...core.networks import channels_per_resolution
    from ...packs import Pack, write_pack
    from .pspace import PSpaceWhitening

    encoder, _ = convert_encoder(Path(path))
    gcfg = pack.manifest["networks"]["generator"]["config"]
    channels = channels_per_resolution(gcfg["img_resolution"], gcfg["channel_base"], gcfg["channel_max"])
    b, c = encoder.cfg.base_size, encoder.cfg.base_channels
    if channels.get(b) != c or b == 4:
        raise ConversionError(f"{path}: its base code is {c} x {b}x{b}; the generator of pack {pack.name!r} has "
                              f"{channels.get(b)} channels after b{b}.conv0")
    G = pack.generator()
    white = PSpaceWhitening.fit(G.mapping, G.z_dim, samples=pspace_samples, batch=min(pspace_samples, 20_000))
    write_pack(pack.root, pack.name, {NETWORK: encoder}, int(pack.manifest["resolution"]),
               {"converted_from": Path(path).name, "source_format": "fwplus"}, dtype=dtype)
    write_pack(pack.root, pack.name, {PSPACE: white}, int(pack.manifest["resolution"]),
               {"fitted_on": "generator", "samples": pspace_samples, "seed": 0})
    return Pack.open(pack.root)
