"""Import of the official e4e checkpoint (`e4e_ffhq_encode.pt`): {'state_dict' with `encoder.` and `decoder.`
(rosinality generator) prefixes, 'opts', 'latent_avg' [num_ws, w_dim]}, read with weights_only=True.

The encoder's configuration is read off the tensor shapes: stages are runs of units of equal depth, the number of
stride-2 convs in the first map2style block gives the input size, the per-row conv counts give the FPN split.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ...core.networks import Generator
from ...packs.convert import ROSINALITY_G_RULES, ConversionError, ConversionReport, _infer_rosinality_config, fill
from .encoder import Encoder4Editing


def is_e4e_checkpoint(data) -> bool:
    # Its IR-SE stem (encoder.input_layer): SFE's files also keep networks under "encoder.".
    return isinstance(data, dict) and isinstance(data.get("state_dict"), dict) and \
        any(k.startswith("encoder.input_layer.") for k in data["state_dict"])


def detect(path: Path) -> bool:
    """True for a file holding e4e's checkpoint layout (read weights-only, memory-mapped: nothing in it runs)."""
    from ...packs.convert import detect_format

    try:
        if not Path(path).is_file() or detect_format(path) != "rosinality":
            return False
        return is_e4e_checkpoint(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception:
        return False


def convert(path: Path) -> tuple[dict, dict[str, ConversionReport]]:
    """The pack networks of an e4e checkpoint: {"generator", "e4e_encoder"} and a report per network."""
    generator, encoder, reports = convert_e4e(path)
    return {"generator": generator, "e4e_encoder": encoder}, reports


def infer_encoder_config(enc: dict[str, torch.Tensor]) -> dict:
    units = sorted({int(m[1]) for k in enc if (m := re.match(r"body\.(\d+)\.", k))})
    depths = [enc[f"body.{i}.res_layer.1.weight"].shape[0] for i in units]
    widths, counts = [], []
    for d in depths:
        if widths and widths[-1] == d:
            counts[-1] += 1
        else:
            widths.append(d)
            counts.append(1)
    if len(widths) != 4:
        raise ConversionError(f"expected 4 IR-SE stages of distinct widths, found widths {widths}")
    num_ws = len({int(m[1]) for k in enc if (m := re.match(r"styles\.(\d+)\.", k))})
    convs = [len([k for k in enc if re.fullmatch(rf"styles\.{i}\.convs\.\d+\.weight", k)]) for i in range(num_ws)]
    base = convs[0]
    coarse = next((i for i, c in enumerate(convs) if c > base), num_ws)
    middle = next((i for i, c in enumerate(convs) if c > base + 1), num_ws)
    return dict(input_size=16 * 2 ** base, widths=widths, units=counts, stem=enc["input_layer.0.weight"].shape[0],
                w_dim=enc["styles.0.linear.weight"].shape[0], num_ws=num_ws, coarse_ind=coarse, middle_ind=middle)


def convert_e4e(path: Path) -> tuple[Generator, Encoder4Editing, dict[str, ConversionReport]]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"{path}: not a weights-only torch checkpoint ({str(exc).splitlines()[0]})") from None
    if not is_e4e_checkpoint(data):
        raise ConversionError(f"{path}: no e4e state_dict with encoder.* tensors")
    sd = data["state_dict"]
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if "latent_avg" not in data:
        raise ConversionError(f"{path}: no latent_avg")
    latent_avg = data["latent_avg"].reshape(-1, data["latent_avg"].shape[-1])
    encoder = Encoder4Editing(**infer_encoder_config(enc))
    enc["latent_avg"] = latent_avg.expand(encoder.cfg.num_ws, -1)
    reports = {"e4e_encoder": fill(encoder, enc, [(r".*", lambda m: m[0])], "encoder")}
    dec["latent_avg"] = latent_avg[0]
    generator = Generator(**_infer_rosinality_config(dec))
    reports["generator"] = fill(generator, dec, ROSINALITY_G_RULES, "decoder")
    return generator.eval(), encoder.eval(), reports
