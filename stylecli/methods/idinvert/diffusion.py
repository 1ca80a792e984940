"""IDInvert's semantic diffusion: a target face's centre region diffused into a context image.

  1. composite: the context with the target's centre box pasted in (`centre_box`);
  2. start from the encoder's code of the composite, E(composite);
  3. domain-regularised optimisation that looks only inside the box (pixel MSE averaged over it, the perceptual
     distance of both images masked by it) and keeps w near E(G(w)) as inversion does;
  4. the result is G(w): a face of the generator's domain whose centre is the target's (identity, expression) while
     the rest (hair, head shape, background, light) follows the context and blends into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import Inversion
from .method import IDInvert, encode

DEFAULT_CENTRE = (0.5, 0.57)   # box centre (x, y) as fractions of the side: the face's centre in aligned faces
DEFAULT_CROP = 0.45            # box side as a fraction of the image side (eyes to chin on aligned faces)


@dataclass
class Diffusion:
    inversion: Inversion       # the code found and its image G(w) [N, 3, R, R] (the result)
    composite: torch.Tensor    # [N, 3, R, R]: the context with the target's box pasted in (the optimisation's goal)
    mask: torch.Tensor         # [1, 1, R, R]: 1 inside the box


def centre_box(resolution: int, crop: float = DEFAULT_CROP, centre: tuple[float, float] = DEFAULT_CENTRE) \
        -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels of the square box of side `crop` x resolution centred at `centre` (fractions),
    moved inside the image; ValueError (one line) for a box that is empty or larger than the image."""
    if not 0 < crop <= 1:
        raise ValueError(f"crop {crop}: the box side is a fraction of the image in (0, 1]")
    if not all(0 <= c <= 1 for c in centre):
        raise ValueError(f"centre {centre}: the box centre is given as fractions in [0, 1]")
    side = max(1, round(crop * resolution))
    x0 = min(max(round(centre[0] * resolution - side / 2), 0), resolution - side)
    y0 = min(max(round(centre[1] * resolution - side / 2), 0), resolution - side)
    return x0, y0, x0 + side, y0 + side


def diffuse(method: IDInvert, target: torch.Tensor, context: torch.Tensor, crop: float = DEFAULT_CROP,
            centre: tuple[float, float] = DEFAULT_CENTRE) -> Diffusion:
    """Diffuse each target's centre box into its context (see the module docstring).

    method -- a loaded IDInvert (its steps, learning rate and domain weight are used)
    target, context -- [N, 3, R, R] in [-1, 1] at the method's resolution (a context of one image serves every target)
    """
    R = method.resolution
    assert target.ndim == 4 and target.shape[1:] == (3, R, R), f"target {tuple(target.shape)}: expected [N, 3, {R}, {R}]"
    assert context.ndim == 4 and context.shape[1:] == (3, R, R) and len(context) in (1, len(target)), \
        f"context {tuple(context.shape)}: expected [1 or N, 3, {R}, {R}]"
    device = method.device
    x0, y0, x1, y1 = centre_box(R, crop, centre)
    mask = torch.zeros(1, 1, R, R, device=device)
    mask[..., y0:y1, x0:x1] = 1
    t, c = target.to(device), context.to(device).expand(len(target), -1, -1, -1)
    composite = c * (1 - mask) + t * mask
    with torch.no_grad():
        w = method.optimize(composite, mask) if method.steps > 0 else encode(method.E, composite)
        image = method.G.synthesis(w, noise_mode="const")
    home = target.device
    return Diffusion(Inversion(latents={"w_plus": w.to(home)}, image=image.to(home)), composite.to(home),
                     mask.to(home))
