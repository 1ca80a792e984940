"""Generator quality measured with the domain network: domain FID, k-NN precision/recall, attribute distributions.

- FID: Frechet distance between Gaussians fitted to the domain network's penultimate features.
- Precision/recall (Kynkaanniemi et al. 2019): a sample is "covered" when it lies inside the k-NN ball (k=3) of some
  sample of the other set; precision = generated samples covered by the real manifold, recall = real samples covered
  by the generated manifold.
- Attributes: the mean predicted value of each editable attribute (as the network declares them) on generated versus
  rendered images, in units of the rendered images' standard deviation.
- Categories (each categorical output, e.g. hair style): the share of each predicted class on both sides and their
  total variation distance, a diagnostic for recall (a style the generator renders badly or rarely leaves real faces
  uncovered).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.networks import Generator
from ..data.domainnet import DomainNet
from ..data.render import render_seed
from ..data.sets import TRAIN_SEED_LIMIT
from ..imageio import image_to_tensor
from ..losses import attribute_kinds


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between feature sets a [N, D] and b [M, D]."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.t()), torch.cov(b.t())
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.t()
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    radii = []
    for chunk in x.split(1024):
        d = torch.cdist(chunk, x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _covered(points: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    out = []
    for chunk in points.split(1024):
        out.append((torch.cdist(chunk, manifold) <= radii[None]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    real, fake = real.float(), fake.float()
    precision = _covered(fake, real, _knn_radii(real, k)).float().mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).float().mean()
    return float(precision), float(recall)


@torch.no_grad()
def domain_outputs(net: DomainNet, images: torch.Tensor, batch: int = 250) -> tuple[torch.Tensor, dict]:
    feats, preds = [], {}
    for chunk in images.split(batch):
        pooled = net.pooled(chunk)
        feats.append(pooled)
        for name, value in net.named(net.heads(pooled)).items():
            preds.setdefault(name, []).append(value)
    return torch.cat(feats), {k: torch.cat(v) for k, v in preds.items()}


@torch.no_grad()
def generated_images(G: Generator, count: int, seed: int = 0, batch: int = 100, truncation_psi: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, count, batch):
        z = torch.randn(min(batch, count - start), G.z_dim, generator=gen)
        chunks.append(G(z, truncation_psi=truncation_psi, noise_mode="const").clamp(-1, 1))
    return torch.cat(chunks)


def rendered_images(count: int, resolution: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.cat([image_to_tensor(render_seed(int(rng.integers(TRAIN_SEED_LIMIT)), resolution)[0])
                      for _ in range(count)])


def generator_quality(G: Generator, net: DomainNet, count: int = 5000, seed: int = 0, floor: bool = False) -> dict:
    """FID, precision, recall and per-attribute mean shift (in renderer std) of G against rendered train images.

    floor: also the same FID/precision/recall between the rendered images and as many other rendered ones, the
    best a generator can score at this count."""
    net.eval()
    fake_feats, fake_pred = domain_outputs(net, generated_images(G, count, seed))
    real_feats, real_pred = domain_outputs(net, rendered_images(count, G.img_resolution, seed))
    precision, recall = precision_recall(real_feats, fake_feats)
    kinds = attribute_kinds(net)
    attributes = {}
    for name in [n for n, k in kinds.items() if k.editable and k.scalar]:
        std = float(real_pred[name].std())
        attributes[name] = {"generated_mean": float(fake_pred[name].mean()), "rendered_mean": float(real_pred[name].mean()),
                            "shift_in_std": abs(float(fake_pred[name].mean() - real_pred[name].mean())) / max(std, 1e-8)}
    categories = {}
    for name, classes in [(n, k.classes) for n, k in kinds.items() if k.kind == "categorical"]:
        shares = [torch.bincount(pred[name].argmax(1), minlength=len(classes)).double() / count
                  for pred in (fake_pred, real_pred)]
        categories[name] = {"generated": dict(zip(classes, shares[0].tolist())),
                            "rendered": dict(zip(classes, shares[1].tolist())),
                            "total_variation": float((shares[0] - shares[1]).abs().sum() / 2)}
    result = {"count": count, "fid": frechet_distance(real_feats, fake_feats), "precision": precision, "recall": recall,
              "attributes": attributes, "categories": categories}
    if floor:
        other_feats, _ = domain_outputs(net, rendered_images(count, G.img_resolution, seed + 1))
        p, r = precision_recall(real_feats, other_feats)
        result["floor"] = {"fid": frechet_distance(real_feats, other_feats), "precision": p, "recall": r}
    return result
