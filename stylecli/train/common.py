"""What the method trainers share: opening a run (processes, batch share, seed, pack) and the image discriminator's
step with lazy R1."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..packs import Pack
from .distributed import DistContext, average_gradients, init_distributed


def open_run(cfg, needs: tuple[str, ...], what: str) -> tuple[Path, DistContext, int, Pack]:
    """The run folder, torchrun's process group (one process without torchrun), this process's share of the batch
    and the pack `cfg.model`, after:
    1. --batch must divide by the processes;
    2. torch's seed is `cfg.seed`;
    3. the pack must hold the networks `needs` (a one-line ValueError naming `what` needs them)."""
    ctx = init_distributed(torch.device(cfg.device))
    if cfg.batch % ctx.world_size:
        raise ValueError(f"--batch {cfg.batch} must divide by the {ctx.world_size} processes")
    torch.manual_seed(cfg.seed)
    pack = Pack.open(cfg.model)
    for network in needs:
        if not pack.has(network):
            raise ValueError(f"pack {pack.name!r} has no {network}, which {what} needs")
    return Path(cfg.run_dir), ctx, cfg.batch // ctx.world_size, pack


def trainable_discriminator(pack: Pack, device, batch: int, batch_per_rank: int) -> torch.nn.Module:
    """The pack's discriminator to fine-tune beside a trained part (train mode, gradients off until its own step),
    after checking that its minibatch-stddev groups tile each process's batch (a one-line ValueError: otherwise the
    first adversarial step would fail deep inside D, hours into a run whose adversarial term starts late)."""
    D = pack.load("discriminator", device).train().requires_grad_(False)
    group = min(D.b4.mbstd.group_size, batch_per_rank)
    if batch_per_rank % group:
        raise ValueError(f"--batch {batch}: each process's batch ({batch_per_rank}) must divide by the "
                         f"discriminator's minibatch-stddev group ({group}); use a multiple of {group}")
    return D


def image_discriminator_step(D: torch.nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                             ctx: DistContext, step: int, r1_gamma: float, interval: int) -> torch.Tensor:
    """One step of an image discriminator fine-tuned beside a trained part (StyleGAN2's D objective):
    1. non-saturating logistic loss on `real` against `fake` (detached by the caller), D's own optimiser;
    2. every `interval` steps a separate lazy R1 step on the real images, gamma / 2 * interval;
    3. D's gradients off again, so the trained part's adversarial term reaches that part only.
    Returns the logistic loss."""
    D.requires_grad_(True)
    loss = F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(D, ctx)
    opt.step()
    if r1_gamma > 0 and step % interval == 0:
        real_r1 = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(real_r1).sum(), real_r1, create_graph=True)
        r1 = grad.square().sum(dim=[1, 2, 3]).mean() * (r1_gamma / 2) * interval
        opt.zero_grad(set_to_none=True)
        r1.backward()
        average_gradients(D, ctx)
        opt.step()
    D.requires_grad_(False)
    return loss.detach()
