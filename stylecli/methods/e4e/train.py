"""Training the e4e encoder against a pack's frozen generator (`stylecli train e4e`).

Losses as in e4e's coach (omertov/encoder4editing, training/coach.py): L2 1.0, perceptual 0.8, identity 0.1
(1 - cosine), delta regulariser 2e-4 (`delta_loss`), and a latent discriminator weighted 0.1 that keeps every active
W+ row inside W: 3 x (Linear + LeakyReLU 0.2) + Linear, non-saturating loss, Adam 2e-5, lazy R1 (gamma 10 every 16
steps, its own optimiser step), real and fake codes each through a `LatentCodesPool` of 50. Each step the
discriminator trains first, on this batch's codes from the encoder as it stands, and the encoder's adversarial term
then meets the updated discriminator, as in the coach. Progressive training: only w0 at first; one more delta row
becomes active every `progressive_step` steps from `progressive_start`. A fine-tuning run (`init`) starts with every
row active: its encoder has already been through the curriculum. The encoder is optimised with Ranger (RAdam +
Lookahead + gradient centralisation, train/optim.py), lr 1e-4.

Under torchrun each process takes batch / N images, its own W samples and its own pools (of 50 each, as one GPU has
in e4e); gradients are averaged, so every process takes the same steps and rank 0 writes the run. One process resumes
exactly (every random stream and both pools are checkpointed); N processes resume with rank 0's pools and fresh
per-rank streams for the W samples and the pools' draws.
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
from ...train.checkpoint import MetricsLog, StepTrainer, check_resume, load_checkpoint, save_checkpoint
from ...train.common import open_run
from ...train.distributed import all_mean, average_gradients, broadcast_module
from ...train.export import load_run, step_run_record
from ...train.optim import Ranger
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


class LatentCodesPool:
    """e4e's history of W codes for the latent discriminator (models/latent_codes_pool.py), drawing from a generator
    the trainer checkpoints instead of Python's global `random`.

    query() takes one code per sample: a sample with several rows (the active W+ rows) gives one row chosen uniformly.
    While the pool holds fewer than `size` codes it stores the code and returns it; once full, with probability 1/2
    it returns a stored code chosen uniformly and stores the new one in its place, otherwise it returns the new code.
    """

    def __init__(self,
                 size: int,                     # codes kept (0: no pool, query() returns each sample's first row)
                 generator: torch.Generator):   # CPU generator of every draw (shared by the trainer's two pools)
        self.size, self.generator = size, generator
        self.codes: list[torch.Tensor] = []

    def _uniform_int(self, n: int) -> int:
        return int(torch.randint(n, (), generator=self.generator))

    def query(self, ws: torch.Tensor) -> torch.Tensor:
        """ws [N, C] or [N, R, C] -> [N, C]: the codes the discriminator sees this step."""
        assert ws.ndim in (2, 3), f"codes {tuple(ws.shape)}: expected [N, C] or [N, R, C]"
        if self.size == 0:  # e4e without a pool discriminates w0 alone
            return ws if ws.ndim == 2 else ws[:, 0]
        out = []
        for w in ws:
            if w.ndim == 2:
                w = w[self._uniform_int(len(w))]
            if len(self.codes) < self.size:
                self.codes.append(w.clone())  # a copy: a view would keep (and checkpoint) the whole batch
                out.append(w)
            elif float(torch.rand((), generator=self.generator)) > 0.5:
                i = self._uniform_int(self.size)
                out.append(self.codes[i].to(w.device))
                self.codes[i] = w.clone()
            else:
                out.append(w)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"codes": [c.cpu() for c in self.codes]}

    def load_state_dict(self, state: dict) -> None:
        self.codes = list(state["codes"])


def delta_loss(deltas: torch.Tensor, active: int) -> torch.Tensor:
    """e4e's delta regulariser: sum over the active delta rows 1 .. active - 1 of the batch mean of ||w_i - w_0||_2.

    deltas [N, num_ws, C] (zero for inactive rows); active -- rows in use (w0 plus active - 1 deltas).
    The coach at ProgressiveStage s (the encoder then writes s + 1 rows, deltas 1 .. s) sums i in range(1, s + 1): every
    active delta, the newest one included, so this covers the same rows. Like the coach (whose stage stays at 17, not
    Inference, through a resumed run) it stays on once every row is active, which includes our fine-tuning runs.
    """
    assert deltas.ndim == 3 and 1 <= active <= deltas.shape[1], f"deltas {tuple(deltas.shape)}, active {active}"
    if active == 1:
        return deltas.new_zeros([])
    return deltas[:, 1:active].norm(dim=2).mean(dim=0).sum()


class E4ETrainer(StepTrainer):
    def __init__(self, cfg: E4ETrainingConfig, resume: bool = False):
        self.cfg = cfg
        self.run_dir, self.ctx, self.batch_per_rank, pack = open_run(cfg, ("generator",), "e4e training")
        dev = self.ctx.device
        self.G = pack.generator(dev)
        self.losses = LossNetworks.from_pack(pack, dev)
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:  # the encoder as the run built it (from --init or the defaults)
            check_resume(self.run_dir, state["config"], asdict(cfg), _FIXED_ON_RESUME)
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
        self.opt_E = Ranger(self.E.parameters(), lr=cfg.lr)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr)
        self.source = ImageSource(cfg.data, self.G.img_resolution, seed=cfg.seed, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, workers=cfg.workers)
        self.w_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.ctx.rank)  # the latent D's real W
        self.pool_rng = torch.Generator().manual_seed(_stream_seed(cfg.seed, self.ctx.rank, 0))  # both pools' draws
        self.real_pool = LatentCodesPool(cfg.pool_size, self.pool_rng)
        self.fake_pool = LatentCodesPool(cfg.pool_size, self.pool_rng)
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.pack_name = pack.name
        # A fine-tuned encoder already has every delta row; only training from scratch follows the curriculum.
        self.fine_tuning = (state["config"] if state is not None else asdict(cfg)).get("init") is not None
        if state is not None:
            if "pool_rng" not in state:
                raise ValueError(f"{self.run_dir}: written by an earlier e4e trainer (a fake-only pool, Ranger "
                                 f"without gradient centralisation), which cannot be resumed exactly; continue its "
                                 f"encoder in a new run with --init {self.run_dir}")
            self.E.load_state_dict(state["E"])
            self.D.load_state_dict(state["D"])
            self.opt_E.load_state_dict(state["opt_E"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            self.real_pool.load_state_dict(state["real_pool"])
            self.fake_pool.load_state_dict(state["fake_pool"])
            self.source.position = state["source_position"]  # every rank has drawn the same count: exact for all
            torch.set_rng_state(state["torch_rng"])
            if self.ctx.world_size == 1:
                self.w_rng.set_state(state["w_rng"])
                self.pool_rng.set_state(state["pool_rng"])
            else:  # the checkpoint holds rank 0's streams: every rank continues on its own
                self.w_rng.manual_seed(cfg.seed * 1000 + self.ctx.rank + 7919 * self.step)
                self.pool_rng.manual_seed(_stream_seed(cfg.seed, self.ctx.rank, self.step))
        broadcast_module(self.E, self.ctx)
        broadcast_module(self.D, self.ctx)

    def save(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir, {
            "E": self.E.state_dict(), "D": self.D.state_dict(), "opt_E": self.opt_E.state_dict(),
            "opt_D": self.opt_D.state_dict(), "step": self.step, "elapsed": self.elapsed,
            "real_pool": self.real_pool.state_dict(), "fake_pool": self.fake_pool.state_dict(),
            "torch_rng": torch.get_rng_state(), "source_position": self.source.position,
            "w_rng": self.w_rng.get_state(), "pool_rng": self.pool_rng.get_state(),
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
        active = self.E.progressive_stage = self.active_rows()
        n = self.batch_per_rank
        x = self.source.batch(n).to(dev)
        x_in = x if x.shape[-1] == self.E.cfg.input_size else F.interpolate(x, size=self.E.cfg.input_size, mode="area")
        w0, deltas = self.E.deltas_and_base(x_in)
        w = w0.unsqueeze(1) + deltas + self.E.latent_avg
        assert w.shape == (n, self.G.num_ws, self.G.w_dim)
        # The coach encodes the batch once more without gradients for its discriminator step; these are the same codes.
        loss_d = self.discriminator_step(w[:, :active].detach())

        # Encoder.
        y = self.G.synthesis(w, noise_mode="const")
        loss_l2 = F.mse_loss(y, x)
        loss_p = self.losses.perceptual(y, x).mean()
        loss_id = (1 - self.losses.identity(y, x)).mean()
        loss_delta = delta_loss(deltas, active)
        loss_adv = F.softplus(-self.D(w[:, :active].reshape(-1, w.shape[-1]))).mean()  # mean over the active rows
        loss = (cfg.l2_weight * loss_l2 + cfg.perceptual_weight * loss_p + cfg.id_weight * loss_id
                + cfg.delta_weight * loss_delta + cfg.adv_weight * loss_adv)
        self.opt_E.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.E, self.ctx)
        self.opt_E.step()
        broadcast_module(self.E, self.ctx, buffers_only=True)
        self.step += 1
        stats = {"loss": loss, "l2": loss_l2, "perceptual": loss_p, "id": loss_id, "delta": loss_delta,
                 "adv": loss_adv, "loss_D": loss_d}
        return {**{k: float(all_mean(v.detach(), self.ctx)) for k, v in stats.items()}, "active_rows": active}

    def discriminator_step(self, fake_rows: torch.Tensor) -> torch.Tensor:
        """One step of the latent discriminator (the coach's train_discriminator): W samples of the mapping network
        versus the encoder's codes, each through its pool; then, every d_reg_interval steps, a separate R1 step on the
        pooled real codes. Returns the logistic loss.

        fake_rows -- [n, active, C], the active rows of this batch's codes (the fake pool takes one row of each)."""
        cfg, dev = self.cfg, fake_rows.device
        assert fake_rows.ndim == 3 and fake_rows.shape[-1] == self.G.w_dim
        with torch.no_grad():
            real = self.G.mapping(torch.randn(fake_rows.shape[0], self.G.z_dim, generator=self.w_rng).to(dev))[:, 0]
            real = self.real_pool.query(real)
            fake = self.fake_pool.query(fake_rows)  # one active row per sample
        self.D.requires_grad_(True)
        loss = F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake)).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.D, self.ctx)
        self.opt_D.step()
        if self.step % cfg.d_reg_interval == 0:
            real_r1 = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(real_r1).sum(), real_r1, create_graph=True)
            r1 = grad.square().sum(1).mean() * (cfg.r1_gamma / 2) * cfg.d_reg_interval
            self.opt_D.zero_grad(set_to_none=True)
            r1.backward()
            average_gradients(self.D, self.ctx)
            self.opt_D.step()
        self.D.requires_grad_(False)  # the encoder's adversarial term reaches the encoder only
        return loss.detach()


# Settings a resumed run must share with the run it continues (the others, e.g. --steps, may change).
_FIXED_ON_RESUME = ("model", "data", "batch", "lr", "seed", "encoder")  # --init is the checkpoint's on resume


def _stream_seed(seed: int, rank: int, step: int) -> int:
    """A 64-bit seed for one rank's pool draws, distinct from every other stream of the run."""
    return int(np.random.SeedSequence([seed, rank, step, 0x9001]).generate_state(1, np.uint64)[0])


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
