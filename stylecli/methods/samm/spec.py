"""SAMM's declaration: what `--method samm`, `stylecli train samm` and `stylecli blend` need to know, without torch."""

from __future__ import annotations

from dataclasses import dataclass

from ...train.targets import TrainingSpec, setting
from ..base import MethodSpec, Option
from . import BASE, MISSED_CLEANUP, MISSED_THRESHOLD, NETWORK


@dataclass
class SAMMTrainingConfig:
    run_dir: str
    model: str = setting("synthface-64", "Pack with the frozen e4e encoder and generator, the discriminator and the "
                                         "loss networks.")
    data: str = setting("synth", "'synth' (train-stream faces, shares of them with out-of-domain additions or moved "
                                 "heads) or a folder of aligned face images.")
    ood_share: float = setting(0.5, "synth: share of faces with out-of-domain additions (hats, hands, stickers, "
                                    "shapes, textures).", min=0)
    geometric_share: float = setting(0.25, "synth: share of faces whose head is moved, rotated or scaled.", min=0)
    batch: int = setting(8, "Total batch size over all processes.", min=1)
    steps: int = setting(8000, "Optimisation steps.", min=1)
    scales: str = setting("auto", "Generator resolutions with an alignment block, e.g. 8,16,32,64 ('auto': 8..64 at "
                                  "64 px, the paper's 32..256 at 1024 px).")
    lr: float = setting(1e-4, "Adam learning rate of the taps and blocks (the paper: 2e-5 at batch 2 over far more "
                              "steps).", min=0)
    progressive: bool = setting(True, "Grow the mask resolution as the paper does: the coarsest scale alone first, "
                                      "one finer scale every 20% of the steps from 10%; --no-progressive trains "
                                      "every scale from the first step.")
    flow_scales: str = setting("all", "The scales whose blocks align (warp) the generator feature, e.g. 16,32; the "
                                      "others only mask ('all': every scale, as the paper).")
    hidden_max: int = 32               # cap on an alignment net's width (2 * channels below it)
    cycles: int = 2                    # refinement cycles N (the paper's default)
    max_flow: float = 0.08             # flow bound in normalised grid units
    # Losses (the official E4E_Face.yml): MSE 1, identity 0.1, perceptual 1 with its style term 50, adversarial 0.5,
    # mask 5.0 = sum over scales of 0.04 mean(min(m, 1 - m)) + max(0, mean(m) - cap); two departures, measured
    # (docs/samm.md): the perceptual, style and identity terms judge G's aligned output ("generated"; the official:
    # "blend") and the blend's MSE weighs 10 (with the official's, on the blend, masks settle uniform and soft).
    # With the mask target below on, the area caps are off by default: on faces whose occluders cover more than a
    # cap, the caps held the masks at a third (measured, docs/samm.md).
    perceptual_on: str = "generated"
    mse_weight: float = 10.0
    id_weight: float = 0.1
    perceptual_weight: float = 1.0
    style_weight: float = 50.0
    adv_weight: float = 0.5
    mask_weight: float = 5.0
    binary_weight: float = 0.04
    area_caps: str = setting("off", "Mask area caps per scale, coarse to fine (the last repeats), and the gathered "
                                     "mask's cap after a '/' (default 0.20), e.g. the official 0.3,0.3,0.2,0.2/0.2; "
                                     "'off': none (the mask target bounds the area instead).")
    # Self-supervised invertibility target (a departure, docs/samm.md): the mask at the output size is also pulled
    # by binary cross-entropy towards 1[mean over channels of (x - G(w, aligned))^2 > target_threshold], the pixels
    # the aligned generator misses (detached; computed from the input alone, never from ground-truth masks).
    target_weight: float = setting(3.0, "Weight of the self-supervised mask target: binary cross-entropy towards the "
                                        "pixels the aligned generator misses (0: the paper's objective alone).",
                                   min=0)
    target_threshold: float = MISSED_THRESHOLD  # squared error in [-1, 1] units, mean over channels, of a missed pixel
    target_cleanup: int = MISSED_CLEANUP  # k of the morphological closing then opening of the target (1: none)
    scale_target: str = setting("area", "What each scale's alpha learns of the target: 'area' (the target's share of "
                                        "each cell) or 'max' (1 where any pixel of the cell is missed: coarse scales "
                                        "cover, finer ones carve the edges, as Algorithm 2's product gathers them).")
    # Edit invariance: a share of each batch is synthesised again with a random pack direction at a random strength
    # (+-edit_strength) and that pass's mask pulled towards the same target: the mask belongs to the input, not to
    # the edit, so `edit --method samm` keeps what is out of the domain without masking the edited face.
    edit_share: float = setting(0.5, "Share of each batch also passed edited (a random pack direction and strength) "
                                     "whose mask must match the unedited target (needs --target-weight).", min=0)
    edit_strength: float = 3.0
    d_lr: float = 2e-5
    betas: tuple = (0.0, 0.99)
    r1_gamma: float = 0.0              # the official sets R1 10 but an interval it never reaches: off
    ema_beta: float = 0.999
    progressive_start: int | None = None  # None: 10% of the steps; then one more (finer) scale every
    progressive_step: int | None = None   # None: 20% of the steps (the official: 2k, then every 4k)
    init: str | None = setting(None, "Start the taps and blocks from this samm run folder or pack (at its scales and "
                                     "flows: --scales or --flow-scales that ask for others are an error).")
    checkpoint_every: int = setting(250, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    workers: int = setting(1, "Processes that read or render training images beside training (0: none).", min=0)
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"


SPEC = MethodSpec(
    name="samm",
    summary="e4e plus spatial alignment and an invertibility mask: out-of-domain content (accessories, occluders, "
            "background) is blended back from the input.",
    implementation="stylecli.methods.samm.method:SAMMMethod",
    networks=(BASE, NETWORK),
    makes_masks=True,
    options=(
        Option("mask", str, "sharp", "sharp: the pixels the generator misses inside the region the blocks' mask marks "
               "(0/1, the input's own outlines); soft: Algorithm 2's mask as it is (as soft as its coarsest scale).",
               choices=("sharp", "soft")),
    ),
    training=TrainingSpec(
        name="samm", summary="Train SAMM's taps and alignment blocks against a pack's frozen e4e encoder and "
                             "generator (the paper's losses; ground-truth masks are never used).",
        config=SAMMTrainingConfig, trainer="stylecli.methods.samm.train:SAMMTrainer",
        export="stylecli.methods.samm.train:samm_from_run",
        example="stylecli train samm --model synthface-64 --data synth --steps 8000 --run-dir runs/samm"),
)
