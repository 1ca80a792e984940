"""Training a learned edit of one attribute (`stylecli directions learn NAME --attribute ATTR`).

Against the pack's frozen generator G and domain network D (its attribute heads and identity embedding), on a fixed
pool of training codes (e4e codes of rendered faces, the codes every method starts from, and mapped W samples):

  each step: codes w and strengths s ~ U(-S, S); w' = T(w, s); x' = G(w'); x = G(w) (kept from the start)
  target:    ((a(x') - t) / std)^2, t = the calibrated target of the face (`Calibration`: s std on average); for a
             binary attribute the cross-entropy of its probability against t
  hold:      the sum over the other editable attributes j of ((a_j(x') - a_j(x)) / std_j)^2 (a sum, so that one
             attribute dragged along, a beard edit that moves the smile, weighs as much as it would alone), plus the
             mean of the same over the attributes that describe the person (nose, eyes, skin, ...) and the total
             variation of the categorical ones (hair style): these are small, noisy predictions at 64 px that the
             identity term already holds as a whole (summed, they cost the beard edit half its change)
  identity:  1 - cos(embed(x'), embed(x))
  code:      mean ((w' - w) / std_W)^2 over the rows the edit owns (keep the change small, stay near the domain)
  pixels:    mean |x' - x| (an L1 change concentrates where the attribute lives: edit locality)

Adam on T only. The pool and its calibration are built once per run and kept in the run folder (pool.pt; the base
images and predictions are computed from it at each start), so a resumed run trains on the very same codes and
targets; checkpoints are atomic and hold the network, the optimiser, the step, the elapsed time and the random stream
of codes and strengths (exact resume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..edits import STRENGTH_RANGE, Calibration, LearnedEdit
from ..fileio import atomic_path
from ..losses import attribute_kinds
from ..packs import Pack
from .checkpoint import MetricsLog, StepTrainer, check_resume, load_checkpoint, save_checkpoint

POOL = "pool.pt"
NEEDS_DOMAIN_NET = ("learning an edit needs a domain network (domainnet: attribute heads and identity embedding) "
                    "to move the attribute, hold the others and the identity")


@dataclass
class EditTrainingConfig:
    run_dir: str
    name: str                                 # the direction's name in the pack
    attribute: str                            # what the domain network predicts (smile, glasses, beard, ...)
    model: str = "synthface-64"
    steps: int = 3000
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    layers: list[int] | None = None           # [start, end) rows the edit owns; None: every row
    pool: int = 2048                          # training codes
    sampled_share: float = 0.25               # of them mapped W samples (the rest e4e codes of rendered faces;
                                              # all sampled when the pack has no e4e encoder)
    hidden: int = 256
    max_strength: float = STRENGTH_RANGE
    weights: dict = field(default_factory=lambda: dict(target=2.0, hold=1.0, identity=2.0, code=0.05, pixel=8.0))
    log_every: int = 25
    checkpoint_every: int = 250
    device: str = "cpu"


# Settings a resumed run must share with the run it continues (the others, e.g. --steps, may change).
FIXED_ON_RESUME = ("name", "attribute", "model", "batch", "lr", "seed", "layers", "pool", "sampled_share", "hidden",
                   "max_strength", "weights")


def domain_network(pack: Pack, device="cpu"):
    """The pack's domain network, or a ValueError (one line) saying that learning needs one."""
    if not pack.has("domainnet"):
        raise ValueError(f"pack {pack.name!r} has no domain network: {NEEDS_DOMAIN_NET}")
    return pack.load("domainnet", device)


@torch.no_grad()
def w_statistics(G, samples: int = 10_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [w_dim] of G's W over mapped samples (a private random stream)."""
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed))
    w = G.mapping(z.to(G.w_avg.device))[:, 0]
    return w.mean(dim=0), w.std(dim=0)


@torch.no_grad()
def training_codes(pack: Pack, G, count: int, sampled_share: float, seed: int, batch: int = 64
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The pool [count, num_ws, w_dim]: e4e codes of rendered training faces (seeded stream) and mapped W samples;
    all mapped samples when the pack has no e4e encoder. Also the rendered faces [M, 3, R, R] (None without any)."""
    from ..data.loader import ImageSource
    from ..methods.e4e.method import encode

    dev = G.w_avg.device
    sampled = count if not pack.has("e4e_encoder") else int(round(count * sampled_share))
    z = torch.randn(sampled, G.z_dim, generator=torch.Generator().manual_seed(seed + 1))
    parts = [G.mapping(z.to(dev))] if sampled else []
    renders = None
    if count - sampled:
        E = pack.load("e4e_encoder", dev)
        source = ImageSource("synth", G.img_resolution, seed=seed + 2)
        renders = torch.cat([source.batch(min(batch, count - sampled - k)) for k in range(0, count - sampled, batch)])
        parts += [encode(E, chunk.to(dev))[0] for chunk in renders.split(batch)]
    codes = torch.cat(parts)
    assert codes.shape == (count, G.num_ws, G.w_dim), f"pool {tuple(codes.shape)}"
    return codes, renders


@torch.no_grad()
def base_outputs(G, net, codes: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, dict]:
    """The images [P, 3, R, R] of the codes and the domain network's heads on them."""
    images, heads = [], {}
    for chunk in codes.split(batch):
        x = G.synthesis(chunk, noise_mode="const")
        images.append(x)
        for k, v in net(x).items():
            heads.setdefault(k, []).append(v)
    return torch.cat(images), {k: torch.cat(v) for k, v in heads.items()}


def _scalars(net, heads: dict) -> dict[str, torch.Tensor]:
    """The domain network's scalar predictions [N] by name (continuous values, probabilities of binary ones)."""
    kinds = attribute_kinds(net)
    return {k: v for k, v in net.named(heads).items() if kinds[k].scalar}


def _categoricals(net, heads: dict) -> dict[str, torch.Tensor]:
    kinds = attribute_kinds(net)
    return {k: v for k, v in net.named(heads).items() if not kinds[k].scalar}


class EditTrainer(StepTrainer):
    def __init__(self, cfg: EditTrainingConfig, resume: bool = False):
        # 1. The pack's frozen networks; the attribute must be one the domain network predicts as a scalar.
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        dev = torch.device(cfg.device)
        pack = Pack.open(cfg.model)
        self.pack_name = pack.name
        self.net = domain_network(pack, dev)
        kinds = attribute_kinds(self.net)
        if cfg.attribute not in kinds or not kinds[cfg.attribute].scalar:
            scalar = ", ".join(k for k, v in kinds.items() if v.scalar)
            raise ValueError(f"the domain network of {pack.name!r} predicts no scalar attribute {cfg.attribute!r}; "
                             f"it predicts: {scalar}")
        self.binary = kinds[cfg.attribute].kind == "binary"
        self.G = pack.generator(dev)
        start, end = cfg.layers or (0, self.G.num_ws)
        if not 0 <= start < end <= self.G.num_ws:
            raise ValueError(f"layers {start}-{end - 1} are outside the code's rows 0-{self.G.num_ws - 1}")
        state = load_checkpoint(self.run_dir) if resume else None
        if state is not None:
            check_resume(self.run_dir, state["config"], asdict(cfg), FIXED_ON_RESUME)

        # 2. The pool of codes with its calibration: built once, then read back (a resume trains on the same codes).
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = {"pack": pack.name, "attribute": cfg.attribute, "pool": cfg.pool, "seed": cfg.seed,
                    "sampled_share": cfg.sampled_share, "max_strength": cfg.max_strength,
                    "code_shape": [self.G.num_ws, self.G.w_dim]}
        if (self.run_dir / POOL).is_file():  # a resume, or a run stopped before its first checkpoint
            pool = torch.load(self.run_dir / POOL, map_location="cpu", weights_only=True)
            if pool.get("settings") != settings:
                raise ValueError(f"{self.run_dir / POOL} holds the codes of a run with other settings "
                                 f"({pool.get('settings')}): use another --run-dir")
        else:
            codes, renders = training_codes(pack, self.G, cfg.pool, cfg.sampled_share, cfg.seed)
            _, heads = base_outputs(self.G, self.net, codes)
            values = _scalars(self.net, heads)[cfg.attribute].cpu()
            # The unit: the attribute's spread over the domain's own faces (the rendered ones the e4e codes came
            # from), as the domain network sees them. The generator's reconstructions spread less (beard 0.25 against
            # 0.28 on the renders; the renderer's labels 0.30): a unit taken from them would make every strength
            # short of what the domain calls one standard deviation.
            unit = None if renders is None else float(torch.cat([
                _scalars(self.net, self.net(chunk.to(dev)))[cfg.attribute] for chunk in renders.split(64)]).std())
            calibration = Calibration.fit(cfg.attribute, values, self.binary, cfg.max_strength, std=unit)
            mean, std = w_statistics(self.G, seed=cfg.seed)
            pool = {"codes": codes.cpu(), "calibration": calibration.record(), "w_mean": mean.cpu(),
                    "w_std": std.cpu(), "settings": settings}
            with atomic_path(self.run_dir / POOL) as tmp:
                torch.save(pool, tmp)
        self.codes = pool["codes"].to(dev)
        self.calibration = Calibration.from_record(pool["calibration"])
        self.base_images, heads = base_outputs(self.G, self.net, self.codes)
        self.base = _scalars(self.net, heads)
        self.base_categorical = _categoricals(self.net, heads)
        self.base_embedding = heads["embedding"]
        # Each attribute's spread over the pool: the unit every held change is measured in.
        self.std = {k: float(v.std()) + 1e-6 for k, v in self.base.items()}
        self.editable = {k for k, v in kinds.items() if v.editable}

        # 3. The edit, its optimiser and its own random stream of codes and strengths.
        torch.manual_seed(cfg.seed)
        self.edit = LearnedEdit(self.G.num_ws, self.G.w_dim, start, end, hidden=cfg.hidden,
                                max_strength=cfg.max_strength)
        self.edit.set_w_statistics(pool["w_mean"], pool["w_std"])
        self.edit.to(dev).train()
        self.opt = torch.optim.Adam(self.edit.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
        self.gen = torch.Generator().manual_seed(cfg.seed + 3)
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")

        # 4. Resume: every piece of state the next step reads.
        if state is not None:
            self.edit.load_state_dict(state["edit"])
            self.opt.load_state_dict(state["opt"])
            self.gen.set_state(state["gen"])
            self.step, self.elapsed = state["step"], state["elapsed"]

    def save(self):
        save_checkpoint(self.run_dir, {
            "edit": self.edit.state_dict(), "edit_config": self.edit.config, "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(), "step": self.step, "elapsed": self.elapsed, "config": asdict(self.cfg),
            "calibration": self.calibration.record(), "binary": self.binary, "pack": self.pack_name,
            "target": "learned-edit"})

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into the pool [n] and strengths [n] ~ U(-S, S), from the run's own stream."""
        index = torch.randint(len(self.codes), (n,), generator=self.gen)
        strength = (torch.rand(n, generator=self.gen) * 2 - 1) * self.cfg.max_strength
        return index.to(self.codes.device), strength.to(self.codes.device)

    def losses(self, index: torch.Tensor, strength: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms (means over the batch) of the edit at pool codes `index` [N] and strengths [N]."""
        a = self.cfg.attribute
        w = self.codes[index]
        moved = self.edit(w, strength)
        x = self.G.synthesis(moved, noise_mode="const")
        heads = self.net(x)
        now, categorical = _scalars(self.net, heads), _categoricals(self.net, heads)
        before = {k: v[index] for k, v in self.base.items()}
        target = self.calibration.targets(before[a], strength)
        if self.binary:
            loss_target = F.binary_cross_entropy(now[a].clamp(1e-6, 1 - 1e-6), target)
        else:
            loss_target = ((now[a] - target) / self.calibration.std).square().mean()
        change = {k: ((now[k] - before[k]) / self.std[k]).square() for k in now if k != a}
        editable = [change[k] for k in change if k in self.editable]
        described = [change[k] for k in change if k not in self.editable]
        described += [(categorical[k] - v[index]).abs().sum(dim=1) / 2 for k, v in self.base_categorical.items()]
        loss_hold = sum(editable) + (torch.stack(described).mean(dim=0) if described else 0)
        loss_hold = loss_hold.mean()
        loss_id = (1 - (heads["embedding"] * self.base_embedding[index]).sum(dim=1)).mean()
        rows = slice(self.edit.start, self.edit.end)
        loss_code = ((moved - w)[:, rows] / self.edit.w_std).square().mean()
        loss_pixel = (x - self.base_images[index]).abs().mean()
        error = ((now[a] - target).abs() / self.calibration.std).mean()
        return {"target": loss_target, "hold": loss_hold, "identity": loss_id, "code": loss_code,
                "pixel": loss_pixel, "target_error_std": error.detach()}

    def train_step(self) -> dict:
        index, strength = self.draw(self.cfg.batch)
        terms = self.losses(index, strength)
        loss = sum(self.cfg.weights[k] * terms[k] for k in self.cfg.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def command_line(cfg: dict) -> str:
    """The `stylecli directions learn` command that trains a run of config `cfg` (as recorded in its checkpoint)."""
    default = EditTrainingConfig(run_dir="", name="", attribute="")
    parts = ["stylecli directions learn", cfg["name"], "--attribute", cfg["attribute"], "--model", cfg["model"],
             "--steps", str(cfg["steps"])]
    for key in ("batch", "pool", "seed"):
        if cfg[key] != getattr(default, key):
            parts += [f"--{key}", str(cfg[key])]
    if cfg.get("layers"):
        parts += ["--layers", f"{cfg['layers'][0]}-{cfg['layers'][1] - 1}"]
    parts += [f"--weight {k}={v:g}" for k, v in cfg["weights"].items() if default.weights.get(k) != v]
    return " ".join(parts)


def edit_from_run(run_dir: Path) -> tuple[LearnedEdit, dict]:
    """The trained edit of a run folder (eval mode) and its record: command, config, steps, wall time, hardware,
    calibration and the last metrics."""
    state = load_checkpoint(Path(run_dir))
    if state is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt")
    edit = LearnedEdit(**state["edit_config"])
    edit.load_state_dict(state["edit"])
    metrics = MetricsLog(Path(run_dir) / "metrics.jsonl").read()
    cfg = state["config"]
    record = {"trained_by": command_line(cfg),
              "config": cfg, "steps": state["step"], "wall_time_h": round(state["elapsed"] / 3600, 3),
              "seconds_per_step": round(state["elapsed"] / max(state["step"], 1), 3),
              "hardware": state.get("hardware", "not recorded"), "binary": state["binary"],
              "calibration": state["calibration"], "last_metrics": metrics[-1] if metrics else None}
    return edit.eval().requires_grad_(False), record


FP16_TOLERANCE = 0.01   # stored in float16 when its steps differ from float32's by less than 1% of their size


@torch.no_grad()
def export_record(edit: LearnedEdit, record: dict, codes: torch.Tensor, check: int = 256) -> dict:
    """The direction's info for the pack: attribute, kind of attribute, rows, calibration, the run's record, and two
    measurements on the first `check` training codes:
    1. the storage dtype: float16 when the steps of the edit with its weights rounded to float16 differ from
       float32's by less than FP16_TOLERANCE of their mean size at strengths +-1 and +-2 (the error is recorded);
    2. the time the edit adds per image at batch 1 on this machine (median of 50 calls)."""
    import copy
    import time

    edit = edit.cpu().eval()
    w = codes[:check].cpu()
    rounded = copy.deepcopy(edit)
    for name, p in rounded.named_parameters():
        p.copy_(p.half().float())
    errors, sizes = [], []
    for s in (-2.0, -1.0, 1.0, 2.0):
        full, half = edit(w, s) - w, rounded(w, s) - w
        errors.append(float((half - full).abs().mean()))
        sizes.append(float(full.abs().mean()))
    error = sum(errors) / max(sum(sizes), 1e-12)
    one = w[:1]
    for _ in range(5):
        edit(one, 2.0)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        edit(one, 2.0)
        times.append(time.perf_counter() - start)
    cfg = record["config"]
    return {"attribute": cfg["attribute"], "binary": record["binary"], "layers": [edit.start, edit.end],
            "calibration": record["calibration"], "dtype": "float16" if error < FP16_TOLERANCE else "float32",
            "fp16_relative_error": round(error, 5),
            "ms_per_image": round(1000 * float(np.median(times)), 3),
            "record": {k: v for k, v in record.items() if k not in ("calibration", "binary")}}
