"""Training images: rendered on the fly from random train seeds, or read from a folder (e.g. aligned FFHQ)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..imageio import image_to_tensor, list_images, load_image
from .render import render_seed
from .sets import TRAIN_SEED_LIMIT


class ImageSource:
    """An endless stream of [N, 3, R, R] batches in [-1, 1].

    data -- "synth" to render training faces from random seeds, or a folder of images (resized to `resolution`).
    rank/world_size -- each process of a distributed run draws a disjoint stream.
    `rng` is the stream's state (checkpointed by the trainers).
    """

    def __init__(self, data: str, resolution: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.data, self.resolution = data, resolution
        self.rng = np.random.default_rng([seed, rank, world_size])
        self.files: list[Path] = []
        if data != "synth":
            folder = Path(data)
            if not folder.is_dir():
                raise FileNotFoundError(f"{data}: not a folder of images (or 'synth')")
            self.files = list_images(folder)[rank::world_size]
            if not self.files:
                raise FileNotFoundError(f"{data}: no images found")

    def _one(self) -> torch.Tensor:
        if self.files:
            path = self.files[int(self.rng.integers(len(self.files)))]
            return image_to_tensor(load_image(path), self.resolution)
        image, _ = render_seed(int(self.rng.integers(TRAIN_SEED_LIMIT)), self.resolution)
        return image_to_tensor(image)

    def batch(self, n: int) -> torch.Tensor:
        return torch.cat([self._one() for _ in range(n)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self._one()
