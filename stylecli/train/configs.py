"""Configurations of the generator and domain-network trainers (no torch import: the CLI builds its flags from them).

Fields made with `setting()` are offered by `stylecli train generator|domainnet`; the others keep the paper's values.
"""

from __future__ import annotations

from dataclasses import dataclass

from .targets import setting


@dataclass
class GeneratorTrainingConfig:
    run_dir: str                       # folder for checkpoint, metrics and samples
    data: str = setting("synth", "'synth' (render faces on the fly) or a folder of aligned face images.")
    resolution: int = setting(64, "Image resolution (a power of two).")
    z_dim: int = setting(256, "Dimensionality of Z.")
    w_dim: int = setting(256, "Dimensionality of W.")
    mapping_layers: int = setting(4, "Depth of the mapping network.")
    channel_base: int = setting(2048, "Channels at a resolution = min(channel_base / resolution, channel_max).")
    channel_max: int = setting(128, "The widest layer.")
    batch: int = setting(16, "Total batch size over all processes.", min=1)
    kimg: float = setting(1000.0, "Training length in thousands of real images shown.", min=0)
    lr: float = 0.0025
    r1_gamma: float | None = None      # None: 0.0002 * resolution**2 / batch (StyleGAN2-ADA heuristic)
    pl_weight: float = 2.0
    style_mixing: float = 0.9
    mirror: bool = True
    ema_kimg: float | None = None      # None: batch * 10 / 32
    ema_rampup: float = 0.05
    g_reg_interval: int = 4
    d_reg_interval: int = 16
    checkpoint_kimg: float = setting(4.0, "Checkpoint interval in kimg (also written at the end).")
    sample_kimg: float = setting(20.0, "Sample-grid interval in kimg.")
    log_kimg: float = 1.0
    workers: int = setting(1, "Processes that read or render training images beside training (0: none).", min=0)
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"
    init: str | None = setting(None, "Continue this pack's generator and discriminator in a new run.")

    def generator_kwargs(self) -> dict:
        return dict(z_dim=self.z_dim, w_dim=self.w_dim, img_resolution=self.resolution,
                    mapping_layers=self.mapping_layers, channel_base=self.channel_base, channel_max=self.channel_max)

    def discriminator_kwargs(self) -> dict:
        return dict(img_resolution=self.resolution, channel_base=self.channel_base, channel_max=self.channel_max)


@dataclass
class DomainNetTrainingConfig:
    run_dir: str
    resolution: int = setting(64, "Image resolution.")
    identities: int = setting(32, "People per step (each rendered twice).", min=2)
    steps: int = setting(3000, "Optimisation steps.", min=1)
    lr: float = 1e-3
    temperature: float = 0.1
    checkpoint_every: int = setting(200, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    seed: int = setting(0, "Random seed.")


@dataclass
class DetectorTrainingConfig:
    run_dir: str
    steps: int = setting(3000, "Optimisation steps.", min=1)
    batch: int = setting(16, "Scenes rendered per step.", min=1)
    width: int = setting(32, "Channels of the detector's first full stage (the backbone widens to 4x).", min=8)
    input_size: int = setting(160, "Longer side photos are resized to for detection (a multiple of 32).", min=64)
    crop: int = setting(64, "Side of the refiner's canvas crops (a multiple of 16).", min=16)
    crops_per_face: int = 3            # refiner crops per face and step (full, a third and a ninth of the jitter)
    supersample: int = 2               # faces of training scenes are composited at 2x (the `scenes` set: 4x)
    lr: float = setting(2e-3, "Adam learning rate (100 steps of warm-up, then cosine decay).")
    workers: int = setting(1, "Processes that render scenes beside training (0: none).", min=0)
    checkpoint_every: int = setting(200, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"


@dataclass
class FaceRegionTrainingConfig:
    run_dir: str
    steps: int = setting(1500, "Optimisation steps.", min=1)
    batch: int = setting(16, "Faces rendered per step.", min=1)
    width: int = setting(16, "Channels of the network's first stage (2x and 4x below it).", min=4)
    input_size: int = setting(64, "Resolution the network reads (a multiple of 8).", min=8)
    lr: float = setting(2e-3, "Adam learning rate (100 steps of warm-up, then cosine decay).")
    workers: int = setting(1, "Processes that render faces beside training (0: none).", min=0)
    checkpoint_every: int = setting(200, "Checkpoint interval in steps (also written at the end).", min=1)
    log_every: int = 25
    seed: int = setting(0, "Random seed.")
    device: str = "cpu"
