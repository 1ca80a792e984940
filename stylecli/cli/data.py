"""`stylecli data ...`: render the synthetic face domain's sets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import UsageError, console, progress_bar

data_app = typer.Typer(help="The synthetic face domain: render training and evaluation sets.", no_args_is_help=True)


@data_app.command("synth")
def synth_command(
    set_name: str = typer.Option("indomain", "--set", help="train, indomain, detail, ood, geometric or scenes "
                                                           "(photos with 0-3 faces; --resolution does not apply)."),
    count: int = typer.Option(100, "--count", "-n", min=1, help="Number of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    resolution: int = typer.Option(64, "--resolution", "-r", min=8, help="Image size in pixels."),
    start: int = typer.Option(0, "--start", min=0, help="Index of the first image within the set."),
):
    """Render N images of a set with labels.jsonl (every parameter of every image); ood also writes *_mask.png.
    The folder is an evaluation set (`stylecli bench inversion --set FOLDER`) equal to the named set. `scenes` writes
    photos (256x192 to 384x288) of 0-3 faces with their boxes, landmarks and template points in labels.jsonl, which
    `--landmarks` reads as it is.

    Example: stylecli data synth --set ood --count 200 --out data/ood
    """
    from ..data.sets import LABELS_FILE, SET_SEEDS, make_sample, sample_name
    from ..imageio import DATA_MASK_ENDING, save_image

    if set_name == "scenes":
        return _write_scenes(count, out, start)
    if set_name not in SET_SEEDS:
        raise UsageError(f"unknown set {set_name!r}; choose from {', '.join(SET_SEEDS)}, scenes")
    out.mkdir(parents=True, exist_ok=True)
    labels_path = out / LABELS_FILE
    with open(labels_path, "w") as labels, progress_bar(f"rendering {set_name}", count) as advance:
        for index in range(start, start + count):
            sample = make_sample(set_name, index, resolution)
            name = sample_name(index)
            save_image(sample.image, out / f"{name}.png")
            if sample.mask is not None:
                save_image(sample.mask, out / f"{name}{DATA_MASK_ENDING}.png")
            labels.write(json.dumps({"file": f"{name}.png", **sample.label}) + "\n")
            advance()
    console.print(f"wrote {count} {set_name} images and {labels_path}")


def _write_scenes(count: int, out: Path, start: int) -> None:
    """Scenes `start` .. `start + count - 1` of the `scenes` set as NAME.png and one labels.jsonl line each:
    {"file", "seed", "size", "faces": [{"box", "points", "template", "centre", "side", "angle", "visible",
    "params"}]} (stylecli/data/scenes.py)."""
    from ..data.scenes import make_scene
    from ..data.sets import LABELS_FILE, sample_name
    from ..imageio import save_image

    out.mkdir(parents=True, exist_ok=True)
    labels_path = out / LABELS_FILE
    faces = 0
    with open(labels_path, "w") as labels, progress_bar("rendering scenes", count) as advance:
        for index in range(start, start + count):
            scene = make_scene(index)
            name = sample_name(index)
            save_image(scene.image, out / f"{name}.png")
            labels.write(json.dumps({"file": f"{name}.png", **scene.label()}) + "\n")
            faces += len(scene.faces)
            advance()
    console.print(f"wrote {count} scenes ({faces} faces) and {labels_path}")
