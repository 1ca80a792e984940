"""e4e's declaration: what `--method e4e`, `stylecli train e4e` and `weights convert` need to know, without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...train.targets import TrainingSpec, setting
from ..base import ConverterSpec, MethodSpec
from . import NETWORK


@dataclass
class E4ETrainingConfig:
    run_dir: str
    model: str = setting("synthface-64", "Pack with the frozen generator and the loss networks.")
    data: str = setting("synth", "'synth' (render faces on the fly) or a folder of aligned face images.")
    batch: int = setting(8, "Total batch size over all processes.", min=1)
    steps: int = setting(20000, "Optimisation steps.", min=1)
    lr: float = 1e-4
    l2_weight: float = 1.0
    perceptual_weight: float = 0.8
    id_weight: float = 0.1
    delta_weight: float = 2e-4
    adv_weight: float = 0.1
    d_lr: float = 2e-5
    r1_gamma: float = 10.0
    d_reg_interval: int = 16
    pool_size: int = 50
    progressive_start: int | None = None  # None: 7% of the steps (e4e: 20k of 300k)
    progressive_step: int | None = None   # None: 0.7% of the steps (e4e: 2k of 300k)
    encoder: dict = field(default_factory=dict)  # EncoderConfig overrides
    init: str | None = setting(None, "Start the encoder from this e4e run folder or pack (fine-tuning after the "
                                     "pack's generator changed; every W+ row active from the start).")
    checkpoint_every: int = setting(250, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    workers: int = setting(1, "Processes that read or render training images beside training (0: none).",
                          min=0)
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"


SPEC = MethodSpec(
    name="e4e",
    summary="Encoder for editing: one forward pass into W+ (fast; the base the other methods build on).",
    implementation="stylecli.methods.e4e.method:E4E",
    networks=(NETWORK,),
    training=TrainingSpec(
        name="e4e", summary="Train the e4e encoder against a pack's frozen generator (e4e's losses and curriculum).",
        config=E4ETrainingConfig, trainer="stylecli.methods.e4e.train:E4ETrainer",
        export="stylecli.methods.e4e.train:encoder_from_run",
        example="stylecli train e4e --model synthface-64 --data synth --steps 20000 --run-dir runs/e4e"),
    converter=ConverterSpec(detect="stylecli.methods.e4e.convert:detect",
                            convert="stylecli.methods.e4e.convert:convert", formats="e4e's e4e_ffhq_encode.pt (encoder, rosinality generator and latent_avg)"),
)
