"""SAMM inference: e4e codes and backbone features, synthesis with the alignment blocks in the loop, RGB blend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...edits import edit_step
from ...packs import Pack
from ..base import Inversion, Method
from ..e4e.method import encode
from . import BASE, NETWORK
from .model import SAMM, gather_mask, sharpen_mask


@dataclass
class Pass:
    """One SAMM pass: the blended output, the generator's own (aligned) image, the mask and the per-scale alphas."""
    image: torch.Tensor                 # [N, 3, R, R] m * x + (1 - m) * generated
    generated: torch.Tensor             # [N, 3, R, R] G's output with aligned features
    mask: torch.Tensor                  # [N, 1, R, R] the invertibility mask m in [0, 1]
    alphas: dict                        # resolution -> [N, 1, r, r] alpha of each active scale


def scale_features(net: SAMM, features: dict) -> list[torch.Tensor]:
    """The encoder feature for each of the net's scales: the one of the same spatial size, as in the paper (at
    1024 px the 256 px encoder's stem feeds the 256 px blocks, stage ends the 128, 64 and 32 px ones)."""
    missing = [r for r in net.scales if r not in features]
    assert not missing, f"no encoder feature of size {missing} (the encoder has {sorted(features)})"
    return [features[r] for r in net.scales]


def samm_pass(G, net: SAMM, x: torch.Tensor, codes: torch.Tensor, features: list[torch.Tensor],
              active: int | None = None, noise_mode: str = "const") -> Pass:
    """Synthesise `codes` [N, num_ws, w_dim] with the blocks aligning G's features to `features` (coarse to fine),
    then blend with the input x [N, 3, R, R]: the pass the method and its trainer share."""
    hook, alphas = net.hook(features, active)
    generated = G.synthesis.synthesize(codes, noise_mode, layer_hook=hook).img
    mask = gather_mask(alphas, x.shape[-1])
    return Pass(image=mask * x + (1 - mask) * generated, generated=generated, mask=mask, alphas=alphas)


def to_source(x: torch.Tensor) -> torch.Tensor:
    """The input kept for later edits ([N, 3, R, R] in [-1, 1]) as 8-bit pixels: exact for 8-bit inputs, a quarter
    of float32's size in a latent file."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_source(source: torch.Tensor | None, resolution: int) -> torch.Tensor:
    """The kept input back in [-1, 1]; a LatentError (one line) when it is missing or not [N, 3, R, R] 8-bit."""
    from ...latents import LatentError

    if source is None:
        raise LatentError("no source image (extra.source), which a samm edit blends; invert the image again with "
                          "--method samm")
    if source.dtype != torch.uint8 or source.ndim != 4 or tuple(source.shape[1:]) != (3, resolution, resolution):
        raise LatentError(f"extra.source is {source.dtype} {list(source.shape)}, expected uint8 "
                          f"[N, 3, {resolution}, {resolution}]")
    return source.float() / 127.5 - 1


class SAMMMethod(Method):
    name = "samm"

    def __init__(self, pack: Pack, device: str | torch.device = "cpu", mask: str = "sharp"):
        assert mask in ("sharp", "soft"), mask
        self.device = torch.device(device)
        self.G = pack.generator(device)
        self.E = pack.load(BASE, device).to(memory_format=torch.channels_last)  # see e4e's `encode`
        self.net = pack.load(NETWORK, device)
        self.resolution = self.G.img_resolution
        self.sharp = mask == "sharp"

    @classmethod
    def load(cls, pack: Pack, device: str | torch.device = "cpu", **options) -> "SAMMMethod":
        return cls(pack, device, **options)

    def _blend(self, result: Pass, x: torch.Tensor, reference: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output image, mask) of a pass: Algorithm 2's blend, or with --mask sharp the sharp mask's
        (`sharpen_mask`, against `reference`, G's output of the unedited inversion)."""
        if not self.sharp:
            return result.image, result.mask
        mask = sharpen_mask(result.mask, x, reference)
        return mask * x + (1 - mask) * result.generated, mask

    @torch.no_grad()
    def invert(self, images: torch.Tensor) -> Inversion:
        """images [N, 3, R, R] -> codes, blended reconstruction, and extras "mask" [N, 1, R, R] (1 = taken from the
        input), "source" (the input, which an edit blends again) and with --mask sharp "reference" (G's aligned
        output, 8-bit, which an edit's sharp mask reads)."""
        assert images.ndim == 4 and images.shape[1:] == (3, self.resolution, self.resolution), \
            f"expected [N, 3, {self.resolution}, {self.resolution}], got {tuple(images.shape)}"
        x = images.to(self.device, torch.float32)
        codes, features = encode(self.E, x, with_features=True)
        result = samm_pass(self.G, self.net, x, codes, scale_features(self.net, features))
        back = lambda t: t.to(images.device)
        extras = {"source": back(to_source(x))}
        reference = None
        if self.sharp:  # 8-bit, as an edit reads it: an edit at strength 0 is the inversion
            extras["reference"] = to_source(result.generated)
            reference = from_source(extras["reference"], self.resolution)
        image, extras["mask"] = self._blend(result, x, reference)
        return Inversion(latents={"w_plus": back(codes)}, image=back(image),
                         extras={k: back(v) for k, v in extras.items()})

    @torch.no_grad()
    def edit_inversion(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> Inversion:
        """The edited code synthesised with the blocks aligning to the source's features; the mask is recomputed on
        this pass, so what lies out of the domain (an occluder) stays where it was while the face changes (the sharp
        mask reads the unedited inversion's G output, so the face an edit changes is not masked)."""
        codes = inversion.latents["w_plus"]
        x = from_source(inversion.extras.get("source"), self.resolution).to(self.device)
        taps = scale_features(self.net, encode(self.E, x, with_features=True)[1])
        w = codes.to(self.device)
        back = lambda t: t.to(codes.device)
        kept = {k: inversion.extras[k] for k in ("source", "reference") if k in inversion.extras}
        reference = None
        if self.sharp:
            kept["reference"] = back(self._reference(inversion, x, w, taps))
            reference = from_source(kept["reference"].to(self.device), self.resolution)
        edited = w + edit_step(w, direction, strength)  # a W+ direction or a learned edit
        image, mask = self._blend(samm_pass(self.G, self.net, x, edited, taps), x, reference)
        return Inversion(latents={"w_plus": back(edited)}, image=back(image), extras={"mask": back(mask), **kept})

    def _reference(self, inversion: Inversion, x: torch.Tensor, w: torch.Tensor, taps: list[torch.Tensor]
                   ) -> torch.Tensor:
        """G's aligned output of the unedited inversion, 8-bit: the one it holds (extras "reference"), or
        synthesised again (a latent file written with --mask soft or by an older stylecli)."""
        kept = inversion.extras.get("reference")
        if kept is None or kept.dtype != torch.uint8 or tuple(kept.shape) != tuple(x.shape):
            kept = to_source(samm_pass(self.G, self.net, x, w, taps).generated)
        return kept

    def edit(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> torch.Tensor:
        return self.edit_inversion(inversion, direction, strength).image
