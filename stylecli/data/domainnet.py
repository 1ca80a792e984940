"""The domain network of the synthetic face domain: what LPIPS, ArcFace and an attribute classifier are for real
faces, trained here on rendered images whose every parameter is known.

One small CNN (any input size; 64x64 in the pack) provides
- `features(x)`: the feature map after each stage, for a perceptual distance (`perceptual_distance`);
- `embed(x)`: a unit-norm identity embedding, trained contrastively so that the same person under other attributes,
  pose, background and light stays close (cosine similarity is the ID similarity);
- `predict(x)`: every render parameter (continuous ones in their own units, glasses as a probability, hair style as
  class probabilities), to label generated samples, fit directions and score edits;
- `pooled(x)`: the penultimate features for domain FID and precision/recall;
- `attribute_kinds`: what `predict` returns, by name, and of what kind (read from the heads; the bench and
  `directions fit` ask it instead of naming attributes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import AttributeKind
from .render import ATTRIBUTES, HAIR_STYLES

CONTINUOUS = ("smile", "yaw", "age", "beard", "eyebrows", "hair_hue",
              "skin", "face_width", "jaw", "eye_spacing", "eye_size", "iris", "nose_length", "nose_width")
BINARY = ("glasses",)
CATEGORICAL = {"hair_style": HAIR_STYLES}
IDENTITY = ("skin", "face_width", "jaw", "eye_spacing", "eye_size", "iris", "nose_length", "nose_width", "hair_style")
assert set(ATTRIBUTES) <= set(CONTINUOUS) | set(BINARY)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DomainNet(nn.Module):
    def __init__(self,
                 widths: tuple = (24, 48, 96, 192),   # channels of the four stages (the first keeps full size,
                                                      # so 1-2 px features such as lips and eyebrows survive)
                 embed_dim: int = 128):               # identity embedding size
        super().__init__()
        self.config = dict(widths=list(widths), embed_dim=embed_dim)
        stages, cin = [], 3
        for i, w in enumerate(widths):
            stages.append(_block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.feature_dim = cin
        self.regress = nn.Linear(cin, len(CONTINUOUS))
        self.glasses = nn.Linear(cin, len(BINARY))
        self.hair_style = nn.Linear(cin, len(HAIR_STYLES))
        self.embedding = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Linear(cin, embed_dim))
        # The predictions an edit is about (the rest describe identity): held to first order by `directions fit`.
        self.editable_attributes = tuple(ATTRIBUTES)
        # Input normalisation: images arrive in [-1, 1].
        self.register_buffer("input_scale", torch.tensor(2.0))

    @property
    def attribute_kinds(self) -> dict[str, AttributeKind]:
        """Every output of `predict`: the regression head's columns are continuous, the glasses head a binary
        probability, the hair-style head categorical; `editable_attributes` marks the ones an edit is about."""
        heads = ((self.regress, CONTINUOUS, "continuous"), (self.glasses, BINARY, "binary"))
        kinds = {}
        for head, names, kind in heads:
            assert head.out_features == len(names), f"{kind} head has {head.out_features} outputs for {names}"
            kinds.update({n: AttributeKind(kind, n in self.editable_attributes) for n in names})
        for name, classes in CATEGORICAL.items():
            assert getattr(self, name).out_features == len(classes), f"{name} head does not fit {classes}"
            kinds[name] = AttributeKind("categorical", name in self.editable_attributes, tuple(classes))
        return kinds

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, 3, H, W] in [-1, 1] -> the output of each stage."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(x.shape)}"
        x = x * self.input_scale
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].mean(dim=[2, 3])

    def heads(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"continuous": self.regress(pooled), "glasses_logit": self.glasses(pooled)[:, 0],
                "hair_style_logits": self.hair_style(pooled), "embedding": F.normalize(self.embedding(pooled), dim=1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.pooled(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)["embedding"]

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every render parameter: continuous ones by name, 'glasses' as a probability, 'hair_style' as [N, 5]."""
        return self.named(self.forward(x))

    @staticmethod
    def named(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outputs of `heads` as named predictions (what `predict` returns)."""
        result = {name: heads["continuous"][:, i] for i, name in enumerate(CONTINUOUS)}
        result["glasses"] = torch.sigmoid(heads["glasses_logit"])
        result["hair_style"] = heads["hair_style_logits"].softmax(dim=1)
        return result


def perceptual_distance(net: DomainNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance [N]: per stage, unit-normalise channels, squared difference, spatial and channel mean."""
    return perceptual_distance_to(net, y, fixed=False)(x)


def perceptual_distance_to(net: DomainNet, y: torch.Tensor, fixed: bool = True):
    """x -> perceptual_distance(net, x, y) [N], with y's normalised features computed once (an optimisation compares
    every step's image with one fixed target; `fixed`: they are computed without a graph, as a target is)."""
    unit = lambda f: f / (f.norm(dim=1, keepdim=True) + 1e-10)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not fixed):
        target = [unit(f) for f in net.features(y)]

    def distance(x: torch.Tensor) -> torch.Tensor:
        total = 0
        for fx, fy in zip(net.features(x), target):
            total = total + (unit(fx) - fy).square().sum(dim=1).mean(dim=[1, 2])
        return total / len(net.stages)

    return distance


def id_similarity(net: DomainNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [N] of the identity embeddings."""
    return (net.embed(x) * net.embed(y)).sum(dim=1)
