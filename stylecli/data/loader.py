"""Training images: rendered on the fly from train seeds, or read from a folder of aligned faces (e.g. FFHQ).

Sample j of a process's stream is a pure function of (seed, rank, world_size, j): its own random generator picks the
face (a train seed, or a file), so batch i of n images is samples [i n, (i + 1) n). The source counts the samples it
has handed out (`position`); a trainer checkpoints that count and restores it to continue the very same stream. A
live random state could not do this once worker processes prefetch: it runs ahead of what training consumed.

- synth: train seeds in [0, 1e9); rank r of W draws only seeds congruent to r mod W, so the ranks' faces are disjoint.
- a folder: every readable image found recursively (evaluation masks, `*_mask.*`, excluded), any size, resized to
  the resolution; rank r of W draws from files r, r + W, ... (disjoint shares). A file that fails to read is
  replaced by another draw of the same sample's generator (so the stream stays a function of j) and counted in
  `skipped`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..imageio import ImageError, image_to_tensor, load_image
from .render import render_seed
from .sets import TRAIN_SEED_LIMIT, find_images, render_training_scene

MAX_REDRAWS = 100  # consecutive unreadable draws for one sample before the folder is declared unusable


class _Stream(Dataset):
    """Sample j of one process's stream, with the number of unreadable files it replaced."""

    def __init__(self, files: list[Path], resolution: int, seed: int, rank: int, world_size: int,
                 scenes: dict[str, float]):
        self.files, self.resolution = files, resolution
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.scenes = scenes

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.rank, self.world_size, j])
        if not self.files:
            face = self.rank + self.world_size * int(rng.integers(TRAIN_SEED_LIMIT // self.world_size))
            if not self.scenes:
                return image_to_tensor(render_seed(face, self.resolution)[0])[0], 0
            u, kind = rng.uniform(), "plain"
            for name, share in self.scenes.items():
                if u < share:
                    kind = name
                    break
                u -= share
            return image_to_tensor(render_training_scene(face, self.resolution, rng, kind))[0], 0
        for redraw in range(MAX_REDRAWS):
            path = self.files[int(rng.integers(len(self.files)))]
            try:
                return image_to_tensor(load_image(path), self.resolution)[0], redraw
            except ImageError:
                continue
        raise ImageError(f"{path.parent}: {MAX_REDRAWS} draws in a row found no readable image")


class _Batches:
    """Index lists [start, start + n), [start + n, start + 2n), ... without end (a DataLoader batch sampler)."""

    def __init__(self, start: int, n: int):
        self.start, self.n = start, n

    def __iter__(self):
        start = self.start
        while True:
            yield list(range(start, start + self.n))
            start += self.n


def _one_thread(worker_id: int) -> None:
    # Each worker renders or decodes one image at a time; torch's default of one thread per core in every worker
    # would fight the training process for the same cores.
    torch.set_num_threads(1)


def stream_batches(dataset: Dataset, position: int, batch: int, workers: int, collate_fn=None) -> Iterator:
    """An endless iterator of batches of `dataset` (sample j a function of j alone) from sample `position` on,
    prefetched by `workers` processes of one thread each: what a resumed run continues exactly from."""
    # A private generator: making an iterator draws a base seed, which must not move torch's global stream (the
    # trainers checkpoint it). Nothing here uses the base seed: every sample seeds itself.
    return iter(DataLoader(dataset, batch_sampler=_Batches(position, batch), num_workers=workers,
                           collate_fn=collate_fn, worker_init_fn=_one_thread if workers else None,
                           generator=torch.Generator(), persistent_workers=False))


class ImageSource:
    """An endless stream of [N, 3, R, R] batches in [-1, 1] (see the module's docstring).

    data -- "synth", or a folder of aligned face images.
    rank/world_size -- this process's share of a distributed run.
    workers -- DataLoader processes that prefetch batches (0: render or read in this process).
    scenes -- synth: shares of training scenes other than plain faces, e.g. {"ood": 0.5, "geometric": 0.25}
              (`stylecli.data.sets.render_training_scene`); the rest are plain.
    position -- samples handed out so far (checkpoint it; assigning it continues the stream from there).
    skipped -- unreadable files replaced since this source was made.
    """

    def __init__(self, data: str, resolution: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, scenes: dict[str, float] | None = None):
        files: list[Path] = []
        if data != "synth":
            folder = Path(data)
            if not folder.is_dir():
                raise FileNotFoundError(f"{data}: not a folder of images (or 'synth')")
            files = find_images(folder)[rank::world_size]
            if not files:
                raise FileNotFoundError(f"{data}: no images found" + (f" for process {rank} of {world_size}"
                                                                       if world_size > 1 else ""))
        self.data, self.resolution, self.workers = data, resolution, workers
        if scenes and sum(scenes.values()) > 1:
            raise ValueError(f"scene shares {scenes} add up to more than 1")
        self.stream = _Stream(files, resolution, seed, rank, world_size, dict(scenes or {}))
        self.skipped = 0
        self._position = 0
        self._batches = None  # (batch size, DataLoader iterator) once batches are drawn

    @property
    def position(self) -> int:
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        self.close()  # prefetched batches belong to the old position
        self._position = int(value)

    def batch(self, n: int) -> torch.Tensor:
        """The next n images of the stream."""
        if self._batches is None or self._batches[0] != n:
            self.close()
            self._batches = (n, stream_batches(self.stream, self._position, n, self.workers))
        images, redraws = next(self._batches[1])
        self._position += n
        self.skipped += int(redraws.sum())
        return images

    def close(self) -> None:
        """Stop the worker processes (a later batch starts new ones): dropping the DataLoader iterator does it."""
        self._batches = None
