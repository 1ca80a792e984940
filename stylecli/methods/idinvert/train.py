"""Training IDInvert's domain-guided encoder (`stylecli train idinvert`).

The paper's objective, against the pack's frozen generator G, on real (training) images x:
  encoder:       mse_weight * MSE(G(E(x)), x) + perceptual_weight * perceptual(G(E(x)), x)
                 + adv_weight * softplus(-D(G(E(x))))
  discriminator: softplus(D(G(E(x)))) + softplus(-D(x)), plus R1 (gamma / 2) * |grad_x D(x)|^2 on the real images,
                 lazily every d_reg_interval steps (weighted by the interval, as StyleGAN2 does), its own Adam step;
both with Adam (0.9, 0.99) at 1e-4. The discriminator starts from the pack's (the GAN's own, which has learned the
domain) and is fine-tuned alongside; it is not exported. Each step the discriminator trains first on this batch's
reconstructions, then the encoder meets the updated discriminator. The encoder's output BN starts at the statistics
of G's W (`DomainGuidedEncoder.init_output`), measured on 10,000 mapped samples.

Checkpoints are atomic and resume exactly (both networks, both optimisers, torch's random state, the image stream's
position); under torchrun each process takes batch / N images, gradients are averaged and rank 0's BN statistics
are broadcast, so every process holds the same networks.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.loader import ImageSource
from ...losses import LossNetworks
from ...train.checkpoint import MetricsLog, StepTrainer, check_resume, load_checkpoint, save_checkpoint
from ...train.common import image_discriminator_step, open_run, trainable_discriminator
from ...train.distributed import all_mean, average_gradients, broadcast_module
from ...train.export import load_run, step_run_record
from . import NETWORK
from .encoder import DomainGuidedEncoder, EncoderConfig
from .method import encode
from .spec import IDInvertTrainingConfig

W_STAT_SAMPLES = 10_000   # mapped samples whose per-dimension mean and std start the encoder's output BN


@torch.no_grad()
def w_statistics(G, samples: int = W_STAT_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [w_dim] of G's W over `samples` mapped z (its own generator: torch's stream is left alone)."""
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed))
    w = G.mapping(z.to(G.w_avg.device))[:, 0]
    return w.mean(dim=0), w.std(dim=0)


class IDInvertTrainer(StepTrainer):
    def __init__(self, cfg: IDInvertTrainingConfig, resume: bool = False):
        # 1. Processes, the pack's networks, the run's state if resuming.
        self.cfg = cfg
        self.run_dir, self.ctx, self.batch_per_rank, pack = open_run(cfg, ("generator", "discriminator"),
                                                                     "IDInvert training")
        dev = self.ctx.device
        self.G = pack.generator(dev)
        self.losses = LossNetworks.from_pack(pack, dev)
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:
            check_resume(self.run_dir, state["config"], asdict(cfg), _FIXED_ON_RESUME)

        # 2. The encoder (from the checkpoint's configuration on resume), its output started at W's statistics.
        if state is not None:
            self.E = DomainGuidedEncoder(**state["encoder_config"])
        else:
            self.E = DomainGuidedEncoder(**{**asdict(EncoderConfig.for_generator(
                self.G.img_resolution, self.G.w_dim, self.G.num_ws)), **cfg.encoder})
            self.E.init_output(*w_statistics(self.G, seed=cfg.seed))
        if (self.E.cfg.num_ws, self.E.cfg.w_dim) != (self.G.num_ws, self.G.w_dim):
            raise ValueError(f"the encoder writes {self.E.cfg.num_ws} x {self.E.cfg.w_dim} codes; the generator of "
                             f"{cfg.model} takes {self.G.num_ws} x {self.G.w_dim}")
        self.E.to(dev).train()

        # 3. The discriminator: the pack's, trainable; its minibatch-stddev groups must tile each process's batch.
        self.D = trainable_discriminator(pack, dev, cfg.batch, self.batch_per_rank)
        self.opt_E = torch.optim.Adam(self.E.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.source = ImageSource(cfg.data, self.G.img_resolution, seed=cfg.seed, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, workers=cfg.workers)
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.pack_name = pack.name

        # 4. Resume: every piece of state that the next step reads.
        if state is not None:
            self.E.load_state_dict(state["E"])
            self.D.load_state_dict(state["D"])
            self.opt_E.load_state_dict(state["opt_E"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            self.source.position = state["source_position"]
            torch.set_rng_state(state["torch_rng"])
        broadcast_module(self.E, self.ctx)
        broadcast_module(self.D, self.ctx)

    def save(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir, {
            "E": self.E.state_dict(), "D": self.D.state_dict(), "opt_E": self.opt_E.state_dict(),
            "opt_D": self.opt_D.state_dict(), "step": self.step, "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(), "source_position": self.source.position,
            "config": asdict(self.cfg), "encoder_config": self.E.config, "pack": self.pack_name,
            "target": "idinvert"})

    def log_extras(self) -> dict:
        return {"skipped_images": self.source.skipped}  # unreadable files replaced by other draws

    def train_step(self) -> dict:
        cfg, dev, n = self.cfg, self.ctx.device, self.batch_per_rank
        # 1. Reconstruct this batch through the encoder and the frozen generator.
        x = self.source.batch(n).to(dev)
        w = encode(self.E, x)
        assert w.shape == (n, self.G.num_ws, self.G.w_dim)
        y = self.G.synthesis(w, noise_mode="const")

        # 2. The discriminator first, on the reconstructions as they stand.
        loss_d = self.discriminator_step(x, y.detach())

        # 3. The encoder: pixels, perceptual distance, and the updated discriminator's verdict.
        loss_mse = F.mse_loss(y, x)
        loss_p = self.losses.perceptual(y, x).mean()
        loss_adv = F.softplus(-self.D(y)).mean()
        loss = cfg.mse_weight * loss_mse + cfg.perceptual_weight * loss_p + cfg.adv_weight * loss_adv
        self.opt_E.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.E, self.ctx)
        self.opt_E.step()
        broadcast_module(self.E, self.ctx, buffers_only=True)  # BN statistics: rank 0's
        self.step += 1
        psnr = 10 * torch.log10(4 / (y.detach() - x).square().mean(dim=[1, 2, 3]).clamp(min=1e-10)).mean()
        stats = {"loss": loss, "mse": loss_mse, "perceptual": loss_p, "adv": loss_adv, "loss_D": loss_d, "psnr": psnr}
        return {k: float(all_mean(v.detach(), self.ctx)) for k, v in stats.items()}

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The pack's discriminator fine-tuned on the training images against this step's reconstructions (lazy
        R1)."""
        cfg = self.cfg
        return image_discriminator_step(self.D, self.opt_D, real, fake, self.ctx, self.step, cfg.r1_gamma,
                                        cfg.d_reg_interval)


# Settings a resumed run must share with the run it continues (the others, e.g. --steps, may change).
_FIXED_ON_RESUME = ("model", "data", "batch", "lr", "seed", "encoder")


def encoder_from_run(run_dir: Path) -> tuple[dict, dict]:
    """{"idinvert_encoder": E} from a run folder, with its training record (the fine-tuned discriminator stays in
    the run: the pack keeps the GAN's own)."""
    state = load_run(run_dir)
    E = DomainGuidedEncoder(**state["encoder_config"])
    E.load_state_dict(state["E"])
    return {NETWORK: E.eval()}, step_run_record(run_dir, state, "stylecli train idinvert")
