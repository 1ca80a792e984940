"""The per-image latent optimisation loop that the optimisation methods share (IDInvert's domain-regularised
optimisation, F/W+'s base and detail codes).

A batch of images is optimised at once, but each image is its own problem:
  1. `loss_fn(codes)` returns one loss per image, [N]; the loop minimises their sum, so an image's gradient is that of
     its own loss (Adam's update is element-wise, so images never affect each other);
  2. an image stops when its loss has not improved by `tolerance` (relative) for `patience` steps: from then on its
     codes stay as they were (they are restored after every step, since Adam's momentum would move them on);
  3. each image's codes are returned as they were at its lowest loss.
So an image's result does not depend on the other images of its batch. The loop is deterministic for a given `seed`
(anything random in `loss_fn`, e.g. noise, draws from torch's generator, seeded here and restored afterwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class OptimizeConfig:
    steps: int = 100            # most optimisation steps
    lr: float = 0.01            # Adam's learning rate
    patience: int = 20          # steps without improvement after which an image stops (0: never stop early)
    tolerance: float = 1e-3     # relative improvement of the best loss that counts as one
    seed: int = 0               # for anything random in the loss
    rampdown: float = 0.0       # the last fraction of the steps over which the learning rate falls to 0 on a cosine
                                # (StyleGAN2's projector uses 0.25); 0: a constant rate


@dataclass
class OptimizeResult:
    codes: dict[str, torch.Tensor]   # each image's codes at its lowest loss, [N, ...] per name
    losses: torch.Tensor             # [N] the lowest loss of each image
    steps: torch.Tensor              # [N] the steps each image took before it stopped


def optimize_codes(start: dict[str, torch.Tensor], loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                   config: OptimizeConfig = OptimizeConfig(),
                   on_step: Callable[[int, torch.Tensor, int], None] | None = None) -> OptimizeResult:
    """Minimise `loss_fn` over the codes, image by image (see the module docstring).

    start    -- initial codes by name, each [N, ...] with images along dim 0 (copied; not modified)
    loss_fn  -- codes -> [N] per-image losses, differentiable in the codes
    on_step  -- called after each step with (step, losses [N], number of images still optimising)
    """
    names = list(start)
    n = start[names[0]].shape[0]
    assert all(v.shape[0] == n for v in start.values()), "every code needs the images along dim 0"
    codes = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    best = {k: v.detach().clone() for k, v in start.items()}
    device = codes[names[0]].device
    best_loss = torch.full([n], float("inf"), device=device)
    reference = torch.full([n], float("inf"), device=device)  # the loss the plateau test compares with
    since_progress = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    optimizer = torch.optim.Adam(codes.values(), lr=config.lr)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        for step in range(config.steps + 1):
            losses = loss_fn(codes)
            assert losses.shape == (n,), f"loss_fn must return one loss per image, [N] = [{n}], got {losses.shape}"
            with torch.no_grad():
                better = active & (losses < best_loss)
                for k in names:
                    best[k][better] = codes[k].detach()[better]
                best_loss = torch.where(better, losses.detach(), best_loss)
                progress = active & (losses < reference * (1 - config.tolerance))
                reference = torch.where(progress, losses.detach(), reference)
                since_progress = torch.where(progress, torch.zeros_like(since_progress), since_progress + active.long())
                if config.patience > 0:
                    active &= since_progress < config.patience
            if on_step is not None:
                on_step(step, losses.detach(), int(active.sum()))
            if step == config.steps or not active.any():
                break
            frozen = {k: codes[k].detach()[~active].clone() for k in names}
            if config.rampdown > 0:
                ramp = min(1.0, (1 - step / config.steps) / config.rampdown)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * (0.5 - 0.5 * math.cos(ramp * math.pi))
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            with torch.no_grad():
                for k in names:
                    codes[k][~active] = frozen[k]  # a stopped image stays where it stopped
            steps += active.long()
    return OptimizeResult(codes=best, losses=best_loss, steps=steps)
