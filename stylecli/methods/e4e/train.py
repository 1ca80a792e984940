"""Training the e4e encoder against a pack's frozen generator (`stylecli train e4e`).

Losses as in e4e: L2 1.0, perceptual 0.8, identity 0.1 (1 - cosine), delta regulariser 2e-4 (sum over the active
rows of the mean L2 norm of w_i - w_0), and a latent discriminator (3 x Linear + LeakyReLU 0.2, non-saturating loss,
R1 gamma 10 every 16 steps, Adam 2e-5) weighted 0.1 that keeps every encoded row inside W. Progressive training:
only w0 at first; one more delta row becomes active every `progressive_step` steps from `progressive_start`.
A fine-tuning run (`init`) starts with every row active: its encoder has already been through the curriculum.
The encoder is optimised with Ranger (RAdam + Lookahead), lr 1e-4. Under torchrun each process takes batch / N images
and its own W samples; gradients are averaged, so every process takes the same steps and rank 0 writes the run.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.loader import ImageSource
from ...losses import LossNetworks
from ...packs import Pack
from ...train.checkpoint import MetricsLog, StepTrainer, load_checkpoint, save_checkpoint
from ...train.distributed import all_mean, average_gradients, broadcast_module, init_distributed
from ...train.export import load_run, step_run_record
from ...train.optim import ranger
from . import NETWORK
from .spec import E4ETrainingConfig
from .encoder import Encoder4Editing, EncoderConfig


class LatentDiscriminator(nn.Module):
    def __init__(self, w_dim: int = 512, layers: int = 3):
        super().__init__()
        self.config = dict(w_dim=w_dim, layers=layers)
        mods = []
        for _ in range(layers):
            mods += [nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2)]
        mods.append(nn.Linear(w_dim, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.net(w)


class E4ETrainer(StepTrainer):
    def __init__(self, cfg: E4ETrainingConfig, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.ctx = init_distributed(torch.device(cfg.device))
        if cfg.batch % self.ctx.world_size:
            raise ValueError(f"--batch {cfg.batch} must divide by the {self.ctx.world_size} processes")
        self.batch_per_rank = cfg.batch // self.ctx.world_size
        dev = self.ctx.device
        torch.manual_seed(cfg.seed)
        pack = Pack.open(cfg.model)
        self.G = pack.generator(dev)
        self.losses = LossNetworks.from_pack(pack, dev)
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:  # the encoder as the run built it (from --init or the defaults)
            self.E = Encoder4Editing(**state["encoder_config"])
        elif cfg.init is not None:
            start = _trained_encoder(cfg.init)
            self.E = Encoder4Editing(**{**start.config, **cfg.encoder})
            try:
                self.E.load_state_dict(start.state_dict())
            except RuntimeError as exc:
                raise ValueError(f"--init {cfg.init}: its encoder does not fit this configuration ({exc})") from None
        else:
            self.E = Encoder4Editing(**{**asdict(EncoderConfig.for_generator(
                self.G.img_resolution, self.G.w_dim, self.G.num_ws)), **cfg.encoder})
        self.E.to(dev).train()
        if self.E.cfg.w_dim != self.G.w_dim or self.E.cfg.num_ws != self.G.num_ws:
            raise ValueError(f"the encoder writes {self.E.cfg.num_ws} x {self.E.cfg.w_dim} codes; the generator of "
                             f"{cfg.model} takes {self.G.num_ws} x {self.G.w_dim}")
        with torch.no_grad():
            self.E.latent_avg.copy_(self.G.w_avg.expand(self.G.num_ws, -1))
        self.D = LatentDiscriminator(self.G.w_dim).to(dev)
        self.opt_E = ranger(self.E.parameters(), lr=cfg.lr)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr)
        self.source = ImageSource(cfg.data, self.G.img_resolution, seed=cfg.seed, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, workers=cfg.workers)
        self.w_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.ctx.rank)  # the latent D's real W
        self.pool: list[torch.Tensor] = []
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.pack_name = pack.name
        # A fine-tuned encoder already has every delta row; only training from scratch follows the curriculum.
        self.fine_tuning = (state["config"] if state is not None else asdict(cfg)).get("init") is not None
        if state is not None:
            self.E.load_state_dict(state["E"])
            self.D.load_state_dict(state["D"])
            self.opt_E.load_state_dict(state["opt_E"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            self.pool = list(state["pool"])
            # Every rank has drawn the same count: exact for all (older runs: a fresh stream).
            self.source.position = state.get("source_position", self.step * self.batch_per_rank)
            torch.set_rng_state(state["torch_rng"])
            if self.ctx.world_size == 1:
                if "w_rng" in state:  # runs from before w_rng keep drawing from a fresh stream
                    self.w_rng.set_state(state["w_rng"])
            else:  # the checkpoint holds rank 0's streams: every rank continues on its own
                self.w_rng.manual_seed(cfg.seed * 1000 + self.ctx.rank + 7919 * self.step)
        broadcast_module(self.E, self.ctx)
        broadcast_module(self.D, self.ctx)

    def save(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir, {
            "E": self.E.state_dict(), "D": self.D.state_dict(), "opt_E": self.opt_E.state_dict(),
            "opt_D": self.opt_D.state_dict(), "step": self.step, "elapsed": self.elapsed, "pool": self.pool,
            "torch_rng": torch.get_rng_state(), "source_position": self.source.position,
            "w_rng": self.w_rng.get_state(),
            "config": asdict(self.cfg), "encoder_config": self.E.config, "pack": self.pack_name, "target": "e4e"})

    def log_extras(self) -> dict:
        return {"skipped_images": self.source.skipped}  # unreadable files replaced by other draws

    def active_rows(self) -> int:
        cfg = self.cfg
        if self.fine_tuning:
            return self.G.num_ws
        start = cfg.progressive_start if cfg.progressive_start is not None else int(cfg.steps * 0.07)
        every = cfg.progressive_step if cfg.progressive_step is not None else int(cfg.steps * 0.007)
        if self.step < start:
            return 1
        return min(self.G.num_ws, 2 + (self.step - start) // max(every, 1))

    def train_step(self) -> dict:
        cfg, dev = self.cfg, next(self.E.parameters()).device
        self.E.progressive_stage = self.active_rows()
        n = self.batch_per_rank
        x = self.source.batch(n).to(dev)
        x_in = x if x.shape[-1] == self.E.cfg.input_size else F.interpolate(x, size=self.E.cfg.input_size, mode="area")

        # Encoder.
        self.D.requires_grad_(False)
        w0, deltas = self.E.deltas_and_base(x_in)
        w = w0.unsqueeze(1) + deltas + self.E.latent_avg
        y = self.G.synthesis(w, noise_mode="const")
        loss_l2 = F.mse_loss(y, x)
        loss_p = self.losses.perceptual(y, x).mean()
        loss_id = (1 - self.losses.identity(y, x)).mean()
        active = self.E.progressive_stage
        loss_delta = deltas[:, 1:active].norm(dim=2).mean(dim=0).sum() if active > 1 else torch.zeros([], device=dev)
        fake_codes = w[:, :active].reshape(-1, w.shape[-1])
        loss_adv = F.softplus(-self.D(fake_codes)).mean()
        loss = (cfg.l2_weight * loss_l2 + cfg.perceptual_weight * loss_p + cfg.id_weight * loss_id
                + cfg.delta_weight * loss_delta + cfg.adv_weight * loss_adv)
        self.opt_E.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.E, self.ctx)
        self.opt_E.step()
        broadcast_module(self.E, self.ctx, buffers_only=True)

        # Latent discriminator: W samples from the mapping network versus encoded codes (with a history pool).
        self.D.requires_grad_(True)
        with torch.no_grad():
            real = self.G.mapping(torch.randn(n, self.G.z_dim, generator=self.w_rng).to(dev))[:, 0]
        fake = fake_codes.detach()
        self.pool = (self.pool + list(fake[:n].cpu()))[-cfg.pool_size:]
        pooled = torch.stack(self.pool[:n]).to(dev)
        loss_d = F.softplus(-self.D(real)).mean() + 0.5 * (F.softplus(self.D(fake)).mean() + F.softplus(self.D(pooled)).mean())
        if self.step % cfg.d_reg_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(real_r1).sum(), real_r1, create_graph=True)
            loss_d = loss_d + grad.square().sum(1).mean() * (cfg.r1_gamma / 2) * cfg.d_reg_interval
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        average_gradients(self.D, self.ctx)
        self.opt_D.step()
        self.step += 1
        stats = {"loss": loss, "l2": loss_l2, "perceptual": loss_p, "id": loss_id, "delta": loss_delta,
                 "adv": loss_adv, "loss_D": loss_d}
        return {**{k: float(all_mean(v.detach(), self.ctx)) for k, v in stats.items()}, "active_rows": active}


def _trained_encoder(source: str) -> Encoder4Editing:
    """The e4e encoder of a run folder or a pack."""
    if (Path(source) / "checkpoint.pt").is_file():
        return encoder_from_run(Path(source))[0][NETWORK]
    return Pack.open(source).load(NETWORK)


def encoder_from_run(run_dir: Path) -> tuple[dict, dict]:
    """{"e4e_encoder": E} from a run folder, with its training record."""
    state = load_run(run_dir)
    E = Encoder4Editing(**state["encoder_config"])
    E.load_state_dict(state["E"])
    return {NETWORK: E}, step_run_record(run_dir, state, "stylecli train e4e")
