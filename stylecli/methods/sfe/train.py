"""Training SFE (`stylecli train sfe`): phase 1 the inverter, phase 2 the feature editor; the generator stays frozen.

Phase 1 (the paper's section 3.3 and appendix): each image X is inverted to (w, F_k); the loss is taken on both
X_hat = G(F_k, w_{k+1:}) and X_hat_w = G(w): L2 1, perceptual 0.8, identity 0.1, adversarial 0.01 (the pack's
discriminator, fine-tuned from `adv_start` on with Adam 1e-4 and lazy R1 10 every 16 steps), plus the feature
regulariser 0.01 MSE(F_k, F_w). F_k is blended in over the first `blend_steps` steps (t F_k + (1 - t) F_w, t rising
0 -> 1, the official feature_scale). The inverter is optimised with Ranger 2e-4.

Phase 2: the inverter is frozen and only the feature editor H learns. Per image a random direction d of the pack and
a strength s in +-max_strength; w_E = e4e(X); the training pair is X_E = G(w_E), X_E' = G(w_E + s d);
Delta = F(w_E) - F(w_E + s d); (w, F_k) = I(X_E); the edit loss compares G(H(F_k, Delta), (w + s d)_{k+1:}) with X_E'
(L2, perceptual, identity); the inversion loss compares G(H(I(X), 0)) with X (the same terms plus the adversarial one).

Checkpoints are atomic and resume exactly (networks, optimisers with Lookahead state, the discriminator, random
streams, the image stream's position); under torchrun each process takes batch / N images and gradients are averaged.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.loader import ImageSource
from ...directions import linear_stack, random_edit_steps
from ...losses import LossNetworks
from ...packs import Pack
from ...train.checkpoint import MetricsLog, StepTrainer, check_resume, load_checkpoint, save_checkpoint
from ...train.common import image_discriminator_step, open_run, trainable_discriminator
from ...train.distributed import all_mean, average_gradients, broadcast_module
from ...train.export import load_run, step_run_record
from ...train.optim import Ranger
from ..e4e.method import encode
from . import BASE, EDITOR, INVERTER
from .method import (edit_delta, feature_layer, generator_feature, invert_to_features, rows_up_to,
                     synthesize_from_feature)
from .model import FeatureEditor, Inverter, InverterConfig
from .spec import SFETrainingConfig

PHASES = ("inverter", "editor")


DEFAULT_FEATURE_SIZE = 16  # a new inverter's F_k without --feature-size (the 16 px layer of docs/sfe.md)


def inverter_config_for(G, feature_size: int, overrides: dict | None = None) -> dict:
    """An InverterConfig (as a dict) for generator G with F_k at `feature_size`: input at G's resolution (at most
    256), stage strides that keep the third stage at F_k's size, F_k's channels the generator's there."""
    input_size = min(G.img_resolution, 256)
    if feature_size not in G.synthesis.channels or feature_size < 8:
        raise ValueError(f"--feature-size {feature_size}: choose a generator resolution from "
                         f"{', '.join(str(r) for r in G.synthesis.block_resolutions if r >= 8)}")
    ratio = input_size // feature_size
    strides = {1: (1, 1, 1, 2), 2: (2, 1, 1, 2), 4: (2, 2, 1, 2), 8: (2, 2, 2, 2)}.get(ratio)
    if strides is None or input_size % feature_size:
        raise ValueError(f"--feature-size {feature_size}: the inverter reads {input_size} px; F_k must be 1/1 to "
                         f"1/8 of that")
    cfg = asdict(InverterConfig(input_size=input_size, strides=strides, w_dim=G.w_dim, num_ws=G.num_ws,
                                feature_channels=G.synthesis.channels[feature_size]))
    cfg.update(overrides or {})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def parse_widths(text: str) -> dict:
    """--widths: 'auto' (InverterConfig's) or four comma-separated channel counts -> InverterConfig overrides."""
    if text == "auto":
        return {}
    try:
        widths = [int(v) for v in text.split(",")]
    except ValueError:
        widths = []
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"--widths {text!r}: expected four channel counts like 32,48,64,128, or 'auto'")
    return {"widths": widths}


def with_inverter_shape(cfg: SFETrainingConfig, inverter: InverterConfig, source: str) -> SFETrainingConfig:
    """cfg with the feature size and widths of the inverter the run trains or uses, so that its record says what ran.
    A loaded inverter (--init, phase 2, --resume) has its own: --feature-size or --widths that ask for another are an
    error (they would otherwise be ignored without a word)."""
    widths = list(inverter.widths)
    asked = []
    if cfg.feature_size is not None and cfg.feature_size != inverter.feature_size:
        asked.append(f"--feature-size {cfg.feature_size} (it has {inverter.feature_size})")
    if cfg.widths != "auto" and parse_widths(cfg.widths)["widths"] != widths:
        asked.append(f"--widths {cfg.widths} (it has {','.join(map(str, widths))})")
    if asked:
        raise ValueError(f"{source} has its own shape: {'; '.join(asked)}; leave these options out")
    return replace(cfg, feature_size=inverter.feature_size, widths=",".join(map(str, widths)))


def image_losses(losses: LossNetworks, y: torch.Tensor, x: torch.Tensor, cfg: SFETrainingConfig) -> dict:
    """L2, perceptual and identity (1 - cosine) between y and x, each a scalar."""
    return {"l2": F.mse_loss(y, x), "perceptual": losses.perceptual(y, x).mean(),
            "id": (1 - losses.identity(y, x)).mean()}


def weighted(terms: dict, cfg: SFETrainingConfig) -> torch.Tensor:
    return cfg.l2_weight * terms["l2"] + cfg.perceptual_weight * terms["perceptual"] + cfg.id_weight * terms["id"]


class SFETrainer(StepTrainer):
    def __init__(self, cfg: SFETrainingConfig, resume: bool = False):
        if cfg.phase not in PHASES:
            raise ValueError(f"--phase {cfg.phase!r}: choose inverter or editor")
        if cfg.phase == "editor" and (cfg.e4e_early_rows or cfg.detail_shortcut):
            raise ValueError("--e4e-early-rows and --detail-shortcut shape the inverter of phase 1; phase 2 keeps "
                             "the inverter it is given")
        self.cfg = cfg
        self.run_dir, self.ctx, self.batch_per_rank, pack = open_run(
            cfg, ("generator", "discriminator", BASE), f"SFE's {cfg.phase} phase")
        dev = self.ctx.device
        self.G = pack.generator(dev)
        self.losses = LossNetworks.from_pack(pack, dev)
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:
            check_resume(self.run_dir, state["config"], asdict(cfg), _FIXED_ON_RESUME)
            self.inverter, source = Inverter(**state["inverter_config"]), f"the run {self.run_dir}'s inverter"
        elif cfg.phase == "editor":
            self.inverter = _trained(cfg.inverter or cfg.model, INVERTER)
            source = f"--inverter {cfg.inverter}" if cfg.inverter else f"the inverter of --model {cfg.model}"
        elif cfg.init is not None:
            self.inverter, source = _trained(cfg.init, INVERTER), f"--init {cfg.init}"
            grow = {"detail_shortcut": True} if cfg.detail_shortcut and not self.inverter.cfg.detail_shortcut else {}
            if cfg.e4e_early_rows:
                grow["e4e_rows"] = max(self.inverter.cfg.e4e_rows, rows_up_to(self.G, feature_layer(self.inverter)))
            if grow:
                self.inverter = self.inverter.reconfigured(**grow)
        else:
            size = cfg.feature_size or DEFAULT_FEATURE_SIZE
            rows = rows_up_to(self.G, f"b{size}.conv1") if cfg.e4e_early_rows else 0
            self.inverter, source = Inverter(**inverter_config_for(self.G, size, {
                "on_e4e": True, "detail_shortcut": cfg.detail_shortcut, "e4e_rows": rows, **parse_widths(cfg.widths),
                **cfg.inverter_config})), "the new inverter"
            self.inverter.fuser.start_as(0.0, 1.0)  # F_k = F_w at the start
            with torch.no_grad():
                self.inverter.latent_avg.copy_(self.G.w_avg.expand(self.G.num_ws, -1))
        self.cfg = cfg = with_inverter_shape(cfg, self.inverter.cfg, source)
        self.layer = feature_layer(self.inverter)
        icfg = self.inverter.cfg
        if (icfg.num_ws, icfg.w_dim) != (self.G.num_ws, self.G.w_dim) or self.G.synthesis.feature_shape(
                self.layer) != (icfg.feature_channels, icfg.feature_size, icfg.feature_size):
            raise ValueError(f"the inverter (F_k {icfg.feature_channels} x {icfg.feature_size}^2, {icfg.num_ws} x "
                             f"{icfg.w_dim} codes) does not fit the generator of {cfg.model}")
        self.inverter.to(dev)
        self.E = pack.load(BASE, dev)
        if cfg.phase == "inverter":
            self.inverter.train().requires_grad_(True)
            self.trained = self.inverter
        else:
            self.inverter.eval().requires_grad_(False)
            # The W+ directions (the editor learns Delta of vectors; a learned edit's Delta comes through the same
            # editor at inference, `SFEMethod.edit_inversion`).
            self.directions = linear_stack(pack)
            if self.directions is None:
                raise ValueError(f"pack {pack.name!r} has no edit directions for the editor phase")
            self.directions = self.directions.to(dev)
            self.editor = FeatureEditor(icfg.feature_channels, cfg.editor_blocks).to(dev).train()
            self.trained = self.editor
        self.D = trainable_discriminator(pack, dev, cfg.batch, self.batch_per_rank)
        self.opt = Ranger(self.trained.parameters(), lr=cfg.lr)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=(0.9, 0.999))
        self.source = ImageSource(cfg.data, self.G.img_resolution, seed=cfg.seed, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, workers=cfg.workers)
        self.edit_rng = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + self.ctx.rank)
        # The schedule (adversarial start, F_k blend) is fixed when a run starts: a resume with other --steps keeps it.
        self.schedule = (state or {}).get("schedule") or (
            cfg.adv_start if cfg.adv_start is not None else int(cfg.steps * 0.37),
            cfg.blend_steps if cfg.blend_steps is not None else 0 if cfg.init is not None else int(cfg.steps * 0.27))
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.pack_name = pack.name
        if state is not None:
            self.trained.load_state_dict(state["trained"])
            if cfg.phase == "editor":
                self.inverter.load_state_dict(state["inverter"])
            self.D.load_state_dict(state["D"])
            self.opt.load_state_dict(state["opt"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            self.source.position = state["source_position"]
            torch.set_rng_state(state["torch_rng"])
            self.edit_rng.set_state(state["edit_rng"])
        broadcast_module(self.trained, self.ctx)
        broadcast_module(self.D, self.ctx)

    # --- schedule ---------------------------------------------------------------------------------------------------

    def adversarial_on(self) -> bool:
        return self.cfg.phase == "editor" or self.step >= self.schedule[0]

    def feature_scale(self) -> float:
        """How much of F_k (vs the generator's F_w) phase 1 synthesises from at this step."""
        if self.cfg.phase == "editor":
            return 1.0
        steps = self.schedule[1]
        return min(1.0, self.step / steps) if steps > 0 else 1.0

    # --- checkpoints ------------------------------------------------------------------------------------------------

    def save(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir, {
            "trained": self.trained.state_dict(), "inverter": self.inverter.state_dict(),
            "inverter_config": self.inverter.config, "editor_config": getattr(self, "editor", None) and
            self.editor.config, "D": self.D.state_dict(), "opt": self.opt.state_dict(),
            "opt_D": self.opt_D.state_dict(), "step": self.step, "elapsed": self.elapsed,
            "torch_rng": torch.get_rng_state(), "edit_rng": self.edit_rng.get_state(),
            "source_position": self.source.position, "config": asdict(self.cfg), "pack": self.pack_name,
            "target": "sfe", "phase": self.cfg.phase, "schedule": list(self.schedule)})

    def log_extras(self) -> dict:
        return {"skipped_images": self.source.skipped}

    # --- steps ------------------------------------------------------------------------------------------------------

    def train_step(self) -> dict:
        x = self.source.batch(self.batch_per_rank).to(self.ctx.device)
        stats = self.inverter_step(x) if self.cfg.phase == "inverter" else self.editor_step(x)
        self.step += 1
        return {k: float(all_mean(v.detach(), self.ctx)) for k, v in stats.items()}

    def e4e_inversion(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e4e's code of x and its reconstruction G(w_E)."""
        with torch.no_grad():
            w_e4e, _ = encode(self.E, x)
            return w_e4e, self.G.synthesis(w_e4e, noise_mode="const")

    def invert(self, x: torch.Tensor, e4e: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverter's (w, F_pred) for x, with e4e's inversion of x when the inverter builds on it (`e4e`: one
        already computed, else computed here)."""
        if not self.inverter.cfg.on_e4e:
            return self.inverter(x)
        return self.inverter(x, *(e4e if e4e is not None else self.e4e_inversion(x)))

    def inverter_step(self, x: torch.Tensor) -> dict:
        cfg = self.cfg
        w, f_pred, f_w, skip, _ = invert_to_features(self.G, self.E, self.inverter, x, self.layer)
        f_k = self.inverter.fuse(f_pred, f_w)
        t = self.feature_scale()
        y = synthesize_from_feature(self.G, w, t * f_k + (1 - t) * f_w if t < 1 else f_k, self.layer, skip)
        y_w = self.G.synthesis(w, noise_mode="const")
        adversarial = self.adversarial_on()
        loss_d = self.discriminator_step(x, y.detach()) if adversarial else torch.zeros([])
        terms_f, terms_w = image_losses(self.losses, y, x, cfg), image_losses(self.losses, y_w, x, cfg)
        loss = weighted(terms_f, cfg) + weighted(terms_w, cfg) + cfg.reg_weight * F.mse_loss(f_k, f_w)
        loss_adv = torch.zeros([])
        if adversarial:
            loss_adv = F.softplus(-self.D(y)).mean() + F.softplus(-self.D(y_w)).mean()
            loss = loss + cfg.adv_weight * loss_adv
        self._optimise(loss)
        return {"loss": loss, "l2": terms_f["l2"], "l2_w": terms_w["l2"], "perceptual": terms_f["perceptual"],
                "id": terms_f["id"], "reg": F.mse_loss(f_k, f_w), "adv": loss_adv, "loss_D": loss_d,
                "feature_scale": torch.tensor(t)}

    def editor_step(self, x: torch.Tensor) -> dict:
        cfg, n = self.cfg, x.shape[0]
        with torch.no_grad():
            # The training pair from e4e: its reconstruction and its edit by a random (direction, strength).
            step = random_edit_steps(self.directions, n, cfg.max_strength, self.edit_rng)
            w_e4e, x_e = self.e4e_inversion(x)
            x_e_edit = self.G.synthesis(w_e4e + step, noise_mode="const")
            delta, _ = edit_delta(self.G, w_e4e, step, self.layer)
            # The frozen inverter on the e4e reconstruction and on the real image (whose e4e inversion is at hand).
            both = torch.cat([x_e, x])
            e4e = None
            if self.inverter.cfg.on_e4e:
                w_of_x_e, y_of_x_e = self.e4e_inversion(x_e)
                e4e = (torch.cat([w_of_x_e, w_e4e]), torch.cat([y_of_x_e, x_e]))
            w_all, f_pred = self.invert(both, e4e)
            f_w, _ = generator_feature(self.G, w_all, self.layer)
            f_k_all = self.inverter.fuse(f_pred, f_w)
            w_edit = w_all[:n] + step
            codes = torch.cat([w_edit, w_all[n:]])
            _, skips = generator_feature(self.G, codes, self.layer)
        edited = self.editor(f_k_all, torch.cat([delta, torch.zeros_like(delta)]))
        y = synthesize_from_feature(self.G, codes, edited, self.layer, skips)
        y_edit, y_inv = y[:n], y[n:]
        loss_d = self.discriminator_step(x, y_inv.detach())
        terms_edit, terms_inv = image_losses(self.losses, y_edit, x_e_edit, cfg), image_losses(self.losses, y_inv, x, cfg)
        loss_adv = F.softplus(-self.D(y_inv)).mean()
        loss = weighted(terms_edit, cfg) + weighted(terms_inv, cfg) + cfg.adv_weight * loss_adv
        self._optimise(loss)
        return {"loss": loss, "l2_edit": terms_edit["l2"], "l2_inversion": terms_inv["l2"],
                "perceptual_edit": terms_edit["perceptual"], "id_edit": terms_edit["id"], "adv": loss_adv,
                "loss_D": loss_d}

    def _optimise(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.trained, self.ctx)
        self.opt.step()
        broadcast_module(self.trained, self.ctx, buffers_only=True)  # BatchNorm statistics as rank 0 has them

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The pack's discriminator fine-tuned alongside (Adam 1e-4, lazy R1)."""
        cfg = self.cfg
        return image_discriminator_step(self.D, self.opt_D, real, fake, self.ctx, self.step, cfg.r1_gamma,
                                        cfg.d_reg_interval)


# Settings a resumed run must share with the run it continues (the others, e.g. --steps, may change).
# --feature-size and --widths are checked against the run's inverter instead (`with_inverter_shape`).
_FIXED_ON_RESUME = ("phase", "model", "data", "inverter", "init", "batch", "lr", "max_strength", "detail_shortcut",
                    "e4e_early_rows", "inverter_config", "editor_blocks", "seed")


def _trained(source: str, network: str):
    """A trainable copy of `network` from an sfe run folder or a pack."""
    if (Path(source) / "checkpoint.pt").is_file():
        return sfe_from_run(Path(source))[0][network]
    loaded = Pack.open(source).load(network)  # frozen, in eval mode, as packs hand out networks
    fresh = type(loaded)(**loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    return fresh


def sfe_from_run(run_dir: Path) -> tuple[dict, dict]:
    """{"sfe_inverter", "sfe_editor"} from a run folder, with the training record. A phase-1 run gives its inverter
    and the editor's start (F_k - Delta: e4e's feature change carried over to F_k), so its pack inverts and edits
    before phase 2 has run."""
    state = load_run(run_dir)
    inverter = Inverter(**state["inverter_config"])
    record = step_run_record(run_dir, state, "stylecli train sfe")
    if state["phase"] == "inverter":
        inverter.load_state_dict(state["trained"])
        editor = FeatureEditor(inverter.cfg.feature_channels, state["config"]["editor_blocks"])
        record["editor"] = "not trained (a phase-1 run): its start, F_k - Delta, e4e's feature change carried over"
    else:
        inverter.load_state_dict(state["inverter"])
        editor = FeatureEditor(**state["editor_config"])
        editor.load_state_dict(state["trained"])
    return {INVERTER: inverter, EDITOR: editor}, record
