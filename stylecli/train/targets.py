"""Training targets: what `stylecli train TARGET` trains, declared without importing torch.

A `TrainingSpec` names a config dataclass (fields made with `setting()` become the command's flags, so each target
offers only the options it takes), the trainer class that runs it, and the function that turns a finished run into
pack networks (`stylecli weights from-runs`). The generator and the domain network are declared here; every method
declares its own in its `MethodSpec.training`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def setting(default: Any, help: str, min: float | None = None) -> Any:
    """A config field that `stylecli train TARGET` offers as --NAME (fields made otherwise stay internal);
    `min` is the smallest value the flag accepts."""
    return field(default=default, metadata={"help": help, "min": min})


@dataclass(frozen=True)
class TrainingSpec:
    name: str            # the subcommand: `stylecli train NAME`
    summary: str         # its --help, first line
    config: type         # a dataclass whose first field is run_dir; `setting()` fields are flags
    trainer: str         # "stylecli.module:Class": Class(config, resume=bool) with .run(on_progress), .progress()
                         # -> (done, total) in `unit`, and .ctx (rank 0 reports)
    export: str          # "stylecli.module:function": run folder -> ({pack network: module}, provenance record)
    example: str         # a command line for --help
    unit: str = "steps"  # what progress counts

    def flags(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.config) if "help" in f.metadata]

    def make_trainer(self, config, resume: bool = False):
        from ..methods.base import resolve
        return resolve(self.trainer)(config, resume=resume)

    def export_run(self, run_dir):
        from ..methods.base import resolve
        return resolve(self.export)(run_dir)


def _targets() -> dict[str, TrainingSpec]:
    from ..methods import METHODS
    from .configs import (DetectorTrainingConfig, DomainNetTrainingConfig, FaceRegionTrainingConfig,
                          GeneratorTrainingConfig)

    own = (
        TrainingSpec("generator", "Train a StyleGAN2 generator and discriminator (StyleGAN2 config-f objective).",
                     GeneratorTrainingConfig, "stylecli.train.generator:GeneratorTrainer",
                     "stylecli.train.export:generator_from_run",
                     "stylecli train generator --data synth --kimg 1000 --run-dir runs/g", unit="images"),
        TrainingSpec("domainnet", "Train the synthetic domain's network (perceptual, identity and attribute "
                     "heads) on rendered faces.", DomainNetTrainingConfig,
                     "stylecli.train.domainnet:DomainNetTrainer", "stylecli.train.export:domainnet_from_run",
                     "stylecli train domainnet --steps 1500 --run-dir runs/dn"),
        TrainingSpec("detector", "Train the synthetic domain's face detector and landmark refiner on rendered scenes "
                     "(what `--align` uses on synthface photos).", DetectorTrainingConfig,
                     "stylecli.train.detector:DetectorTrainer", "stylecli.train.detector:detector_from_run",
                     "stylecli train detector --steps 3000 --run-dir runs/detector"),
        TrainingSpec("faceregion", "Train the synthetic domain's face-region network on rendered faces (what "
                     "`--edit-mask face` uses on synthface packs).", FaceRegionTrainingConfig,
                     "stylecli.train.faceregion:FaceRegionTrainer", "stylecli.train.faceregion:faceregion_from_run",
                     "stylecli train faceregion --steps 1500 --run-dir runs/faceregion"),
    )
    methods = tuple(spec.training for spec in METHODS.values() if spec.training is not None)
    return {t.name: t for t in own + methods}


def training_targets() -> dict[str, TrainingSpec]:
    """Every target `stylecli train` offers, by name."""
    return _targets()


# Checkpoints written before runs recorded their target: recognised by the state they hold.
_LEGACY_KEYS = (("G_ema", "generator"), ("encoder_config", "e4e"), ("net", "domainnet"))


def target_of_run(run_dir) -> tuple[TrainingSpec, str | None]:
    """The target whose trainer wrote the run in `run_dir`, and the pack it trained against (None for runs that make
    packs: the generator's); FileNotFoundError / ValueError in one line."""
    from pathlib import Path

    from .checkpoint import load_checkpoint

    state = load_checkpoint(Path(run_dir))
    if state is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt (not a run folder of `stylecli train`)")
    name = state.get("target") or next((t for key, t in _LEGACY_KEYS if key in state), None)
    targets = training_targets()
    if name not in targets:
        raise ValueError(f"{run_dir}: a run of {name!r}, which this build cannot export")
    return targets[name], state.get("pack")
