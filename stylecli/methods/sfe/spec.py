"""SFE's declaration: what `--method sfe` and `stylecli train sfe` need to know, without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...train.targets import TrainingSpec, setting
from ..base import ConverterSpec, MethodSpec, Option
from . import BASE, EDITOR, INVERTER


@dataclass
class SFETrainingConfig:
    run_dir: str
    phase: str = setting("inverter", "'inverter' (phase 1: the inverter, from scratch or --init) or 'editor' "
                                     "(phase 2: the feature editor on a frozen inverter, see --inverter).")
    model: str = setting("synthface-64", "Pack with the frozen generator and e4e encoder, the discriminator and "
                                         "the loss networks.")
    data: str = setting("synth", "'synth' (train-stream faces rendered on the fly) or a folder of aligned face "
                                 "images.")
    inverter: str | None = setting(None, "Phase 2: the trained inverter, a phase-1 run folder or a pack (default: "
                                         "--model's).")
    init: str | None = setting(None, "Phase 1: start the inverter from this sfe run folder or pack.")
    batch: int = setting(8, "Total batch size over all processes.", min=1)
    steps: int = setting(2000, "Optimisation steps.", min=1)
    lr: float = setting(2e-4, "Ranger learning rate of the inverter or the editor (the paper's).", min=0)
    feature_size: int | None = setting(None, "Phase 1 from scratch: the generator resolution whose second conv F_k "
                                             "replaces (16 or 32 at 64 px; the official 64 at 1024 px; default 16). "
                                             "A loaded inverter (--init, phase 2, --resume) has its own.", min=4)
    widths: str = setting("auto", "Phase 1 from scratch: channels of the backbone's four stages, comma-separated "
                                  "(auto: 32,48,96,128; the F_k-at-32-px inverter uses 32,48,64,128, docs/sfe.md). "
                                  "A loaded inverter has its own.")
    max_strength: float = setting(3.0, "Phase 2: edit strengths are drawn uniformly from +-this.", min=0)
    detail_shortcut: bool = setting(False, "Phase 1: give the inverter the residual of e4e's inversion at full "
                                           "resolution, folded to F_k's size (docs/sfe.md); with --init it is "
                                           "added at zero to the loaded inverter.")
    e4e_early_rows: bool = setting(False, "Phase 1: the inverter keeps e4e's code for the W+ rows that drive the "
                                          "layers up to F_k and corrects only the later ones; F_w then comes from "
                                          "e4e's own synthesis, one partial synthesis fewer per inversion "
                                          "(docs/sfe.md); with --init the loaded inverter's heads for those rows "
                                          "are dropped.")
    inverter_config: dict = field(default_factory=dict)   # InverterConfig overrides (widths, units, ...)
    editor_blocks: int = 2              # residual blocks of the feature editor (the official: 5)
    # Losses (the paper, section 4 and appendix): on (X, G(F_k, w)) and (X, G(w)) in phase 1, L2 1, LPIPS 0.8, ID 0.1,
    # adversarial 0.01 from `adv_start`, feature regulariser 0.01 (MSE F_k vs F_w); phase 2 the same image terms on
    # the edit and the inversion, the adversarial one on the inversion.
    l2_weight: float = 1.0
    perceptual_weight: float = 0.8
    id_weight: float = 0.1
    adv_weight: float = 0.01
    reg_weight: float = 0.01
    adv_start: int | None = None        # None: 37% of the steps (the paper: 14k of 37.5k)
    blend_steps: int | None = None      # F_k blended in over these first steps; None: 27% (the paper: 10k of 37.5k)
    d_lr: float = 1e-4                  # the discriminator's Adam (the paper's)
    r1_gamma: float = 10.0
    d_reg_interval: int = 16
    checkpoint_every: int = setting(250, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    workers: int = setting(1, "Processes that read or render training images beside training (0: none).", min=0)
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"


SPEC = MethodSpec(
    name="sfe",
    summary="StyleFeatureEditor: W+ plus a spatial feature for fine detail, and a trained feature editor that keeps "
            "edits working on it.",
    implementation="stylecli.methods.sfe.method:SFEMethod",
    networks=(INVERTER, EDITOR, BASE),
    options=(
        Option("edit_mask", str, "none", "Where an sfe edit may change F_k: 'face' zeroes the editor's Delta outside "
               "the face (the pack's face_region network on synthface, facexlib's face parser on real faces), "
               "'none' everywhere (the paper's default).", choices=("none", "face"), edits_only=True),
    ),
    training=TrainingSpec(
        name="sfe", summary="Train SFE against a pack's frozen generator: phase 1 the inverter, phase 2 the feature "
                            "editor (e4e edits as targets).",
        config=SFETrainingConfig, trainer="stylecli.methods.sfe.train:SFETrainer",
        export="stylecli.methods.sfe.train:sfe_from_run",
        example="stylecli train sfe --phase inverter --run-dir runs/sfe-1 && "
                "stylecli train sfe --phase editor --inverter runs/sfe-1 --steps 800 --run-dir runs/sfe-2"),
    converter=ConverterSpec(detect="stylecli.methods.sfe.convert:detect",
                            convert="stylecli.methods.sfe.convert:convert",
                            formats="SFE's sfe_inverter_light.pt and sfe_editor_light.pt"),
)
