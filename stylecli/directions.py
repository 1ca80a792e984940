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
- learned (`stylecli.edits.LearnedEdit`, trained by `stylecli directions learn`): a small network per attribute that
  maps a code and a strength to the edited code; its `vector` is that network. Stored in its own file
  learned_NAME.safetensors (listed in the manifest's directions with kind "learned" and its file), refused in one
  line when its shapes do not fit the pack's generator.

Every direction made in a pack carries its measured effect (`measure_effects`: target change, largest drift of
another attribute, identity kept, at strengths +-1 and +-2, on the e4e codes of held-out faces), which `directions
list` shows.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .fileio import atomic_path
from .losses import AttributeKind, attribute_kinds
from .packs.pack import MANIFEST, Pack, sha256_of

if TYPE_CHECKING:
    from .edits import LearnedEdit

FILE = "directions.safetensors"


class DirectionError(Exception):
    """A direction is unknown, or a direction file cannot be read."""


@dataclass
class Direction:
    name: str
    vector: "torch.Tensor | LearnedEdit"  # [num_ws, w_dim] added strength times; for kind "learned" the network
                                          # (`stylecli.edits.LearnedEdit`), which every method's edit takes alike
    kind: str                             # interfacegan | ganspace | import | learned
    info: dict = field(default_factory=dict)

    @property
    def learned(self) -> bool:
        return self.kind == LEARNED


LEARNED = "learned"
LINEAR_SUFFIX = "-linear"   # a linear direction replaced by a learned one of its name is kept as NAME-linear
_LEARNED_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def learned_file(name: str) -> str:
    """The pack file of learned direction `name`."""
    return f"learned_{name}.safetensors"


def unit(direction: Direction) -> str:
    """What strength 1 means for a direction, in words (`directions list`, --help)."""
    if direction.learned:
        attribute = direction.info.get("attribute", direction.name)
        return (f"1 std of {attribute} (+ adds, - removes)" if direction.info.get("binary") else
                f"1 std of {attribute}")
    if direction.kind in ("interfacegan", "ganspace"):
        return "1 std of W along it"
    return "as imported (added to W+)"


# --- storage in a pack ---------------------------------------------------------------------------------------------

def _linear_directions(pack: Pack) -> dict[str, Direction]:
    """The directions of the pack's directions.safetensors ({} when it has none)."""
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


def _learned_entries(pack: Pack) -> dict[str, dict]:
    entries = pack.manifest.get("directions", {})
    return {name: e for name, e in (entries.items() if isinstance(entries, dict) else [])
            if isinstance(e, dict) and e.get("kind") == LEARNED}


_code_shapes: dict[tuple, tuple[int, int]] = {}


def code_shape(pack: Pack) -> tuple[int, int]:
    """(num_ws, w_dim) of the codes the pack's generator takes: the generator built from its manifest entry (class and
    config; no weights read), once per pack folder and generator file."""
    from .packs.pack import PackError, _import_class

    entry = pack.networks.get("generator")
    if not isinstance(entry, dict):
        raise DirectionError(f"pack {pack.name!r} has no generator for its learned directions to edit")
    key = (str(pack.root.resolve()), json.dumps(entry, sort_keys=True))
    if key not in _code_shapes:
        try:
            G = _import_class(entry["class"])(**entry["config"])
        except (PackError, TypeError, ValueError) as exc:
            raise DirectionError(f"pack {pack.name!r}: its generator cannot be built ({exc})") from None
        _code_shapes[key] = (int(G.num_ws), int(G.w_dim))
    return _code_shapes[key]


def _load_learned(pack: Pack, name: str, entry: dict) -> Direction:
    """Learned direction `name` from its file: checked like every pack file, built from its recorded config, refused
    (DirectionError, one line) when its codes are not the generator's or its tensors do not fit its network."""
    from .edits import LearnedEdit

    file = entry.get("file")
    if not isinstance(file, str):
        raise DirectionError(f"pack {pack.name!r}: learned direction {name!r} names no file in the manifest")
    try:
        path = pack.file_path(file)
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("edit", "{}"))
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        config, info = dict(meta["config"]), dict(meta.get("info", {}))
    except Exception as exc:  # PackError, safetensors' errors, bad JSON, no config: the file cannot serve
        reason = " ".join(str(exc).split())
        raise DirectionError(f"pack {pack.name!r}: learned direction {name!r}: {file} cannot be read ({reason})") \
            from None
    num_ws, w_dim = code_shape(pack)
    if (config.get("num_ws"), config.get("w_dim")) != (num_ws, w_dim):
        raise DirectionError(f"pack {pack.name!r}: learned direction {name!r} ({file}) edits "
                             f"{config.get('num_ws')} x {config.get('w_dim')} codes; the generator takes "
                             f"{num_ws} x {w_dim}")
    try:
        edit = LearnedEdit(**config)
    except (TypeError, AssertionError) as exc:
        raise DirectionError(f"pack {pack.name!r}: learned direction {name!r}: bad config in {file} ({exc})") from None
    expected = edit.state_dict()
    wrong = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state
                                                  and tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise DirectionError(f"pack {pack.name!r}: learned direction {name!r}: the tensors of {file} do not fit its "
                             f"network ({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})")
    edit.load_state_dict({k: v.float() for k, v in state.items()})
    return Direction(name, edit.eval().requires_grad_(False), LEARNED, {**info, "file": file})


def load_directions(pack: Pack) -> dict[str, Direction]:
    """The pack's directions ({} when it has none): the linear ones of directions.safetensors and the learned ones
    the manifest lists. Every file is checked like every pack file (listed, size, sha256); a damaged one, or a
    learned direction that does not fit the generator, is a DirectionError in one line."""
    directions = _linear_directions(pack)
    for name, entry in _learned_entries(pack).items():
        directions[name] = _load_learned(pack, name, entry)
    return directions


def linear_stack(pack: Pack) -> torch.Tensor | None:
    """The pack's W+ directions (its learned edits left out) stacked [K, num_ws, w_dim], or None when it has none:
    what trainers draw random edits from (`random_edit_steps`). A linear direction a learned one has replaced is left
    out too. The learned networks are not built: loading them would draw from torch's random stream, so a trainer's
    start would depend on what the process had loaded before."""
    learned = _learned_entries(pack)
    linear = [d.vector for name, d in _linear_directions(pack).items() if name not in learned]
    return torch.stack(linear) if linear else None


def random_edit_steps(directions: torch.Tensor, n: int, max_strength: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """n random edits [n, num_ws, w_dim]: each a direction of `directions` ([K, num_ws, w_dim]) times a strength
    uniform in +-max_strength, drawn from `generator` (torch's global stream when None)."""
    pick = torch.randint(len(directions), (n,), generator=generator)
    strength = (torch.rand(n, generator=generator) * 2 - 1) * max_strength
    return directions[pick.to(directions.device)] * strength.to(directions.device).view(n, 1, 1)


def get_direction(pack: Pack, name: str) -> Direction:
    """Direction `name` of the pack (only its own file is read for a learned one). NAME-linear also finds a linear
    NAME that no learned direction has replaced yet, so commands written for both kinds work before and after."""
    learned = _learned_entries(pack)
    if name in learned:
        return _load_learned(pack, name, learned[name])
    linear = _linear_directions(pack)
    if name not in linear and name.endswith(LINEAR_SUFFIX) and name[:-len(LINEAR_SUFFIX)] in linear:
        name = name[:-len(LINEAR_SUFFIX)]
    if name not in linear:
        known = ", ".join(sorted({*linear, *learned})) or "none"
        raise DirectionError(f"pack {pack.name!r} has no direction {name!r}; it has: {known}")
    return linear[name]


def check_strengths(edits: list[tuple]) -> None:
    """(name, vector, strength or strengths) edits: a DirectionError (one line) for a learned direction asked for a
    strength outside the range it was trained on (linear ones take any strength the commands accept)."""
    for name, vector, strengths in edits:
        limit = getattr(vector, "max_strength", None)
        for s in strengths if isinstance(strengths, (list, tuple)) else [strengths]:
            if limit is not None and abs(s) > limit + 1e-9:
                raise DirectionError(f"direction {name!r} is learned for strengths within ±{limit:g} (std of its "
                                     f"attribute); {s:g} is outside")


def _summary(d: Direction) -> dict:
    """A direction's entry in the manifest: kind, attribute, rows, and for a learned one its file and effect."""
    keys = ("attribute", "layers") + (("file", "binary", "effect") if d.learned else ("effect",))
    return {"kind": d.kind, **{k: v for k, v in d.info.items() if k in keys}}


def save_directions(pack: Pack, new: list[Direction]) -> None:
    """Add or replace directions in the pack: linear ones in directions.safetensors, each learned one in its own
    file (float16 when its info says "dtype": "float16"); files written atomically, then the manifest with their
    hashes. A learned file whose direction is gone (replaced by a linear one of its name) leaves the pack."""
    directions = load_directions(pack)
    for d in new:
        directions[d.name] = d
    linear = {name: d for name, d in directions.items() if not d.learned}
    old_learned = _learned_entries(pack)
    manifest = json.loads((pack.root / MANIFEST).read_text())
    files = manifest.setdefault("files", {})
    if linear or (pack.root / FILE).is_file():
        tensors = {name: d.vector.detach().float().cpu().contiguous() for name, d in linear.items()}
        meta = {name: {"kind": d.kind, "info": d.info} for name, d in linear.items()}
        with atomic_path(pack.root / FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"directions": json.dumps(meta)})
        files[FILE] = {"sha256": sha256_of(pack.root / FILE), "bytes": (pack.root / FILE).stat().st_size}
    for d in new:
        if d.learned:
            if not _LEARNED_NAME.fullmatch(d.name):
                raise DirectionError(f"{d.name!r}: a learned direction's name is letters, digits, _ . - (it names "
                                     f"its file)")
            file = learned_file(d.name)
            dtype = torch.float16 if d.info.get("dtype") == "float16" else torch.float32
            state = {k: (v.to(dtype) if k not in ("w_mean", "w_std") else v.float()).detach().cpu().contiguous()
                     for k, v in d.vector.state_dict().items()}
            info = {k: v for k, v in d.info.items() if k != "file"}
            with atomic_path(pack.root / file) as tmp:
                save_file(state, str(tmp), metadata={"edit": json.dumps({"config": d.vector.config, "info": info})})
            files[file] = {"sha256": sha256_of(pack.root / file), "bytes": (pack.root / file).stat().st_size}
            d.info = {**info, "file": file}
    gone = [e["file"] for name, e in old_learned.items()
            if not directions[name].learned and isinstance(e.get("file"), str)] if old_learned else []
    for file in gone:
        files.pop(file, None)
    manifest["directions"] = {name: _summary(d) for name, d in sorted(directions.items())}
    with atomic_path(pack.root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    pack.manifest = manifest
    for file in gone:
        (pack.root / file).unlink(missing_ok=True)


# --- measured effect -----------------------------------------------------------------------------------------------

EFFECT_STRENGTHS = (-2.0, -1.0, 1.0, 2.0)
EFFECT_SEED = 20_000   # generated faces measured on when a pack has no e4e encoder (not the fits' seeds 0 and 1)


def _strength_key(s: float) -> str:
    return f"{s:+g}"


@torch.no_grad()
def measure_effects(pack: Pack, directions: list[Direction], count: int = 128, set_name: str = "indomain",
                    strengths: tuple[float, ...] = EFFECT_STRENGTHS, batch: int = 32) -> None:
    """Write into each direction's info["effect"] what it does at each strength, scored as `bench editing` scores it:
    the target attribute's mean change and the largest mean absolute drift of another editable attribute (in std of
    each over the faces), ID similarity to the unedited reconstruction; on rendered faces the edit's locality (PSNR
    against the input outside the region the renderer's own edit of the attribute changes, and the share of the
    change inside it); for a binary attribute the share of faces that gain it (+) or lose it (-).

    The faces: e4e codes of the first `count` faces of `set_name` (the codes every method starts from), or, on a pack
    without an e4e encoder, `count` generated faces. A pack without a domain network (no attribute predictor) gets
    no figures: its directions' info is left as it is."""
    from .bench.inversion import (BenchSet, _edit_row, _edit_scales, _scales_for, attribute_regions, change_inside,
                                  load_set)
    from .bench.masks import masked_psnr
    from .edits import edit_step
    from .losses import LossNetworks

    if not pack.has("domainnet") or not directions:
        return
    losses = LossNetworks.from_pack(pack)
    G = pack.generator()
    synth = lambda w: torch.cat([G.synthesis(c, noise_mode="const") for c in w.split(batch)])
    if pack.has("e4e_encoder"):
        from .methods.e4e.method import encode
        data = load_set(set_name, count, G.img_resolution)
        E = pack.load("e4e_encoder")
        codes = torch.cat([encode(E, chunk)[0] for chunk in data.images.split(batch)])
        faces = f"e4e codes of {count} {set_name} faces"
    else:
        z = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(EFFECT_SEED))
        codes, data = G.mapping(z), None
        faces = f"{count} generated faces (seed {EFFECT_SEED})"
    base = synth(codes)
    data = data or BenchSet("generated", base, None, None)
    targets = [d.info.get("attribute", d.name) for d in directions]
    editable, std = _edit_scales(losses, data, targets)
    for d, target in zip(directions, targets):
        regions = attribute_regions(data.labels, target, G.img_resolution)
        effect = {"faces": faces}
        for s in strengths:
            edited = synth(codes + edit_step(codes, d.vector, s))
            row = _edit_row(d.name, target, base, edited, losses, _scales_for(target, editable, std))
            drift = row["drift_std"]
            figures = {"target_change_std": row["target_change_std"], "max_drift_std": row["max_drift_std"],
                       "max_drift_attribute": max(drift, key=drift.get) if drift else None,
                       "id_similarity": row["id_similarity"]}
            if regions is not None:
                figures["psnr_outside_edit"] = masked_psnr(data.images, edited, ~regions)
                figures["change_inside_edit"] = change_inside(base, edited, regions)
            kinds = attribute_kinds(losses.attributes)
            if target in kinds and kinds[target].kind == "binary":
                before, after = losses.attributes.predict(base)[target], losses.attributes.predict(edited)[target]
                had = before >= 0.5
                flipped = (after < 0.5) & had if s < 0 else (after >= 0.5) & ~had
                pool = had if s < 0 else ~had
                figures["removed_share" if s < 0 else "added_share"] = float(flipped.sum() / pool.sum().clamp(min=1))
            effect[_strength_key(s)] = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
        d.info["effect"] = effect


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
    if direction.learned:  # the network's change kept to those rows
        from .edits import RestrictedEdit
        vector = RestrictedEdit(direction.vector, _layer_mask(direction.vector.num_ws, layers))
    else:
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
