"""StyleGAN2 training (`stylecli train generator`).

The objective of StyleGAN2 config-f: non-saturating logistic loss, lazy R1 on reals every `d_reg_interval` steps,
lazy path-length regularisation every `g_reg_interval` steps (half batch), style mixing, an EMA generator with ramp-up,
and x-flip of the reals. Adam's learning rate and betas are adjusted for the lazy intervals as in the paper.

A run folder holds checkpoint.pt (written atomically every `checkpoint_kimg`), metrics.jsonl and samples-*.png;
`resume=True` continues exactly where the checkpoint stopped (networks, optimisers, counters, random streams).
`init=PACK` starts a new run from a pack's generator and discriminator instead (to continue a model whose run folder
is gone): the pack's EMA generator becomes both G and G_ema, the image count and wall time continue from the pack's
record, the path-length mean is estimated from the generator, and Adam starts afresh.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.networks import Discriminator, Generator
from ..data.loader import ImageSource
from ..imageio import make_grid, save_image, tensor_to_images
from .checkpoint import MetricsLog, load_checkpoint, save_checkpoint
from .configs import GeneratorTrainingConfig
from .distributed import DistContext, all_mean, average_gradients, broadcast_module, init_distributed


class GeneratorTrainer:
    def __init__(self, cfg: GeneratorTrainingConfig, resume: bool = False):
        self.cfg = cfg
        self.ctx: DistContext = init_distributed(torch.device(cfg.device))
        self.run_dir = Path(cfg.run_dir)
        if cfg.batch % self.ctx.world_size:
            raise ValueError(f"--batch {cfg.batch} must divide by the {self.ctx.world_size} processes")
        self.batch_gpu = cfg.batch // self.ctx.world_size
        torch.manual_seed(cfg.seed)
        dev = self.ctx.device
        self.G = Generator(**cfg.generator_kwargs()).to(dev).train()
        self.D = Discriminator(**cfg.discriminator_kwargs()).to(dev).train()
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = self._adam(self.G, cfg.g_reg_interval)
        self.opt_D = self._adam(self.D, cfg.d_reg_interval)
        self.source = ImageSource(cfg.data, cfg.resolution, seed=cfg.seed, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, workers=cfg.workers)
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.ctx.rank)  # latents and noise
        self.step, self.nimg, self.pl_mean = 0, 0, torch.zeros([], device=dev)
        self.elapsed = 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.grid_z = torch.from_numpy(np.random.RandomState(123).randn(16, cfg.z_dim)).float().to(dev)
        self.r1_gamma = cfg.r1_gamma if cfg.r1_gamma is not None else 0.0002 * cfg.resolution ** 2 / cfg.batch
        if not (resume and self._restore()) and cfg.init is not None:
            self._init_from_pack(cfg.init)
        broadcast_module(self.G, self.ctx)
        broadcast_module(self.D, self.ctx)
        broadcast_module(self.G_ema, self.ctx)

    def _adam(self, module, reg_interval):
        ratio = reg_interval / (reg_interval + 1)
        return torch.optim.Adam(module.parameters(), lr=self.cfg.lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)

    # --- state ---------------------------------------------------------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """(images shown so far, images in all)."""
        return self.nimg, int(self.cfg.kimg * 1000)

    def state(self) -> dict:
        return {"target": "generator", "config": dataclasses.asdict(self.cfg), "G": self.G.state_dict(),
                "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(), "opt_G": self.opt_G.state_dict(),
                "opt_D": self.opt_D.state_dict(),
                "step": self.step, "nimg": self.nimg, "pl_mean": self.pl_mean.cpu(), "elapsed": self.elapsed,
                "torch_rng": torch.get_rng_state(), "gen_rng": self.gen.get_state(),
                "source_position": self.source.position}

    def _restore(self) -> bool:
        """Load the run's checkpoint; False when there is none yet."""
        state = load_checkpoint(self.run_dir)
        if state is None:
            return False
        for key in ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
            if state["config"][key] != getattr(self.cfg, key):
                raise ValueError(f"the checkpoint in {self.run_dir} has {key}={state['config'][key]}, "
                                 f"not {getattr(self.cfg, key)}")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step, self.nimg, self.elapsed = state["step"], state["nimg"], state["elapsed"]
        self.pl_mean = state["pl_mean"].to(self.ctx.device)
        torch.set_rng_state(state["torch_rng"])
        self.gen.set_state(state["gen_rng"])
        # Runs from before the position was recorded continue on a fresh stream.
        self.source.position = state.get("source_position", self.step * self.batch_gpu)
        return True

    def _init_from_pack(self, name_or_path: str) -> None:
        from ..packs.pack import Pack, PackError

        try:
            pack = Pack.open(name_or_path)
        except PackError as exc:
            raise ValueError(f"--init: {exc}") from None
        for network, module in (("generator", self.G), ("discriminator", self.D)):
            entry = pack.networks.get(network)
            if entry is None:
                raise ValueError(f"--init {name_or_path}: the pack has no {network} to continue training from")
            state = {k: v.float() if v.is_floating_point() else v for k, v in pack.state_dict(network).items()}
            try:
                module.load_state_dict(state)
            except RuntimeError:
                raise ValueError(f"--init {name_or_path}: its {network} does not fit this configuration "
                                 f"({entry.get('config')})") from None
        self.G_ema.load_state_dict(self.G.state_dict())
        record = pack.manifest.get("provenance", {}).get("generator", {})
        self.nimg = int(round(record.get("kimg", 0) * 1000))
        self.step = int(record.get("steps", 0))
        self.elapsed = float(record.get("wall_time_h", 0)) * 3600
        self.pl_mean = self._path_length_mean()

    def _path_length_mean(self, batches: int = 8) -> torch.Tensor:
        """The mean path length of G, as the running mean of a long run would hold it (a fresh zero would pull every
        path length towards zero for the first few hundred regularisation steps)."""
        total = torch.zeros([], device=self.ctx.device)
        for _ in range(batches):
            ws = self._mapping(self._z(max(self.batch_gpu // 2, 1))).detach().requires_grad_(True)
            total += self._path_lengths(ws, create_graph=False).mean().detach()
        return all_mean(total / batches, self.ctx)

    def _path_lengths(self, ws: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """|J_w^T y| per sample for images of ws [N, num_ws, w_dim] and a random image-space y (StyleGAN2 eq. 4)."""
        img = self.G.synthesis(ws, noise_mode="random")
        noise = torch.randn(img.shape, generator=self.gen).to(img.device) / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=create_graph)
        return grads.square().sum(2).mean(1).sqrt()

    def save(self) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.run_dir, self.state())

    # --- one step ------------------------------------------------------------------------------------------------

    def _z(self, n):
        return torch.randn(n, self.cfg.z_dim, generator=self.gen).to(self.ctx.device)

    def _mapping(self, z, update_w_avg=False):
        ws = self.G.mapping(z, update_w_avg=update_w_avg)
        if self.cfg.style_mixing > 0 and torch.rand([], generator=self.gen) < self.cfg.style_mixing:
            cutoff = int(torch.randint(1, ws.shape[1], [], generator=self.gen))
            ws[:, cutoff:] = self.G.mapping(self._z(z.shape[0]))[:, cutoff:]
        return ws

    def _reals(self):
        x = self.source.batch(self.batch_gpu).to(self.ctx.device)
        if self.cfg.mirror:
            flip = torch.rand(x.shape[0], generator=self.gen) < 0.5
            x[flip] = x[flip].flip(3)
        return x

    def train_step(self) -> dict:
        cfg, n = self.cfg, self.batch_gpu
        stats = {}
        reals = self._reals()

        # G main: non-saturating loss on fakes.
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        fakes = self.G.synthesis(self._mapping(self._z(n), update_w_avg=True), noise_mode="random")
        loss_g = F.softplus(-self.D(fakes)).mean()
        loss_g.backward()
        stats["loss_G"] = loss_g.detach()
        # G reg: path-length regularisation on half a batch, every g_reg_interval steps.
        if cfg.pl_weight > 0 and self.step % cfg.g_reg_interval == 0:
            lengths = self._path_lengths(self._mapping(self._z(max(n // 2, 1))), create_graph=True)
            self.pl_mean = self.pl_mean.lerp(all_mean(lengths.mean().detach(), self.ctx), 0.01)
            loss_pl = (lengths - self.pl_mean).square().mean() * cfg.pl_weight * cfg.g_reg_interval
            loss_pl.backward()
            stats["loss_pl"] = loss_pl.detach()
        average_gradients(self.G, self.ctx)
        self.opt_G.step()

        # D main: logistic loss on fakes and reals.
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with torch.no_grad():
            fakes = self.G.synthesis(self._mapping(self._z(n)), noise_mode="random")
        real_logits, fake_logits = self.D(reals), self.D(fakes)
        loss_d = (F.softplus(fake_logits) + F.softplus(-real_logits)).mean()
        loss_d.backward()
        stats.update(loss_D=loss_d.detach(), real_score=real_logits.mean().detach(), fake_score=fake_logits.mean().detach())
        # D reg: R1 on reals, every d_reg_interval steps.
        if self.r1_gamma > 0 and self.step % cfg.d_reg_interval == 0:
            reals_r1 = reals.detach().requires_grad_(True)
            (grads,) = torch.autograd.grad(self.D(reals_r1).sum(), reals_r1, create_graph=True)
            loss_r1 = grads.square().sum([1, 2, 3]).mean() * (self.r1_gamma / 2) * cfg.d_reg_interval
            loss_r1.backward()
            stats["loss_r1"] = loss_r1.detach()
        average_gradients(self.D, self.ctx)
        self.opt_D.step()

        # EMA of the generator (buffers, w_avg included, are copied).
        self.nimg += cfg.batch
        self.step += 1
        ema_nimg = (cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32) * 1000
        if cfg.ema_rampup:
            ema_nimg = min(ema_nimg, self.nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        return {k: float(all_mean(v, self.ctx)) for k, v in stats.items()}

    # --- the loop ------------------------------------------------------------------------------------------------

    def write_samples(self) -> Path | None:
        if not self.ctx.is_main:
            return None
        with torch.no_grad():
            images = self.G_ema(self.grid_z, noise_mode="const")
        path = self.run_dir / f"samples-{self.nimg // 1000:06d}kimg.png"
        save_image(make_grid(tensor_to_images(images), 4), path)
        return path

    def run(self, on_progress: Callable[[int, dict], None] | None = None) -> None:
        """Train until cfg.kimg; on_progress(images shown so far, metrics record) after each record."""
        cfg = self.cfg
        total = int(cfg.kimg * 1000)
        next_ckpt = self.nimg + cfg.checkpoint_kimg * 1000
        next_sample = self.nimg + cfg.sample_kimg * 1000
        next_log = self.nimg + cfg.log_kimg * 1000
        window: list[dict] = []
        tick = time.time()
        while self.nimg < total:
            window.append(self.train_step())
            now = time.time()
            self.elapsed += now - tick
            tick = now
            if self.nimg >= next_log or self.nimg >= total:
                record = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                record.update(kimg=self.nimg / 1000, step=self.step, elapsed_s=round(self.elapsed, 1),
                              skipped_images=self.source.skipped)
                if self.ctx.is_main:
                    self.log.write(record)
                window, next_log = [], self.nimg + cfg.log_kimg * 1000
                if on_progress:
                    on_progress(self.nimg, record)
            if self.nimg >= next_sample:
                self.write_samples()
                next_sample = self.nimg + cfg.sample_kimg * 1000
            if self.nimg >= next_ckpt:
                self.save()
                next_ckpt = self.nimg + cfg.checkpoint_kimg * 1000
        self.save()
        self.write_samples()
