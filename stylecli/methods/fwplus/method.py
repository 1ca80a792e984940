"""F/W+ inference: the base code from the encoder, then a regularised optimisation of the base code and the W+ rows
after it; edits move those rows only.

An F/W+ code is (f_base, w_plus): f_base [N, C, b, b] replaces the output of the generator's first (upsampling) conv
at the base resolution b ("b{b}.conv0"), the RGB skip accumulated below it is dropped (the base code alone carries
the coarse image), and the W+ rows after that layer drive the rest. The rows up to and including it do not reach the
image; they stay at w_avg so that the stored code remains a valid W+ code.
"""

from __future__ import annotations

import torch

from ...edits import edit_step
from ...optimize import OptimizeConfig, optimize_codes
from ...packs import Pack
from ..base import Inversion, Method
from . import NETWORK, PSPACE

BASE_KEY = "f_base"   # the base code's name in Inversion.latents (and latent files: latent.f_base)
EDIT_MODES = ("auto", "aligned", "rows")
ALIGNED_KEYS = ("aligned_w", "aligned_matrix")  # --edit-mode aligned: e4e's code of the aligned crop and the crop's
                                                # place in the frame (aligned.py); "w_offset": the edit made so far


def base_layer(base_size: int) -> str:
    """The generator layer whose output the base code replaces: the first (upsampling) conv at `base_size`."""
    return f"b{base_size}.conv0"


def first_detail_row(G, base_size: int) -> int:
    """The first W+ row that reaches the image once the base code stands in for the layers up to `base_size`."""
    return G.synthesis.w_index(base_layer(base_size)) + 1


def synthesize_from_base(G, f_base: torch.Tensor, w_plus: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
    """The image [N, 3, R, R] of F/W+ code (f_base [N, C, b, b], w_plus [N, num_ws, w_dim]): synthesis started after
    b{b}.conv0 from f_base, with the coarse RGB skip dropped (`img=None`): the next toRGB starts the image."""
    b = f_base.shape[-1]
    assert f_base.ndim == 4 and f_base.shape[1:] == G.synthesis.feature_shape(base_layer(b)), \
        f"base code {tuple(f_base.shape)} vs the generator's {G.synthesis.feature_shape(base_layer(b))}"
    return G.synthesis.synthesize(w_plus, noise_mode, start_after=base_layer(b), x=f_base, img=None).img


def generator_base(G, w_plus: torch.Tensor, base_size: int, noise_mode: str = "const") -> torch.Tensor:
    """The generator's own feature after b{base_size}.conv0 for w_plus: what the base code stands for."""
    layer = base_layer(base_size)
    return G.synthesis.synthesize(w_plus, noise_mode, capture=(layer,), stop_after=layer).features[layer]


class FWPlus(Method):
    name = "fwplus"

    def __init__(self,
                 pack: Pack,                              # with a generator, the encoder and the P-space whitening
                 device: str | torch.device = "cpu",      # where it computes
                 steps: int = 80,                         # optimisation steps (measured: docs/fwplus.md)
                 lr: float = 0.05,                        # Adam's learning rate
                 lr_rampdown: float = 0.25,               # last fraction of the steps over which the rate falls to 0
                 perceptual_weight: float = 10.0,         # weight of the pack's perceptual distance (BDInvert: 10 x LPIPS)
                 base_weight: float = 10.0,               # weight of mean((f - E(x))^2): keeps f near the encoder's
                 pspace_weight: float = 0.01,             # weight of the P-space whitening penalty on the detail rows
                 edit_mode: str = "auto"):                # "aligned" (edits made in the aligned frame and carried
                                                          # back, aligned.py), "rows" (BDInvert's: the rows after
                                                          # the base code), "auto": aligned where the pack has a
                                                          # face detector, else rows
        from ...losses import LossNetworks
        from ..base import MethodUnavailable

        if edit_mode not in EDIT_MODES:
            raise MethodUnavailable(f"--edit-mode {edit_mode!r}: choose {', '.join(EDIT_MODES)}")
        self.device = torch.device(device)
        self.edit_mode = edit_mode
        self.aligned = None
        if edit_mode != "rows":
            from .aligned import AlignedEdits, AlignedUnavailable
            try:
                self.aligned = AlignedEdits(pack, device)
            except AlignedUnavailable as exc:
                if edit_mode == "aligned":
                    raise MethodUnavailable(f"fwplus --edit-mode aligned: {exc}; or pass --edit-mode rows") from None
        self.G = pack.generator(device)
        self.E = pack.load(NETWORK, device)
        self.white = pack.load(PSPACE, device)
        self.losses = LossNetworks.from_pack(pack, device)
        self.resolution = self.G.img_resolution
        self.base_size = self.E.cfg.base_size
        wanted = self.G.synthesis.feature_shape(base_layer(self.base_size))
        if (self.E.cfg.base_channels, self.base_size, self.base_size) != wanted:
            from ..base import MethodUnavailable
            raise MethodUnavailable(f"pack {pack.name!r}: {NETWORK} writes {self.E.cfg.base_channels} x "
                                    f"{self.base_size}^2 base codes; the generator's {base_layer(self.base_size)} "
                                    f"gives {wanted[0]} x {wanted[1]}^2")
        self.first = first_detail_row(self.G, self.base_size)
        self.weights = dict(perceptual=perceptual_weight, base=base_weight, pspace=pspace_weight)
        self.config = OptimizeConfig(steps=steps, lr=lr, rampdown=lr_rampdown)
        # Images optimised together (see `invert`): one on a CPU, where a batch saves little; 8 on a GPU.
        self.chunk = 1 if self.device.type == "cpu" else 8

    @classmethod
    def load(cls, pack: Pack, device: str | torch.device = "cpu", **options) -> "FWPlus":
        return cls(pack, device, **options)

    def loss_terms(self, x: torch.Tensor, f_base: torch.Tensor, detail: torch.Tensor, f_start: torch.Tensor,
                   perceptual_to_x=None) -> dict[str, torch.Tensor]:
        """Per-image terms [N] for images x, base codes f_base, detail rows [N, num_ws - first, w_dim] and the
        encoder's base codes f_start (`perceptual_to_x`: `self.losses.perceptual_to(x)`, made once per chunk)."""
        w = torch.cat([self.G.w_avg.expand(x.shape[0], self.first, -1), detail], dim=1)
        y = synthesize_from_base(self.G, f_base, w)
        perceptual_to_x = perceptual_to_x or self.losses.perceptual_to(x)
        return {"mse": (y - x).square().mean(dim=[1, 2, 3]),
                "perceptual": perceptual_to_x(y),
                "base": (f_base - f_start).square().mean(dim=[1, 2, 3]),
                "pspace": self.white.penalty(detail)}

    def invert(self, images: torch.Tensor) -> Inversion:
        """images [N, 3, R, R] in [-1, 1] -> {w_plus, f_base} and the reconstruction, on the images' device.

        1. base code f0 = E(x); detail rows = w_avg;
        2. minimise mse + perceptual + base * mean((f - f0)^2) + pspace * mean(P(detail)^2) per image
           (`optimize_codes`: each image keeps its best step), `chunk` images at a time;
        3. the rows up to the base layer stay at w_avg (they do not reach the image).
        `Method.on_step`, when set, follows the optimisation of each chunk (a progress bar).

        Chunks have a fixed size per device (a short one is padded with copies of its last image): the kernels sum in
        an order that depends on the batch size (~1e-6 apart) and Adam's sign-like first steps amplify that to ~1 in
        the image within 60 steps (measured on noise inputs), while in a batch of fixed shape every row is computed
        alike wherever it sits, so an image's result is its own, as in IDInvert."""
        R = self.resolution
        assert images.ndim == 4 and images.shape[1:] == (3, R, R), f"expected [N, 3, {R}, {R}], got {tuple(images.shape)}"
        x_all = images.to(self.device, torch.float32)
        K, wt = self.chunk, self.weights
        bases, details = [], []
        for i in range(0, len(x_all), K):
            x = x_all[i:i + K]
            pad = K - len(x)
            if pad:
                x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
            with torch.no_grad():
                f_start = self.E(x)
            detail_start = self.G.w_avg.expand(K, self.G.num_ws - self.first, -1)

            def loss_fn(codes: dict[str, torch.Tensor], x=x, f_start=f_start,
                        perceptual_to_x=self.losses.perceptual_to(x)) -> torch.Tensor:
                t = self.loss_terms(x, codes["f_base"], codes["detail"], f_start, perceptual_to_x)
                return (t["mse"] + wt["perceptual"] * t["perceptual"] + wt["base"] * t["base"]
                        + wt["pspace"] * t["pspace"])

            with torch.enable_grad():
                hook = None if self.on_step is None else (
                    lambda step, losses, active: self.on_step(step, self.config.steps))
                result = optimize_codes({"f_base": f_start, "detail": detail_start}, loss_fn, self.config, hook)
            bases.append(result.codes["f_base"][:K - pad])
            details.append(result.codes["detail"][:K - pad])
        f_base, n = torch.cat(bases), len(x_all)
        w = torch.cat([self.G.w_avg.expand(n, self.first, -1), torch.cat(details)], dim=1)
        with torch.no_grad():
            image = synthesize_from_base(self.G, f_base, w)
        back = lambda t: t.to(images.device)
        latents = {"w_plus": back(w), BASE_KEY: back(f_base)}
        if self.aligned is not None:
            matrices, codes = self.aligned.locate(x_all)
            latents.update(aligned_w=back(codes), aligned_matrix=matrices.to(images.device))
        return Inversion(latents=latents, image=back(image))

    def _base_of(self, inversion: Inversion) -> torch.Tensor:
        """The inversion's base code, checked (a latent file may lack it or hold another generator's)."""
        from ...latents import LatentError

        f = inversion.latents.get(BASE_KEY)
        want = (self.E.cfg.base_channels, self.base_size, self.base_size)
        if f is None or f.ndim != 4 or tuple(f.shape[1:]) != want:
            raise LatentError(f"no base code latent.{BASE_KEY} of shape [N, {', '.join(map(str, want))}] (got "
                              f"{None if f is None else list(f.shape)}); invert the image again with --method fwplus")
        return f

    @torch.no_grad()
    def edit_inversion(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> Inversion:
        """direction [num_ws, w_dim] (or [w_dim]) times `strength`, or a learned edit at `strength` (`edit_step`).

        rows: moves the W+ rows after the base layer only; the base code, which holds the head's place, size and
        tilt, and the rows before it stay as they were.
        aligned: the edit of the head's aligned crop carried back into the frame (aligned.py) on top of the
        reconstruction; the codes stay the inversion's own and `w_offset` holds the edit so far, so edits chain.
        Frames where no head was found (and latents from a rows inversion) are edited by rows."""
        codes = inversion.latents["w_plus"]
        f_base = self._base_of(inversion).to(self.device)
        w = codes.to(self.device).clone()
        found = self._aligned_of(inversion)
        if found is None:
            step = edit_step(w, direction, strength).expand(len(w), self.G.num_ws, self.G.w_dim)
            w[:, self.first:] += step[:, self.first:]
            image = synthesize_from_base(self.G, f_base, w)
            return Inversion(latents={**inversion.latents, "w_plus": w.to(codes.device)},
                             image=image.to(codes.device))
        a, matrices = (inversion.latents[k] for k in ALIGNED_KEYS)
        a = a.to(self.device)
        offset = inversion.latents.get("w_offset")
        offset = torch.zeros_like(w) if offset is None else offset.to(self.device)
        total = offset + edit_step(a + offset, direction, strength).expand_as(w)
        rows = w.clone()  # frames without a head: the paper's edit (a learned edit's step taken at their own code)
        rows[:, self.first:] += (offset + edit_step(w + offset, direction, strength).expand_as(w))[:, self.first:]
        total = torch.where(found.to(self.device)[:, None, None], total, rows - w)
        image = torch.where(found.to(self.device)[:, None, None, None],
                            self.aligned.carry(synthesize_from_base(self.G, f_base, w), matrices, a, total),
                            synthesize_from_base(self.G, f_base, rows))
        return Inversion(latents={**inversion.latents, "w_offset": total.to(codes.device)},
                         image=image.to(codes.device))

    def _aligned_of(self, inversion: Inversion) -> torch.Tensor | None:
        """[N] bool, the frames whose head was found, when this method edits in the aligned frame and the
        inversion has what it needs (else None: rows)."""
        from ...latents import LatentError
        from .aligned import found_mask

        if self.aligned is None or not all(k in inversion.latents for k in ALIGNED_KEYS):
            return None
        a, matrices = (inversion.latents[k] for k in ALIGNED_KEYS)
        n = len(inversion.latents["w_plus"])
        if tuple(a.shape) != (n, self.G.num_ws, self.G.w_dim) or tuple(matrices.shape) != (n, 2, 3):
            raise LatentError(f"aligned_w {list(a.shape)} / aligned_matrix {list(matrices.shape)} do not fit "
                              f"{n} codes of {self.G.num_ws} x {self.G.w_dim}; invert the image again")
        return found_mask(matrices.double())

    def edit(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> torch.Tensor:
        return self.edit_inversion(inversion, direction, strength).image
