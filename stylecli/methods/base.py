"""The interface every inversion method implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class MethodUnavailable(Exception):
    """The method asked for does not exist or is not built."""


@dataclass
class Inversion:
    """A photo found in the generator: its latent code(s) and the reconstruction they give."""
    latents: dict[str, torch.Tensor]     # e.g. {"w_plus": [N, num_ws, w_dim]}; methods add feature codes
    image: torch.Tensor                  # [N, 3, R, R] reconstruction in [-1, 1]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. SAMM's invertibility mask


class InversionMethod(Protocol):
    name: str

    def invert(self, images: torch.Tensor) -> Inversion:
        """images [N, 3, R, R] in [-1, 1], aligned to the pack's domain, on any device: the method computes on its
        own and returns latents and image on the images' device."""

    def edit(self, inversion: Inversion, direction: torch.Tensor, strength: float) -> torch.Tensor:
        """The edited image [N, 3, R, R] for a W/W+ direction scaled by `strength`, on the inversion's device."""
