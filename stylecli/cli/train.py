"""`stylecli train TARGET`: one subcommand per training target, each with only the options its config takes.

The subcommands are built from `stylecli.train.targets.training_targets()`: the generator, the domain network and
every registered method that trains. A config field made with `setting()` becomes `--field-name`; `--run-dir`,
`--resume` and `--device` are common to all.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Optional

import typer

from .common import DeviceOption, UsageError, console, escape, train_with_progress

train_app = typer.Typer(help="Train a generator, the domain network, or a method's networks.\n\n"
                             "Runs checkpoint atomically to RUN_DIR/checkpoint.pt and continue with --resume; run "
                             "under `torchrun --nproc_per_node N -m stylecli train ...` for several processes.",
                        no_args_is_help=True)


def _flag_type(annotation) -> type:
    """The type Typer should parse: Optional[X] for `X | None`, else X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and len(args) < len(typing.get_args(annotation)):
        return Optional[args[0]]
    return annotation


def _command(target) -> typing.Callable:
    """A Typer command for `target` (a TrainingSpec) whose parameters are the config's flags."""
    hints = typing.get_type_hints(target.config)
    def flag(f):
        name = f.name.replace("_", "-")
        if hints[f.name] is bool:  # --name/--no-name
            return typer.Option(f.default, f"--{name}/--no-{name}", help=f.metadata["help"])
        return typer.Option(f.default, "--" + name, help=f.metadata["help"], min=f.metadata["min"])
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_flag_type(hints[f.name]),
                                default=flag(f)) for f in target.flags()]
    params += [
        inspect.Parameter("run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(Path("runs") / target.name, "--run-dir",
                                               help="Folder for checkpoints, samples and logs.")),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--resume", help="Continue from the checkpoint in --run-dir.")),
        inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=str, default=DeviceOption),
    ]

    def command(**values):
        run_target(target, values)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = target.name
    command.__doc__ = f"{target.summary}\n\nExample: {target.example}"
    return command


def run_target(target, values: dict) -> None:
    """Build the config from the command's values, then train with a progress bar in the trainer's unit."""
    from ..models import resolve_device

    run_dir: Path = values.pop("run_dir")
    resume: bool = values.pop("resume")
    device = str(resolve_device(values.pop("device")))
    if (run_dir / "checkpoint.pt").exists() and not resume:
        raise UsageError(f"{run_dir} already holds a checkpoint: add --resume, or choose another --run-dir")
    fields = {f.name for f in dataclasses.fields(target.config)}
    config = target.config(run_dir=str(run_dir), **values, **({"device": device} if "device" in fields else {}))
    try:
        trainer = target.make_trainer(config, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    train_with_progress(trainer, f"training {target.name} ({escape(str(run_dir))}), {target.unit}",
                        report=trainer.ctx.is_main)
    done, _ = trainer.progress()
    console.print(f"done: {done} {target.unit}; checkpoint in {escape(str(run_dir))}/ (add it to a pack with "
                  f"`stylecli weights from-runs PACK {escape(str(run_dir))}`)")


def register_targets(app: typer.Typer) -> None:
    from ..train.targets import training_targets

    for name, target in training_targets().items():
        app.command(name)(_command(target))
