"""IDInvert inference: the domain-guided encoder's code, refined per image by domain-regularised optimisation.

For a batch of images x (each its own problem, through the shared loop `stylecli.optimize.optimize_codes`):
  1. start: w = E(x), the encoder's in-domain code;
  2. minimise, per image, MSE(G(w), x) + perceptual(G(w), x) + lambda_dom * mean((w - E(G(w)))^2) with Adam:
     the encoder, applied to what w makes, says where in W+ the generator's domain would put that image; keeping w
     close to it keeps the code editable while the pixels get closer;
  3. the code at each image's lowest loss is the inversion; an edit adds the direction to it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ...edits import edit_step
from ...losses import LossNetworks
from ...optimize import OptimizeConfig, optimize_codes
from ...packs import Pack
from ..base import Inversion, Method, MethodUnavailable
from . import NETWORK
from .spec import DEFAULT_DOMAIN_REG, DEFAULT_LR, DEFAULT_LR_RAMPDOWN, DEFAULT_STEPS

PERCEPTUAL_WEIGHT = 0.8   # the pack's perceptual distance beside pixel MSE (e4e's weight for the same slot; the
                          # paper's 5e-5 belongs to raw VGG feature MSE, another scale)


def encode(encoder, x: torch.Tensor) -> torch.Tensor:
    """W+ codes [N, num_ws, w_dim] of images at any resolution (resized to the encoder's input by area)."""
    size = encoder.cfg.input_size
    return encoder(x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area"))


def inversion_loss(G, E, losses: LossNetworks, target: torch.Tensor, domain_weight: float,
                   mask: torch.Tensor | None = None,
                   perceptual_weight: float = PERCEPTUAL_WEIGHT) -> Callable[[dict], torch.Tensor]:
    """The per-image objective of domain-regularised optimisation, codes {"w_plus": [N, num_ws, w_dim]} -> [N].

    target -- [N, 3, R, R] images in [-1, 1]
    domain_weight -- lambda_dom (0: no regulariser; the encoder is then not run)
    mask -- [N or 1, 1, R, R] in [0, 1]: where the image counts (semantic diffusion); None: everywhere. Pixel MSE is
            averaged over the mask; the perceptual distance compares both images multiplied by it, as the paper's
            diffusion does.
    """
    assert target.ndim == 4 and target.shape[1] == 3, f"target {tuple(target.shape)}"
    perceptual_to_target = losses.perceptual_to(target if mask is None else target * mask)

    def loss_fn(codes: dict) -> torch.Tensor:
        w = codes["w_plus"]
        y = G.synthesis(w, noise_mode="const")
        if mask is None:
            mse = (y - target).square().mean(dim=[1, 2, 3])
            perceptual = perceptual_to_target(y)
        else:
            area = mask.expand(len(y), 1, -1, -1).sum(dim=[1, 2, 3]).clamp(min=1) * 3
            mse = ((y - target).square() * mask).sum(dim=[1, 2, 3]) / area
            perceptual = perceptual_to_target(y * mask)
        loss = mse + perceptual_weight * perceptual
        if domain_weight > 0:
            loss = loss + domain_weight * (w - encode(E, y)).square().mean(dim=[1, 2])
        return loss

    return loss_fn


class IDInvert(Method):
    name = "idinvert"

    def __init__(self, pack: Pack, device: str | torch.device = "cpu", steps: int = DEFAULT_STEPS,
                 lr: float = DEFAULT_LR, domain_reg: float = DEFAULT_DOMAIN_REG, no_domain_reg: bool = False,
                 lr_rampdown: float = DEFAULT_LR_RAMPDOWN, chunk: int = 0, precision: str = "fp32"):
        self.device = torch.device(device)
        self.G = pack.generator(device)
        self.E = pack.load(NETWORK, device)
        self.losses = LossNetworks.from_pack(pack, device)
        self.resolution = self.G.img_resolution
        if (self.E.cfg.num_ws, self.E.cfg.w_dim) != (self.G.num_ws, self.G.w_dim):
            raise MethodUnavailable(f"{NETWORK} writes {self.E.cfg.num_ws} x {self.E.cfg.w_dim} codes; the generator takes "
                             f"{self.G.num_ws} x {self.G.w_dim}")
        self.steps, self.lr, self.lr_rampdown = steps, lr, lr_rampdown
        self.domain_weight = 0.0 if no_domain_reg else domain_reg
        # Images optimised together (see `optimize`), by default one on a CPU, where a fixed chunk of 16 would make
        # one image cost 16x (a batch of 16 costs ~0.4x per image, docs/idinvert.md); 8 on a GPU, where 8 take about
        # as long as one.
        self.chunk = chunk or (1 if self.device.type == "cpu" else 8)
        assert precision in ("fp32", "bf16"), precision
        self.precision = precision

    @classmethod
    def load(cls, pack: Pack, device: str | torch.device = "cpu", **options) -> "IDInvert":
        return cls(pack, device, **options)

    def optimize(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The W+ codes [N, num_ws, w_dim] of `images` [N, 3, R, R]: E(x), then optimised (see `inversion_loss`),
        `chunk` images at a time.

        The chunk size is fixed for the method (--chunk, or the device's default) and a short chunk is padded (with
        copies of its last image), so every image is optimised in a batch of the same shape whatever batch it came
        in. That is what keeps its result its own: the networks' kernels sum in an order that depends on the batch
        size (~1e-6 apart), and a hundred Adam steps amplify that to ~1e-2 in the code (measured; see
        docs/idinvert.md), while in a batch of fixed shape every row is computed alike wherever it sits and whatever
        sits beside it."""
        K = self.chunk
        codes = []
        for i in range(0, len(images), K):
            x = images[i:i + K]
            pad = K - len(x)
            if pad:
                x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
            with torch.no_grad():
                w0 = encode(self.E, x)  # also in the chunk: the encoder's sums depend on the batch size too
            loss_fn = self._with_precision(inversion_loss(self.G, self.E, self.losses, x, self.domain_weight, mask))
            hook = None if self.on_step is None else (
                lambda step, losses, active: self.on_step(step, self.steps))  # `Method.on_step`
            config = OptimizeConfig(steps=self.steps, lr=self.lr, rampdown=self.lr_rampdown)
            with torch.enable_grad():
                result = optimize_codes({"w_plus": w0}, loss_fn, config, on_step=hook)
            codes.append(result.codes["w_plus"][:K - pad])
        return torch.cat(codes)

    def _with_precision(self, loss_fn: Callable[[dict], torch.Tensor]) -> Callable[[dict], torch.Tensor]:
        """`loss_fn` as --precision asks: bf16 runs each call's passes under autocast (convolutions and matrix
        products in bfloat16; their backward follows), the codes, Adam and the returned image stay float32."""
        if self.precision == "fp32":
            return loss_fn

        def autocast_loss(codes: dict) -> torch.Tensor:
            with torch.autocast(self.device.type, torch.bfloat16):
                return loss_fn(codes).float()  # the loop compares and keeps losses in float32

        return autocast_loss

    def invert(self, images: torch.Tensor) -> Inversion:
        """images [N, 3, R, R] in [-1, 1] at the generator's resolution, on any device; results on the same one."""
        assert images.ndim == 4 and images.shape[1:] == (3, self.resolution, self.resolution), \
            f"expected [N, 3, {self.resolution}, {self.resolution}], got {tuple(images.shape)}"
        x = images.to(self.device)
        with torch.no_grad():
            w = self.optimize(x) if self.steps > 0 else encode(self.E, x)
            image = self.G.synthesis(w, noise_mode="const")
        return Inversion(latents={"w_plus": w.to(images.device)}, image=image.to(images.device))

    @torch.no_grad()
    def edit(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> torch.Tensor:
        """direction [num_ws, w_dim] (or [w_dim]) in W+, added `strength` times to the optimised code, or a learned
        edit at `strength` (`edit_step`); the image comes back on the codes' device."""
        codes = inversion.latents["w_plus"]
        w = codes.to(self.device)
        w = w + edit_step(w, direction, strength)
        return self.G.synthesis(w, noise_mode="const").to(codes.device)
