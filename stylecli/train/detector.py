"""Training and evaluation of the synthetic domain's face detector (`stylecli train detector`).

Each step renders `batch` scenes (`stylecli.data.scenes.render_scene`, faces supersampled 2x for speed) and trains
both parts of `FaceDetectorNet` on them:
1. the detector on the scene resized to `input_size` (longer side; padded square): CenterNet's penalty-reduced focal
   loss on the centre heatmap (a Gaussian per face, its width by the box's size), L1 on the centre offset, the log
   box size and the seven points (offsets from the centre in box sizes) at each face's centre cell;
2. the refiner on canvas crops of each face cut from the full-resolution scene the way inference cuts them
   (`crop_face`), `crops_per_face` per face, the canvas jittered (shift, scale, rotation; the later crops with a
   third or a ninth of the jitter, the regimes of later refinements): L1 on the seven points in the crop's canvas
   units.
Scenes are rendered by `workers` processes beside training; sample j of the stream is a function of (seed, j), and
the count handed out is checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.render import TEMPLATE_POINTS, face_points
from ..data.scenes import aligned_truth, make_scene, render_scene
from ..imageio import image_to_tensor
from .checkpoint import StepTrainer
from .common import RenderedStreamTrainer, warmup_cosine
from .configs import DetectorTrainingConfig

# Std of the refiner's canvas jitter (canvas units, log scale, degrees) for a face's first crop: wide enough to cover
# the detector's own estimate, which the first refinement starts from. Later crops of the face take a third, then a
# ninth of it: the regimes of the second and later refinements.
JITTER = {"shift": 0.06, "scale": 0.08, "angle": 8.0}


def _points_canvas(face: dict) -> np.ndarray:
    """[7, 2] a scene face's seven points in canvas units (five landmarks, two template points)."""
    from ..data.render import FaceParams
    fields = FaceParams.__dataclass_fields__
    p = FaceParams(**{k: v for k, v in face["params"].items() if k in fields})
    return np.concatenate([face_points(p), np.array(TEMPLATE_POINTS)])


def _canvas_alignment(face: dict, crop: int, jitter: np.ndarray):
    """The Alignment of a crop of `crop` pixels over the face's canvas moved by `jitter` (dx, dy in canvas units,
    log scale, angle in degrees, about the canvas centre): crop -> canvas (jitter) -> photo (the scene's placement)."""
    from ..data.scenes import canvas_transform
    from ..faces.align import Alignment

    dx, dy, log_scale, angle = jitter
    a, s = math.radians(angle), math.exp(log_scale)
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    # canvas' = rot (c - 0.5) + 0.5 + d: the jittered canvas in the true canvas' units.
    jit = np.concatenate([rot, (np.array([0.5 + dx, 0.5 + dy]) - rot @ np.array([0.5, 0.5]))[:, None]], axis=1)
    to_photo = canvas_transform(np.array(face["centre"]) + 0.5, face["side"], face["angle"])  # edge coordinates
    crop_to_canvas = np.array([[1.0 / crop, 0, 0], [0, 1.0 / crop, 0]])
    compose = lambda A, B: np.concatenate([A[:, :2] @ B[:, :2], (A[:, :2] @ B[:, 2] + A[:, 2])[:, None]], axis=1)
    return Alignment(compose(to_photo, compose(jit, crop_to_canvas)), crop), jit


class SceneStream(Dataset):
    """Sample j: one rendered scene as the detector's and the refiner's training tensors (see `make_targets`)."""

    def __init__(self, cfg: DetectorTrainingConfig):
        self.cfg = cfg

    def __getitem__(self, j: int) -> dict:
        rng = np.random.default_rng([self.cfg.seed, 20, j])
        scene = render_scene(rng, supersample=self.cfg.supersample)
        return make_targets(scene.image, scene.faces, self.cfg, rng)


def make_targets(photo, faces: list[dict], cfg, rng: np.random.Generator) -> dict:
    """A scene's training tensors:
    x [3, S, S] (S = input_size: the photo resized to S on its longer side, padded with zeros), heat [1, S/4, S/4]
    (Gaussian peaks of 1 at the faces' centre cells), regression [18, S/4, S/4] and its mask [1, S/4, S/4] (1 at the
    centre cells), crops [M, 3, crop, crop] and their points [M, 7, 2] (canvas units of each crop)."""
    from ..faces.align import crop_face
    from ..faces.net import NUM_POINTS, STRIDE

    S, stride = cfg.input_size, STRIDE
    W, H = photo.size
    scale = S / max(W, H)
    w, h = round(W * scale), round(H * scale)
    resized = photo.resize((w, h), Image.BOX)
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)  # exposure and contrast
    x = torch.zeros(3, S, S)
    x[:, :h, :w] = (image_to_tensor(resized)[0] * gain + bias).clamp(-1, 1)
    cells = S // stride
    heat = np.zeros((cells, cells), np.float32)
    regression = np.zeros((4 + 2 * NUM_POINTS, cells, cells), np.float32)
    mask = np.zeros((cells, cells), np.float32)
    yy, xx = np.mgrid[0:cells, 0:cells]
    crops, targets = [], []
    sx, sy = w / W, h / H
    for face in faces:
        box = (np.array(face["box"]) + 0.5) * np.array([sx, sy, sx, sy])  # edge coordinates of the input
        centre = (box[:2] + box[2:]) / 2
        size = np.maximum(box[2:] - box[:2], 1.0)
        cell = np.minimum((centre / stride).astype(int), cells - 1)
        sigma = max(0.8, float(np.sqrt(size[0] * size[1])) / stride / 6)
        heat = np.maximum(heat, np.exp(-((xx - cell[0]) ** 2 + (yy - cell[1]) ** 2) / (2 * sigma ** 2)))
        heat[cell[1], cell[0]] = 1.0
        points = (np.concatenate([face["points"], face["template"]]) + 0.5) * np.array([sx, sy])
        regression[:, cell[1], cell[0]] = np.concatenate([
            centre / stride - cell, np.log(size / stride),
            ((points - centre) / np.sqrt(size[0] * size[1])).reshape(-1)])
        mask[cell[1], cell[0]] = 1.0
        truth = _points_canvas(face)
        for k in range(cfg.crops_per_face):
            amount = 3.0 ** -(k % 3)
            jitter = rng.normal(0, 1, 4) * amount * np.array([JITTER["shift"], JITTER["shift"], JITTER["scale"],
                                                              JITTER["angle"]])
            alignment, jit = _canvas_alignment(face, cfg.crop, jitter)
            crops.append(image_to_tensor(crop_face(photo, alignment)))
            inverse = np.linalg.inv(np.vstack([jit, [0, 0, 1]]))[:2]       # true canvas -> jittered canvas
            targets.append(truth @ inverse[:, :2].T + inverse[:, 2])
    return {"x": x, "heat": torch.from_numpy(heat)[None], "regression": torch.from_numpy(regression),
            "mask": torch.from_numpy(mask)[None],
            "crops": torch.cat(crops) if crops else torch.zeros(0, 3, cfg.crop, cfg.crop),
            "points": torch.tensor(np.array(targets), dtype=torch.float32).reshape(-1, NUM_POINTS, 2)}


def _collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in ("x", "heat", "regression", "mask")}
    out.update({k: torch.cat([s[k] for s in samples]) for k in ("crops", "points")})
    return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the number of peaks.
    logits, target [N, 1, h, w]; target is 1 exactly at the peaks."""
    assert logits.shape == target.shape, f"{tuple(logits.shape)} vs {tuple(target.shape)}"
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -(torch.log(p) * (1 - p) ** 2 * positive).sum()
    neg = -(torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - positive)).sum()
    return (pos + neg) / positive.sum().clamp(min=1)


def _masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the channels of pred/target [N, C, h, w] at the cells where mask [N, 1, h, w] is 1."""
    return ((pred - target).abs() * mask).sum() / (mask.sum().clamp(min=1) * pred.shape[1])


class DetectorTrainer(RenderedStreamTrainer, StepTrainer):
    target = "detector"
    fixed_on_resume = ("seed", "batch", "width", "input_size", "crop", "crops_per_face", "supersample", "lr")
    collate = staticmethod(_collate)

    def __init__(self, cfg: DetectorTrainingConfig, resume: bool = False):
        from ..faces.net import FaceDetectorNet
        self.setup(cfg, lambda: FaceDetectorNet(width=cfg.width, input_size=cfg.input_size, crop=cfg.crop), resume)

    def stream(self) -> Dataset:
        return SceneStream(self.cfg)

    def train_step(self) -> dict:
        self.net.train()
        b = {k: v.to(self.device) for k, v in self.next_batch().items()}
        self.learning_rate()
        heat, regression = self.net(b["x"])
        loss_heat = focal_loss(heat, b["heat"])
        rows = lambda a, b_: _masked_l1(regression[:, a:b_], b["regression"][:, a:b_], b["mask"])
        loss_offset, loss_size, loss_points = rows(0, 2), rows(2, 4), rows(4, None)
        if len(b["crops"]):
            refined = self.net.refine(b["crops"])
            loss_refine = (refined - b["points"]).abs().mean()
        else:
            loss_refine = torch.zeros((), device=self.device)
        loss = loss_heat + loss_offset + loss_size + 5 * loss_points + 50 * loss_refine
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return {"loss": loss.item(), "heat": loss_heat.item(), "offset": loss_offset.item(), "size": loss_size.item(),
                "points": loss_points.item(), "refine_canvas_l1": loss_refine.item()}

    def log_extras(self) -> dict:
        return {"lr": warmup_cosine(self.cfg.lr, self.step, self.cfg.steps)}


# --- evaluation --------------------------------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def psnr_on(a, b, mask: np.ndarray) -> float:
    """PSNR of two images where `mask` >= 0.99 (inside the head's silhouette)."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    sel = mask >= 0.99
    return float(10 * np.log10(255 ** 2 / max(d[sel].mean(), 1e-10)))


@torch.no_grad()
def evaluate_detector(detector, count: int = 200, resolution: int = 64, start: int = 0) -> dict:
    """The issue's measures on the first `count` scenes of the `scenes` set: recall at IoU 0.5 and false faces per
    photo; on the faces found, landmark error (mean of the five points' distances over the inter-ocular distance),
    template error (the two template points, same unit) and the PSNR of the aligned crop against the renderer's
    aligned face, on the head's silhouette (faces at least 95 % visible). `detector` is any `Detector`."""
    from ..faces.align import Face, align, crop_face

    found = truths = false = 0
    landmark, template, psnrs = [], [], []
    for i in range(start, start + count):
        scene = make_scene(i)
        faces = detector.detect(scene.image)
        truths += len(scene.faces)
        used = set()
        for face in sorted(faces, key=lambda f: -f.score):
            best, best_iou = None, 0.5
            for k, truth in enumerate(scene.faces):
                iou = _iou(face.box, np.array(truth["box"]) + 0.5)
                if k not in used and iou >= best_iou:
                    best, best_iou = k, iou
            if best is None:
                false += 1
                continue
            used.add(best)
            found += 1
            truth = scene.faces[best]
            points = np.array(truth["points"]) + 0.5
            iod = np.linalg.norm(points[1] - points[0])
            landmark.append(float(np.linalg.norm(face.points - points, axis=1).mean() / iod))
            if face.template is not None:
                template.append(float(np.linalg.norm(face.template - (np.array(truth["template"]) + 0.5),
                                                     axis=1).mean() / iod))
            if truth["visible"] >= 0.95:
                crop = crop_face(scene.image, align(Face(box=face.box, points=face.points, template=face.template),
                                                    resolution, "synthetic"))
                image, mask = aligned_truth(truth, resolution)
                psnrs.append(psnr_on(crop, image, mask))
    mean = lambda v: float(np.mean(v)) if v else float("nan")
    return {"scenes": count, "faces": truths, "recall_iou50": found / max(truths, 1),
            "false_per_photo": false / count, "landmark_error_iod": mean(landmark),
            "landmark_error_iod_p90": float(np.percentile(landmark, 90)) if landmark else float("nan"),
            "template_error_iod": mean(template), "aligned_psnr_db": mean(psnrs),
            "aligned_psnr_db_median": float(np.median(psnrs)) if psnrs else float("nan")}


def detector_from_run(run_dir: Path, eval_count: int = 50) -> tuple[dict, dict]:
    """{"face_detector": net} and its record, with the detector's figures on the first `eval_count` scenes of the
    `scenes` set under "evaluation"."""
    from ..faces.detect import SynthDetector
    from ..faces.net import FaceDetectorNet
    from .export import _rounded, load_run, step_run_record

    state = load_run(Path(run_dir))
    cfg = state["config"]
    net = FaceDetectorNet(width=cfg["width"], input_size=cfg["input_size"], crop=cfg["crop"])
    net.load_state_dict(state["net"])
    net.eval()
    record = step_run_record(Path(run_dir), state, "stylecli train detector")
    record["evaluation"] = _rounded(evaluate_detector(SynthDetector(net), count=eval_count))
    return {"face_detector": net}, record
