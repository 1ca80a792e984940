"""`stylecli weights fetch NAME`: download (or take from a folder) every file of a catalogue recipe, check it, and
convert it into a pack.

1. Obtain. Each file comes from `--from FOLDER` (by its published name; the folder must hold them all) or from its
   official URLs (`download.download`: resumable, retried, timed out). Downloads are kept in DIR/downloads, so a
   fetch that stopped resumes, and files that no converter reads yet are there for a later fetch.
2. Check. A file with a known sha256 must match it ("verified"). A file without one is compared with the hash
   recorded on its first download (DIR/downloads/recorded-sha256.json): the first time it is "recorded, not
   verified", later "matches the recorded hash"; a different hash is an error.
3. Convert, through the existing converters (see catalogue.py), the StyleGAN2 file first (the directions need its
   W shape). A network already in the pack from the same source bytes is not converted again.
4. Write. Networks go into DIR/NAME with `write_pack` (each file atomic, the manifest last), each with its
   provenance: file name, URL, sha256 and how it was checked, licence. Directions go in with `save_directions`.

Errors are `FetchError`, one line; the files obtained so far stay where they are.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..fileio import atomic_path
from .catalogue import CatalogueFile, PackRecipe
from .download import DownloadError, DownloadPolicy, download, file_sha256
from .pack import MANIFEST, Pack, PackError, user_packs_folder, write_pack

DOWNLOADS = "downloads"
RECORDED = "recorded-sha256.json"

VERIFIED = "verified"
RECORDED_NOW = "recorded, not verified"
MATCHES_RECORD = "matches the hash recorded on its first download, not verified"


class FetchError(Exception):
    """A pack cannot be fetched: a file is missing, unreachable, damaged, or does not convert (one line)."""


class Reporter(Protocol):
    """Where a fetch tells what it does: a progress bar per file, and lines."""

    def file_progress(self, name: str, done: int, total: int | None) -> None: ...
    def file_done(self, name: str) -> None: ...
    def line(self, text: str, style: str = "") -> None: ...


class SilentReporter:
    def file_progress(self, name, done, total):
        pass

    def file_done(self, name):
        pass

    def line(self, text, style=""):
        pass


@dataclass
class FileOutcome:
    entry: CatalogueFile
    path: Path | None = None          # None: an optional file that could not be obtained
    sha256: str | None = None
    check: str = ""                   # VERIFIED, RECORDED_NOW, MATCHES_RECORD
    url: str | None = None            # where it came from; None: --from
    status: str = ""                  # what became of it


def default_packs_folder() -> Path:
    return user_packs_folder()


# ----------------------------------------------------------------------------------------------------------------
# 1-2. Obtaining and checking files

class HashRecord:
    """sha256 of files without a published hash, as first seen: DIR/downloads/recorded-sha256.json."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raise FetchError(f"{path}: unreadable record of hashes (delete it to record them again)") from None

    def check(self, entry: CatalogueFile, digest: str) -> str:
        """How `digest` of `entry` stands against the catalogue's hash or the record; FetchError when it differs."""
        if entry.sha256:
            if not digest.startswith(entry.sha256):
                raise FetchError(f"{entry.name}: sha256 {digest[:12]}... differs from the published "
                                 f"{entry.sha256[:12]}...: a damaged or different file")
            return VERIFIED
        known = self.entries.get(entry.name)
        if known is None:
            self.entries[entry.name] = {"sha256": digest, "recorded": time.strftime("%Y-%m-%d")}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.entries, indent=2, sort_keys=True) + "\n")
            return RECORDED_NOW
        if known.get("sha256") != digest:
            raise FetchError(f"{entry.name}: sha256 {digest[:12]}... differs from the {known.get('sha256', '?')[:12]}"
                             f"... recorded on its first download ({known.get('recorded', '?')}); the file changed "
                             f"or is damaged (delete its entry in {self.path} to accept it)")
        return MATCHES_RECORD


def _obtain(entry: CatalogueFile, downloads: Path, source: Path | None, policy: DownloadPolicy,
            reporter: Reporter) -> tuple[Path, str, str | None]:
    """(path, sha256, url) of one catalogue file, from the folder `source` or downloaded into `downloads`."""
    if source is not None:
        path = source / entry.name
        if entry.size is not None and path.stat().st_size != entry.size:
            raise FetchError(f"{path}: {path.stat().st_size} bytes, the catalogue expects {entry.size}")
        return path, file_sha256(path), None
    dest = downloads / entry.name
    if dest.is_file():  # downloaded by an earlier fetch
        return dest, file_sha256(dest), None
    errors = []
    for url in entry.urls:
        try:
            # The catalogue's own hash is checked inside download(); a prefix works there too.
            digest = download(url, dest, entry.size, entry.sha256, policy,
                              progress=lambda done, total: reporter.file_progress(entry.name, done, total))
            return dest, digest, url
        except DownloadError as exc:
            errors.append(str(exc))
        finally:
            reporter.file_done(entry.name)
    raise FetchError(errors[0] if len(errors) == 1 else f"{entry.name}: every location failed: {'; '.join(errors)}")


def obtain_files(recipe: PackRecipe, downloads: Path, source: Path | None, policy: DownloadPolicy,
                 reporter: Reporter) -> list[FileOutcome]:
    if source is not None:
        if not source.is_dir():
            raise FetchError(f"--from {source}: no such folder")
        missing = [e.name for e in recipe.files if not e.optional and not (source / e.name).is_file()]
        if missing:
            raise FetchError(f"--from {source}: missing {', '.join(missing)} (files are looked for by their "
                             f"published names)")
    record = HashRecord(downloads / RECORDED)
    outcomes = []
    for entry in recipe.files:
        outcome = FileOutcome(entry)
        if source is not None and not (source / entry.name).is_file():  # an optional file not copied
            outcome.status = f"skipped (optional; not in {source})"
        else:
            try:
                outcome.path, outcome.sha256, outcome.url = _obtain(entry, downloads, source, policy, reporter)
            except FetchError as exc:
                if not entry.optional:
                    raise
                outcome.status = f"skipped (optional): {exc}"
        if outcome.path is not None:
            outcome.check = record.check(entry, outcome.sha256)
        outcomes.append(outcome)
    return outcomes


# ----------------------------------------------------------------------------------------------------------------
# 3-4. Converting into the pack

def method_converter(name: str):
    """The ConverterSpec of method `name`, or None when the method is not built or declares none."""
    from ..methods import METHODS
    spec = METHODS.get(name)
    return spec.converter if spec is not None else None


def _networks_of(outcome: FileOutcome) -> tuple[dict[str, torch.nn.Module] | None, str]:
    """(pack networks, source format) of a file whose converter makes networks; None with the reason when none
    converts it (yet)."""
    from ..losses import loss_network_from_file
    from ..methods.base import resolve
    from .convert import convert_checkpoint

    entry, path = outcome.entry, outcome.path
    kind, _, name = entry.converter.partition(":")
    if kind == "stylegan2":
        converted = convert_checkpoint(path)
        networks = {"generator": converted.generator}
        if converted.discriminator is not None:
            networks["discriminator"] = converted.discriminator
        return networks, converted.source_format
    if kind == "loss":
        return {name: loss_network_from_file(name, path)}, entry.converter
    if kind == "method":
        spec = method_converter(name)
        if spec is None:
            return None, f"stylecli has no converter for method {name!r} yet"
        if not resolve(spec.detect)(path):
            return None, f"method {name!r}'s converter does not recognise this file"
        networks, _ = resolve(spec.convert)(path)
        keep = entry.networks or tuple(n for n in networks if n != "generator")
        return {n: networks[n] for n in keep if n in networks}, f"method:{name}"
    raise FetchError(f"{entry.name}: unknown converter {entry.converter!r} in the catalogue")


def _generator_shape(pack: Pack) -> tuple[int, int]:
    """(num_ws, w_dim) of the pack's generator, from its config (built on the meta device: no memory, no file)."""
    from ..core.networks import Generator
    with torch.device("meta"):
        G = Generator(**pack.networks["generator"]["config"])
    return G.num_ws, G.w_dim


def _directions_of(outcome: FileOutcome, pack: Pack):
    from ..directions import ganspace_edits, import_directions

    entry = outcome.entry
    num_ws, w_dim = _generator_shape(pack)
    if entry.converter == "directions:boundary":
        return import_directions(outcome.path, num_ws, w_dim, entry.direction)
    if entry.converter == "directions:ganspace":
        return ganspace_edits(outcome.path, num_ws, w_dim, entry.edits, entry.components)
    raise FetchError(f"{entry.name}: unknown converter {entry.converter!r} in the catalogue")


def _provenance(outcome: FileOutcome, source_format: str) -> dict:
    return {"converted_from": outcome.entry.name, "source_format": source_format,
            "url": outcome.url or outcome.entry.urls[0], "source_sha256": outcome.sha256,
            "sha256_check": outcome.check, "licence": outcome.entry.licence}


def _already_converted(root: Path, outcome: FileOutcome) -> list[str] | None:
    """The networks the pack already holds from these very bytes (by source sha256), or None."""
    if not (root / MANIFEST).is_file() or outcome.entry.converter.startswith("directions:"):
        return None
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    found = [net for net, prov in (manifest.get("provenance") or {}).items()
             if isinstance(prov, dict) and prov.get("source_sha256") == outcome.sha256
             and prov.get("converted_from") == outcome.entry.name and net in (manifest.get("networks") or {})]
    return found or None


def convert_into_pack(recipe: PackRecipe, root: Path, outcomes: list[FileOutcome], reporter: Reporter,
                      dtype: torch.dtype = torch.float32) -> Pack:
    from ..directions import DirectionError, save_directions
    from .convert import ConversionError

    # The StyleGAN2 file first: write_pack needs the generator's resolution, the directions its W shape.
    ordered = sorted((o for o in outcomes if o.path is not None),
                     key=lambda o: (o.entry.converter != "stylegan2", o.entry.converter.startswith("directions:")))
    for outcome in ordered:
        entry = outcome.entry
        try:
            if entry.converter.startswith("directions:"):
                pack = Pack.open(root)
                if not pack.has("generator"):
                    raise FetchError(f"{entry.name}: directions need the pack's generator, which is missing")
                directions = _directions_of(outcome, pack)
                save_directions(pack, directions)
                outcome.status = f"directions: {', '.join(d.name for d in directions)}"
                continue
            if entry.converter == "file":  # read from the pack folder as it is (catalogue.py)
                with atomic_path(root / entry.name) as tmp:
                    shutil.copyfile(outcome.path, tmp)
                outcome.status = "kept in the pack folder as it is"
                reporter.line(f"{entry.name}: {outcome.status}")
                continue
            done = _already_converted(root, outcome)
            if done:
                outcome.status = f"already in the pack: {', '.join(done)}"
                continue
            reporter.line(f"converting {entry.name} ...", "dim")
            networks, source_format = _networks_of(outcome)
            if networks is None:
                outcome.status = f"kept, not converted yet: {source_format} ({outcome.path})"
                continue
            if "generator" in networks and networks["generator"].img_resolution != recipe.resolution:
                raise FetchError(f"{entry.name}: a {networks['generator'].img_resolution}px generator, the pack "
                                 f"{recipe.name} is {recipe.resolution}px")
            write_pack(root, recipe.name, networks, recipe.resolution, _provenance(outcome, source_format), dtype)
            outcome.status = f"converted: {', '.join(networks)}"
        except (ConversionError, DirectionError) as exc:
            raise FetchError(" ".join(str(exc).split())) from None
        except (PackError, OSError, ValueError, KeyError) as exc:  # a file that is not what the catalogue says
            raise FetchError(f"{entry.name}: cannot be converted ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())})") from None
        reporter.line(f"{entry.name}: {outcome.status}")
    return Pack.open(root)


# ----------------------------------------------------------------------------------------------------------------

def fetch_pack(recipe: PackRecipe, packs_folder: Path | None = None, source: Path | None = None,
               policy: DownloadPolicy = DownloadPolicy(), reporter: Reporter | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Pack, list[FileOutcome]]:
    """Obtain, check and convert every file of `recipe` into the pack DIR/NAME (DIR: `packs_folder`, by default the
    per-user folder ~/.cache/stylecli/packs). Returns the pack and what became of each file."""
    reporter = reporter or SilentReporter()
    folder = Path(packs_folder) if packs_folder is not None else default_packs_folder()
    root = folder / recipe.name
    if root.exists() and not root.is_dir():
        raise FetchError(f"{root}: exists and is not a folder")
    outcomes = obtain_files(recipe, folder / DOWNLOADS, source, policy, reporter)
    if not any(o.path is not None and o.entry.converter == "stylegan2" for o in outcomes) and \
            not (root / MANIFEST).is_file():
        raise FetchError(f"{recipe.name}: no StyleGAN2 file was obtained, and a pack needs its generator")
    pack = convert_into_pack(recipe, root, outcomes, reporter, dtype)
    return pack, outcomes


def format_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    units = ("B", "KB", "MB", "GB")
    k = min(int(math.log(max(size, 1), 1000)), len(units) - 1)
    return f"{size / 1000 ** k:.1f} {units[k]}" if k else f"{size} B"


def describe(recipe: PackRecipe) -> list[str]:
    """One line per file of a recipe, for `weights fetch NAME --list`."""
    lines = []
    for e in recipe.files:
        check = ("sha256 " + e.sha256[:12] + ("..." if len(e.sha256) > 12 else " (prefix)")) if e.sha256 else \
            "no published hash (recorded on first download)"
        lines.append(f"{e.name}: {e.role}; {format_size(e.size)}; {check}; {e.licence}"
                     + ("; optional" if e.optional else ""))
    return lines


__all__ = ["FetchError", "FileOutcome", "fetch_pack", "default_packs_folder", "describe", "Reporter",
           "DownloadPolicy"]
