"""Top-level commands: generate and methods (invert, edit and blend are in editing.py, train in train.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DeviceOption, ModelOption, UsageError, console, progress_bar


def generate(
    model: str = ModelOption,
    seeds: str = typer.Option("0-7", "--seeds", "-s", help="Seeds, e.g. 0-15 or 1,5,9-12."),
    truncation: float = typer.Option(1.0, "--truncation", "-t", help="Truncation psi (1 = none, 0.7 = typical)."),
    noise_mode: str = typer.Option("const", "--noise-mode", help="const, random or none."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Output folder (created if missing)."),
    grid: bool = typer.Option(False, "--grid", help="Also write all images tiled into grid.png."),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per forward pass."),
    device: str = DeviceOption,
):
    """Generate images from seeds.

    Writes seed0000.png, seed0001.png, ... into OUT (and grid.png with --grid).

    Example: stylecli generate --model synthface-64 --seeds 0-15 --truncation 0.7 -o samples/ --grid
    """
    from ..imageio import make_grid, save_image, tensor_to_images
    from ..models import load_generator, resolve_device
    from ..sampling import generate as generate_images
    from ..sampling import parse_seeds

    if noise_mode not in ("const", "random", "none"):
        raise UsageError(f"--noise-mode must be const, random or none, not {noise_mode!r}")
    try:
        seed_list = parse_seeds(seeds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    G = load_generator(model, resolve_device(device))
    written = []
    with progress_bar("generating", len(seed_list)) as advance:
        for chunk, images in generate_images(G, seed_list, truncation, noise_mode, batch):
            for seed, img in zip(chunk, tensor_to_images(images)):
                save_image(img, out / f"seed{seed:04d}.png")
                written.append(img)
            advance(len(chunk))
    if grid:
        save_image(make_grid(written), out / "grid.png")
    console.print(f"wrote {len(written)} images to {out}/" + (" and grid.png" if grid else ""))


def methods():
    """List the inversion methods of this build: what each needs in a pack, its options, how it trains and converts.

    Example: stylecli methods
    """
    from rich.table import Table

    from ..methods import METHODS
    from .common import show

    table = Table("method", "what it does", "pack networks", "options", "train", "converts")
    for name, spec in METHODS.items():
        table.add_row(name, spec.summary, ", ".join(("generator", *spec.networks)),
                      ", ".join(f"{o.flag} ({o.default})" for o in spec.options) or "-",
                      f"stylecli train {spec.training.name}" if spec.training else "-",
                      spec.converter.formats if spec.converter else "-")
    show(table)


def register_commands(app: typer.Typer) -> None:
    from ..methods import METHODS
    from .editing import blend, edit, invert
    from .options import with_method_options

    for command in (generate, *(with_method_options(c, METHODS.values(), edits=c is edit)
                                for c in (invert, edit, blend)), methods):
        app.command()(command)
