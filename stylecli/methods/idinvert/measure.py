"""How IDInvert's reconstruction grows with optimisation steps: what its default --steps is chosen from.

    python -m stylecli.methods.idinvert.measure --model synthface-64 --count 6 --steps 300

For each of the first `count` indomain faces, alone: one optimisation of `steps` steps without early stopping,
recording every step's loss and PSNR; the PSNR "at S steps" is that of the lowest-loss code among the first S steps,
which is what `--steps S` returns (early stopping aside). Prints the mean PSNR at each S, e4e's PSNR on the same
faces, where the default early stop (20 steps without a 0.1% gain) would have stopped, and the seconds per step.
"""

from __future__ import annotations

import argparse
import time

import torch

from ...data.sets import make_sample
from ...imageio import image_to_tensor
from ...optimize import OptimizeConfig, optimize_codes
from .method import IDInvert, encode, inversion_loss

GRID = (0, 10, 25, 50, 75, 100, 150, 200, 300, 500)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N] PSNR in dB of images in [-1, 1]."""
    return 10 * torch.log10(4 / (x - y).square().mean(dim=[1, 2, 3]).clamp(min=1e-10))


def psnr_by_steps(method: IDInvert, image: torch.Tensor, steps: int, patience: int = 20,
                  tolerance: float = 1e-3) -> tuple[list[float], int]:
    """(PSNR of the best-loss code among the first S steps, for S = 0..steps; the step at which early stopping with
    `patience` and `tolerance` would have stopped, or `steps`) for one image [1, 3, R, R]."""
    assert image.shape[0] == 1
    with torch.no_grad():
        start = encode(method.E, image)
    objective = inversion_loss(method.G, method.E, method.losses, image, method.domain_weight)
    seen: list[tuple[float, float]] = []

    def loss_fn(codes: dict) -> torch.Tensor:
        loss = objective(codes)
        with torch.no_grad():
            y = method.G.synthesis(codes["w_plus"], noise_mode="const")
            seen.append((float(loss), float(psnr(y, image))))
        return loss

    with torch.enable_grad():
        optimize_codes({"w_plus": start}, loss_fn, OptimizeConfig(steps=steps, lr=method.lr, patience=0))
    curve, best = [], (float("inf"), 0.0)
    reference, since, stopped = float("inf"), 0, steps
    for step, (loss, value) in enumerate(seen):
        best = min(best, (loss, value), key=lambda t: t[0])
        curve.append(best[1])
        if loss < reference * (1 - tolerance):
            reference, since = loss, 0
        else:
            since += 1
        if since >= patience and stopped == steps:
            stopped = step
    return curve, stopped


def main() -> None:
    from ...methods import METHODS
    from ...packs import Pack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synthface-64")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--domain-reg", type=float, default=None)
    args = parser.parse_args()
    pack = Pack.open(args.model)
    options = {} if args.domain_reg is None else {"domain_reg": args.domain_reg}
    method = METHODS["idinvert"].load(pack, "cpu", **options)
    faces = torch.cat([image_to_tensor(make_sample("indomain", i).image, method.resolution)
                       for i in range(args.count)])
    if pack.has("e4e_encoder"):
        e4e = METHODS["e4e"].load(pack, "cpu")
        print(f"e4e: {float(psnr(e4e.invert(faces).image, faces).mean()):.2f} dB")
    curves, stops, started = [], [], time.time()
    for i in range(args.count):
        curve, stopped = psnr_by_steps(method, faces[i:i + 1], args.steps)
        curves.append(curve)
        stops.append(stopped)
    seconds = (time.time() - started) / (args.count * (args.steps + 1))
    print(f"idinvert, domain_reg {method.domain_weight}: {seconds:.3f} s per step and image (with the PSNR "
          f"bookkeeping), {torch.get_num_threads()} threads")
    for S in (s for s in GRID if s <= args.steps):
        print(f"  {S:4d} steps: {sum(c[S] for c in curves) / len(curves):.2f} dB")
    print(f"  the default early stop would stop at steps {stops}")


if __name__ == "__main__":
    main()
