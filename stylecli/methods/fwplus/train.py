"""Training F/W+'s base-code encoder against a pack's frozen generator (`stylecli train fwplus`).

As BDInvert: only generator samples, never photos. Each step
  1. draws z, maps it with truncation psi (0.7) to W+ codes w and renders x = G(w);
  2. encodes f = E(x) and renders y from (f, the rows of w after the base layer), the coarse RGB skip dropped;
  3. minimises MSE(y, x) + perceptual_weight * perceptual(y, x) (BDInvert: LPIPS-VGG weighted 10; here the pack's
     perceptual slot) with Adam (lr 1e-3).
The base code is never compared with the generator's own feature: with the skip dropped, that feature does not make
x; the encoder learns the feature that does.

Under torchrun each process takes batch / N samples from its own stream; gradients are averaged and BatchNorm
statistics follow rank 0, so every process takes the same steps and rank 0 writes the run. One process resumes
exactly (the sample stream and torch's generator are checkpointed); N processes resume with fresh per-rank streams.

The export (`encoder_from_run`) also fits the P-space whitening of the pack's mapping network, which the inversion
needs, and ships both networks.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ...losses import LossNetworks
from ...packs import Pack, PackError
from ...train.checkpoint import MetricsLog, StepTrainer, check_resume, load_checkpoint, save_checkpoint
from ...train.common import open_run
from ...train.distributed import all_mean, average_gradients, broadcast_module
from ...train.export import load_run, step_run_record
from . import NETWORK, PSPACE
from .encoder import BaseCodeEncoder, BaseEncoderConfig
from .method import base_layer, synthesize_from_base
from .pspace import PSpaceWhitening
from .spec import FWPlusTrainingConfig

# Settings a resumed run must share with the run it continues (the others, e.g. --steps, may change).
_FIXED_ON_RESUME = ("model", "data", "batch", "lr", "seed", "base_size", "truncation", "encoder")


class FWPlusTrainer(StepTrainer):
    def __init__(self, cfg: FWPlusTrainingConfig, resume: bool = False):
        self.cfg = cfg
        if cfg.data != "generator":
            raise ValueError(f"--data {cfg.data}: F/W+'s encoder trains on generator samples only ('generator'): its "
                             f"loss renders each image's own W+ rows after the base layer")
        self.run_dir, self.ctx, self.batch_per_rank, pack = open_run(cfg, ("generator",), "F/W+ training")
        dev = self.ctx.device
        self.G = pack.generator(dev)
        if base_layer(cfg.base_size) not in self.G.synthesis.layer_names:
            raise ValueError(f"--base-size {cfg.base_size}: the generator of {cfg.model} has no layer "
                             f"{base_layer(cfg.base_size)} (sizes 8 .. {self.G.img_resolution})")
        self.losses = LossNetworks.from_pack(pack, dev)
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:
            check_resume(self.run_dir, state["config"], asdict(cfg), _FIXED_ON_RESUME)
            self.E = BaseCodeEncoder(**state["encoder_config"])
        else:
            self.E = BaseCodeEncoder(**asdict(BaseEncoderConfig.for_generator(self.G, cfg.base_size, **cfg.encoder)))
        self.E.to(dev).train()
        self.opt = torch.optim.Adam(self.E.parameters(), lr=cfg.lr)
        self.z_rng = torch.Generator().manual_seed(cfg.seed * 1000 + self.ctx.rank)
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.pack_name = pack.name
        if state is not None:
            self.E.load_state_dict(state["E"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            torch.set_rng_state(state["torch_rng"])
            if self.ctx.world_size == 1:
                self.z_rng.set_state(state["z_rng"])
            else:  # the checkpoint holds rank 0's stream: every rank continues on its own
                self.z_rng.manual_seed(cfg.seed * 1000 + self.ctx.rank + 7919 * self.step)
        broadcast_module(self.E, self.ctx)

    def save(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir, {
            "E": self.E.state_dict(), "opt": self.opt.state_dict(), "step": self.step, "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(), "z_rng": self.z_rng.get_state(), "config": asdict(self.cfg),
            "encoder_config": self.E.config, "pack": self.pack_name, "target": "fwplus"})

    @torch.no_grad()
    def samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n generator samples: (W+ codes [n, num_ws, w_dim] at the run's truncation, images [n, 3, R, R])."""
        dev = next(self.E.parameters()).device
        z = torch.randn(n, self.G.z_dim, generator=self.z_rng).to(dev)
        w = self.G.mapping(z, truncation_psi=self.cfg.truncation)
        return w, self.G.synthesis(w, noise_mode="const")

    def train_step(self) -> dict:
        cfg, n = self.cfg, self.batch_per_rank
        w, x = self.samples(n)
        f = self.E(x)
        y = synthesize_from_base(self.G, f, w)
        assert y.shape == x.shape
        loss_mse = F.mse_loss(y, x)
        loss_p = self.losses.perceptual(y, x).mean()
        loss = loss_mse + cfg.perceptual_weight * loss_p
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.E, self.ctx)
        self.opt.step()
        broadcast_module(self.E, self.ctx, buffers_only=True)
        self.step += 1
        with torch.no_grad():
            psnr = (10 * torch.log10(4 / (y - x).square().mean(dim=[1, 2, 3]))).mean()
        stats = {"loss": loss, "mse": loss_mse, "perceptual": loss_p, "psnr": psnr}
        return {k: float(all_mean(v.detach(), self.ctx)) for k, v in stats.items()}


def encoder_from_run(run_dir: Path, pspace_samples: int | None = None) -> tuple[dict, dict]:
    """{"fwplus_encoder": E, "fwplus_pspace": P} from a run folder, with its training record: the encoder as trained,
    the whitening fitted on `pspace_samples` (default: the run's setting) codes of the run's pack's mapping network
    (a pack the run no longer finds is a one-line ValueError)."""
    state = load_run(Path(run_dir))
    E = BaseCodeEncoder(**state["encoder_config"])
    E.load_state_dict(state["E"])
    cfg = state["config"]
    samples = pspace_samples or cfg["pspace_samples"]
    try:
        G = Pack.open(cfg["model"]).generator()
    except PackError as exc:
        raise ValueError(f"{run_dir}: cannot fit the P-space whitening on the run's pack: {exc}") from None
    white = PSpaceWhitening.fit(G.mapping, G.z_dim, samples=samples, batch=min(samples, 20_000))
    record = step_run_record(Path(run_dir), state, "stylecli train fwplus")
    record["pspace"] = {"samples": samples, "seed": 0, "fitted_on": cfg["model"]}
    return {NETWORK: E.eval(), PSPACE: white}, record
