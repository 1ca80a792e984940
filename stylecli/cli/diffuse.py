"""`stylecli diffuse`: IDInvert's semantic diffusion of a target face's centre into a context image."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DeviceOption, ModelOption, UsageError, console, escape, progress_bar


def _fractions(text: str, what: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected two fractions X,Y (e.g. 0.5,0.57)") from None
    return x, y


def diffuse(
    target: Path = typer.Argument(..., help="The face whose centre (identity, expression) is kept."),
    context: Path = typer.Option(..., "--context", "-c", help="The image the centre is diffused into."),
    out: Path = typer.Option(Path("diffused"), "--out", "-o", help="Output folder."),
    model: str = ModelOption,
    crop: float = typer.Option(0.45, "--crop", help="Side of the centre box as a fraction of the image side."),
    centre: str = typer.Option("0.5,0.57", "--centre", help="Centre X,Y of the box as fractions of the image."),
    compare: bool = typer.Option(False, "--compare", help="Also write target | context | composite | result."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that exist."),
    device: str = DeviceOption,
    method_options: dict = None,
):
    """Diffuse a target face's centre region into a context image (IDInvert's semantic diffusion).

    The target's centre box is pasted into the context; IDInvert's encoder starts from that composite and the
    domain-regularised optimisation fits the box alone, so the generator fills the rest to match the context.
    Writes OUT/TARGET_in_CONTEXT.png (the result), OUT/TARGET_in_CONTEXT.latent.safetensors (its code: edit it with
    `stylecli edit OUT --latent --method idinvert`), and with --compare OUT/TARGET_in_CONTEXT_compare.png. Both
    images are resized to the pack's resolution and should be aligned faces.

    Example: stylecli diffuse face.png --context other.png -o diffused/ --steps 200
    """
    import torch

    from ..fileio import write_files, writable_folder
    from ..imageio import (ProtectedPaths, encode_image, image_to_tensor, load_image, make_grid, sidecar_path,
                           tensor_to_images)
    from ..latents import SUFFIX, latent_bytes
    from ..methods import get_method
    from ..methods.idinvert.diffusion import centre_box, diffuse as diffuse_images
    from ..models import resolve_device
    from ..packs import Pack

    spec = get_method("idinvert")
    try:
        spec.check_options(method_options or {})
        box_centre = _fractions(centre, "--centre")
        centre_box(64, crop, box_centre)  # the box's checks, before any work
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stem = f"{target.stem}_in_{context.stem}"
    outputs = {"image": out / f"{stem}.png", "latent": out / f"{stem}{SUFFIX}"}
    if compare:
        outputs["compare"] = sidecar_path(out, stem, "compare")
    protected = ProtectedPaths([target, context])
    for path in outputs.values():
        protected.check(path)  # an output never replaces an input (a one-line ImageError)
    if not overwrite and any(p.exists() for p in outputs.values()):
        existing = next(p for p in outputs.values() if p.exists())
        raise UsageError(f"{escape(existing)} exists; --overwrite replaces it")
    images = [load_image(target), load_image(context)]  # one-line ImageError for a bad file
    pack = Pack.open(model)
    method = spec.load(pack, resolve_device(device), **(method_options or {}))
    writable_folder(out)
    x, c = (image_to_tensor(img, method.resolution) for img in images)
    with progress_bar(f"diffusing {target.name} into {context.name}", 1, method) as advance:
        result = diffuse_images(method, x, c, crop=crop, centre=box_centre)
        advance()
    image = tensor_to_images(result.inversion.image)[0]
    contents = {outputs["image"]: encode_image(image, outputs["image"]),
                outputs["latent"]: latent_bytes(result.inversion, 0, pack.name, method.name, str(target))}
    if compare:
        strip = [*tensor_to_images(torch.cat([x, c, result.composite])), image]
        contents[outputs["compare"]] = encode_image(make_grid(strip, columns=4), outputs["compare"])
    write_files(contents)
    console.print(f"wrote {', '.join(escape(p) for p in contents)}", highlight=False, soft_wrap=True)


def register_diffuse(app: typer.Typer) -> None:
    """`stylecli diffuse`, with IDInvert's options (--steps, --lr, --domain-reg, --no-domain-reg) as flags."""
    from ..methods import METHODS
    from .options import with_method_options

    if "idinvert" in METHODS:
        app.command()(with_method_options(diffuse, [METHODS["idinvert"]]))
