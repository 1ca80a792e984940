"""Training SAMM (`stylecli train samm`): only the taps and alignment blocks learn; e4e and G stay frozen.

The objective of the paper and its official E4E_Face.yml: on the blended output x_hat = m x + (1 - m) G(...),
MSE 1, identity 0.1 (1 - cosine), perceptual 1 plus a style term (Gram matrices of the perceptual network's
features) 50; adversarial 0.5 on the generator's aligned output G(...) (non-saturating, against the pack's
discriminator, which trains alongside with Adam 2e-5 on the training images against that output); and the mask loss 5.0 x sum over every active scale and the gathered mask of
binary 0.04 mean(min(m, 1 - m)) + area max(0, mean(m) - cap). Mask resolution grows progressively: the coarsest scale
alone first, one finer scale every `progressive_step` steps from `progressive_start`. Adam with betas (0, 0.99), an EMA
of the trained parts (what the pack ships). The training data never carries the ground-truth masks.

Checkpoints are atomic and resume exactly (networks, EMA, optimisers, torch's random state, the image stream's
position); under torchrun each process takes batch / N images and gradients are averaged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.loader import ImageSource
from ...directions import linear_stack, random_edit_steps
from ...losses import LossNetworks, style_distance
from ...packs import Pack
from ...train.checkpoint import MetricsLog, StepTrainer, check_resume, load_checkpoint, save_checkpoint
from ...train.common import open_run, trainable_discriminator
from ...train.distributed import all_mean, average_gradients, broadcast_module
from ...train.export import load_run, step_run_record
from . import BASE, NETWORK
from .method import encode, samm_pass, scale_features
from .model import SAMM, missed_pixels
from .spec import SAMMTrainingConfig

PAPER_SCALES = (32, 64, 128, 256)   # the official blocks at 1024 px


def default_scales(resolution: int, feature_sizes) -> list[int]:
    """The paper's 32..256 at 1024 px; elsewhere the four finest generator resolutions (8 px or more) at which the
    encoder has a feature (at 64 px: 8, 16, 32, 64, every tapped block; chosen by measurement, TRAINING.md)."""
    if resolution == 1024:
        return list(PAPER_SCALES)
    return sorted(r for r in feature_sizes if 8 <= r <= resolution)[-4:]


def _resolutions(text: str, flag: str, example: str) -> list[int]:
    """Comma-separated resolutions, sorted and without repeats; a one-line ValueError naming `flag` otherwise."""
    try:
        return sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected resolutions like {example}") from None


def parse_scales(text: str, resolution: int, feature_sizes) -> list[int]:
    """--scales: 'auto' or comma-separated resolutions, each a power of two from 8 to the resolution at which the
    encoder has a feature."""
    if text == "auto":
        return default_scales(resolution, feature_sizes)
    scales = _resolutions(text, "--scales", "8,16,32,64 or 'auto'")
    bad = [r for r in scales if r < 8 or r > resolution or r & (r - 1) or r not in feature_sizes]
    if bad or not scales:
        raise ValueError(f"--scales {text!r}: each must be a power of two from 8 to {resolution} at which the encoder "
                         f"has a feature ({', '.join(str(r) for r in sorted(feature_sizes))})")
    return scales


def samm_shapes(G, encoder, scales: list[int]) -> tuple[list[int], list[int]]:
    """(generator channels, encoder channels) at `scales` for this generator and encoder."""
    enc = encoder.feature_channels()
    missing = [r for r in scales if r not in enc]
    if missing:
        raise ValueError(f"scales {missing}: the encoder has features at {sorted(enc)} only")
    return [G.synthesis.feature_shape(f"b{r}.conv0")[0] for r in scales], [enc[r] for r in scales]


def parse_flow_scales(text: str, scales: list[int]) -> list[int]:
    """--flow-scales: 'all' (every one of `scales`) or comma-separated resolutions among them, sorted."""
    if text == "all":
        return sorted(scales)
    flow_scales = _resolutions(text, "--flow-scales", "16,32 or 'all'")
    if not set(flow_scales) <= set(scales):
        raise ValueError(f"--flow-scales {text!r}: each must be one of the scales {scales}")
    return sorted(flow_scales)


def build_samm(G, encoder, scales: list[int], cfg: SAMMTrainingConfig) -> SAMM:
    """A fresh SAMM for this generator and encoder at `scales`."""
    gen, enc = samm_shapes(G, encoder, scales)
    return SAMM(scales, gen, enc, hidden_max=cfg.hidden_max, cycles=cfg.cycles, max_flow=cfg.max_flow,
                blur_padding="replicate", flow_scales=parse_flow_scales(cfg.flow_scales, scales))


def _check_init_scales(cfg: SAMMTrainingConfig, net: SAMM, resolution: int, feature_sizes) -> None:
    """--init loads blocks whose scales and flows are fixed: --scales or --flow-scales that ask for others are an
    error (they would otherwise be ignored without a word)."""
    if cfg.scales != "auto" and parse_scales(cfg.scales, resolution, feature_sizes) != list(net.scales):
        raise ValueError(f"--scales {cfg.scales}: the SAMM of --init {cfg.init} has its blocks at "
                         f"{','.join(map(str, net.scales))} (leave --scales out with --init)")
    if cfg.flow_scales != "all" and parse_flow_scales(cfg.flow_scales, net.scales) != list(net.config["flow_scales"]):
        flows = ",".join(map(str, net.config["flow_scales"])) or "none"
        raise ValueError(f"--flow-scales {cfg.flow_scales}: the SAMM of --init {cfg.init} aligns at {flows} (leave "
                         f"--flow-scales out with --init)")


def edited_count(share: float, batch: int, step: int) -> int:
    """How many images of this process's batch get the edited pass at `step`: share * batch, its fraction carried
    from step to step (a batch of one at share 0.5 is edited every other step, not never), a function of the step
    alone so that a resumed run repeats it."""
    return math.floor(share * batch * (step + 1) + 1e-9) - math.floor(share * batch * step + 1e-9)


def parse_area_caps(text: str) -> tuple[list[float], float]:
    """--area-caps: 'c1,c2,.../final' (the final cap optional, default 0.20) or 'off' (caps of 1: a mean mask never
    exceeds them) -> (per-scale caps, coarse to fine, the gathered mask's cap)."""
    if text == "off":
        return [1.0], 1.0
    per_scale, _, final = text.partition("/")
    try:
        caps, final_cap = [float(v) for v in per_scale.split(",")], float(final) if final else 0.20
    except ValueError:
        raise ValueError(f"--area-caps {text!r}: expected caps like 0.3,0.3,0.2,0.2/0.2 or 'off'") from None
    if not all(0 < c <= 1 for c in caps + [final_cap]):
        raise ValueError(f"--area-caps {text!r}: each cap is a share of the image in (0, 1]")
    return caps, final_cap


def mask_loss(mask: torch.Tensor, cap: float, binary_weight: float) -> torch.Tensor:
    """binary_weight * mean(min(m, 1 - m)) + mean over images of max(0, mean(m) - cap); m [N, 1, H, W]."""
    binary = torch.minimum(mask, 1 - mask).mean()
    area = F.relu(mask.mean(dim=[1, 2, 3]) - cap).mean()
    return binary_weight * binary + area


SCALE_TARGETS = {"area": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}


def target_loss(result, target: torch.Tensor, scale_target: str = "area") -> torch.Tensor:
    """Binary cross-entropy of a pass's gathered mask against the 0/1 target [N, 1, H, W], plus that of each
    scale's alpha against the target pooled to its size: every scale learns the target directly, not only through
    the multiplicative fusion of Algorithm 2. `scale_target` "area": the target's share of each cell (a thin scribble
    is a faint cell at 16 px, and the product over scales keeps it faint); "max": 1 where any pixel of the cell is
    missed, so a coarse alpha covers whatever a finer one may keep, and the finest alpha draws the edge."""
    bce = lambda m, t: F.binary_cross_entropy(m.clamp(1e-4, 1 - 1e-4), t)
    pool = SCALE_TARGETS[scale_target]
    loss = bce(result.mask, target)
    for alpha in result.alphas.values():
        loss = loss + bce(alpha, pool(target, alpha.shape[-2:]))
    return loss


class SAMMTrainer(StepTrainer):
    def __init__(self, cfg: SAMMTrainingConfig, resume: bool = False):
        self.cfg = cfg
        if cfg.perceptual_on not in ("blend", "generated"):
            raise ValueError(f"perceptual_on {cfg.perceptual_on!r}: 'blend' or 'generated'")
        if cfg.ood_share + cfg.geometric_share > 1:
            raise ValueError("--ood-share and --geometric-share add up to more than 1")
        self.area_caps = parse_area_caps(cfg.area_caps)
        if cfg.scale_target not in SCALE_TARGETS:
            raise ValueError(f"--scale-target {cfg.scale_target!r}: choose {' or '.join(SCALE_TARGETS)}")
        if cfg.edit_share > 1:
            raise ValueError("--edit-share is a share of the batch: at most 1")
        if cfg.edit_share > 0 and cfg.target_weight <= 0:
            raise ValueError("--edit-share pulls edited masks towards the mask target: it needs --target-weight > 0")
        self.run_dir, self.ctx, self.batch_per_rank, pack = open_run(cfg, ("generator", BASE, "discriminator"),
                                                                     "SAMM training")
        dev = self.ctx.device
        self.G = pack.generator(dev)
        self.E = pack.load(BASE, dev)
        self.directions = None
        if cfg.edit_share > 0:
            found = linear_stack(pack)
            if found is None:
                raise ValueError(f"pack {pack.name!r} has no edit directions for --edit-share {cfg.edit_share:g}: add "
                                 f"some (`stylecli directions`) or train with --edit-share 0")
            self.directions = found.to(dev)
        self.losses = LossNetworks.from_pack(pack, dev)
        if self.losses.features is None:
            raise ValueError(f"pack {pack.name!r}: its perceptual network exposes no features for the style term")
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:
            check_resume(self.run_dir, state["config"], asdict(cfg), _FIXED_ON_RESUME)
            self.net = SAMM(**state["samm_config"])
        elif cfg.init is not None:
            self.net = _trained_samm(cfg.init)
            if samm_shapes(self.G, self.E, self.net.scales) != (self.net.config["gen_channels"],
                                                                  self.net.config["enc_channels"]):
                raise ValueError(f"--init {cfg.init}: its SAMM was trained for another generator or encoder (scales "
                                 f"{self.net.scales}, channels {self.net.config['gen_channels']})")
            _check_init_scales(cfg, self.net, self.G.img_resolution, self.E.feature_channels())
        else:
            scales = parse_scales(cfg.scales, self.G.img_resolution, self.E.feature_channels())
            self.net = build_samm(self.G, self.E, scales, cfg)
        self.net.to(dev).train().requires_grad_(True)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.D = trainable_discriminator(pack, dev, cfg.batch, self.batch_per_rank)
        # The progressive schedule is fixed when a run starts (a resumed run with other --steps keeps it).
        self.schedule = (state or {}).get("schedule") or ((0, 0) if not cfg.progressive else (
            cfg.progressive_start if cfg.progressive_start is not None else int(cfg.steps * 0.1),
            cfg.progressive_step if cfg.progressive_step is not None else int(cfg.steps * 0.2)))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=tuple(cfg.betas))
        scenes = {"ood": cfg.ood_share, "geometric": cfg.geometric_share} if cfg.data == "synth" else None
        self.source = ImageSource(cfg.data, self.G.img_resolution, seed=cfg.seed, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, workers=cfg.workers, scenes=scenes)
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.pack_name = pack.name
        if state is not None:
            self.net.load_state_dict(state["net"])
            self.ema.load_state_dict(state["ema"])
            self.D.load_state_dict(state["D"])
            self.opt.load_state_dict(state["opt"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            self.source.position = state["source_position"]
            torch.set_rng_state(state["torch_rng"])
        broadcast_module(self.net, self.ctx)
        broadcast_module(self.ema, self.ctx)
        broadcast_module(self.D, self.ctx)

    def save(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir, {
            "net": self.net.state_dict(), "ema": self.ema.state_dict(), "D": self.D.state_dict(),
            "opt": self.opt.state_dict(), "opt_D": self.opt_D.state_dict(), "step": self.step,
            "elapsed": self.elapsed, "torch_rng": torch.get_rng_state(), "source_position": self.source.position,
            "config": asdict(self.cfg), "samm_config": self.net.config, "pack": self.pack_name, "target": "samm",
            "schedule": list(self.schedule), "active_scales": self.active_scales()})

    def log_extras(self) -> dict:
        return {"skipped_images": self.source.skipped}

    def active_scales(self) -> int:
        """How many scales (coarse first) align and mask at this step: the progressive mask resolution."""
        total = len(self.net.scales)
        start, every = self.schedule
        if self.step < start:
            return 1
        if every <= 0:  # --no-progressive
            return total
        return min(total, 2 + (self.step - start) // every)

    def train_step(self) -> dict:
        cfg, dev = self.cfg, self.ctx.device
        active = self.active_scales()
        x = self.source.batch(self.batch_per_rank).to(dev)
        with torch.no_grad():
            codes, features = encode(self.E, x, with_features=True)
        taps = scale_features(self.net, features)
        result = samm_pass(self.G, self.net, x, codes, taps, active=active)
        y = result.image
        # The adversarial term keeps the generator's own (aligned) output realistic, "to make x_in look realistic" as
        # the paper puts it; on the blend it would judge the input's out-of-domain pixels, and a discriminator that
        # has seen only the domain pushes the mask off exactly those (measured: 5x the reconstruction terms' pull).
        loss_d = self.discriminator_step(x, result.generated.detach())

        loss_mse = F.mse_loss(y, x)
        judged = result.generated if cfg.perceptual_on == "generated" else y
        loss_p = self.losses.perceptual(judged, x).mean()
        loss_style = style_distance(self.losses.features(judged), [f.detach() for f in self.losses.features(x)]).mean()
        loss_id = (1 - self.losses.identity(judged, x)).mean()
        loss_adv = F.softplus(-self.D(result.generated)).mean()
        caps, final_cap = self.area_caps
        loss_mask = sum(mask_loss(result.alphas[r], caps[min(i, len(caps) - 1)], cfg.binary_weight)
                        for i, r in enumerate(self.net.scales[:active]))
        loss_mask = loss_mask + mask_loss(result.mask, final_cap, cfg.binary_weight)
        loss_target = loss_edit = torch.zeros((), device=dev)
        if cfg.target_weight > 0:
            target = missed_pixels(x, result.generated.detach(), cfg.target_threshold, cfg.target_cleanup)
            loss_target = target_loss(result, target, cfg.scale_target)
            edited = edited_count(cfg.edit_share, len(x), self.step)
            if edited > 0:
                loss_edit = target_loss(self.edited_pass(x[:edited], codes[:edited], taps, active), target[:edited],
                                        cfg.scale_target)
        loss = (cfg.mse_weight * loss_mse + cfg.perceptual_weight * loss_p + cfg.style_weight * loss_style
                + cfg.id_weight * loss_id + cfg.adv_weight * loss_adv + cfg.mask_weight * loss_mask
                + cfg.target_weight * (loss_target + loss_edit))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.net, self.ctx)
        self.opt.step()
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.net.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_beta)
            for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
                b_ema.copy_(b)
        self.step += 1
        stats = {"loss": loss, "mse": loss_mse, "perceptual": loss_p, "style": loss_style, "id": loss_id,
                 "adv": loss_adv, "mask": loss_mask, "target": loss_target, "edit_target": loss_edit, "loss_D": loss_d,
                 "mask_area": result.mask.mean()}
        return {**{k: float(all_mean(v.detach(), self.ctx)) for k, v in stats.items()}, "active_scales": active}

    def edited_pass(self, x: torch.Tensor, codes: torch.Tensor, taps: list[torch.Tensor], active: int):
        """The SAMM pass of the first len(x) codes moved by a random pack direction at a random strength in
        +-edit_strength (the edit path of the method: the blocks align to the unedited input's features `taps`)."""
        n = len(x)
        step = random_edit_steps(self.directions, n, self.cfg.edit_strength)
        return samm_pass(self.G, self.net, x, codes + step, [f[:n] for f in taps], active=active)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating logistic loss on the training images against this step's generated (aligned) images (R1
        when r1_gamma > 0); D's own Adam. Returns the loss."""
        cfg = self.cfg
        self.D.requires_grad_(True)
        loss = F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake)).mean()
        if cfg.r1_gamma > 0:
            real_r1 = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.D(real_r1).sum(), real_r1, create_graph=True)
            loss = loss + grad.square().sum(dim=[1, 2, 3]).mean() * (cfg.r1_gamma / 2)
        self.opt_D.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.D, self.ctx)
        self.opt_D.step()
        self.D.requires_grad_(False)  # the adversarial term of the blocks reaches the blocks only
        return loss.detach()


# Settings a resumed run must share with the run it continues (the others, e.g. --steps, may change).
_FIXED_ON_RESUME = ("model", "data", "ood_share", "geometric_share", "batch", "scales", "lr", "seed", "progressive",
                    "target_weight", "target_threshold", "target_cleanup", "scale_target", "edit_share", "flow_scales",
                    "perceptual_on", "mse_weight")


def _trained_samm(source: str) -> SAMM:
    """A trainable copy of the SAMM of a run folder (its EMA) or a pack."""
    if (Path(source) / "checkpoint.pt").is_file():
        return samm_from_run(Path(source))[0][NETWORK]
    loaded = Pack.open(source).load(NETWORK)  # frozen and in eval mode, as packs hand out networks
    net = SAMM(**loaded.config)
    net.load_state_dict(loaded.state_dict())
    return net


def samm_from_run(run_dir: Path) -> tuple[dict, dict]:
    """{"samm": the EMA taps and blocks} from a run folder, with the training record."""
    state = load_run(run_dir)
    net = SAMM(**state["samm_config"])
    net.load_state_dict(state["ema"])
    record = step_run_record(run_dir, state, "stylecli train samm")
    record["scales_trained"] = net.scales[:state.get("active_scales", len(net.scales))]  # finer ones untrained
    return {NETWORK: net}, record
