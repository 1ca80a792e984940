"""F/W+'s declaration: what `--method fwplus`, `stylecli train fwplus` and `weights convert` need to know, without
torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...train.targets import TrainingSpec, setting
from ..base import ConverterSpec, MethodSpec, Option
from . import NETWORK, PSPACE


@dataclass
class FWPlusTrainingConfig:
    run_dir: str
    model: str = setting("synthface-64", "Pack with the frozen generator and the loss networks.")
    data: str = setting("generator", "'generator' only: samples of the pack's generator at --truncation, as BDInvert "
                                     "trains (the loss needs each image's own W+ rows).")
    batch: int = setting(16, "Total batch size over all processes.", min=1)
    steps: int = setting(3000, "Optimisation steps.", min=1)
    base_size: int = setting(8, "Generator resolution whose first (upsampling) conv output the encoder writes "
                                "(8 for 64 px packs: see docs/fwplus.md; BDInvert uses 16 at 1024 px).", min=4)
    truncation: float = setting(0.7, "Truncation psi of the generator samples.", min=0)
    lr: float = setting(1e-3, "Adam learning rate.", min=0)
    perceptual_weight: float = 10.0          # BDInvert: MSE + 10 * LPIPS
    pspace_samples: int = setting(250_000, "Mapped samples the exported P-space whitening is fitted on.", min=1000)
    encoder: dict = field(default_factory=dict)  # BaseEncoderConfig overrides (e.g. widths)
    checkpoint_every: int = setting(250, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"


SPEC = MethodSpec(
    name="fwplus",
    summary="F/W+ (BDInvert): a coarse base feature plus the W+ rows after it, optimised per image; shifted, "
            "rotated or scaled heads keep their place in edits.",
    implementation="stylecli.methods.fwplus.method:FWPlus",
    networks=(NETWORK, PSPACE),
    options=(
        Option("steps", int, 80, "Optimisation steps per image (0: the encoder's code alone).", min=0, max=10_000),
        Option("lr", float, 0.05, "Adam learning rate of the optimisation.", min=0, max=1),
        Option("lr_rampdown", float, 0.25, "Last fraction of the steps over which the learning rate falls to 0 on a "
               "cosine (0: a constant rate).", min=0, max=1),
        Option("base_weight", float, 10.0, "F/W+: weight of the base code's distance to the encoder's.", min=0),
        Option("pspace_weight", float, 0.01, "F/W+: weight of the P-space whitening penalty on the detail rows.",
               min=0),
        Option("edit_mode", str, "auto", "F/W+ edits: 'aligned' (the head's aligned crop edited and the change "
               "carried back; needs a face detector), 'rows' (BDInvert's: the W+ rows after the base) or 'auto' "
               "(aligned where the pack has a detector)."),
    ),
    training=TrainingSpec(
        name="fwplus", summary="Train F/W+'s base-code encoder on samples of a pack's frozen generator (pixel + "
                               "perceptual loss); its export also fits the pack's P-space whitening.",
        config=FWPlusTrainingConfig, trainer="stylecli.methods.fwplus.train:FWPlusTrainer",
        export="stylecli.methods.fwplus.train:encoder_from_run",
        example="stylecli train fwplus --model synthface-64 --steps 3000 --run-dir runs/fwplus"),
    converter=ConverterSpec(detect="stylecli.methods.fwplus.convert:detect",
                            convert="stylecli.methods.fwplus.convert:convert",
                            formats="BDInvert's base-code encoder checkpoint ({encoder: model.N.*, optimizer, ...})",
                            into_pack="stylecli.methods.fwplus.convert:add_to_pack"),
)
