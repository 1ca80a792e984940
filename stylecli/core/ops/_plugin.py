"""Build-on-first-use loader for the custom CUDA ops.

Nothing here runs at import time. `load(name)` compiles `cuda/<name>.cpp` + `cuda/<name>_kernel.cu` with
torch.utils.cpp_extension the first time a CUDA tensor needs the op, into a per-user cache folder keyed by a hash of
the sources, and installs the build atomically (build in a temporary folder, then rename). A second process finds the
finished build and imports it without invoking the compiler.

The choice of implementation is read from the environment variable STYLECLI_OPS:
  auto (default)  CUDA kernels for CUDA tensors when they build; otherwise one warning and the reference path
  ref             always the pure-PyTorch reference path
  cuda            CUDA kernels for CUDA tensors; a failed build is an error
The outcome of a build is memoised per process (functools.cache), so a failed build is never retried on every call.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).parent / "cuda"
MODES = ("auto", "ref", "cuda")


class PluginBuildError(RuntimeError):
    """A CUDA op could not be compiled or loaded."""


def ops_mode() -> str:
    mode = os.environ.get("STYLECLI_OPS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"STYLECLI_OPS must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def cache_root() -> Path:
    base = os.environ.get("STYLECLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "stylecli")
    return Path(base) / "ops"


def source_files(name: str) -> list[Path]:
    # The .cpp and .cu must not share a base name: ninja would write both objects to <name>.o.
    files = [SOURCE_DIR / f"{name}.cpp", SOURCE_DIR / f"{name}_kernel.cu"]
    files += sorted(SOURCE_DIR.glob("*.h"))
    return files


def source_hash(name: str) -> str:
    digest = hashlib.sha256()
    for path in source_files(name):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: the folder whose include/ has cuda_runtime.h.

    torch guesses the root from the `nvcc` on PATH, which is wrong when that nvcc is a wrapper script
    (linking then fails with `cannot find -lcudart`). We prefer CUDA_HOME/CUDA_PATH, then well-known folders.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates += ["/usr/local/cuda", "/opt/cuda"]
    for root in candidates:
        if root and (Path(root) / "include" / "cuda_runtime.h").is_file():
            return root
    return None


def _first_error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for needle in ("error:", "error"):
        for line in lines:
            if needle in line.lower() and not line.startswith(("FAILED", "Error building")):
                return line
    return lines[-1] if lines else "unknown error"


def _import_built(name: str, folder: Path):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES + [".so"]:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def build(name: str, verbose: bool = False):
    """Compile (or find in the cache) and import the extension `name`. Raises PluginBuildError."""
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise PluginBuildError("this PyTorch build has no CUDA support")
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise PluginBuildError("no CUDA toolkit found (set CUDA_HOME to the folder that holds bin/nvcc and include/)")
    module_name = f"stylecli_{name}"
    final = cache_root() / f"{module_name}-{source_hash(name)}"
    if final.is_dir():
        module = _import_built(module_name, final)
        if module is not None:
            return module
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    # cpp_extension reads the toolkit root from this module-level variable and from the environment.
    old_home = cpp_extension.CUDA_HOME
    old_env = os.environ.get("CUDA_HOME")
    cpp_extension.CUDA_HOME = cuda_home
    os.environ["CUDA_HOME"] = cuda_home
    try:
        module = cpp_extension.load(
            name=module_name,
            sources=[str(p) for p in source_files(name) if p.suffix in (".cpp", ".cu")],
            extra_include_paths=[str(SOURCE_DIR)],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--use_fast_math"],
            build_directory=str(staging),
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors arrive as RuntimeError, missing tools as OSError
        shutil.rmtree(staging, ignore_errors=True)
        raise PluginBuildError(f"building the {name} CUDA op failed: {_first_error_line(str(exc))}") from exc
    finally:
        cpp_extension.CUDA_HOME = old_home
        if old_env is None:
            os.environ.pop("CUDA_HOME", None)
        else:
            os.environ["CUDA_HOME"] = old_env
    try:
        os.rename(staging, final)  # atomic: readers see no build or a whole one
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process installed it first
    return module


@functools.cache
def get_plugin(name: str):
    """The compiled op `name`, or None to use the reference path. Memoised: at most one build per process."""
    mode = ops_mode()
    if mode == "ref":
        return None
    try:
        return build(name)
    except PluginBuildError as exc:
        if mode == "cuda":
            raise
        warnings.warn(f"{exc}; using the PyTorch reference path for {name} (set STYLECLI_OPS=ref to silence)",
                      RuntimeWarning, stacklevel=3)
        return None


KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16)  # what the kernels dispatch on (not bfloat16)


def use_cuda_kernel(name: str, x: torch.Tensor) -> bool:
    """True when `x` lives on a CUDA device in a dtype the kernels handle and the kernel for `name` is available;
    bfloat16 (e.g. under autocast) takes the reference path."""
    return x.is_cuda and x.dtype in KERNEL_DTYPES and ops_mode() != "ref" and get_plugin(name) is not None
