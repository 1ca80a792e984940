"""What the method trainers share: opening a run (processes, batch share, seed, pack) and the image discriminator's
step with lazy R1."""

from __future__ import annotations

import math
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


def warmup_cosine(lr: float, step: int, steps: int, warmup: int = 100) -> float:
    """The learning rate at `step` of `steps`: a linear warm-up over the first `warmup` steps, then a cosine decay
    to 0 at the last step."""
    warm = min(1.0, (step + 1) / warmup)
    return lr * warm * 0.5 * (1 + math.cos(math.pi * min(step / max(steps, 1), 1.0)))


class RenderedStreamTrainer:
    """What a trainer of one network on a rendered stream shares (mixed into a StepTrainer): the network made from
    the seed, Adam, the stream's position, and a checkpoint of them that resumes exactly. Subclasses set `target`
    (the run's name for `weights from-runs`), `fixed_on_resume` (the settings a resume must share), `stream()` (the
    Dataset) and, for samples that are not plain tensors, `collate`; and call `setup(cfg, make_net, resume)` first."""

    target: str
    fixed_on_resume: tuple[str, ...]
    collate = None  # how samples make a batch (None: torch's default)

    def setup(self, cfg, make_net, resume: bool) -> None:
        from dataclasses import asdict

        from .checkpoint import MetricsLog, check_resume, load_checkpoint

        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.device = torch.device(cfg.device)
        with torch.random.fork_rng(devices=[]):  # initialise from the seed without moving torch's global stream
            torch.manual_seed(cfg.seed)
            self.net = make_net().to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.step, self.elapsed, self.position = 0, 0.0, 0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self._batches = None
        if resume and (state := load_checkpoint(self.run_dir)) is not None:
            check_resume(self.run_dir, state["config"], asdict(cfg), self.fixed_on_resume)
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.elapsed, self.position = state["step"], state["elapsed"], state["position"]

    def save(self):
        from dataclasses import asdict

        from .checkpoint import save_checkpoint
        save_checkpoint(self.run_dir, {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                                       "elapsed": self.elapsed, "position": self.position, "config": asdict(self.cfg),
                                       "target": self.target})

    def next_batch(self):
        """The next `cfg.batch` samples of the stream (rendered by `cfg.workers` processes)."""
        if self._batches is None:
            from ..data.loader import stream_batches
            self._batches = stream_batches(self.stream(), self.position, self.cfg.batch, self.cfg.workers,
                                           self.collate)
        batch = next(self._batches)
        self.position += self.cfg.batch
        return batch

    def learning_rate(self) -> float:
        """Set on the optimiser and returned: the warm-up and cosine schedule at this step."""
        lr = warmup_cosine(self.cfg.lr, self.step, self.cfg.steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr
