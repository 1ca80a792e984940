"""The loss slots of a pack: a perceptual distance, an identity similarity and an attribute predictor.

For the synthetic domain all three come from the pack's domain network. For a real-face pack the perceptual slot
is LPIPS(alex) (the `lpips` package, with its AlexNet backbone from the pack's `lpips_alexnet.safetensors`) and the
identity slot ArcFace IR-SE50 (`arcface.safetensors`), both on the generator output pooled to 256 as in e4e; when a
file is missing the error names it. `stylecli weights add-loss-nets` puts them in a pack from the usual downloads
(torchvision's AlexNet weights, pSp/e4e's `model_ir_se50.pth`); nothing is downloaded at run time.

The attribute slot (None when the pack has no predictor) says what it predicts in `attribute_kinds`: the benches take
the attributes they measure from there and `directions fit` which ones are binary, never from names in the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .packs.pack import Pack, PackError

LOSS_NETWORKS = ("lpips_alexnet", "arcface")     # real-face loss slots: pack network names (files NAME.safetensors)
LOSS_RESOLUTION = 256                            # e4e pools generator output to 256 before LPIPS and ArcFace

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KINDS = ("continuous", "binary", "categorical")


@dataclass(frozen=True)
class AttributeKind:
    """One output of an attribute predictor's `predict`."""
    kind: str                       # continuous ([N], its own units), binary ([N] probability), categorical ([N, K])
    editable: bool = False          # an edit is about it (the others describe identity or the scene)
    classes: tuple[str, ...] = ()   # categorical: the names of the K columns

    def __post_init__(self):
        assert self.kind in KINDS, f"attribute kind {self.kind!r} is not one of {KINDS}"

    @property
    def scalar(self) -> bool:
        """One number per image (what a direction can be fitted to and an edit measured on)."""
        return self.kind != "categorical"


def style_distance(fx: list, fy: list) -> torch.Tensor:
    """[N]: mean over feature maps of the L1 distance between Gram matrices (channel correlations, normalised by
    C * H * W), the style term of Gatys et al. that SAMM's perceptual loss carries."""
    total = 0
    for a, b in zip(fx, fy):
        n, c = a.shape[:2]
        a, b = a.reshape(n, c, -1), b.reshape(n, c, -1)
        gram = lambda f: f @ f.transpose(1, 2) / f.shape[1] / f.shape[2]
        total = total + (gram(a) - gram(b)).abs().mean(dim=[1, 2])
    return total / len(fx)


def attribute_kinds(predictor) -> dict[str, AttributeKind]:
    """What an attribute predictor predicts, by name ({} for no predictor); it declares them in `attribute_kinds`."""
    if predictor is None:
        return {}
    kinds = getattr(predictor, "attribute_kinds", None)
    if kinds is None:
        raise TypeError(f"the attribute predictor {type(predictor).__name__} declares no attribute_kinds")
    return dict(kinds)


@dataclass
class LossNetworks:
    perceptual: Distance                 # (x, y) -> [N] distance, images in [-1, 1]
    identity: Distance                   # (x, y) -> [N] cosine similarity
    attributes: torch.nn.Module | None   # .predict(x) -> {name: [N]}, or None
    resolution: int                      # size the networks expect
    features: Callable[[torch.Tensor], list] | None = None  # x -> the perceptual network's feature maps (style terms)
    target_distance: Callable[[torch.Tensor], Callable] | None = None  # y -> (x -> perceptual(x, y)) with y's
                                                                      # features computed once; None: recomputed

    def perceptual_to(self, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """x -> perceptual(x, target) [N] for a fixed target (no gradient to it): what per-image optimisation calls
        every step; the target's features are computed once where the slot allows it."""
        if self.target_distance is not None:
            return self.target_distance(target)
        target = target.detach()
        return lambda x: self.perceptual(x, target)

    @classmethod
    def from_pack(cls, pack: Pack, device: str | torch.device = "cpu") -> "LossNetworks":
        if pack.has("domainnet"):
            from .data.domainnet import id_similarity, perceptual_distance, perceptual_distance_to
            net = pack.load("domainnet", device)
            res = int(pack.manifest.get("resolution", 64))
            resize = lambda x: x if x.shape[-1] == res else F.interpolate(x, size=(res, res), mode="area")

            def to_target(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
                distance = perceptual_distance_to(net, resize(y.detach()))
                return lambda x: distance(resize(x))

            return cls(perceptual=lambda x, y: perceptual_distance(net, resize(x), resize(y)),
                       identity=lambda x, y: id_similarity(net, resize(x), resize(y)), attributes=net, resolution=res,
                       features=lambda x: net.features(resize(x)), target_distance=to_target)
        missing = [f"{name}.safetensors" for name in LOSS_NETWORKS if not pack.has(name)]
        if missing:
            raise PackError(f"pack {pack.name!r} has no domain network and lacks {', '.join(missing)} for its "
                            f"LPIPS/ArcFace loss slots; add them with `stylecli weights add-loss-nets {pack.root}`")
        distance = pack.load("lpips_alexnet", device).lpips().to(device)
        arcface = pack.load("arcface", device)
        pool = lambda x: x if x.shape[-1] <= LOSS_RESOLUTION else F.adaptive_avg_pool2d(x, LOSS_RESOLUTION)
        return cls(perceptual=lambda x, y: distance(pool(x), pool(y)).flatten(),
                   identity=lambda x, y: (arcface.embed_aligned(x) * arcface.embed_aligned(y)).sum(dim=1),
                   attributes=None, resolution=LOSS_RESOLUTION,
                   features=lambda x: list(distance.net(distance.scaling_layer(pool(x)))))


class AlexNetFeatures(nn.Module):
    """The convolutional trunk of torchvision's AlexNet (keys features.0/3/6/8/10), the backbone of LPIPS(alex).

    A pack keeps it as `lpips_alexnet.safetensors`; the distance itself is the `lpips` package's (its scaling and
    calibrated linear layers ship inside the package), built by `lpips()` with these weights.
    """

    # torchvision features index -> lpips backbone slice that holds it
    LPIPS_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}

    def __init__(self):
        super().__init__()
        self.config = {}
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))

    def lpips(self) -> nn.Module:
        """An lpips.LPIPS(net='alex') with this backbone: (x, y) in [-1, 1] -> [N, 1, 1, 1]; frozen, eval mode."""
        import warnings

        import lpips

        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`; pnet_rand: no download
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        target = model.net.state_dict()
        state = {f"slice{self.LPIPS_SLICES[int(key.split('.')[1])]}.{key.split('.', 1)[1]}": value
                 for key, value in self.state_dict().items()}
        assert set(state) == set(target), f"LPIPS backbone keys differ: {sorted(set(state) ^ set(target))}"
        model.net.load_state_dict(state)
        return model.eval().requires_grad_(False)


def loss_network_from_file(name: str, path: Path) -> nn.Module:
    """A real-face loss network from its usual download: `lpips_alexnet` from torchvision's AlexNet weights
    (alexnet-owt-7be5be79.pth; features.* kept, the classifier dropped), `arcface` from an InsightFace IR-SE50 state
    dict (pSp/e4e's model_ir_se50.pth). Read with weights_only=True (no code runs) or from .safetensors; every tensor
    of the network must be filled, with its shape."""
    from safetensors.torch import load_file

    from .irse import ArcFace
    from .packs.convert import ConversionError

    module = {"lpips_alexnet": AlexNetFeatures, "arcface": ArcFace}[name]()
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                      weights_only=True)
    except Exception as exc:  # unreadable, or a pickle holding more than tensors
        raise ConversionError(f"{path}: not a state dict of tensors ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: not a state dict of tensors")
    if name == "lpips_alexnet":
        state = {k: v for k, v in state.items() if k.startswith("features.")}
    target = module.state_dict()
    missing = sorted(set(target) - set(state))
    wrong = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or wrong or set(state) - set(target):
        raise ConversionError(f"{path} does not hold {name} weights: missing {missing[:4]}, wrong shape {wrong[:4]}, "
                              f"unexpected {sorted(set(state) - set(target))[:4]}")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return module.eval()
