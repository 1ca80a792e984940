"""Saved latent codes: safetensors with the pack, the method and the source recorded in the metadata.

A file holds "latent.NAME" tensors (at least latent.w_plus [1, num_ws, w_dim]) and "extra.NAME" tensors, each with
one row. Reading it for a method checks everything an edit relies on, so a wrong file fails with one line instead of
a shape error deep in the generator or an image of NaNs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

from .fileio import describe_problem, printable, write_files
from .methods.base import Inversion

SUFFIX = ".latent.safetensors"
FORMAT = "stylecli-latent/1"
MAX_BYTES = 1 << 30  # far above any method's codes; a larger file is not read into memory


class LatentError(Exception):
    """A latent file is missing, malformed or belongs to another pack."""


@dataclass(frozen=True)
class LatentSpec:
    """What a latent file must match to be edited by a loaded method: the pack and method that wrote it, and the
    W+ shape of the pack's generator."""
    pack: str
    method: str
    num_ws: int
    w_dim: int

    @classmethod
    def of(cls, method, pack: str) -> "LatentSpec":
        """For a loaded method (any: every method synthesises through its generator `G`)."""
        return cls(pack, method.name, method.G.num_ws, method.G.w_dim)


def latent_bytes(inversion: Inversion, index: int, pack: str, method: str, source: str,
                 face: dict | None = None) -> bytes:
    """Row `index` of `inversion` as the contents of a latent file. `source` is recorded as printable text (the
    format's metadata is UTF-8; a file name that is not would make the write fail); `face`, for a face aligned out of
    a photo, records where (its index, the photo's size, the crop's square) as JSON under "face"."""
    tensors = {f"latent.{k}": v[index:index + 1].detach().cpu().contiguous() for k, v in inversion.latents.items()}
    tensors.update({f"extra.{k}": v[index:index + 1].detach().cpu().contiguous() for k, v in inversion.extras.items()})
    meta = {"pack": pack, "method": method, "source": printable(source), "format": FORMAT}
    if face is not None:
        meta["face"] = json.dumps(face)
    return save(tensors, metadata=meta)


def save_latent(path: Path, inversion: Inversion, index: int, pack: str, method: str, source: str) -> Path:
    """Write row `index` of `inversion` to `path` atomically."""
    write_files({Path(path): latent_bytes(inversion, index, pack, method, source)})
    return path


def load_latent(path: str | os.PathLike, spec: LatentSpec | None = None) -> tuple[Inversion, dict]:
    """(Inversion without image, metadata). With `spec`, the file must come from its pack and method and hold a
    finite W+ code of its shape."""
    name = printable(path)
    problem = describe_problem(path)  # before opening: a FIFO would block
    if problem:
        raise LatentError(f"{name}: {problem}")
    try:
        with open(path, "rb") as fh:  # not safe_open: it takes only UTF-8 paths
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise LatentError(f"{name}: larger than {MAX_BYTES >> 20} MiB, not a latent file")
        tensors = load(data)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    except LatentError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise LatentError(f"{name}: not a stylecli latent file ({type(exc).__name__}: {reason})") from None
    if meta.get("format") != FORMAT:
        raise LatentError(f"{name}: not a stylecli latent file")
    if spec is not None:
        for key, wanted in (("pack", spec.pack), ("method", spec.method)):
            if meta.get(key) != wanted:
                raise LatentError(f"{name}: latent of {key} {meta.get(key)!r}, not {wanted!r}; invert the image with "
                                  f"--model {spec.pack} --method {spec.method}, or edit with the ones it was made with")
    odd = sorted(k for k in tensors if not k.startswith(("latent.", "extra.")))
    if odd:
        raise LatentError(f"{name}: unexpected tensors {', '.join(odd)}")
    for key, tensor in tensors.items():
        if tensor.ndim == 0 or tensor.shape[0] != 1 or (key.startswith("latent.") and not tensor.is_floating_point()):
            raise LatentError(f"{name}: {key} is {tensor.dtype} {list(tensor.shape)}, expected one row"
                              + (" of floats" if key.startswith("latent.") else ""))
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise LatentError(f"{name}: {key} holds NaN or infinite values")
    latents = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("latent.")}
    extras = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("extra.")}
    if "w_plus" not in latents:
        raise LatentError(f"{name}: no latent.w_plus code")
    if spec is not None and tuple(latents["w_plus"].shape) != (1, spec.num_ws, spec.w_dim):
        raise LatentError(f"{name}: W+ code of shape {list(latents['w_plus'].shape)}, pack {spec.pack!r} needs "
                          f"[1, {spec.num_ws}, {spec.w_dim}]")
    return Inversion(latents=latents, image=None, extras=extras), meta


def list_latents(path: str | os.PathLike) -> list[Path]:
    """The latent file itself, or the latent files in a folder (sorted; not recursive; hidden files left out)."""
    path = Path(path)
    if path.is_dir():
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise LatentError(f"{printable(path)}: cannot list the folder ({exc.strerror})") from None
        return sorted(path / n for n in names if n.endswith(SUFFIX) and not n.startswith("."))
    problem = describe_problem(path)
    if problem:
        raise LatentError(f"{printable(path)}: {problem}")
    return [path]
