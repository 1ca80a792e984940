"""Import of the official SFE checkpoints (AIRI-Institute/StyleFeatureEditor): `sfe_inverter_light.pt` and
`sfe_editor_light.pt`, each {'state_dict', 'latent_avg'}, read with weights_only=True (nothing in them runs).

Key layout (the official module names, which stylecli's classes share):
- the inverter: `encoder.` (the inverter's own checkpoint) or `inverter.` (a full SFE checkpoint) + `fs_backbone.conv.
  {0,1,2}`, `fs_backbone.block_{1..4}.N.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.{0,1}}`, `fs_backbone.
  content_layer.{0..5}`, `fs_backbone.styles.N` (Linear), `fuser.conv`, `fuser.body.N.body.{0..5}`;
- the editor: `encoder.conv`, `encoder.body.N.body.{0..5}` (the fuser's layout on cat[F_k, Delta]);
- `discriminator.*` (the fine-tuned StyleGAN discriminator) is not part of a pack's SFE and is left out.

The inverter's configuration is read off the tensor shapes (stem, stage widths and unit counts, the w head's pooling,
F_k's channels, fuser blocks); its input size and strides are those of the only released layout (256 px, stage
strides 2, 2, 1, 2: F_k 64 x 64 for the 1024 px generator's b64.conv1).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from ...packs.convert import ConversionError, ConversionReport, fill
from . import EDITOR, INVERTER
from .model import FeatureEditor, Inverter

_INVERTER_PREFIX = re.compile(r"(encoder|inverter)\.(fs_backbone|fuser)\.")
_EDITOR_PREFIX = re.compile(r"encoder\.(conv|body)\.")


def _state(path: Path) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # weights-only unpickling refuses anything that would run code
        raise ConversionError(f"{path}: not a weights-only torch checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise ConversionError(f"{path}: no state_dict")
    return data


def _parts(state_dict: dict) -> tuple[dict, dict]:
    """(inverter tensors, editor tensors), prefixes stripped."""
    inverter = {k.split(".", 1)[1]: v for k, v in state_dict.items() if _INVERTER_PREFIX.match(k)}
    editor = {k[len("encoder."):]: v for k, v in state_dict.items() if _EDITOR_PREFIX.match(k)}
    return inverter, editor


def detect(path: Path) -> bool:
    """True for a file holding an SFE inverter or editor in the official layout (read weights-only)."""
    try:
        if not Path(path).is_file():
            return False
        inverter, editor = _parts(_state(Path(path))["state_dict"])
        return bool(inverter) or bool(editor)
    except Exception:
        return False


def infer_inverter_config(sd: dict[str, torch.Tensor]) -> dict:
    widths, units = [], []
    for k in range(1, 5):
        indices = sorted({int(m[1]) for key in sd if (m := re.match(rf"fs_backbone\.block_{k}\.(\d+)\.", key))})
        if not indices:
            raise ConversionError(f"no fs_backbone.block_{k} tensors")
        widths.append(int(sd[f"fs_backbone.block_{k}.0.conv1.weight"].shape[0]))
        units.append(len(indices))
    num_ws = len({int(m[1]) for key in sd if (m := re.match(r"fs_backbone\.styles\.(\d+)\.", key))})
    head_in = int(sd["fs_backbone.styles.0.weight"].shape[1])
    pool = math.isqrt(head_in // sum(widths))
    if pool * pool * sum(widths) != head_in:
        raise ConversionError(f"the w head reads {head_in} features, not a square pooling of {sum(widths)} channels")
    blocks = len({int(m[1]) for key in sd if (m := re.match(r"fuser\.body\.(\d+)\.", key))})
    return dict(input_size=256, stem=int(sd["fs_backbone.conv.0.weight"].shape[0]), widths=widths, units=units,
                strides=[2, 2, 1, 2], pool=pool, w_dim=int(sd["fs_backbone.styles.0.weight"].shape[0]), num_ws=num_ws,
                feature_channels=int(sd["fs_backbone.content_layer.1.weight"].shape[0]), fuser_blocks=blocks,
                resize="bilinear")


def convert(path: Path) -> tuple[dict, dict[str, ConversionReport]]:
    """The pack networks in an official SFE file: {"sfe_inverter"} and/or {"sfe_editor"}, a report for each."""
    path = Path(path)
    data = _state(path)
    inverter_sd, editor_sd = _parts(data["state_dict"])
    networks, reports = {}, {}
    if inverter_sd and "latent_avg" not in data and editor_sd:
        inverter_sd = {}  # a full checkpoint's copy of the inverter, without the code average it needs: the editor only
    if inverter_sd:
        if "latent_avg" not in data:
            raise ConversionError(f"{path}: an SFE inverter without latent_avg")
        inverter = Inverter(**infer_inverter_config(inverter_sd))
        latent_avg = data["latent_avg"].reshape(-1, inverter.cfg.w_dim)  # [w_dim], [1, w_dim] or [num_ws, w_dim]
        if len(latent_avg) not in (1, inverter.cfg.num_ws):
            raise ConversionError(f"{path}: latent_avg has {len(latent_avg)} rows for {inverter.cfg.num_ws} w rows")
        inverter_sd["latent_avg"] = latent_avg.expand(inverter.cfg.num_ws, -1)
        reports[INVERTER] = fill(inverter, inverter_sd, [(r".*", lambda m: m[0])], "SFE inverter")
        networks[INVERTER] = inverter.eval()
    if editor_sd:
        blocks = len({int(m[1]) for key in editor_sd if (m := re.match(r"body\.(\d+)\.", key))})
        editor = FeatureEditor(channels=int(editor_sd["conv.weight"].shape[0]), blocks=blocks)
        reports[EDITOR] = fill(editor, {f"encoder.{k}": v for k, v in editor_sd.items()}, [(r".*", lambda m: m[0])],
                               "SFE editor")
        networks[EDITOR] = editor.eval()
    if not networks:
        raise ConversionError(f"{path}: no SFE inverter (encoder.fs_backbone.*) or editor (encoder.conv/body.*) "
                              f"tensors")
    return networks, reports
