"""Saved latent codes: safetensors with the pack, the method and the source recorded in the metadata."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from .fileio import atomic_path
from .methods.base import Inversion

SUFFIX = ".latent.safetensors"


class LatentError(Exception):
    """A latent file is missing, malformed or belongs to another pack."""


def save_latent(path: Path, inversion: Inversion, index: int, pack: str, method: str, source: str) -> Path:
    tensors = {f"latent.{k}": v[index:index + 1].detach().cpu().contiguous() for k, v in inversion.latents.items()}
    tensors.update({f"extra.{k}": v[index:index + 1].detach().cpu().contiguous() for k, v in inversion.extras.items()})
    meta = {"pack": pack, "method": method, "source": source, "format": "stylecli-latent/1"}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_latent(path: Path) -> tuple[Inversion, dict]:
    """(Inversion without image, metadata)."""
    if not Path(path).is_file():
        raise LatentError(f"{path}: no such latent file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise LatentError(f"{path}: not a stylecli latent file ({exc})") from None
    if meta.get("format") != "stylecli-latent/1":
        raise LatentError(f"{path}: not a stylecli latent file")
    latents = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("latent.")}
    extras = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("extra.")}
    return Inversion(latents=latents, image=None, extras=extras), meta
