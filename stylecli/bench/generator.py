"""`stylecli bench generator` and `stylecli bench ops`."""

from __future__ import annotations

import contextlib

import torch

from ..core.networks import Generator
from ..core.ops import _plugin, bias_act, upfirdn2d
from .timing import Measurement, measure


def bench_generator(G: Generator, device: torch.device, batch: int = 1, dtype: str = "fp32", repeats: int = 5,
                    warmup: int = 1) -> Measurement:
    """Forward passes of `G` on random z (const noise), under no_grad; fp16 uses CUDA autocast."""
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("fp16 timing needs a CUDA device")
    G = G.to(device).eval()
    z = torch.randn(batch, G.z_dim, device=device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if dtype == "fp16" else contextlib.nullcontext()

    def step():
        with torch.no_grad(), autocast:
            G(z)

    return measure(step, device, warmup=warmup, repeats=repeats)


# Representative shapes of config-f: (name, input shape, callable on x)
def _op_cases(device):
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    b = torch.randn(64, device=device)
    return [
        ("bias_act lrelu [8,64,128,128]", (8, 64, 128, 128), lambda x: bias_act.bias_act(x, b, act="lrelu")),
        ("upsample2d [8,64,128,128]", (8, 64, 128, 128), lambda x: upfirdn2d.upsample2d(x, f)),
        ("downsample2d [8,64,128,128]", (8, 64, 128, 128), lambda x: upfirdn2d.downsample2d(x, f)),
        ("filter2d pad [8,64,257,257]", (8, 64, 257, 257), lambda x: upfirdn2d.upfirdn2d(x, f, padding=1)),
    ]


def bench_ops(device: torch.device, repeats: int = 10) -> list[dict]:
    """Per op: reference-path time and, on CUDA with the kernels built, kernel time and the ratio."""
    rows = []
    kernels = device.type == "cuda" and all(_plugin.get_plugin(n) is not None for n in ("bias_act", "upfirdn2d"))
    for name, shape, fn in _op_cases(device):
        x = torch.randn(shape, device=device)
        with _ops_mode("ref"):
            ref = measure(lambda: fn(x), device, repeats=repeats).median
        row = {"op": name, "reference_s": ref, "kernel_s": None, "speedup": None}
        if kernels:
            kern = measure(lambda: fn(x), device, repeats=repeats).median
            row.update(kernel_s=kern, speedup=ref / kern)
        rows.append(row)
    return rows


@contextlib.contextmanager
def _ops_mode(mode: str):
    import os
    old = os.environ.get("STYLECLI_OPS")
    os.environ["STYLECLI_OPS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STYLECLI_OPS")
        else:
            os.environ["STYLECLI_OPS"] = old
