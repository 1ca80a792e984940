"""Training the synthetic domain's face-region network (`stylecli train faceregion`), SFE's `--edit-mask face`.

Each step renders `batch` faces of the train stream (sample j of the stream is a function of (seed, j); the count
handed out is checkpointed, so a resumed run continues exactly), each flipped left-right with probability 1/2, and
fits `FaceRegionNet` to the renderer's own face region (`render_face_region`, soft at the edges) by binary
cross-entropy; Adam with 100 steps of warm-up and a cosine decay. The export scores the network on `indomain` faces:
IoU of mask >= 0.5 against the region >= 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.render import render, render_face_region, sample_params
from ..faces.region import NETWORK, FaceRegionNet
from ..imageio import image_to_tensor
from .checkpoint import StepTrainer
from .common import RenderedStreamTrainer
from .configs import FaceRegionTrainingConfig


class RegionStream(Dataset):
    """Sample j: (image [3, R, R] in [-1, 1], region [1, R, R] in [0, 1]) of one rendered face."""

    def __init__(self, cfg: FaceRegionTrainingConfig):
        self.cfg = cfg

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, 40, j])
        p = sample_params(rng)
        image = image_to_tensor(render(p, self.cfg.input_size))[0]
        region = torch.from_numpy(render_face_region(p, self.cfg.input_size))[None]
        if rng.random() < 0.5:
            image, region = image.flip(-1), region.flip(-1)
        return image, region


def region_iou(logits: torch.Tensor, regions: torch.Tensor) -> float:
    """IoU of the predicted mask (sigmoid >= 0.5) against the regions (>= 0.5), over all pixels of the batch."""
    predicted, truth = logits >= 0, regions >= 0.5
    return float((predicted & truth).sum()) / max(float((predicted | truth).sum()), 1.0)


class FaceRegionTrainer(RenderedStreamTrainer, StepTrainer):
    target = "faceregion"
    fixed_on_resume = ("seed", "batch", "width", "input_size", "lr")

    def __init__(self, cfg: FaceRegionTrainingConfig, resume: bool = False):
        if cfg.input_size % 8:
            raise ValueError(f"--input-size {cfg.input_size}: a multiple of 8 (the network halves it three times)")
        self.setup(cfg, lambda: FaceRegionNet(input_size=cfg.input_size, width=cfg.width), resume)

    def stream(self) -> Dataset:
        return RegionStream(self.cfg)

    def train_step(self) -> dict:
        self.net.train()
        images, regions = (t.to(self.device) for t in self.next_batch())
        self.learning_rate()
        logits = self.net(images)
        loss = F.binary_cross_entropy_with_logits(logits, regions)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"loss": float(loss.detach()), "iou": region_iou(logits.detach(), regions)}


@torch.no_grad()
def evaluate_regions(net: FaceRegionNet, count: int = 200, set_name: str = "indomain") -> dict:
    """IoU of the network's masks against the renderer's face regions on the first `count` faces of a rendered set
    (pooled over all pixels, and the mean and worst per face)."""
    from ..data.render import FaceParams
    from ..data.sets import evaluation_set

    net.eval()
    data = evaluation_set(set_name, count, net.config["input_size"])
    fields = FaceParams.__dataclass_fields__
    images = torch.cat([image_to_tensor(sample.image) for sample in data.samples])
    regions = torch.stack([torch.from_numpy(render_face_region(FaceParams(**{
        k: v for k, v in sample.label.items() if k in fields}), net.config["input_size"]))[None]
        for sample in data.samples])
    logits = torch.cat([net(chunk) for chunk in images.split(50)])
    per_face = [region_iou(logits[i:i + 1], regions[i:i + 1]) for i in range(len(images))]
    return {"set": set_name, "faces": len(images), "iou": round(region_iou(logits, regions), 4),
            "iou_mean": round(float(np.mean(per_face)), 4), "iou_worst": round(float(np.min(per_face)), 4)}


def faceregion_from_run(run_dir: Path, eval_count: int = 200) -> tuple[dict, dict]:
    """{"face_region": net} and its record, with its IoU on the first `eval_count` `indomain` faces."""
    from .export import load_run, step_run_record

    state = load_run(Path(run_dir))
    cfg = state["config"]
    net = FaceRegionNet(input_size=cfg["input_size"], width=cfg["width"])
    net.load_state_dict(state["net"])
    net.eval()
    record = step_run_record(Path(run_dir), state, "stylecli train faceregion")
    record["evaluation"] = evaluate_regions(net, eval_count)
    return {NETWORK: net}, record
