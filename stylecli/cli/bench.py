"""`stylecli bench ...`: speed and memory tables."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from .common import DeviceOption, UsageError, console

bench_app = typer.Typer(help="Benchmarks that print tables (speed, memory).", no_args_is_help=True)


@bench_app.command("generator")
def generator_command(
    config: str = typer.Option("ffhq-1024", "--config", help="Random-weight configuration (see stylecli.models.CONFIGS)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Time this model instead of --config."),
    device: str = DeviceOption,
    batch: list[int] = typer.Option([1], "--batch", help="Batch size (repeatable)."),
    dtype: list[str] = typer.Option(["fp32"], "--dtype", help="fp32 or fp16 (CUDA only; repeatable)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed repetitions after one warm-up."),
    json_output: bool = typer.Option(False, "--json", help="Print the rows as JSON too."),
):
    """Generator forward speed (median seconds per image after warm-up) and peak memory.

    Example: stylecli bench generator --config ffhq-1024 --device cpu --batch 1
    """
    import torch

    from ..bench.generator import bench_generator
    from ..models import load_generator, random_generator, resolve_device

    dev = resolve_device(device)
    G = load_generator(model, dev) if model else random_generator(config).to(dev)
    label = model or f"random:{config}"
    table = Table("model", "device", "dtype", "batch", "s/img", "img/s", "peak memory", "over baseline",
                  title=f"generator forward, {torch.get_num_threads()} threads")
    rows = []
    for dt in dtype:
        if dt not in ("fp32", "fp16"):
            raise UsageError(f"--dtype must be fp32 or fp16, not {dt!r}")
        if dt == "fp16" and dev.type != "cuda":
            raise UsageError("fp16 timing needs --device cuda")
        for n in batch:
            m = bench_generator(G, dev, batch=n, dtype=dt, repeats=repeats)
            per_img = m.median / n
            row = {"model": label, "device": str(dev), "dtype": dt, "batch": n, "seconds_per_image": per_img,
                   "images_per_second": 1 / per_img, "peak_bytes": m.peak_bytes,
                   "over_baseline_bytes": (m.peak_bytes - m.base_bytes) if m.peak_bytes and m.base_bytes else None}
            rows.append(row)
            table.add_row(label, str(dev), dt, str(n), f"{per_img:.3f}", f"{1 / per_img:.2f}", _gb(m.peak_bytes),
                          _gb(row["over_baseline_bytes"]))
    console.print(table)
    console.print("peak memory: process RSS on CPU (weights and libraries included), allocated memory on CUDA")
    if json_output:
        print(json.dumps(rows, indent=2))


@bench_app.command("ops")
def ops_command(device: str = DeviceOption, repeats: int = typer.Option(10, "--repeats", min=1)):
    """Reference path versus CUDA kernel for each custom op (kernel columns need a CUDA device).

    Example: stylecli bench ops --device cuda
    """
    from ..bench.generator import bench_ops
    from ..models import resolve_device

    dev = resolve_device(device)
    table = Table("op", "reference (ms)", "kernel (ms)", "kernel speed-up", title=f"custom ops on {dev}")
    for row in bench_ops(dev, repeats=repeats):
        kern = row["kernel_s"]
        table.add_row(row["op"], f"{row['reference_s'] * 1e3:.2f}", "-" if kern is None else f"{kern * 1e3:.2f}",
                      "-" if kern is None else f"{row['speedup']:.2f}x")
    console.print(table)
    if dev.type != "cuda":
        console.print("no CUDA device: only the reference path was timed")


def _gb(n):
    return "-" if n is None else f"{n / 2**30:.2f} GB"
