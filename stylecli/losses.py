"""The loss slots of a pack: a perceptual distance, an identity similarity and an attribute predictor.

For the synthetic domain all three come from the pack's domain network. For a real-face pack the perceptual slot
is LPIPS (the `lpips` package, its AlexNet backbone from the pack file `lpips_alexnet.safetensors`) and the identity
slot an ArcFace network from `arcface.safetensors`; when a file is missing the error names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .packs.pack import Pack, PackError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LossNetworks:
    perceptual: Distance                 # (x, y) -> [N] distance, images in [-1, 1]
    identity: Distance                   # (x, y) -> [N] cosine similarity
    attributes: torch.nn.Module | None   # .predict(x) -> {name: [N]}, or None
    resolution: int                      # size the networks expect

    @classmethod
    def from_pack(cls, pack: Pack, device: str | torch.device = "cpu") -> "LossNetworks":
        if pack.has("domainnet"):
            from .data.domainnet import id_similarity, perceptual_distance
            net = pack.load("domainnet", device)
            res = int(pack.manifest.get("resolution", 64))
            resize = lambda x: x if x.shape[-1] == res else F.interpolate(x, size=(res, res), mode="area")
            return cls(perceptual=lambda x, y: perceptual_distance(net, resize(x), resize(y)),
                       identity=lambda x, y: id_similarity(net, resize(x), resize(y)), attributes=net, resolution=res)
        missing = [f for f in ("lpips_alexnet.safetensors", "arcface.safetensors") if not (pack.root / f).is_file()]
        if missing:
            raise PackError(f"pack {pack.name!r} has no domain network and lacks {', '.join(missing)} for its "
                            f"LPIPS/ArcFace loss slots; add the file(s) to {pack.root}")
        raise PackError(f"pack {pack.name!r}: LPIPS/ArcFace loss slots are not supported in this build yet")
