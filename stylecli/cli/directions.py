"""`stylecli directions ...`: list, fit, pca, import."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ModelOption, UsageError, console, progress_bar, show

directions_app = typer.Typer(help="Edit directions of a pack: list, fit, PCA, import.", no_args_is_help=True)


def _pack(model):
    from ..packs import Pack
    return Pack.open(model)


@directions_app.command("list")
def list_command(model: str = ModelOption):
    """List a pack's edit directions.

    Example: stylecli directions list --model synthface-64
    """
    from ..directions import format_layers, load_directions

    pack = _pack(model)
    table = Table("name", "kind", "layers", "details", title=f"directions of {pack.name}")
    for name, d in sorted(load_directions(pack).items()):
        details = {k: v for k, v in d.info.items() if k in ("attribute", "correlation", "component", "source", "condition")}
        rows = (format_layers(d.info["layers"]) if "layers" in d.info else
                ",".join(map(str, d.info["rows"])) if "rows" in d.info else "all")
        table.add_row(name, d.kind, rows, str(details))
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
):
    """Fit InterFaceGAN-style directions on generated samples labelled by the pack's attribute predictor.

    A linear model of the attribute in W gives the normal; the edit moves along cov(W) @ normal, the step that changes
    the attribute most for how unusual the code becomes, while holding the other labelled parameters (linear models)
    and the predictor's editable attributes (mean gradients through the generator, to first order).

    Example: stylecli directions fit pose=yaw && stylecli directions fit smile --layers 2-5
    """
    from ..directions import (fit_direction, get_direction, mean_gradients, parse_layers, sample_labelled,
                              save_directions)
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
    save_directions(pack, fitted)
    for d in fitted:
        console.print(f"{d.name}: correlation of the projection with {d.info['attribute']} {d.info['correlation']:+.3f}, "
                      f"scale {d.info['scale']:.3f}")


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
