"""Edit directions in W+: fitted, PCA, or imported; stored in a pack as directions.safetensors.

Every direction is a [num_ws, w_dim] tensor added `strength` times to a code. Fitted directions are scaled so that
strength 1 moves a code by one standard deviation of the W distribution along the direction, which makes
strengths comparable across attributes and packs.

- fit (InterFaceGAN): sample W, generate, label with the pack's attribute predictor, then a linear model y ~ n.w in W:
  ridge regression for continuous attributes, logistic regression for binary ones. The edit direction is not the
  normal n itself but cov(W) n. W is far from isotropic, and the normal points mostly into directions of little
  variance that the synthesis network barely reacts to (on synthface-64 a smile normal moved predicted smile 0.08 std
  at strength 2, cov(W) n 0.72). cov(W) n is the step that changes the modelled attribute most per unit of
  Mahalanobis distance, i.e. per unit of "how unusual the code becomes". Conditional editing (InterFaceGAN's
  conditional manipulation) removes, in the same metric, what would change other attributes: their normals are
  refitted on the same samples, and the direction is made to change none of them. A linear model in W captures an
  attribute the synthesis network encodes non-linearly only in part (on synthface-64 the beard normal correlates 0.22
  with predicted beard, and a smile edit holding it still grew beards by 0.38 std on generated faces), so the editable
  attributes the predictor names are also held to first order: the mean gradient of each through generator and
  predictor, taken over the rows the edit touches, gets the same zero-change constraint. Optionally restricted to
  layers.
- pca (GANSpace): principal components of W samples; component k becomes a direction of one std along it.
- import: InterFaceGAN boundaries (.npy, (1, w_dim) or (1, num_ws, w_dim); the same tensors saved as .pt, as e4e and
  SFE ship them), GANSpace (.pt dict with mean, comp, std, as e4e's ffhq_pca.pt; GANSpace's own .npz with lat_comp,
  lat_mean, lat_stdev; and named edits (component, rows, value) as e4e's and SFE's editors list them),
  IDInvert boundaries (.npy holding {'boundary': (1, num_ws, w_dim), 'meta_data': {'manipulate_layers': [...]}},
  read without unpickling code).
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .fileio import atomic_path
from .losses import AttributeKind, attribute_kinds
from .packs.pack import MANIFEST, Pack, sha256_of

FILE = "directions.safetensors"


class DirectionError(Exception):
    """A direction is unknown, or a direction file cannot be read."""


@dataclass
class Direction:
    name: str
    vector: torch.Tensor                  # [num_ws, w_dim]
    kind: str                             # interfacegan | ganspace | import
    info: dict = field(default_factory=dict)


# --- storage in a pack ---------------------------------------------------------------------------------------------

def load_directions(pack: Pack) -> dict[str, Direction]:
    """The pack's directions ({} when it has none). The file is checked like every pack file (listed, size, sha256);
    a damaged one is a DirectionError in one line."""
    if not (pack.root / FILE).is_file():
        return {}
    try:
        path = pack.file_path(FILE)
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("directions", "{}"))
            return {name: Direction(name, fh.get_tensor(name), meta.get(name, {}).get("kind", "import"),
                                    meta.get(name, {}).get("info", {})) for name in fh.keys()}
    except Exception as exc:  # PackError, safetensors' errors, bad JSON: the file cannot serve
        reason = " ".join(str(exc).split())
        raise DirectionError(f"pack {pack.name!r}: its {FILE} cannot be read ({reason})") from None


def get_direction(pack: Pack, name: str) -> Direction:
    directions = load_directions(pack)
    if name not in directions:
        known = ", ".join(sorted(directions)) or "none"
        raise DirectionError(f"pack {pack.name!r} has no direction {name!r}; it has: {known}")
    return directions[name]


def save_directions(pack: Pack, new: list[Direction]) -> None:
    """Add or replace directions in the pack (atomic file write, manifest updated with the file's hash)."""
    directions = load_directions(pack)
    for d in new:
        directions[d.name] = d
    tensors = {name: d.vector.detach().float().cpu().contiguous() for name, d in directions.items()}
    meta = {name: {"kind": d.kind, "info": d.info} for name, d in directions.items()}
    with atomic_path(pack.root / FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"directions": json.dumps(meta)})
    manifest = json.loads((pack.root / MANIFEST).read_text())
    manifest.setdefault("files", {})[FILE] = {"sha256": sha256_of(pack.root / FILE), "bytes": (pack.root / FILE).stat().st_size}
    manifest["directions"] = {name: {"kind": d.kind, **{k: v for k, v in d.info.items() if k in ("attribute", "layers")}}
                              for name, d in sorted(directions.items())}
    with atomic_path(pack.root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    pack.manifest = manifest


# --- fitting -------------------------------------------------------------------------------------------------------

def _layer_mask(num_ws: int, layers: tuple[int, int] | None) -> torch.Tensor:
    mask = torch.zeros(num_ws, 1)
    start, end = layers if layers else (0, num_ws)
    if not 0 <= start < end <= num_ws:
        raise DirectionError(f"layers {format_layers((start, end))} are outside the code's rows "
                             f"{format_layers((0, num_ws))}")
    mask[start:end] = 1
    return mask


def restricted(direction: Direction, layers: tuple[int, int]) -> Direction:
    """The direction on W+ rows [start, end) only, named NAME[START-END] (END inclusive, as typed)."""
    start, end = layers
    vector = direction.vector * _layer_mask(len(direction.vector), layers)
    info = {**direction.info, "layers": [start, end]}
    return Direction(f"{direction.name}[{format_layers(layers)}]", vector, direction.kind, info)


@torch.no_grad()
def sample_labelled(G, predictor, count: int, seed: int = 0, batch: int = 100,
                    on_batch: Callable[[int], None] = lambda n: None) -> tuple[torch.Tensor, dict]:
    """W samples [count, w_dim] and the predictor's labels of their images; on_batch(n) after each batch."""
    gen = torch.Generator().manual_seed(seed)
    ws, labels = [], {}
    for start in range(0, count, batch):
        z = torch.randn(min(batch, count - start), G.z_dim, generator=gen)
        w = G.mapping(z)
        images = G.synthesis(w, noise_mode="const")
        ws.append(w[:, 0])
        for name, value in predictor.predict(images).items():
            labels.setdefault(name, []).append(value)
        on_batch(len(z))
    return torch.cat(ws), {k: torch.cat(v) for k, v in labels.items()}


def mean_gradients(G, predictor, attributes: list[str], count: int = 256, seed: int = 1,
                   batch: int = 32) -> dict[str, torch.Tensor]:
    """Mean gradient [num_ws, w_dim] of each predicted attribute with respect to each W+ row, over `count` samples:
    the first-order change of the attribute for a step added to those rows."""
    gen = torch.Generator().manual_seed(seed)
    total = {a: torch.zeros(G.num_ws, G.w_dim) for a in attributes}
    for start in range(0, count, batch):
        with torch.no_grad():
            ws = G.mapping(torch.randn(min(batch, count - start), G.z_dim, generator=gen))
        ws.requires_grad_(True)
        predictions = predictor.predict(G.synthesis(ws, noise_mode="const"))
        for i, a in enumerate(attributes):
            grad, = torch.autograd.grad(predictions[a].sum(), ws, retain_graph=i + 1 < len(attributes))
            total[a] += grad.sum(0)
    return {a: g / count for a, g in total.items()}


def fit_normal(w: torch.Tensor, y: torch.Tensor, binary: bool, ridge: float = 1e-2) -> torch.Tensor:
    """Unit normal [w_dim] of a linear model of y on w: ridge regression, or logistic regression when binary."""
    w = w.double()
    mu, sd = w.mean(0), w.std(0) + 1e-8
    x = (w - mu) / sd
    if binary:
        target = (y > 0.5).double()
        beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros([], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([beta, bias], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ beta + bias, target) + ridge * beta.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        beta = beta.detach()
    else:
        yc = (y.double() - y.double().mean())
        beta = torch.linalg.solve(x.t() @ x + ridge * len(x) * torch.eye(x.shape[1], dtype=torch.float64), x.t() @ yc)
    normal = beta / sd  # back to w units
    return (normal / normal.norm()).float()


def _is_binary(y: torch.Tensor, kind: AttributeKind | None) -> bool:
    """Binary as the predictor declares it; labels it does not name (a categorical's columns, labels passed in)
    count as binary when nearly all of them are near 0 or 1."""
    if kind is not None:
        return kind.kind == "binary"
    return bool(((y < 0.05) | (y > 0.95)).float().mean() > 0.9)


def edit_direction(w: torch.Tensor, normal: torch.Tensor, keep: list[torch.Tensor] = ()) -> torch.Tensor:
    """Unit edit direction [w_dim] for a linear attribute model with `normal` on W samples w [N, w_dim].

    cov(W) normal maximises the change of normal.w per unit of Mahalanobis length. Each vector in `keep` is the
    normal of a quantity that must not change (keep.d == 0); the projection is the Mahalanobis-optimal one.
    """
    cov = torch.cov(w.double().t())
    d = cov @ normal.double()
    if len(keep):
        B = torch.stack([k.double() for k in keep], dim=1)            # [w_dim, k]
        cov_b = cov @ B
        # lstsq: normals of parameters that sum to one (a categorical's columns) are linearly dependent.
        d = d - cov_b @ torch.linalg.lstsq(B.t() @ cov_b, B.t() @ d).solution
    return (d / d.norm()).float()


def scalar_labels(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every predicted parameter as a scalar per sample: categorical [N, K] outputs become name[k] columns."""
    result = {}
    for name, value in labels.items():
        if value.ndim == 1:
            result[name] = value
        else:
            result.update({f"{name}[{k}]": value[:, k] for k in range(value.shape[1])})
    return result


def fit_direction(G, predictor, attribute: str, name: str | None = None, count: int = 5000,
                  layers: tuple[int, int] | None = None, condition: list[Direction] = (), hold: bool = True,
                  seed: int = 0, samples: tuple[torch.Tensor, dict] | None = None,
                  gradients: dict[str, torch.Tensor] | None = None) -> Direction:
    """An InterFaceGAN direction for `attribute`. hold: keep every other parameter the predictor labels (identity
    included) unchanged, as in conditional editing; condition: also keep these directions' attributes (or, for
    directions that model none, the directions themselves) unchanged. gradients: `mean_gradients` of attributes;
    those held also get their first-order change, over the edited rows, held at zero."""
    w, labels = samples or sample_labelled(G, predictor, count, seed)
    scalars = scalar_labels(labels)
    if attribute not in labels or labels[attribute].ndim != 1:
        raise DirectionError(f"the predictor gives no scalar attribute {attribute!r}; it gives: "
                             f"{', '.join(k for k, v in labels.items() if v.ndim == 1)}")
    y = scalars[attribute]
    kinds = attribute_kinds(predictor)
    binary = _is_binary(y, kinds.get(attribute))
    held = [a for a in scalars if a != attribute] if hold else []
    unmodelled = []                      # conditions with no labelled attribute: keep the edit orthogonal to them
    for other in condition:
        other_attribute = other.info.get("attribute")
        if other_attribute not in scalars:
            unmodelled.append(other.vector[other.vector.norm(dim=1).argmax()].float())
        elif other_attribute not in held and other_attribute != attribute:
            held.append(other_attribute)
    keep = [fit_normal(w, scalars[a], _is_binary(scalars[a], kinds.get(a))) for a in held] + unmodelled
    rows = _layer_mask(G.num_ws, layers)[:, 0].bool()
    gradient_held = [a for a in held if a in (gradients or {})]
    keep += [F.normalize(gradients[a][rows].sum(0), dim=0) for a in gradient_held]
    n = edit_direction(w, fit_normal(w, y, binary), keep)
    projection = (w - w.mean(0)) @ n
    scale = float(projection.std())
    corr = float(np.corrcoef(projection.numpy(), y.numpy())[0, 1])
    vector = n * scale * _layer_mask(G.num_ws, layers)
    info = {"attribute": attribute, "samples": len(w), "binary": binary, "scale": scale, "correlation": corr,
            "layers": list(layers) if layers else [0, G.num_ws], "condition": [c.name for c in condition], "held": held,
            "gradient_held": gradient_held}
    return Direction(name or attribute, vector, "interfacegan", info)


@torch.no_grad()
def pca_directions(G, count: int = 20000, components: int = 10, seed: int = 0,
                   layers: tuple[int, int] | None = None) -> list[Direction]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.cat([G.mapping(torch.randn(min(1000, count - s), G.z_dim, generator=gen))[:, 0]
                   for s in range(0, count, 1000)]).double()
    centred = w - w.mean(0)
    _, sv, vt = torch.linalg.svd(centred, full_matrices=False)
    std = sv / np.sqrt(len(w) - 1)
    mask = _layer_mask(G.num_ws, layers)
    return [Direction(f"pca{k}", (vt[k] * std[k]).float() * mask, "ganspace",
                      {"component": k, "std": float(std[k]), "layers": list(layers) if layers else [0, G.num_ws]})
            for k in range(components)]


# --- import of official layouts ------------------------------------------------------------------------------------

class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers only (the object part of an IDInvert .npy)."""

    def find_class(self, module, name):
        allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar")}
        if (module, name) in allowed:
            return getattr(__import__(module, fromlist=[name]), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a direction file")


def _read_npy(path: Path):
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if dtype.hasobject:
            return _NumpyUnpickler(io.BytesIO(fh.read())).load()
    return np.load(path, allow_pickle=False)


def _read_torch(path: Path):
    """A .pt of tensors and plain containers (weights_only: nothing in the file runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or a pickle holding more than tensors
        reason = " ".join(str(exc).split()[:12])
        raise DirectionError(f"{path}: not a weights-only torch file ({reason})") from None


def read_ganspace(path: Path, w_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(components [K, w_dim] of unit length, standard deviations [K]) of a GANSpace PCA of W, from either layout:
    GANSpace's own cache `.npz` (lat_comp [K, 1, w_dim], lat_mean, lat_stdev [K]; read without pickles) or the
    `.pt` dict e4e ships as ganspace_pca/ffhq_pca.pt (comp [K, 1, w_dim], mean, std [K])."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if not {"lat_comp", "lat_stdev"} <= set(npz.files):
                    raise DirectionError(f"{path}: expected GANSpace's lat_comp, lat_mean and lat_stdev arrays "
                                         f"(found {', '.join(npz.files) or 'none'})")
                comp, std = torch.from_numpy(npz["lat_comp"].astype(np.float32)), torch.from_numpy(
                    npz["lat_stdev"].astype(np.float32))
        except (ValueError, OSError, EOFError) as exc:  # ValueError: an object array (a pickle) is refused
            raise DirectionError(f"{path}: not a GANSpace .npz ({exc})") from None
    else:
        data = _read_torch(path)
        if not isinstance(data, dict) or not {"comp", "std"} <= set(data):
            raise DirectionError(f"{path}: expected a GANSpace dict with 'mean', 'comp' and 'std'")
        comp, std = data["comp"].float(), data["std"].float()
    std = std.reshape(-1)
    if comp.numel() != len(std) * w_dim:
        raise DirectionError(f"{path}: {tuple(comp.shape)} components with {len(std)} deviations do not fit W of "
                             f"{w_dim} dims")
    return comp.reshape(len(std), w_dim), std


def ganspace_edits(path: Path, num_ws: int, w_dim: int, edits: dict[str, tuple[int, int, int, float]],
                   components: int = 0, prefix: str = "pc") -> list[Direction]:
    """Named GANSpace edits, as e4e's and SFE's editors list them: NAME -> (component, first row, end row, value).

    Their editors *set* the code's coordinate along the component to `value` standard deviations on rows
    [first, end); stylecli's directions are added. Each edit becomes the component times its standard deviation, on
    those rows, pointing the way `value` does: strength 1 moves the code one standard deviation towards the named
    attribute, and strengths near |value| give about the official edit on a typical face (whose coordinate is near 0).
    `components` > 0 also adds the first components on every row as {prefix}0, {prefix}1, ...
    """
    comp, std = read_ganspace(path, w_dim)
    found = []
    for name, (index, start, end, value) in edits.items():
        if not (0 <= index < len(std) and 0 <= start < end <= num_ws):
            raise DirectionError(f"{path}: edit {name!r} needs component {index} on rows {start}-{end - 1}; the file "
                                 f"has {len(std)} components, the pack's W+ {num_ws} rows")
        vector = torch.zeros(num_ws, w_dim)
        vector[start:end] = float(np.sign(value)) * comp[index] * std[index]
        found.append(Direction(name, vector, "ganspace", {"component": index, "layers": [start, end],
                                                          "std": float(std[index]), "official_value": value,
                                                          "source": path.name}))
    for k in range(min(components, len(std))):
        found.append(Direction(f"{prefix}{k}", (comp[k] * std[k]).expand(num_ws, -1).clone(), "ganspace",
                               {"component": k, "std": float(std[k]), "layers": [0, num_ws], "source": path.name}))
    return found


def import_directions(path: Path, num_ws: int, w_dim: int, name: str | None = None) -> list[Direction]:
    """Directions from an official file: InterFaceGAN boundaries (.npy [1, w_dim] or [1, num_ws, w_dim], or the same
    tensors as .pt, the layout e4e and SFE ship as interfacegan_directions/age.pt), GANSpace PCAs (.npz, or .pt
    dicts like e4e's ffhq_pca.pt: every component, named NAME0, NAME1, ...), IDInvert boundaries (.npy dict)."""
    path = Path(path)
    if not path.is_file():
        raise DirectionError(f"{path}: no such file")
    stem = name or path.stem.replace("_boundary", "")
    if path.suffix in (".pt", ".pth", ".npz"):
        data = _read_torch(path) if path.suffix != ".npz" else None
        if isinstance(data, torch.Tensor):  # an InterFaceGAN boundary saved with torch.save
            return [_boundary_direction(path, stem, data.detach().float().numpy(), num_ws, w_dim)]
        comp, std = read_ganspace(path, w_dim)
        return [Direction(f"{stem}{k}", (comp[k] * std[k]).expand(num_ws, -1).clone(), "ganspace",
                          {"component": k, "std": float(std[k]), "source": path.name}) for k in range(len(std))]
    try:
        data = _read_npy(path)
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise DirectionError(f"{path}: {exc}") from None
    return [_boundary_direction(path, stem, data, num_ws, w_dim)]


def _boundary_direction(path: Path, stem: str, data, num_ws: int, w_dim: int) -> Direction:
    """An InterFaceGAN / IDInvert boundary as a direction on W+ ([1, w_dim] is broadcast to every row)."""
    layers = None
    if isinstance(data, np.ndarray) and data.dtype == object:
        data = data.item()
    if isinstance(data, dict):  # IDInvert
        layers = list(data.get("meta_data", {}).get("manipulate_layers", []))
        data = data["boundary"]
    vector = torch.from_numpy(np.asarray(data, dtype=np.float32))
    if vector.shape[-1] != w_dim:
        raise DirectionError(f"{path}: a {tuple(vector.shape)} boundary does not fit W of {w_dim} dims")
    vector = vector.reshape(-1, w_dim)
    if vector.shape[0] == 1:
        vector = vector.expand(num_ws, -1).clone()
    elif vector.shape[0] != num_ws:
        raise DirectionError(f"{path}: {vector.shape[0]} rows, the pack's W+ has {num_ws}")
    if layers:
        mask = torch.zeros(num_ws, 1)
        mask[layers] = 1
        vector = vector * mask
    # IDInvert names any set of rows; "layers" is the half-open range every other direction records.
    info = {"source": path.name, **({"rows": layers} if layers else {"layers": [0, num_ws]})}
    return Direction(stem, vector, "import", info)


def parse_layers(text: str | None) -> tuple[int, int] | None:
    """'3-6' -> rows 3..6 inclusive, as the half-open (3, 7)."""
    if not text:
        return None
    try:
        a, b = (int(v) for v in text.split("-"))
    except ValueError:
        raise DirectionError(f"bad layer range {text!r}: use START-END, e.g. 0-5") from None
    return a, b + 1


def format_layers(layers: tuple[int, int] | list[int]) -> str:
    """The half-open (3, 7) -> '3-6', as parse_layers reads it."""
    start, end = layers
    return f"{start}-{end - 1}"
