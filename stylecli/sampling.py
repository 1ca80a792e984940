"""Seeds to latents to images."""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch

from .core.networks import Generator


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad seed list {text!r}: use numbers and ranges such as 0-15,20")
        start, end = int(m[1]), int(m[2] or m[1])
        if end < start:
            raise ValueError(f"bad seed range {part!r}: the end is before the start")
        seeds.extend(range(start, end + 1))
    return seeds


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """[1, z_dim]; the same numbers NVIDIA's generate.py draws for a seed, so results can be compared."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float()


@torch.no_grad()
def generate(G: Generator, seeds: list[int], truncation_psi: float = 1.0, noise_mode: str = "const",
             batch_size: int = 8) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yields (seeds, images [N, C, R, R] in about [-1, 1]) batch by batch."""
    device = next(G.parameters()).device
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i:i + batch_size]
        z = torch.cat([z_from_seed(s, G.z_dim) for s in chunk]).to(device)
        yield chunk, G(z, truncation_psi=truncation_psi, noise_mode=noise_mode)
