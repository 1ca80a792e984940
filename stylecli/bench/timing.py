"""Timing and peak-memory measurement shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Measurement:
    seconds: list[float]          # per repetition
    peak_bytes: int | None        # peak process RSS (CPU) or peak allocated device memory (CUDA) while running
    base_bytes: int | None        # RSS (CPU) or allocated device memory (CUDA) just before

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5) -> Measurement:
    """Median-ready wall times of `fn` after warm-up, and the peak memory while it ran."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()
        base = (_rss_kib("VmRSS") or 0) * 1024 or None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _rss_kib("VmHWM")
        peak = hwm * 1024 if hwm else None
    return Measurement(times, peak, base)
