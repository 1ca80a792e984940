"""Atomic training checkpoints in a run folder (never shipped: packs hold safetensors only)."""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..fileio import atomic_path
from .distributed import DistContext

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write `state` (plus this process's hardware) to run_dir/checkpoint.pt atomically (temporary file + rename)."""
    state = {**state, "hardware": hardware()}
    with atomic_path(run_dir / CHECKPOINT) as tmp:
        torch.save(state, tmp)
    return run_dir / CHECKPOINT


def hardware() -> str:
    """Where this process trains: CPU model, torch threads, GPU (recorded in checkpoints, then in packs)."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {gpu}"


def rng_state(rng: np.random.Generator) -> str:
    """A numpy generator's state as text (its 128-bit integers would not survive a weights-only load otherwise)."""
    return repr(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, text: str) -> None:
    rng.bit_generator.state = ast.literal_eval(text)


def check_resume(run_dir: Path, saved: dict, now: dict, fixed: tuple[str, ...]) -> None:
    """A resumed run continues with the settings it was started with: ValueError (one line) naming each of `fixed`
    that the new command changes (others, e.g. the number of steps, may change)."""
    changed = [f"--{k.replace('_', '-')} {now[k]} (the run has {saved.get(k)})" for k in fixed
               if k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError(f"{run_dir}: --resume continues a run with its own settings; changed: {'; '.join(changed)}")


def load_checkpoint(run_dir: Path) -> dict | None:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class MetricsLog:
    """JSON lines, one record per reporting interval, appended and flushed."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class StepTrainer:
    """The loop shared by step-counted trainers: train_step() until cfg.steps, a metrics record (means over the
    window) every cfg.log_every steps, a checkpoint every cfg.checkpoint_every steps and at the end.

    Subclasses set cfg, step, elapsed, log and implement train_step() -> dict and save(); a subclass that joins
    torchrun's process group sets ctx, and only its rank 0 writes the log."""

    ctx = DistContext()  # one process unless the subclass replaces it

    def log_extras(self) -> dict:
        return {}

    def progress(self) -> tuple[int, int]:
        """(steps done, steps in all)."""
        return self.step, self.cfg.steps

    def run(self, on_progress: Callable[[int, dict], None] | None = None) -> None:
        window, tick = [], time.time()
        while self.step < self.cfg.steps:
            window.append(self.train_step())
            now = time.time()
            self.elapsed += now - tick
            tick = now
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                record = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                record.update(step=self.step, elapsed_s=round(self.elapsed, 1), **self.log_extras())
                if self.ctx.is_main:
                    self.log.write(record)
                window = []
                if on_progress:
                    on_progress(self.step, record)
            if self.step % self.cfg.checkpoint_every == 0:
                self.save()
        self.save()
