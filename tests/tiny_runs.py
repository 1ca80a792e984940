"""The tiny training runs that tests build packs from: a 32 px generator (W of 16 dims) and a domain network."""

from pathlib import Path

from stylecli.train.domainnet import DomainNetTrainer, DomainNetTrainingConfig
from stylecli.train.generator import GeneratorTrainer, GeneratorTrainingConfig


def train_tiny_runs(root: Path) -> tuple[Path, Path]:
    """Train both under `root` (a few seconds); returns their run folders (generator, domain network)."""
    GeneratorTrainer(GeneratorTrainingConfig(run_dir=str(root / "g"), resolution=32, z_dim=16, w_dim=16,
                                             mapping_layers=2, channel_base=256, channel_max=16, batch=4,
                                             kimg=0.004)).run()
    DomainNetTrainer(DomainNetTrainingConfig(run_dir=str(root / "dn"), resolution=32, identities=4, steps=1)).run()
    return root / "g", root / "dn"
