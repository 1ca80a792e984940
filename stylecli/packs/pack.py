"""Model packs: safetensors files plus a JSON manifest.

A pack is a folder:

    manifest.json              format, name, resolution, networks, files (sha256, bytes), provenance
    generator.safetensors      the (EMA) generator's state dict
    discriminator.safetensors  optional
    ...                        other networks of methods and losses, edit directions

Each network entry of the manifest names its file, its class (a dotted path that must live inside `stylecli`) and the
keyword arguments that build it; loading is `cls(**config)` + a strict `load_state_dict`. No code is read from a pack.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_path

FORMAT = "stylecli-pack/1"
MANIFEST = "manifest.json"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class PackError(Exception):
    """A pack is missing, malformed or fails verification."""


def search_paths() -> list[Path]:
    """Folders searched for packs by name: $STYLECLI_WEIGHTS (os.pathsep-separated), the repository's weights/,
    and the per-user folder ~/.cache/stylecli/packs."""
    paths = [Path(p) for p in os.environ.get("STYLECLI_WEIGHTS", "").split(os.pathsep) if p]
    paths.append(PACKAGE_ROOT.parent / "weights")
    paths.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stylecli" / "packs")
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _import_class(dotted: str) -> type[nn.Module]:
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name.startswith("stylecli."):
        raise PackError(f"network class {dotted!r} is outside stylecli; packs cannot name other code")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PackError(f"{dotted!r} is not a network class")
    return cls


def class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


@dataclass
class Pack:
    root: Path
    manifest: dict

    @classmethod
    def open(cls, name_or_path: str | os.PathLike) -> "Pack":
        """A pack by folder path, or by name in `search_paths()`."""
        candidate = Path(name_or_path).expanduser()
        if not (candidate / MANIFEST).is_file():
            matches = [p / str(name_or_path) for p in search_paths() if (p / str(name_or_path) / MANIFEST).is_file()]
            if not matches:
                known = ", ".join(sorted(p.name for p in list_packs())) or "none"
                raise PackError(f"no model pack {str(name_or_path)!r} (a folder with {MANIFEST}); known packs: {known}")
            candidate = matches[0]
        try:
            manifest = json.loads((candidate / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PackError(f"{candidate / MANIFEST}: unreadable manifest ({exc})") from exc
        if manifest.get("format") != FORMAT:
            raise PackError(f"{candidate}: unknown pack format {manifest.get('format')!r} (expected {FORMAT})")
        return cls(candidate, manifest)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def networks(self) -> dict:
        return self.manifest.get("networks", {})

    def has(self, network: str) -> bool:
        return network in self.networks

    def state_dict(self, network: str) -> dict[str, torch.Tensor]:
        entry = self._entry(network)
        return load_file(str(self.root / entry["file"]))

    def load(self, network: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
        """Build network `network` from its class and config and load its weights strictly; eval mode."""
        entry = self._entry(network)
        model = _import_class(entry["class"])(**entry.get("config", {}))
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.state_dict(network).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PackError(f"{self.root}: {network} does not fit {entry['class']} "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.eval().requires_grad_(False).to(device)

    def generator(self, device="cpu"):
        return self.load("generator", device)

    def verify(self) -> list[str]:
        """Problems found (empty when the pack is sound): missing files, wrong sizes or hashes."""
        problems = []
        for file, meta in self.manifest.get("files", {}).items():
            path = self.root / file
            if not path.is_file():
                problems.append(f"{file}: missing")
            elif path.stat().st_size != meta.get("bytes"):
                problems.append(f"{file}: {path.stat().st_size} bytes, manifest says {meta.get('bytes')}")
            elif sha256_of(path) != meta.get("sha256"):
                problems.append(f"{file}: sha256 differs from the manifest")
        for name, entry in self.networks.items():
            if entry.get("file") not in self.manifest.get("files", {}):
                problems.append(f"network {name}: its file {entry.get('file')!r} is not listed under files")
        return problems

    def _entry(self, network: str) -> dict:
        if network not in self.networks:
            raise PackError(f"pack {self.name!r} has no {network!r} (it has: {', '.join(self.networks) or 'nothing'})")
        return self.networks[network]


def list_packs() -> list[Path]:
    found, seen = [], set()
    for folder in search_paths():
        if folder.is_dir():
            for manifest in sorted(folder.glob(f"*/{MANIFEST}")):
                if manifest.parent.name not in seen:
                    seen.add(manifest.parent.name)
                    found.append(manifest.parent)
    return found


def write_pack(root: str | os.PathLike, name: str, networks: dict[str, nn.Module], resolution: int,
               provenance: dict, dtype: torch.dtype = torch.float32, extra: dict | None = None) -> Pack:
    """Write (or update) a pack folder with `networks` saved as safetensors in `dtype`.

    Each module must carry `config` (its constructor's keyword arguments). Files are written to a temporary name
    and renamed, and the manifest last, so a pack is never seen half-written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update({"format": FORMAT, "name": name, "resolution": resolution})
    manifest.setdefault("networks", {})
    manifest.setdefault("files", {})
    manifest.setdefault("provenance", {})
    for net_name, module in networks.items():
        file = f"{net_name}.safetensors"
        state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
                 for k, v in module.state_dict().items()}
        with atomic_path(root / file) as tmp:
            save_file(state, str(tmp), metadata={"pack": name, "network": net_name})
        manifest["networks"][net_name] = {"file": file, "class": class_path(module), "config": module.config,
                                          "dtype": str(dtype).replace("torch.", "")}
        manifest["files"][file] = {"sha256": sha256_of(root / file), "bytes": (root / file).stat().st_size}
        manifest["provenance"][net_name] = provenance
    if "generator" in networks:
        manifest["w_avg"] = {"file": manifest["networks"]["generator"]["file"], "key": "mapping.w_avg"}
    if extra:
        manifest.update(extra)
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Pack(root, manifest)
