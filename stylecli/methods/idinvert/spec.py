"""IDInvert's declaration: what `--method idinvert` and `stylecli train idinvert` need to know, without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...train.targets import TrainingSpec, setting
from ..base import MethodSpec, Option
from . import NETWORK

# docs/idinvert.md, "Steps, learning rate and lambda_dom": PSNR and the smile edit against each, measured.
DEFAULT_STEPS = 40          # with the rampdown, 40 steps reach what 60 at a constant rate did (the CPU budget)
DEFAULT_LR = 0.06           # 6x the paper's 0.01
DEFAULT_DOMAIN_REG = 1.25   # the paper's lambda_dom is 2; 1.25 buys 0.4 dB and keeps the smile edit at 0.9x e4e's
DEFAULT_LR_RAMPDOWN = 0.25  # the learning rate's cosine fall over the last quarter of the steps (StyleGAN2's projector)


@dataclass
class IDInvertTrainingConfig:
    run_dir: str
    model: str = setting("synthface-64", "Pack with the frozen generator, the discriminator (fine-tuned alongside) "
                                         "and the loss networks.")
    data: str = setting("synth", "'synth' (render faces on the fly) or a folder of aligned face images.")
    batch: int = setting(8, "Total batch size over all processes.", min=1)
    steps: int = setting(5000, "Optimisation steps (about 0.8 s each at batch 8 on one CPU thread at 64 px).", min=1)
    lr: float = setting(1e-4, "Adam learning rate of the encoder and the discriminator (the paper's).", min=0)
    betas: tuple = (0.9, 0.99)          # the paper's Adam betas, both networks
    mse_weight: float = 1.0             # pixel MSE
    perceptual_weight: float = setting(0.8, "Weight of the pack's perceptual distance (the paper: 5e-5 x VGG16 "
                                            "conv4_3 feature MSE, a different scale).", min=0)
    adv_weight: float = setting(0.08, "Weight of the encoder's adversarial term softplus(-D(G(E(x)))) (official "
                                      "0.08).", min=0)
    r1_gamma: float = 10.0              # R1 on real images (the paper's gamma)
    d_reg_interval: int = 16            # lazy R1: every 16 steps, weighted by the interval (StyleGAN2's schedule)
    encoder: dict = field(default_factory=dict)  # EncoderConfig overrides
    checkpoint_every: int = setting(250, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    workers: int = setting(1, "Processes that read or render training images beside training (0: none).", min=0)
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"


SPEC = MethodSpec(
    name="idinvert",
    summary="In-domain inversion: a domain-guided encoder's code refined per image by optimisation that keeps it "
            "near E(G(w)) (slower; sharper reconstructions that stay editable).",
    implementation="stylecli.methods.idinvert.method:IDInvert",
    networks=(NETWORK,),
    options=(
        Option("steps", int, DEFAULT_STEPS, "Optimisation steps per image (0: the encoder's code alone).",
               min=0, max=10_000),
        Option("lr", float, DEFAULT_LR, "Adam learning rate of the optimisation.", min=0, max=1),
        Option("domain_reg", float, DEFAULT_DOMAIN_REG, "Weight of the domain regulariser |w - E(G(w))|^2.",
               min=0, max=1000),
        Option("no_domain_reg", bool, False, "Optimise without the domain regulariser (the paper's ablation)."),
        Option("lr_rampdown", float, DEFAULT_LR_RAMPDOWN, "Last fraction of the steps over which the learning rate "
               "falls to 0 on a cosine (0: a constant rate).", min=0, max=1),
        Option("chunk", int, 0, "Images optimised together, a short chunk padded to its size (0: 1 on a CPU, 8 on "
               "a GPU). On a CPU --chunk 16 --batch 16 costs ~0.4x per image (with --precision bf16 ~0.25x), but an "
               "image alone costs a whole chunk; any chunk gives an image the same result whatever batch it came "
               "in.", min=0, max=256),
        Option("precision", str, "fp32", "fp32, or bf16: the optimisation's passes under bfloat16 autocast (~1.5x "
               "faster on CPUs with AMX; the codes stay float32).", choices=("fp32", "bf16")),
    ),
    training=TrainingSpec(
        name="idinvert", summary="Train IDInvert's domain-guided encoder against a pack's frozen generator (pixel, "
                                 "perceptual and adversarial losses; the pack's discriminator fine-tuned with R1).",
        config=IDInvertTrainingConfig, trainer="stylecli.methods.idinvert.train:IDInvertTrainer",
        export="stylecli.methods.idinvert.train:encoder_from_run",
        example="stylecli train idinvert --model synthface-64 --data synth --steps 5000 --run-dir runs/idinvert"),
)
