"""Training and evaluation of the domain network (`stylecli train domainnet`).

Each step renders B people twice: once as drawn, once with new editable attributes, background and light
(`resample_appearance`). Losses: regression of every continuous parameter (scaled to unit range), binary
cross-entropy for glasses, cross-entropy for hair style, and an InfoNCE loss that pulls the two views of a person
together in the identity embedding and pushes other people away. Mild blur and noise make it robust to the slight
softness of generated images. Every random draw comes from the trainer's two generators (faces: numpy; network
initialisation and augmentation: torch), both checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.domainnet import CONTINUOUS, DomainNet
from ..data.render import ATTRIBUTES, HAIR_STYLES, FaceParams, render, resample_appearance, sample_params
from ..data.sets import TRAIN_SEED_LIMIT, make_sample
from ..imageio import image_to_tensor
from .checkpoint import MetricsLog, StepTrainer, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .configs import DomainNetTrainingConfig

# Scale of each continuous target, so every regression term weighs about the same.
RANGES = {name: ATTRIBUTES.get(name, (0.0, 1.0)) for name in CONTINUOUS}
RANGES["face_width"] = (0.86, 1.1)


_WEIGHTS = torch.tensor([3.0 if n in ATTRIBUTES else 1.0 for n in CONTINUOUS])


def targets_from_params(params: list) -> dict[str, torch.Tensor]:
    cont = torch.tensor([[getattr(p, n) for n in CONTINUOUS] for p in params], dtype=torch.float32)
    return {"continuous": cont,
            "glasses": torch.tensor([p.glasses for p in params], dtype=torch.float32),
            "hair_style": torch.tensor([HAIR_STYLES.index(p.hair_style) for p in params])}


def _scale(x: torch.Tensor) -> torch.Tensor:
    lo = torch.tensor([RANGES[n][0] for n in CONTINUOUS])
    hi = torch.tensor([RANGES[n][1] for n in CONTINUOUS])
    return (x - lo) / (hi - lo)


class DomainNetTrainer(StepTrainer):
    def __init__(self, cfg: DomainNetTrainingConfig, resume: bool = False):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        with torch.random.fork_rng(devices=[]):  # initialise from the seed without moving torch's global stream
            torch.manual_seed(cfg.seed)
            self.net = DomainNet()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng([cfg.seed, 7])                    # the people and their second renders
        self.aug_rng = torch.Generator().manual_seed(cfg.seed * 1000 + 7)  # blur and noise
        self.step, self.elapsed = 0, 0.0
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        if resume and (state := load_checkpoint(self.run_dir)) is not None:
            self.net.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.elapsed = state["step"], state["elapsed"]
            set_rng_state(self.rng, state["rng"])
            if "aug_rng" in state:  # runs from before it continue on a fresh augmentation stream
                self.aug_rng.set_state(state["aug_rng"])

    def save(self):
        save_checkpoint(self.run_dir, {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                                       "elapsed": self.elapsed, "rng": rng_state(self.rng),
                                       "aug_rng": self.aug_rng.get_state(), "config": asdict(self.cfg),
                                       "target": "domainnet"})

    def _batch(self):
        a, b = [], []
        for _ in range(self.cfg.identities):
            p = sample_params(np.random.default_rng(int(self.rng.integers(TRAIN_SEED_LIMIT))))
            a.append(p)
            b.append(resample_appearance(p, self.rng))
        params = a + b
        x = torch.cat([image_to_tensor(render(p, self.cfg.resolution)) for p in params])
        return _augment(x, self.aug_rng), targets_from_params(params)

    def _lr(self):
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(self.step / max(self.cfg.steps, 1), 1.0)))

    def train_step(self) -> dict:
        self.net.train()
        x, t = self._batch()
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        out = self.net(x)
        # Editable attributes weigh 3x: they label samples for directions and score every edit.
        loss_reg = ((_scale(out["continuous"]) - _scale(t["continuous"])).square() * _WEIGHTS).mean()
        loss_glasses = F.binary_cross_entropy_with_logits(out["glasses_logit"], t["glasses"])
        loss_hair = F.cross_entropy(out["hair_style_logits"], t["hair_style"])
        e = out["embedding"]
        n = self.cfg.identities
        sim = e @ e.t() / self.cfg.temperature
        sim.fill_diagonal_(-1e4)
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        loss_id = F.cross_entropy(sim, positives)
        loss = 10 * loss_reg + loss_glasses + loss_hair + loss_id
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"loss": loss.item(), "regression": loss_reg.item(), "glasses": loss_glasses.item(),
                "hair_style": loss_hair.item(), "identity": loss_id.item()}

    def log_extras(self) -> dict:
        return {"lr": self._lr()}


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half the images a little and add faint noise: generated images are slightly soft.

    x [N, 3, H, W] (modified in place); generator -- the CPU generator of every draw (checkpointed by the trainer)."""
    assert x.ndim == 4 and x.shape[1] == 3, f"images {tuple(x.shape)}"
    n = x.shape[0]
    blur = torch.rand(n, generator=generator) < 0.5
    if blur.any():
        sigma = 0.3 + 0.7 * float(torch.rand((), generator=generator))  # one sigma in [0.3, 1) for the batch
        k = torch.arange(-2, 3, dtype=torch.float32)
        k = torch.exp(-k ** 2 / (2 * sigma ** 2))
        k = (k / k.sum())
        kernel = (k[:, None] * k[None, :])[None, None].repeat(3, 1, 1, 1)
        x[blur] = F.conv2d(F.pad(x[blur], [2, 2, 2, 2], mode="replicate"), kernel, groups=3)
    return x + torch.randn(x.shape, generator=generator) * 0.01


@torch.no_grad()
def evaluate_domainnet(net: DomainNet,
                       count: int = 500,       # held-out `indomain` images scored per parameter
                       resolution: int = 64,   # render size (the network's training resolution)
                       batch: int = 100,       # images per forward pass
                       pairs: int = 200) -> dict:  # people for identity verification (each rendered twice)
    """Accuracy per parameter on the held-out `indomain` set (R2, MAE, and the parameter's std), glasses and hair-style
    accuracy, and identity verification on pairs (the same person with new attributes and scene vs another person).
    Deterministic: every image comes from a fixed seed outside the training range."""
    net.eval()
    preds, params = {}, []
    for start in range(0, count, batch):
        samples = [make_sample("indomain", i, resolution) for i in range(start, min(start + batch, count))]
        params += [FaceParams(**{k: v for k, v in s.label.items() if k in FaceParams.__dataclass_fields__})
                   for s in samples]
        out = net.predict(torch.cat([image_to_tensor(s.image) for s in samples]))
        for k, v in out.items():
            preds.setdefault(k, []).append(v)
    preds = {k: torch.cat(v) for k, v in preds.items()}
    t = targets_from_params(params)
    report = {}
    for i, name in enumerate(CONTINUOUS):
        y, p = t["continuous"][:, i], preds[name]
        report[name] = {"mae": float((y - p).abs().mean()), "r2": float(1 - (y - p).var() / y.var()),
                        "std": float(y.std())}
    report["glasses"] = {"accuracy": float(((preds["glasses"] > 0.5).float() == t["glasses"]).float().mean())}
    report["hair_style"] = {"accuracy": float((preds["hair_style"].argmax(1) == t["hair_style"]).float().mean())}
    # Identity: the same person with other attributes versus other people.
    rng = np.random.default_rng(99)
    a = [sample_params(np.random.default_rng(2_000_000_000 + i)) for i in range(pairs)]
    b = [resample_appearance(p, rng) for p in a]
    ea = net.embed(torch.cat([image_to_tensor(render(p, resolution)) for p in a]))
    eb = net.embed(torch.cat([image_to_tensor(render(p, resolution)) for p in b]))
    same = (ea * eb).sum(1)
    other = (ea * eb.roll(1, 0)).sum(1)
    threshold = float((same.median() + other.median()) / 2)
    accuracy = float(((same > threshold).float().mean() + (other <= threshold).float().mean()) / 2)
    report["identity"] = {"same_person_cos": float(same.mean()), "other_person_cos": float(other.mean()),
                          "verification_accuracy": accuracy}
    return report
