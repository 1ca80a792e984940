"""`stylecli weights ...`: list, inspect, verify and convert model packs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import UsageError, console, escape, results, show

weights_app = typer.Typer(help="Model packs: list, inspect, verify, fetch and convert official checkpoints.",
                          no_args_is_help=True)


@weights_app.command("list")
def list_command():
    """List the model packs stylecli can find (weights/, $STYLECLI_WEIGHTS, ~/.cache/stylecli/packs).

    Example: stylecli weights list
    """
    from rich.text import Text

    from ..packs import Pack, PackError, list_packs

    table = Table("name", "resolution", "networks", "folder")
    for root in list_packs():
        try:
            pack = Pack.open(root)
        except PackError as exc:  # one broken pack in a search folder must not hide the others
            problem = str(exc).removeprefix(f"{root}: ")  # the folder has its own column
            table.add_row(Text(root.name), "?", Text(f"unusable: {problem}", style="red"), Text(str(root)))
            continue
        table.add_row(Text(pack.name), str(pack.manifest.get("resolution")), Text(", ".join(pack.networks)),
                      Text(str(root)))
    if not table.rows:
        console.print("no model packs found")
    else:
        show(table)


@weights_app.command("info")
def info_command(pack: str = typer.Argument(..., help="Pack name or folder."),
                 json_output: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")):
    """Show a pack's networks, configs, files and provenance.

    Example: stylecli weights info synthface-64
    """
    from rich.text import Text

    from ..packs import Pack

    p = Pack.open(pack)
    if json_output:
        print(json.dumps(p.manifest, indent=2))
        return
    # Names and configs come from the file: printed as text, never read as rich markup.
    show(Text.assemble((p.name, "bold"), f"  {p.root}  resolution {p.manifest.get('resolution')}"))
    table = Table("network", "class", "file", "dtype", "config")
    for name, entry in p.networks.items():
        table.add_row(*(Text(str(cell)) for cell in (name, entry["class"].rsplit(".", 1)[-1], entry["file"],
                                                      entry.get("dtype", ""), json.dumps(entry.get("config", {})))))
    show(table)
    for name, prov in p.manifest.get("provenance", {}).items():
        show(Text(f"{name}: {json.dumps(prov)}"))


@weights_app.command("verify")
def verify_command(pack: str = typer.Argument(..., help="Pack name or folder.")):
    """Check a pack: its manifest, every file against the size and sha256 in the manifest, and that every network
    builds and loads. Prints one line per problem and exits 1 when there is any (2 when there is no such pack).

    Verify always hashes. Loading a network (generate, edit, ...) checks sizes always and sha256 by default; set
    STYLECLI_VERIFY=size to skip hashing on load for large packs on slow disks (then verify a pack after copying it).

    Example: stylecli weights verify weights/synthface-64
    """
    from ..packs import verify_pack

    root, problems = verify_pack(pack)
    for problem in problems:
        # soft_wrap: a problem stays one line however long; markup=False: names and messages are printed as they are
        console.print(problem, style="red", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"ok: {root}: the manifest is sound, every file matches it and every network loads",
                  markup=False, highlight=False, soft_wrap=True)


@weights_app.command("convert")
def convert_command(
    src: Path = typer.Argument(..., help="NVIDIA stylegan2-ada-pytorch/stylegan3 .pkl, NVIDIA's legacy TensorFlow "
                               ".pkl, rosinality .pt, or a method's official checkpoint (see `stylecli weights convert "
                               "--help`)."),
    dst: Path = typer.Argument(..., help="Pack folder to write (its name becomes the pack name)."),
    fp16: bool = typer.Option(False, "--fp16", help="Store weights as float16 (half the size)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every mapped tensor."),
):
    """Convert an official checkpoint into a stylecli pack. No code from the file is ever run.

    Reads StyleGAN2 generators (and discriminators), NVIDIA's TensorFlow pickles included (stylegan2-ffhq-config-f.pkl,
    without TensorFlow), and the official checkpoints of the methods that declare a converter (e4e:
    e4e_ffhq_encode.pt).

    Example: stylecli weights convert stylegan2-ffhq-config-f.pkl weights/ffhq-1024
    """
    import torch

    from ..methods import METHODS
    from ..methods.base import resolve
    from ..packs import write_pack
    from ..packs.convert import convert_checkpoint

    if dst.exists() and (dst.resolve() == src.resolve() or dst.is_file()):
        raise UsageError(f"{escape(str(dst))}: the destination must be a folder, not a file")
    method = next((spec for spec in METHODS.values() if spec.converter and resolve(spec.converter.detect)(src)), None)
    if method is not None:
        networks, reports = resolve(method.converter.convert)(src)
        source_format = method.name
    else:
        converted = convert_checkpoint(src)
        networks, reports = {"generator": converted.generator}, converted.reports
        source_format = converted.source_format
        if converted.discriminator is not None:
            networks["discriminator"] = converted.discriminator
    pack = None
    if "generator" not in networks:
        # A method's file without a generator (SFE, BDInvert) goes into a pack with the generator it was made for.
        from ..packs import Pack, PackError
        try:
            if not dst.is_dir():  # a folder, not a pack name looked up elsewhere
                raise PackError(f"{dst}: no such folder")
            pack = Pack.open(dst)
        except PackError:
            raise UsageError(f"{escape(str(src))} holds {method.name}'s networks but no generator: convert it into "
                             f"an existing pack made for its generator (e.g. from stylegan2-ffhq-config-f.pkl), not "
                             f"{escape(str(dst))}") from None
    for name, report in reports.items():
        console.print(f"{name}: {len(report.mapped)} tensors mapped, {len(report.ignored)} source tensors ignored, "
                      f"{len(report.regenerated)} filter buffers regenerated")
        if verbose:
            for src_key, dst_key in report.mapped:
                console.print(f"  {escape(src_key)} -> {escape(dst_key)}")
    provenance = {"converted_from": src.name, "source_format": source_format}
    dtype = torch.float16 if fp16 else torch.float32
    if pack is None:
        write_pack(dst, dst.name, networks, networks["generator"].img_resolution, provenance, dtype=dtype)
        console.print(f"wrote pack {escape(str(dst))}")
        return
    if method.converter.into_pack:
        resolve(method.converter.into_pack)(src, pack, dtype)
    else:
        write_pack(pack.root, pack.name, networks, int(pack.manifest["resolution"]), provenance, dtype=dtype)
    console.print(f"added {', '.join(networks)} to pack {escape(str(dst))}")


@weights_app.command("add-loss-nets")
def add_loss_nets_command(
    pack: str = typer.Argument(..., help="Pack name or folder (a real-face pack, e.g. one made by `weights convert`)."),
    lpips_alexnet: Optional[Path] = typer.Option(None, "--lpips-alexnet", help="torchvision AlexNet weights "
                                                 "(alexnet-owt-7be5be79.pth) for the LPIPS perceptual loss."),
    arcface: Optional[Path] = typer.Option(None, "--arcface", help="ArcFace IR-SE50 weights (model_ir_se50.pth, as "
                                           "used by pSp and e4e) for the identity loss."),
):
    """Add the LPIPS and ArcFace loss networks to a pack from their usual downloads (no code from the files runs).

    Example: stylecli weights add-loss-nets weights/ffhq-1024 --lpips-alexnet alexnet-owt-7be5be79.pth
             --arcface model_ir_se50.pth
    """
    from ..losses import loss_network_from_file
    from ..packs import Pack, write_pack

    sources = {name: path for name, path in (("lpips_alexnet", lpips_alexnet), ("arcface", arcface)) if path}
    if not sources:
        raise UsageError("name at least one file: --lpips-alexnet or --arcface")
    for path in sources.values():
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    target = Pack.open(pack)
    networks = {name: loss_network_from_file(name, path) for name, path in sources.items()}
    for name, module in networks.items():
        write_pack(target.root, target.name, {name: module}, int(target.manifest.get("resolution", 0)),
                   {"converted_from": sources[name].name})
    console.print(f"added {', '.join(networks)} to {target.root}")


@weights_app.command("from-runs")
def from_runs_command(
    dst: Path = typer.Argument(..., help="Pack folder to write or update."),
    runs: list[Path] = typer.Argument(..., help="Run folders of `stylecli train TARGET` (each knows its target)."),
    name: Optional[str] = typer.Option(None, "--name", help="Pack name (default: the pack's own, or the folder name "
                                       "for a new pack)."),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="Store weights as float16."),
):
    """Add the networks of finished training runs to a pack, each with its training record.

    Example: stylecli weights from-runs weights/synthface-64 runs/generator runs/e4e
    """
    import torch

    from ..packs import Pack, write_pack
    from ..train.targets import target_of_run

    dtype = torch.float16 if fp16 else torch.float32
    exported = []
    for run in runs:  # every run is read before the pack is touched: a bad folder changes nothing
        try:
            target, trained_on = target_of_run(run)
            exported.append((run, trained_on, *target.export_run(run)))
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    existing = Pack.open(dst) if (dst / "manifest.json").is_file() else None  # a broken manifest: one line
    for run, trained_on, networks, record in exported:
        if existing is not None and trained_on is not None and trained_on != existing.name:
            raise UsageError(f"{escape(str(run))} trained against pack {trained_on!r}, not {existing.name!r}: its "
                             "networks fit that pack's generator")
        resolution = next(iter(networks.values())).config.get("img_resolution")
        if resolution is None:  # networks of methods take the resolution the pack already has
            resolution = existing.manifest["resolution"] if existing is not None else 64
        write_pack(dst, name or (existing.name if existing is not None else dst.name), networks, resolution, record,
                   dtype=dtype)
        console.print(f"{escape(str(dst))}: wrote {', '.join(networks)} from {escape(str(run))}")


class _RichFetchReporter:
    """A fetch's progress on stderr: a Rich bar per file while it downloads (bytes, speed, time left), and lines."""

    def __init__(self):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def file_progress(self, name, done, total):
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)

    def file_done(self, name):
        # A finished bar goes (the summary names every file afterwards): what stays on screen is what is running,
        # and an error is the last line, alone.
        task = self.tasks.pop(name, None)
        if task is not None:
            self.progress.remove_task(task)

    def line(self, text, style=""):
        self.progress.console.print(text, style=style or None, markup=False, highlight=False, soft_wrap=True)


@weights_app.command("fetch")
def fetch_command(
    name: str = typer.Argument(..., help="Pack to fetch: ffhq-1024 or ffhq-256 (see --list)."),
    to: Optional[Path] = typer.Option(None, "--to", help="Folder of packs: the pack goes to DIR/NAME, downloads to "
                                      "DIR/downloads (default: ~/.cache/stylecli/packs, or $XDG_CACHE_HOME/stylecli/"
                                      "packs)."),
    source: Optional[Path] = typer.Option(None, "--from", help="Take the files from this folder (by their published "
                                          "names) instead of the network."),
    list_files: bool = typer.Option(False, "--list", help="List the files of the pack and exit (no network)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.01, help="Seconds a connection may stay silent before "
                                  "the attempt counts as failed."),
    attempts: int = typer.Option(5, "--attempts", min=1, help="Tries per file (each resumes the last, with growing "
                                 "waits between them)."),
    fp16: bool = typer.Option(False, "--fp16", help="Store weights as float16 (half the size)."),
):
    """Download the official weights of a real-face pack and convert them into a stylecli pack, in one command.

    Every file is checked (sha256 where published; otherwise the hash of the first download is recorded and
    reported as not verified). Downloads resume after an interruption (run the command again), and stay in
    DIR/downloads. Without a network, copy the files by hand into a folder and pass it with --from. No code from
    any file is ever run.

    Example: stylecli weights fetch ffhq-1024 && stylecli edit face.png -d smile --model ffhq-1024
    """
    import torch

    from ..packs import catalogue
    from ..packs.download import DownloadPolicy
    from ..packs.fetch import FetchError, describe, fetch_pack

    recipe = catalogue.CATALOGUE.get(name)
    if recipe is None:
        raise UsageError(f"no pack {name!r} in the catalogue; choose from {', '.join(catalogue.CATALOGUE)}")
    if list_files:
        results.print(f"{recipe.name}: {recipe.summary}", markup=False, highlight=False, soft_wrap=True)
        for text in describe(recipe):
            results.print(f"  {text}", markup=False, highlight=False, soft_wrap=True)
        return
    policy = DownloadPolicy(timeout=timeout, attempts=attempts)
    try:
        with _RichFetchReporter() as reporter:
            pack, outcomes = fetch_pack(recipe, to, source, policy, reporter,
                                        dtype=torch.float16 if fp16 else torch.float32)
    except FetchError as exc:
        raise UsageError(str(exc)) from None
    for outcome in outcomes:
        check = f" [{outcome.check}]" if outcome.check else ""
        style = "yellow" if outcome.status.startswith(("kept", "skipped")) or outcome.check != "verified" else None
        console.print(f"{outcome.entry.name}{check}: {outcome.status}", style=style, markup=False, highlight=False,
                      soft_wrap=True)
    for note in recipe.notes:
        console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote pack {escape(str(pack.root))} ({', '.join(pack.networks)})", markup=False,
                  highlight=False, soft_wrap=True)
