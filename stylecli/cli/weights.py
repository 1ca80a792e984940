"""`stylecli weights ...`: list, inspect, verify and convert model packs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import UsageError, console, show

weights_app = typer.Typer(help="Model packs: list, inspect, verify, and convert official checkpoints.",
                          no_args_is_help=True)


@weights_app.command("list")
def list_command():
    """List the model packs stylecli can find (weights/, $STYLECLI_WEIGHTS, ~/.cache/stylecli/packs).

    Example: stylecli weights list
    """
    from ..packs import Pack, list_packs

    table = Table("name", "resolution", "networks", "folder")
    for root in list_packs():
        pack = Pack.open(root)
        table.add_row(pack.name, str(pack.manifest.get("resolution")), ", ".join(pack.networks), str(root))
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
    from ..packs import Pack

    p = Pack.open(pack)
    if json_output:
        print(json.dumps(p.manifest, indent=2))
        return
    show(f"[bold]{p.name}[/bold]  {p.root}  resolution {p.manifest.get('resolution')}")
    table = Table("network", "class", "file", "dtype", "config")
    for name, entry in p.networks.items():
        table.add_row(name, entry["class"].rsplit(".", 1)[-1], entry["file"], entry.get("dtype", ""),
                      json.dumps(entry.get("config", {})))
    show(table)
    for name, prov in p.manifest.get("provenance", {}).items():
        show(f"{name}: {json.dumps(prov)}")


@weights_app.command("verify")
def verify_command(pack: str = typer.Argument(..., help="Pack name or folder.")):
    """Check every file of a pack against the sizes and sha256 sums in its manifest.

    Example: stylecli weights verify weights/synthface-64
    """
    from ..packs import Pack

    problems = Pack.open(pack).verify()
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print("ok: every file matches its manifest")


@weights_app.command("convert")
def convert_command(
    src: Path = typer.Argument(..., help="NVIDIA stylegan2-ada-pytorch/stylegan3 .pkl or rosinality .pt."),
    dst: Path = typer.Argument(..., help="Pack folder to write (its name becomes the pack name)."),
    fp16: bool = typer.Option(False, "--fp16", help="Store weights as float16 (half the size)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every mapped tensor."),
):
    """Convert an official StyleGAN2 checkpoint into a stylecli pack. No code from the file is ever run.

    Example: stylecli weights convert stylegan2-ffhq-config-f.pkl weights/ffhq-1024
    """
    import torch

    from ..packs import write_pack
    from ..packs.convert import convert_checkpoint

    if dst.exists() and (dst.resolve() == src.resolve() or dst.is_file()):
        raise UsageError(f"{dst}: the destination must be a folder, not a file")
    from ..methods.e4e.convert import convert_e4e, is_e4e_checkpoint
    from ..packs.convert import detect_format

    if src.is_file() and detect_format(src) == "rosinality" and is_e4e_checkpoint(
            torch.load(src, map_location="cpu", weights_only=True)):
        generator, encoder, reports = convert_e4e(src)
        networks, source_format = {"generator": generator, "e4e_encoder": encoder}, "e4e"
    else:
        converted = convert_checkpoint(src)
        networks, reports, source_format = {"generator": converted.generator}, converted.reports, converted.source_format
        if converted.discriminator is not None:
            networks["discriminator"] = converted.discriminator
    for name, report in reports.items():
        console.print(f"{name}: {len(report.mapped)} tensors mapped, {len(report.ignored)} source tensors ignored, "
                      f"{len(report.regenerated)} filter buffers regenerated")
        if verbose:
            for src_key, dst_key in report.mapped:
                console.print(f"  {src_key} -> {dst_key}")
    provenance = {"converted_from": src.name, "source_format": source_format}
    write_pack(dst, dst.name, networks, networks["generator"].img_resolution, provenance,
               dtype=torch.float16 if fp16 else torch.float32)
    console.print(f"wrote pack {dst}")


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
    generator_run: Optional[Path] = typer.Option(None, "--generator-run", help="Run folder of `train generator`."),
    domainnet_run: Optional[Path] = typer.Option(None, "--domainnet-run", help="Run folder of `train domainnet`."),
    e4e_run: Optional[Path] = typer.Option(None, "--e4e-run", help="Run folder of `train e4e`."),
    name: Optional[str] = typer.Option(None, "--name", help="Pack name (default: the folder name)."),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="Store weights as float16."),
):
    """Add the networks of finished training runs to a pack, each with its training record.

    Example: stylecli weights from-runs weights/synthface-64 --generator-run runs/g --domainnet-run runs/dn
    """
    import torch

    from ..packs import write_pack
    from ..train.export import domainnet_from_run, generator_from_run

    from ..methods.e4e.train import encoder_from_run

    runs = ((generator_run, generator_from_run), (domainnet_run, domainnet_from_run), (e4e_run, encoder_from_run))
    if all(run is None for run, _ in runs):
        raise UsageError("name at least one run: --generator-run, --domainnet-run or --e4e-run")
    dtype = torch.float16 if fp16 else torch.float32
    for run, export in runs:
        if run is None:
            continue
        try:
            networks, record = export(run)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        resolution = next(iter(networks.values())).config.get("img_resolution")
        if resolution is None:  # networks of methods take the resolution the pack already has
            resolution = json.loads((dst / "manifest.json").read_text())["resolution"] if (dst / "manifest.json").is_file() else 64
        write_pack(dst, name or dst.name, networks, resolution, record, dtype=dtype)
        console.print(f"{dst}: wrote {', '.join(networks)} from {run}")
