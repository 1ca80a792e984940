"""Top-level commands: generate, invert, edit, blend, train."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DeviceOption, ModelOption, UsageError, console, progress_bar

METHOD_HELP = "Inversion method: e4e, idinvert, fwplus, sfe or samm."


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


def _method_or_exit(method: str):
    from ..methods import get_method
    return get_method(method)


def blend(
    input: Path = typer.Argument(..., help="An image or a folder of images."),
    method: str = typer.Option("samm", "--method", help="Method with an invertibility mask (samm)."),
    model: str = ModelOption,
    out: Path = typer.Option(Path("blended"), "--out", "-o", help="Output folder."),
    device: str = DeviceOption,
):
    """Invert and blend out-of-domain content (accessories, background) back from the input; writes the mask too.

    Example: stylecli blend face.jpg --method samm
    """
    _method_or_exit(method)


def train(
    target: str = typer.Argument(..., help="What to train: generator, domainnet, or a method name."),
    data: str = typer.Option("synth", "--data", help="'synth' (render on the fly) or a folder of aligned faces."),
    model: str = ModelOption,
    run_dir: Path = typer.Option(Path("runs/train"), "--run-dir", help="Folder for checkpoints, samples and logs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --run-dir."),
    kimg: float = typer.Option(1000, "--kimg", help="Training length in thousands of images."),
    batch: int = typer.Option(16, "--batch", min=1, help="Total batch size (over all processes)."),
    resolution: int = typer.Option(64, "--resolution", help="generator: image resolution."),
    channel_base: int = typer.Option(2048, "--channel-base", help="generator: channels = min(base / res, max)."),
    channel_max: int = typer.Option(128, "--channel-max", help="generator: the widest layer."),
    z_dim: int = typer.Option(256, "--z-dim", help="generator: Z and W dimensionality."),
    mapping_layers: int = typer.Option(4, "--mapping-layers", help="generator: depth of the mapping network."),
    checkpoint_kimg: float = typer.Option(4, "--checkpoint-kimg", help="Checkpoint interval in kimg."),
    sample_kimg: float = typer.Option(20, "--sample-kimg", help="Sample-grid interval in kimg."),
    steps: int = typer.Option(1500, "--steps", min=1, help="domainnet, methods: optimisation steps."),
    init: str = typer.Option(None, "--init", help="generator: continue training this pack's generator and "
                             "discriminator in a new run; methods: start from the networks of this run folder or "
                             "pack (fine-tune after the pack's generator changed)."),
    device: str = DeviceOption,
):
    """Train a generator, the domain network, or a method's networks.

    Training checkpoints atomically to RUN_DIR/checkpoint.pt and resumes with --resume; run it under
    `torchrun --nproc_per_node N -m stylecli train ...` for several processes (gloo on CPU, NCCL on GPUs).

    Example: stylecli train generator --data synth --kimg 1000 --run-dir runs/synthface-64
    """
    from ..models import resolve_device

    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise UsageError(f"{run_dir} already holds a checkpoint: add --resume, or choose another --run-dir")
    dev = str(resolve_device(device))
    if target == "generator":
        from ..train.generator import GeneratorTrainer, GeneratorTrainingConfig

        cfg = GeneratorTrainingConfig(run_dir=str(run_dir), data=data, resolution=resolution, z_dim=z_dim, w_dim=z_dim,
                                      mapping_layers=mapping_layers, channel_base=channel_base, channel_max=channel_max,
                                      batch=batch, kimg=kimg, checkpoint_kimg=checkpoint_kimg, sample_kimg=sample_kimg,
                                      init=init, device=dev)
        trainer = _make_trainer(GeneratorTrainer, cfg, resume)
        _train_with_progress(trainer, f"training generator ({run_dir}), images", int(kimg * 1000), trainer.nimg,
                             report=trainer.ctx.is_main)
        console.print(f"done: {trainer.nimg / 1000:.1f} kimg; checkpoint and samples in {run_dir}/")
        return
    if target == "domainnet":
        from ..train.domainnet import DomainNetTrainer, DomainNetTrainingConfig

        if data != "synth":
            raise UsageError("the domain network trains on rendered faces only (--data synth)")
        cfg = DomainNetTrainingConfig(run_dir=str(run_dir), resolution=resolution, steps=steps,
                                      checkpoint_every=max(1, min(200, steps)))
        trainer = _make_trainer(DomainNetTrainer, cfg, resume)
    elif target == "e4e":
        from ..methods.e4e.train import E4ETrainer, E4ETrainingConfig

        cfg = E4ETrainingConfig(run_dir=str(run_dir), model=model, data=data, batch=batch, steps=steps,
                                progressive_start=int(steps * 0.07), progressive_step=max(1, int(steps * 0.007)),
                                checkpoint_every=max(1, min(250, steps)), init=init, device=dev)
        trainer = _make_trainer(E4ETrainer, cfg, resume)
    else:
        _method_or_exit(target)
        raise UsageError(f"training {target!r} is not part of this build of stylecli yet")
    _train_with_progress(trainer, f"training {target} ({run_dir}), steps", steps, trainer.step,
                         report=trainer.ctx.is_main)
    console.print(f"done: {trainer.step} steps; checkpoint in {run_dir}/ (add it to a pack with `stylecli weights "
                  f"from-runs`)")


def _make_trainer(cls, cfg, resume: bool):
    try:
        return cls(cfg, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None


def _train_with_progress(trainer, description: str, total: int, start: int, report: bool = True) -> None:
    """Run `trainer` with a progress bar in the trainer's own unit (images or steps)."""
    with progress_bar(description, total) as advance:
        advance(start)
        done = [start]

        def on_progress(position, record):
            advance(position - done[0])
            done[0] = position

        trainer.run(on_progress=on_progress if report else None)


def register_commands(app: typer.Typer) -> None:
    from .editing import edit, invert
    for command in (generate, invert, edit, blend, train):
        app.command()(command)
