"""Resumable, checked downloads over HTTP(S) with the standard library (urllib): no dependency for a few large GETs.

`download(url, dest, ...)`:

1. Bytes go to `dest.part`. A `.part` left by an earlier attempt is resumed with an HTTP Range request; a server that
   ignores Range (200 instead of 206) restarts the file from byte 0.
2. Each connection and each read has a timeout: a server that stalls counts as a failed attempt.
3. Failed attempts (timeouts, dropped connections, HTTP 5xx, 408, 429) are retried with exponential backoff, each
   resuming where the last stopped; other HTTP errors (404, 403, ...) fail at once.
4. Complete: the size and, when one is expected, the sha256 are checked. A mismatch leaves the bytes in `.part` (to
   look at, or to delete) and raises; a match renames `.part` to `dest`. The sha256 is returned either way it is
   known, so a file without a published hash can have its first download's hash recorded.

A web page where a weights file was expected (Google Drive's quota or virus-scan page) is refused: it would
otherwise be saved as the file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__

PART_SUFFIX = ".part"
CHUNK = 1 << 20

Progress = Callable[[int, int | None], None]  # (bytes of the file so far, its total size or None)


class DownloadError(Exception):
    """A file could not be downloaded, or its bytes are not the expected ones (one line)."""


@dataclass(frozen=True)
class DownloadPolicy:
    timeout: float = 60.0      # seconds to connect, and between any two reads
    attempts: int = 5          # tries in all, each resuming the last
    backoff: float = 2.0       # seconds before the second try; doubles each time
    max_backoff: float = 60.0


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Retryable(Exception):
    """An attempt failed in a way that another attempt may not."""


def download(url: str, dest: Path, size: int | None = None, sha256: str | None = None,
             policy: DownloadPolicy = DownloadPolicy(), progress: Progress | None = None) -> str:
    """Download `url` to `dest` (see the module docstring); returns the file's sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    last_error = "no attempt made"
    for attempt in range(policy.attempts):
        if attempt:
            time.sleep(min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff))
        try:
            _attempt(url, part, size, policy.timeout, progress)
            break
        except _Retryable as exc:
            last_error = str(exc)
    else:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{url}: {last_error} ({policy.attempts} attempts; {have} bytes kept in {part.name}, "
                            f"the next fetch resumes from there)")
    return _finish(url, part, dest, size, sha256)


def _attempt(url: str, part: Path, size: int | None, timeout: float, progress: Progress | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        return  # complete already (checked by _finish)
    request = urllib.request.Request(url, headers={"User-Agent": f"stylecli/{__version__}",
                                                   **({"Range": f"bytes={have}-"} if have else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and _range_total(exc.headers.get("Content-Range")) == have:
            return  # asked for the bytes after the end: the part is the whole file
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, reset
        raise _Retryable(_reason(exc)) from None
    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/html"):
            raise DownloadError(f"{url}: the server sent a web page, not the file (a quota, login or confirmation "
                                f"page?); download it in a browser and pass its folder with --from")
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != have:
                raise _Retryable(f"the server resumed at byte {start}, not {have}")
            mode = "ab"
        else:  # 200: the whole file (the server ignored Range, or there was nothing to resume)
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else size
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: the server offers {total} bytes, the catalogue expects {size}")
        done = have
        if progress:
            progress(done, total)
        with open(part, mode) as fh:
            try:
                while True:
                    chunk = response.read1(CHUNK)  # what has arrived: a stall loses no received bytes
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            except (OSError, http.client.HTTPException) as exc:  # a stall (timeout) or a dropped connection
                raise _Retryable(_reason(exc)) from None
        got = part.stat().st_size
        if total is not None and got < total:
            raise _Retryable(f"the connection closed after {got} of {total} bytes")


def _finish(url: str, part: Path, dest: Path, size: int | None, sha256: str | None) -> str:
    got = part.stat().st_size
    if size is not None and got != size:
        raise DownloadError(f"{url}: {got} bytes, the catalogue expects {size}; kept as {part} (delete it to "
                            f"download again)")
    digest = file_sha256(part)
    if sha256 is not None and not digest.startswith(sha256):  # a prefix: torchvision publishes 8 digits
        raise DownloadError(f"{url}: sha256 {digest[:12]}... differs from the expected {sha256[:12]}...; kept as "
                            f"{part} (delete it to download again)")
    os.replace(part, dest)
    return digest


def _range_start(header: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", header or "")
    return int(match[1]) if match else None


def _range_total(header: str | None) -> int | None:
    match = re.match(r"bytes (?:\*|\d+-\d+)/(\d+)", header or "")
    return int(match[1]) if match else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out (the server sent nothing for the timeout)"
    return " ".join(str(exc).split()) or type(exc).__name__
