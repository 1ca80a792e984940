"""Files and folders: atomic writes (readers see the old file or the whole new one, never a half-written one), writes
of several files that land together or not at all, and one-line descriptions of paths that cannot be used."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputError(Exception):
    """An output folder or file cannot be written (a one-line message)."""


def printable(path: str | os.PathLike) -> str:
    """`path` as text that any stream and any UTF-8 format accepts: a file name that is not valid UTF-8 (Python keeps
    its bytes as lone surrogates, which cannot be encoded) shows those bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def describe_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a readable regular file, in a few words (None when it is one). Only `stat`s: never opens, so
    a FIFO cannot block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return {errno.ENOENT: "no such file", errno.ELOOP: "a symlink loop", errno.EACCES: "permission denied",
                errno.ENOTDIR: "no such file (a parent is not a folder)",
                errno.ENAMETOOLONG: "name too long"}.get(exc.errno, f"cannot read ({exc.strerror})")
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file ({kind})"


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new empty file in `path`'s folder, open for writing: (descriptor, path). Created with mode 0666 less the umask,
    like any file the user creates (mkstemp would make it 0600, and the rename would keep that)."""
    stem = path.name[:40]  # the final name may be near the 255-byte limit; the temporary one must still fit
    for _ in range(100):
        tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_files(contents: dict[Path, bytes]) -> None:
    """Write several files so that they land together or not at all (an image and its latent code are a pair; a
    file name the latent format cannot record must not leave the image behind alone). OutputError (one line) if not.

    Every file is written to a temporary beside it first; the renames come last and need no space, so they do not
    fail in practice; should one still fail, the files already renamed are removed again."""
    temps: dict[Path, Path] = {}
    placed: list[Path] = []
    current = next(iter(contents), Path("."))
    try:
        for current, data in contents.items():
            current.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[current] = _create_beside(current)
            with open(fd, "wb") as fh:
                fh.write(data)
        for current, tmp in temps.items():
            os.replace(tmp, current)
            placed.append(current)
    except BaseException as exc:
        for leftover in [*(tmp for path, tmp in temps.items() if path not in placed), *placed]:
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{printable(current)}: cannot write ({exc.strerror or exc})") from None
        raise


def writable_folder(path: str | os.PathLike) -> Path:
    """`path` as a folder that files can be written into, created if missing; OutputError (one line) if it cannot
    be. Checked by writing a file, because permission bits, read-only mounts and ACLs all have their say."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{printable(path)}: cannot write outputs there: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = _create_beside(path / "probe")
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{printable(path)}: cannot write outputs there ({exc.strerror or exc})") from None
    return path
