"""Model packs: safetensors files plus a JSON manifest.

A pack is a folder:

    manifest.json              format, name, resolution, networks, files (sha256, bytes), provenance
    generator.safetensors      the (EMA) generator's state dict
    discriminator.safetensors  optional
    ...                        other networks of methods and losses, edit directions

Each network entry of the manifest names its file, its class (a dotted path that must live inside `stylecli`) and the
keyword arguments that build it; loading is `cls(**config)` + a strict `load_state_dict`. No code is read from a pack.

What is checked, and when:

- Opening a pack (`Pack.open`) checks the manifest's shape (`manifest_problems`): a JSON object whose format, name,
  resolution, networks and files (and provenance, w_avg when present) have the right types; every network entry an
  object with file, class (inside stylecli) and config; every file name a plain name inside the pack folder (no
  folders, no absolute paths, no `..`, no symlink leading out of it) and every network's file listed under files.
  A problem is a `PackError` of one line naming the pack folder and the manifest key.
- Loading a network (`Pack.load`, `Pack.state_dict`) checks its file first: present, of the size the manifest lists
  (always), and of the listed sha256 (by default). A file that is not valid safetensors, or whose tensors do not fit
  the network's class, is a one-line `PackError` too.
- `Pack.verify` (`stylecli weights verify`) always hashes every file, then builds every network and reads the header
  of every other safetensors file, so a pack that cannot load fails verification.

Hashing on load: hashing the shipped synthface-64 pack (20 MB) takes about 20 ms, a small part of loading it, so it is
the default. For large packs on slow disks set `STYLECLI_VERIFY=size` (or pass `check="size"` to `Pack.open`) to
check sizes only; a changed byte in a weights file then loads silently, so run `stylecli weights verify` after copying
a pack. A hash is computed once per file per process: it is cached by (path, device, inode, size, mtime_ns), so loading
the same network twice, or verifying then loading, reads the file once.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_path

FORMAT = "stylecli-pack/1"
MANIFEST = "manifest.json"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
VERIFY_ENV = "STYLECLI_VERIFY"
VERIFY_MODES = ("sha256", "size")

_CLASS_PATH = re.compile(r"stylecli(\.[A-Za-z_][A-Za-z0-9_]*)+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


class PackError(Exception):
    """A pack is missing, malformed or fails verification."""


def user_packs_folder() -> Path:
    """The per-user folder of packs: ~/.cache/stylecli/packs ($XDG_CACHE_HOME/stylecli/packs when that is set)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stylecli" / "packs"


def search_paths() -> list[Path]:
    """Folders searched for packs by name: $STYLECLI_WEIGHTS (os.pathsep-separated), the repository's weights/,
    and the per-user folder (`user_packs_folder`)."""
    paths = [Path(p) for p in os.environ.get("STYLECLI_WEIGHTS", "").split(os.pathsep) if p]
    paths.append(PACKAGE_ROOT.parent / "weights")
    paths.append(user_packs_folder())
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# sha256 of files already hashed in this process. The key changes whenever the file is replaced (device, inode) or
# written to (size, mtime_ns), so a hit means the very bytes that were hashed.
_hashes: dict[tuple, str] = {}


def _stat_key(path: Path, st: os.stat_result) -> tuple:
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def cached_sha256(path: Path) -> str:
    """sha256 of `path`, hashed at most once per process while the file stays unchanged."""
    key = _stat_key(path, path.stat())
    digest = _hashes.get(key)
    if digest is None:
        digest = sha256_of(path)
        if _stat_key(path, path.stat()) == key:  # not cached when the file changed while it was read
            _hashes[key] = digest
    return digest


def verify_mode(explicit: str | None = None) -> str:
    """How loading checks a file: "sha256" (size and hash, the default) or "size" (size only); `explicit` wins over
    $STYLECLI_VERIFY."""
    mode = explicit if explicit is not None else (os.environ.get(VERIFY_ENV) or "sha256")
    if mode not in VERIFY_MODES:
        source = "check=" if explicit is not None else f"${VERIFY_ENV}"
        raise PackError(f"{source} must be one of {', '.join(VERIFY_MODES)}, not {mode!r}")
    return mode


# --- the manifest's schema -----------------------------------------------------------------------------------------

def _json_kind(value) -> str:
    """The JSON name of a value's type, for messages about a JSON file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return "an array" if isinstance(value, list) else "an object"


def _key(*parts) -> str:
    """A manifest key as `networks.generator.file`; parts that are not plain names are quoted."""
    return ".".join(p if isinstance(p, str) and _PLAIN_KEY.fullmatch(p) else repr(p) for p in parts)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def file_name_problem(root: Path, name) -> str | None:
    """Why `name` cannot be a file of the pack in `root`, or None: it must be a plain name (no folders, no absolute
    path, no `..`) and, when it exists, must not be a symlink that leads out of the folder."""
    if not isinstance(name, str) or not name:
        return f"expected a file name, got {_json_kind(name)}"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        return f"{name!r} is not a plain file name inside the pack folder (no folders, absolute paths or ..)"
    path = root / name
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root.resolve()):
            return f"{name!r} is a symlink leading out of the pack folder (to {target})"
    return None


def manifest_problems(root: Path, manifest) -> list[str]:
    """Every problem of a manifest's shape, each as `KEY: what is wrong` (empty when it is sound).

    Required: format, name, resolution, networks, files. Optional: provenance, w_avg, and any other key (packs may
    carry more, e.g. directions, which their own readers check).
    """
    if not isinstance(manifest, dict):
        return [f"the manifest is {_json_kind(manifest)}, expected an object"]
    if "format" not in manifest:
        return [f"format: missing (expected {FORMAT!r})"]
    if manifest["format"] != FORMAT:  # another format may mean anything by the other keys: stop here
        return [f"format: unknown pack format {manifest['format']!r} (expected {FORMAT!r})"]
    problems = []
    for key in ("name", "resolution", "networks", "files"):
        if key not in manifest:
            problems.append(f"{key}: missing")
    name = manifest.get("name", "-")
    if not (isinstance(name, str) and name):
        problems.append(f"name: expected a non-empty string, got {_json_kind(name)}")
    resolution = manifest.get("resolution", 1)
    if not (_is_int(resolution) and resolution > 0):
        problems.append(f"resolution: expected a positive integer, got {_json_kind(resolution)}")
    if not isinstance(manifest.get("provenance", {}), dict):
        problems.append(f"provenance: expected an object, got {_json_kind(manifest['provenance'])}")

    files = manifest.get("files", {})
    if not isinstance(files, dict):
        problems.append(f"files: expected an object of file name -> {{sha256, bytes}}, got {_json_kind(files)}")
        files = {}
    for file, meta in files.items():
        problem = file_name_problem(root, file)
        if problem:
            problems.append(f"{_key('files', file)}: {problem}")
        if not isinstance(meta, dict):
            problems.append(f"{_key('files', file)}: expected an object with sha256 and bytes, got {_json_kind(meta)}")
            continue
        if not (_is_int(meta.get("bytes")) and meta["bytes"] >= 0):
            problems.append(f"{_key('files', file, 'bytes')}: expected a non-negative integer, "
                            f"got {_json_kind(meta.get('bytes'))}")
        if not (isinstance(meta.get("sha256"), str) and _SHA256.fullmatch(meta["sha256"])):
            problems.append(f"{_key('files', file, 'sha256')}: expected 64 lowercase hex digits, "
                            f"got {_json_kind(meta.get('sha256'))}")

    networks = manifest.get("networks", {})
    if not isinstance(networks, dict):
        problems.append(f"networks: expected an object of network name -> {{file, class, config}}, "
                        f"got {_json_kind(networks)}")
        networks = {}
    for net, entry in networks.items():
        if not isinstance(entry, dict):
            problems.append(f"{_key('networks', net)}: expected an object with file, class and config, "
                            f"got {_json_kind(entry)}")
            continue
        for key in ("file", "class", "config"):
            if key not in entry:
                problems.append(f"{_key('networks', net, key)}: missing")
        file = entry.get("file")
        if "file" in entry:
            problem = file_name_problem(root, file)
            if problem:
                problems.append(f"{_key('networks', net, 'file')}: {problem}")
            elif file not in files:
                problems.append(f"{_key('networks', net, 'file')}: {file!r} is not listed under files")
        dotted = entry.get("class")
        if "class" in entry and not isinstance(dotted, str):
            problems.append(f"{_key('networks', net, 'class')}: expected a dotted class path, got {_json_kind(dotted)}")
        elif "class" in entry and not _CLASS_PATH.fullmatch(dotted):
            problems.append(f"{_key('networks', net, 'class')}: {dotted!r} is not a class inside stylecli "
                            "(stylecli.module.Class); packs cannot name other code")
        if not isinstance(entry.get("config", {}), dict):
            problems.append(f"{_key('networks', net, 'config')}: expected an object of keyword arguments, "
                            f"got {_json_kind(entry['config'])}")
        if not isinstance(entry.get("dtype", ""), str):
            problems.append(f"{_key('networks', net, 'dtype')}: expected a string, got {_json_kind(entry['dtype'])}")

    if "w_avg" in manifest:
        w_avg = manifest["w_avg"]
        if not (isinstance(w_avg, dict) and isinstance(w_avg.get("file"), str) and isinstance(w_avg.get("key"), str)):
            problems.append(f"w_avg: expected an object with file and key strings, got {_json_kind(w_avg)}")
        elif w_avg["file"] not in files:
            problems.append(f"w_avg.file: {w_avg['file']!r} is not listed under files")
    return problems


def find_pack(name_or_path: str | os.PathLike) -> Path:
    """The folder of a pack given by folder path, or by name in `search_paths()`."""
    candidate = Path(name_or_path).expanduser()
    if (candidate / MANIFEST).is_file():
        return candidate
    matches = [p / str(name_or_path) for p in search_paths() if (p / str(name_or_path) / MANIFEST).is_file()]
    if not matches:
        known = ", ".join(sorted(p.name for p in list_packs())) or "none"
        raise PackError(f"no model pack {str(name_or_path)!r} (a folder with {MANIFEST}); known packs: {known}")
    return matches[0]


def read_manifest(root: Path):
    """The parsed manifest.json of the pack folder `root` (any JSON value: `manifest_problems` judges it)."""
    try:
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise PackError(f"{root / MANIFEST}: unreadable manifest ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (torch and safetensors messages run over many lines)."""
    lines = str(exc).strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else type(exc).__name__


def _import_class(dotted: str) -> type[nn.Module]:
    module_name, _, class_name = dotted.rpartition(".")
    if not _CLASS_PATH.fullmatch(dotted):
        raise PackError(f"network class {dotted!r} is outside stylecli; packs cannot name other code")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PackError(f"network class {dotted!r}: no module {module_name!r} in stylecli") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PackError(f"{dotted!r} is not a network class")
    if not cls.__module__.startswith("stylecli."):  # e.g. torch.nn.Linear imported into a stylecli module
        raise PackError(f"network class {dotted!r} is {cls.__module__}.{cls.__qualname__}, outside stylecli")
    return cls


def class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _fit_problem(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` cannot be loaded into `model`, in one line, or None. Checked before `load_state_dict`, whose
    shape-mismatch message runs to a line per tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} is {list(state[k].shape)}, the class wants {list(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {what} ({'; '.join(keys[:3])}{'; ...' if len(keys) > 3 else ''})")
    return ", ".join(parts) or None


@dataclass
class Pack:
    root: Path
    manifest: dict
    check: str | None = None  # how loading checks files: "sha256" or "size"; None: $STYLECLI_VERIFY, else sha256

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, check: str | None = None) -> "Pack":
        """A pack by folder path, or by name in `search_paths()`, with its manifest checked.

        `check` sets how loading checks files: "sha256" (default) or "size"; None reads $STYLECLI_VERIFY.
        """
        verify_mode(check)  # a bad mode fails here, before any work
        root = find_pack(name_or_path)
        manifest = read_manifest(root)
        problems = manifest_problems(root, manifest)
        if problems:
            more = f" (and {len(problems) - 1} more: stylecli weights verify {root})" if len(problems) > 1 else ""
            raise PackError(f"{root}: bad {MANIFEST}: {problems[0]}{more}")
        return cls(root, manifest, check)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def networks(self) -> dict:
        return self.manifest.get("networks", {})

    def has(self, network: str) -> bool:
        return network in self.networks

    def file_path(self, file: str) -> Path:
        """The path of the pack's `file` once it is checked: listed under files, a plain file inside the folder, of
        the listed size, and of the listed sha256 unless the verify mode is "size"."""
        meta = self.manifest.get("files", {}).get(file)
        if meta is None:
            raise PackError(f"{self.root}: {file!r} is not listed under files in {MANIFEST}")
        problem = self._file_problem(file, meta, verify_mode(self.check))
        if problem:
            raise PackError(f"{self.root}: {problem}")
        return self.root / file

    def state_dict(self, network: str) -> dict[str, torch.Tensor]:
        """The tensors of `network`'s file, after the file is checked (see `file_path`)."""
        file = self._entry(network)["file"]
        path = self.file_path(file)
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise PackError(f"{self.root}: {file} is not a readable safetensors file ({_one_line(exc)})") from None

    def load(self, network: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
        """Build network `network` from its class and config and load its weights strictly; eval mode."""
        entry = self._entry(network)
        cls = _import_class(entry["class"])
        try:
            model = cls(**entry["config"])
        except Exception as exc:  # the config comes from the file: whatever the constructor raises, the pack is bad
            raise PackError(f"{self.root}: network {network}: cannot build {entry['class']} from its config "
                            f"({type(exc).__name__}: {_one_line(exc)})") from None
        state = self.state_dict(network)
        problem = _fit_problem(model, state)
        if problem:
            raise PackError(f"{self.root}: network {network}: {entry['file']} does not fit {entry['class']}: {problem}")
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # _fit_problem covers keys and shapes; this is for what a class checks itself
            raise PackError(f"{self.root}: network {network}: {_one_line(exc)}") from None
        return model.eval().requires_grad_(False).to(device)

    def generator(self, device="cpu"):
        return self.load("generator", device)

    def verify(self, build: bool = True) -> list[str]:
        """Problems found (empty when the pack is sound): missing files, wrong sizes or hashes (always hashed, whatever
        the verify mode), and with `build` networks that cannot be built and loaded and other safetensors files that
        cannot be read."""
        problems, bad = [], set()
        for file, meta in self.manifest.get("files", {}).items():
            problem = self._file_problem(file, meta, "sha256")
            if problem:
                problems.append(problem)
                bad.add(file)
        for name, entry in self.networks.items():
            if entry.get("file") not in self.manifest.get("files", {}):
                problems.append(f"network {name}: its file {entry.get('file')!r} is not listed under files")
                bad.add(entry.get("file"))
        if not build:
            return problems
        prefix = f"{self.root}: "  # the folder is named once by whoever prints the list
        for name, entry in self.networks.items():
            if entry["file"] not in bad:
                try:
                    self.load(name)
                except PackError as exc:
                    problems.append(str(exc).removeprefix(prefix))
        used = {entry["file"] for entry in self.networks.values()}
        for file in self.manifest.get("files", {}):
            if file not in used and file not in bad and file.endswith(".safetensors"):
                try:
                    with safe_open(str(self.root / file), framework="pt") as fh:  # the header: cheap, no tensors read
                        list(fh.keys())
                except (SafetensorError, OSError) as exc:
                    problems.append(f"{file} is not a readable safetensors file ({_one_line(exc)})")
        return problems

    def _file_problem(self, file: str, meta: dict, mode: str) -> str | None:
        # The folder may have changed since the manifest was checked at open: check the name again (cheap).
        problem = file_name_problem(self.root, file)
        if problem:
            return f"{file}: {problem}"
        path = self.root / file
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{file}: missing"
        except OSError as exc:
            return f"{file}: unreadable ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return f"{file}: not a regular file"
        if st.st_size != meta.get("bytes"):
            return f"{file}: {st.st_size} bytes, manifest says {meta.get('bytes')} (truncated or replaced)"
        if mode == "sha256" and cached_sha256(path) != meta.get("sha256"):
            return f"{file}: sha256 differs from the manifest (corrupt or changed; {VERIFY_ENV}=size skips this check)"
        return None

    def _entry(self, network: str) -> dict:
        if network not in self.networks:
            raise PackError(f"pack {self.name!r} has no {network!r} (it has: {', '.join(self.networks) or 'nothing'})")
        return self.networks[network]


def verify_pack(name_or_path: str | os.PathLike) -> tuple[Path, list[str]]:
    """The folder of a pack and every problem found in it (`Pack.verify`), or the problems of its manifest when that
    is too broken to go further. A pack that cannot be found is a PackError: there is nothing to verify."""
    root = find_pack(name_or_path)
    try:
        manifest = read_manifest(root)
    except PackError as exc:
        return root, [str(exc)]
    problems = manifest_problems(root, manifest)
    if problems:
        return root, [f"{MANIFEST}: {problem}" for problem in problems]
    return root, Pack(root, manifest).verify()


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
        # cached_sha256: a load of the pack just written in this process need not hash the file again.
        manifest["files"][file] = {"sha256": cached_sha256(root / file), "bytes": (root / file).stat().st_size}
        manifest["provenance"][net_name] = provenance
    if "generator" in networks:
        manifest["w_avg"] = {"file": manifest["networks"]["generator"]["file"], "key": "mapping.w_avg"}
    if extra:
        manifest.update(extra)
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Pack(root, manifest)
