"""`stylecli directions ...`: list, fit, learn, measure, pca, import."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import DeviceOption, ModelOption, UsageError, console, escape, progress_bar, show, train_with_progress

directions_app = typer.Typer(help="Edit directions of a pack: list, fit (linear), learn (non-linear), measure, PCA, "
                                   "import.", no_args_is_help=True)


def _pack(model):
    from ..packs import Pack
    return Pack.open(model)


def _details(d) -> str:
    """What a direction was made from, briefly."""
    info, parts = d.info, []
    if "attribute" in info:
        parts.append(f"attribute {info['attribute']}")
    if "correlation" in info:
        parts.append(f"correlation {info['correlation']:.2f}")
    if "component" in info:
        parts.append(f"component {info['component']}")
    if info.get("source"):
        parts.append(f"from {info['source']}")
    if info.get("condition"):
        parts.append(f"holding {', '.join(info['condition'])}")
    if d.learned and "record" in info:
        parts.append(f"{info['record'].get('steps')} steps, {info.get('ms_per_image', '?')} ms/image")
    if info.get("renamed_from"):
        parts.append(f"was {info['renamed_from']}")
    return "; ".join(parts)


@directions_app.command("list")
def list_command(model: str = ModelOption):
    """List a pack's edit directions: kind, unit of strength, rows, and the effect measured when each was made.

    Linear directions (interfacegan, ganspace, import) add strength x a W+ vector: strength 1 is one std of W along
    it. Learned ones map each code through a small network: strength 1 moves the attribute by one of its std (the
    domain network's measure); for a binary attribute + adds it and - removes it. The effect columns are measured at
    strength 2 on the e4e codes of held-out faces: the target's change and the largest drift of another attribute
    (in std), and identity kept (`stylecli directions measure` measures them again).

    Example: stylecli directions list --model synthface-64
    """
    from ..directions import format_layers, load_directions, unit

    pack = _pack(model)
    table = Table("name", "kind", "unit of strength", "layers", "target at +2", "largest drift", "ID", "details",
                  title=f"directions of {pack.name} (effect at strength 2, in std of each attribute)")
    for name, d in sorted(load_directions(pack).items()):
        rows = (format_layers(d.info["layers"]) if "layers" in d.info else
                ",".join(map(str, d.info["rows"])) if "rows" in d.info else "all")
        effect = d.info.get("effect", {}).get("+2")
        measured = ([f"{effect['target_change_std']:+.2f}", f"{effect['max_drift_std']:.2f} "
                     f"({effect.get('max_drift_attribute')})", f"{effect['id_similarity']:.3f}"] if effect else
                    ["not measured", "", ""])
        table.add_row(name, d.kind, unit(d), rows, *measured, _details(d))
    if table.rows:
        show(table)
    else:
        console.print(f"pack {pack.name!r} has no directions yet (see `stylecli directions fit`)")


@directions_app.command("fit")
def fit_command(
    attribute: list[str] = typer.Argument(..., help="Attributes to fit (smile, yaw, age, glasses, beard, ...); "
                                          "NAME=ATTRIBUTE stores it under another name (pose=yaw)."),
    model: str = ModelOption,
    samples: int = typer.Option(5000, "--samples", min=50, help="Generated samples to fit on."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Restrict to W+ rows START-END (inclusive)."),
    condition: list[str] = typer.Option([], "--condition", help="Directions already in the pack whose attributes the "
                                        "edit must not change (conditional editing; repeatable)."),
    hold: bool = typer.Option(True, "--hold/--no-hold", help="Hold every other parameter the pack's predictor labels "
                              "(identity included) while editing the attribute."),
    gradient_samples: int = typer.Option(256, "--gradient-samples", min=0, help="Samples for the mean gradients that "
                                         "hold the predictor's editable attributes to first order (0: linear models "
                                         "only)."),
    seed: int = typer.Option(0, "--seed"),
    effect_count: int = typer.Option(128, "--effect-count", min=0, help="Held-out faces the new directions' effect "
                                     "is measured on, for `directions list` (0: not measured)."),
):
    """Fit InterFaceGAN-style directions on generated samples labelled by the pack's attribute predictor.

    A linear model of the attribute in W gives the normal; the edit moves along cov(W) @ normal, the step that changes
    the attribute most for how unusual the code becomes, while holding the other labelled parameters (linear models)
    and the predictor's editable attributes (mean gradients through the generator, to first order).

    Example: stylecli directions fit pose=yaw && stylecli directions fit smile --layers 2-5
    """
    from ..directions import (fit_direction, get_direction, mean_gradients, measure_effects, parse_layers,
                              sample_labelled, save_directions)
    from ..losses import LossNetworks

    pack = _pack(model)
    nets = LossNetworks.from_pack(pack)
    if nets.attributes is None:
        raise UsageError(f"pack {pack.name!r} has no attribute predictor to label samples with")
    G = pack.generator()
    cond = [get_direction(pack, c) for c in condition]
    with progress_bar("generating and labelling samples", samples) as advance:
        data = sample_labelled(G, nets.attributes, samples, seed, on_batch=advance)
    gradients = None
    editable = list(getattr(nets.attributes, "editable_attributes", ()))
    if hold and gradient_samples and editable:
        with console.status(f"mean gradients of {', '.join(editable)} over {gradient_samples} samples"):
            gradients = mean_gradients(G, nets.attributes, editable, gradient_samples, seed + 1)
    named = [a.split("=", 1)[::-1] if "=" in a else (a, a) for a in attribute]  # (attribute, name)
    fitted = [fit_direction(G, nets.attributes, a, name=n, layers=parse_layers(layers), condition=cond, hold=hold,
                            samples=data, gradients=gradients)
              for a, n in named]
    if effect_count:
        with console.status(f"measuring the effect of {len(fitted)} direction(s) on {effect_count} held-out faces"):
            measure_effects(pack, fitted, effect_count)
    save_directions(pack, fitted)
    for d in fitted:
        console.print(f"{d.name}: correlation of the projection with {d.info['attribute']} {d.info['correlation']:+.3f}, "
                      f"scale {d.info['scale']:.3f}")


def _effect_line(d, why: str = "the pack has no domain network") -> str:
    """The measured effect of a direction in one line: target, drift and identity at +-1 and +-2."""
    effect = d.info.get("effect")
    if not effect:
        return f"{d.name}: effect not measured ({why})"
    parts = []
    for key in ("-2", "-1", "+1", "+2"):
        if key in effect:
            e = effect[key]
            flip = "".join(f", {k.split('_')[0]} {e[k]:.0%}" for k in ("added_share", "removed_share") if k in e)
            parts.append(f"{key}: {e['target_change_std']:+.2f} std, drift {e['max_drift_std']:.2f}, "
                         f"ID {e['id_similarity']:.3f}{flip}")
    return f"{d.name} ({effect['faces']}): " + "; ".join(parts)


@directions_app.command("learn")
def learn_command(
    name: str = typer.Argument(..., help="The direction's name in the pack (glasses, beard, smile, ...)."),
    attribute: Optional[str] = typer.Option(None, "--attribute", "-a", help="What the domain network predicts that "
                                            "the edit moves (default: NAME)."),
    model: str = ModelOption,
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimisation steps."),
    batch: int = typer.Option(16, "--batch", min=1, help="Codes per step."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Rows START-END (inclusive) the edit may change "
                                         "(default: all)."),
    pool: int = typer.Option(2048, "--pool", min=8, help="Training codes (e4e codes of rendered faces and mapped W "
                             "samples), fixed for the run."),
    weight: list[str] = typer.Option([], "--weight", help="A loss weight, TERM=VALUE (repeatable): target, hold, "
                                     "identity, code, pixel (defaults 2, 1, 2, 0.05, 8)."),
    seed: int = typer.Option(0, "--seed"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Folder for checkpoints and logs (default: "
                                           "runs/directions-NAME)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --run-dir."),
    effect_count: int = typer.Option(128, "--effect-count", min=0, help="Held-out faces the effect is measured on "
                                     "(0: not measured)."),
    device: str = DeviceOption,
):
    """Learn a non-linear edit of one attribute and add it to the pack as direction NAME (kind "learned").

    A small network maps a W+ code and a strength to the edited code; it is trained against the pack's frozen
    generator and domain network to move the attribute by `strength` of its standard deviations over the domain's
    faces, as the domain network measures it (calibrated on the training codes: faces at the end of the attribute's
    range stay, the others move further; for a binary attribute + adds it, - removes it), hold the other attributes
    and the identity embedding, and keep the change small. Strengths of a learned edit run from -3 to 3. A linear
    direction of the same name stays in the pack as NAME-linear. Checkpoints go to --run-dir atomically; --resume
    continues exactly. About 0.35 s per step on one CPU thread at 64 px (3,000 steps: about 20 minutes).

    Example: stylecli directions learn glasses --attribute glasses --steps 3000
    """
    from ..directions import LINEAR_SUFFIX, Direction, DirectionError, load_directions, measure_effects, \
        parse_layers, save_directions
    from ..models import resolve_device
    from ..train.edits import NEEDS_DOMAIN_NET, EditTrainer, EditTrainingConfig, edit_from_run, export_record

    pack = _pack(model)
    if not pack.has("domainnet"):
        raise UsageError(f"pack {pack.name!r} has no domain network: {NEEDS_DOMAIN_NET}")
    attribute = attribute or name
    run_dir = run_dir or Path("runs") / f"directions-{name}"
    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise UsageError(f"{run_dir} already holds a checkpoint: add --resume, or choose another --run-dir")
    span = parse_layers(layers)
    weights = EditTrainingConfig.__dataclass_fields__["weights"].default_factory()
    for text in weight:
        term, _, value = text.partition("=")
        try:
            if term not in weights:
                raise ValueError
            weights[term] = float(value)
        except ValueError:
            raise UsageError(f"--weight {text}: expected TERM=VALUE with TERM one of {', '.join(weights)}") from None
    cfg = EditTrainingConfig(run_dir=str(run_dir), name=name, attribute=attribute, model=model,
                             steps=steps, batch=batch, seed=seed, pool=pool, layers=list(span) if span else None,
                             weights=weights, device=str(resolve_device(device)))
    try:
        with console.status(f"preparing {pool} training codes"):
            trainer = EditTrainer(cfg, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    train_with_progress(trainer, f"learning {name} ({escape(str(run_dir))}), steps")
    edit, record = edit_from_run(run_dir)
    direction = Direction(name, edit, "learned", export_record(edit, record, trainer.codes))
    if effect_count:
        with console.status(f"measuring the edit on {effect_count} held-out faces"):
            measure_effects(pack, [direction], effect_count)
    existing = load_directions(pack).get(name)
    kept = []
    if existing is not None and not existing.learned:  # the linear one stays, under its own name, for comparison
        renamed = Direction(f"{name}{LINEAR_SUFFIX}", existing.vector, existing.kind,
                            {**existing.info, "renamed_from": name})
        if "effect" not in renamed.info and effect_count:
            measure_effects(pack, [renamed], effect_count)
        kept.append(renamed)
    try:
        save_directions(pack, kept + [direction])
    except DirectionError as exc:
        raise UsageError(str(exc)) from None
    console.print(f"added learned direction {name} to {pack.name} ({direction.info['dtype']}, "
                  f"{direction.info['record']['steps']} steps, {direction.info['record']['wall_time_h']:.2f} h)"
                  + (f"; the linear {name} is now {kept[0].name}" if kept else ""), soft_wrap=True, highlight=False)
    for d in [direction] + kept:
        console.print(_effect_line(d, "--effect-count 0"), soft_wrap=True, highlight=False)


@directions_app.command("measure")
def measure_command(
    name: list[str] = typer.Argument(None, help="Directions to measure (default: all)."),
    model: str = ModelOption,
    count: int = typer.Option(128, "--count", min=2, help="Held-out faces to measure on."),
):
    """Measure directions' effect and write it into the pack (what `directions list` shows).

    At strengths -2, -1, +1 and +2 on the e4e codes of the first COUNT `indomain` faces: the target attribute's mean
    change and the largest drift of another attribute (in std over the faces), ID similarity to the unedited
    reconstruction, the edit's locality, and for a binary attribute the share of faces that gain or lose it.

    Example: stylecli directions measure smile glasses --model synthface-64
    """
    from ..directions import DirectionError, get_direction, load_directions, measure_effects, save_directions

    pack = _pack(model)
    if not pack.has("domainnet"):
        raise UsageError(f"pack {pack.name!r} has no domain network to measure edits with")
    try:
        chosen = [get_direction(pack, n) for n in name] if name else list(load_directions(pack).values())
    except DirectionError as exc:
        raise UsageError(str(exc)) from None
    if not chosen:
        raise UsageError(f"pack {pack.name!r} has no directions yet (see `stylecli directions fit`)")
    with console.status(f"measuring {len(chosen)} direction(s) on {count} held-out faces"):
        measure_effects(pack, chosen, count)
    save_directions(pack, [d for d in chosen if not d.learned] + [d for d in chosen if d.learned])
    for d in chosen:
        console.print(_effect_line(d), soft_wrap=True, highlight=False)


@directions_app.command("pca")
def pca_command(model: str = ModelOption, components: int = typer.Option(10, "--components", min=1),
                samples: int = typer.Option(20000, "--samples", min=100),
                layers: Optional[str] = typer.Option(None, "--layers", help="W+ rows START-END (inclusive).")):
    """GANSpace: principal components of W as directions pca0, pca1, ...

    Example: stylecli directions pca --model synthface-64 --components 10 --layers 0-4
    """
    from ..directions import parse_layers, pca_directions, save_directions

    pack = _pack(model)
    with console.status(f"PCA of {samples} W samples"):
        found = pca_directions(pack.generator(), samples, components, layers=parse_layers(layers))
    save_directions(pack, found)
    console.print(f"added {len(found)} PCA directions to {pack.name}")


@directions_app.command("import")
def import_command(path: Path = typer.Argument(..., help="InterFaceGAN .npy or .pt, GANSpace .pt or .npz, or IDInvert .npy."),
                   model: str = ModelOption, name: Optional[str] = typer.Option(None, "--name")):
    """Import official direction files (InterFaceGAN, GANSpace, IDInvert layouts).

    Example: stylecli directions import smile_boundary.npy --model ffhq-1024 --name smile
    """
    from ..directions import import_directions, save_directions

    pack = _pack(model)
    G = pack.generator()
    found = import_directions(path, G.num_ws, G.w_dim, name)
    save_directions(pack, found)
    console.print(f"imported {', '.join(d.name for d in found)} into {pack.name}")
