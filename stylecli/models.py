"""Getting a generator from what a user types: a pack name, a pack folder, an official checkpoint file, or
`random:CONFIG` (random weights of a named configuration, for benchmarks and smoke tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from .core.networks import Generator
from .packs import Pack, PackError
from .packs.convert import ConversionError, convert_checkpoint

# Named network configurations. ffhq-1024 is the official StyleGAN2 config-f.
CONFIGS: dict[str, dict] = {
    "ffhq-1024": dict(z_dim=512, w_dim=512, img_resolution=1024, mapping_layers=8, channel_base=32768, channel_max=512),
    "ffhq-256": dict(z_dim=512, w_dim=512, img_resolution=256, mapping_layers=8, channel_base=16384, channel_max=512),
    "synth-64": dict(z_dim=256, w_dim=256, img_resolution=64, mapping_layers=4, channel_base=4096, channel_max=256),
    "tiny-32": dict(z_dim=32, w_dim=32, img_resolution=32, mapping_layers=2, channel_base=256, channel_max=32),
}


class ModelError(Exception):
    """The model a user named cannot be found or loaded."""


def random_generator(config: str, seed: int = 0) -> Generator:
    if config not in CONFIGS:
        raise ModelError(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Generator(**CONFIGS[config]).eval().requires_grad_(False)


def load_generator(spec: str, device: str | torch.device = "cpu") -> Generator:
    """Generator from `spec`: "random:CONFIG", a pack name or folder, or a .pkl/.pt checkpoint."""
    if spec.startswith("random:"):
        return random_generator(spec.split(":", 1)[1]).to(device)
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            return convert_checkpoint(path).generator.eval().requires_grad_(False).to(device)
        except ConversionError as exc:
            raise ModelError(str(exc)) from None
    try:
        return Pack.open(spec).generator(device)
    except PackError as exc:
        raise ModelError(str(exc)) from None


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for a --device value: "cpu", "cuda", "cuda:N" or "auto" (CUDA when present, else the CPU).

    Anything else is a one-line ModelError: other back-ends (mps, meta, xla, ...) are not supported by the networks'
    code paths, and "cpu:N" is refused too because a CPU index means nothing to torch, so accepting it would only
    suggest a choice that does not exist. "cuda:N" needs N < the number of CUDA devices; torch itself would accept
    any N and fail only at first use ("invalid device ordinal").
    """
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str):
        raise ModelError(f"device must be cpu, cuda, cuda:N or auto, not {text!r}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    suffix = text[len("cuda:"):] if text.startswith("cuda:") else None
    # isascii: str.isdigit alone takes digits such as "²" that int() refuses
    if text != "cuda" and not (suffix and suffix.isascii() and suffix.isdigit()):
        raise ModelError(f"unknown device {text!r}; use cpu, cuda, cuda:N (N = 0, 1, ...) or auto")
    if not torch.cuda.is_available():
        raise ModelError(f"--device {text} asked for, but no CUDA device is available (use cpu or auto)")
    index = int(suffix) if suffix is not None else None
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ModelError(f"--device {text}: there {'is' if count == 1 else 'are'} {count} CUDA "
                         f"device{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
