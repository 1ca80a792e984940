"""`stylecli bench ...`: speed and memory tables."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Optional

import typer
from rich.table import Table

from .common import DeviceOption, UsageError, console, progress_bar, show

bench_app = typer.Typer(help="Benchmarks that print tables (speed, memory).", no_args_is_help=True)


@bench_app.command("generator")
def generator_command(
    config: str = typer.Option("ffhq-1024", "--config", help="Random-weight configuration (see stylecli.models.CONFIGS)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Time this model instead of --config."),
    device: str = DeviceOption,
    batch: list[int] = typer.Option([1], "--batch", help="Batch size (repeatable)."),
    dtype: list[str] = typer.Option(["fp32"], "--dtype", help="fp32 or fp16 (CUDA only; repeatable)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed repetitions after one warm-up."),
    json_output: bool = typer.Option(False, "--json", help="Print the rows as JSON too."),
    quality: bool = typer.Option(False, "--quality", help="Instead: FID, precision/recall and attribute match "
                                 "against rendered faces, with the pack's domain network."),
    count: int = typer.Option(5000, "--count", min=10, help="--quality: images per side."),
    floor: bool = typer.Option(False, "--floor", help="--quality: also score rendered against other rendered "
                               "images, the best any generator can reach at this count."),
):
    """Generator forward speed (median seconds per image after warm-up) and peak memory; or, with --quality,
    sample quality measured by the pack's domain network.

    Example: stylecli bench generator --config ffhq-1024 --device cpu --batch 1
    Example: stylecli bench generator --model synthface-64 --quality
    """
    import torch

    if quality:
        _quality_table(model, count, json_output, floor)
        return

    from ..bench.generator import bench_generator
    from ..models import load_generator, random_generator, resolve_device

    dev = resolve_device(device)
    G = load_generator(model, dev) if model else random_generator(config).to(dev)
    label = model or f"random:{config}"
    table = Table("model", "device", "dtype", "batch", "s/img", "img/s", "peak memory", "over baseline",
                  title=f"generator forward, {torch.get_num_threads()} threads")
    rows = []
    for dt in dtype:
        if dt not in ("fp32", "fp16"):
            raise UsageError(f"--dtype must be fp32 or fp16, not {dt!r}")
        if dt == "fp16" and dev.type != "cuda":
            raise UsageError("fp16 timing needs --device cuda")
        for n in batch:
            with console.status(f"timing batch {n} {dt}"):
                m = bench_generator(G, dev, batch=n, dtype=dt, repeats=repeats)
            per_img = m.median / n
            row = {"model": label, "device": str(dev), "dtype": dt, "batch": n, "seconds_per_image": per_img,
                   "images_per_second": 1 / per_img, "peak_bytes": m.peak_bytes,
                   "over_baseline_bytes": (m.peak_bytes - m.base_bytes) if m.peak_bytes and m.base_bytes else None}
            rows.append(row)
            table.add_row(label, str(dev), dt, str(n), f"{per_img:.3f}", f"{1 / per_img:.2f}", _gb(m.peak_bytes),
                          _gb(row["over_baseline_bytes"]))
    show(table, json_output)
    console.print("peak memory: process RSS on CPU (weights and libraries included), allocated memory on CUDA")
    if json_output:
        print(json.dumps(rows, indent=2))


@bench_app.command("ops")
def ops_command(device: str = DeviceOption, repeats: int = typer.Option(10, "--repeats", min=1)):
    """Reference path versus CUDA kernel for each custom op (kernel columns need a CUDA device).

    Example: stylecli bench ops --device cuda
    """
    from ..bench.generator import bench_ops
    from ..models import resolve_device

    dev = resolve_device(device)
    table = Table("op", "reference (ms)", "kernel (ms)", "kernel speed-up", title=f"custom ops on {dev}")
    for row in bench_ops(dev, repeats=repeats):
        kern = row["kernel_s"]
        table.add_row(row["op"], f"{row['reference_s'] * 1e3:.2f}", "-" if kern is None else f"{kern * 1e3:.2f}",
                      "-" if kern is None else f"{row['speedup']:.2f}x")
    show(table)
    if dev.type != "cuda":
        console.print("no CUDA device: only the reference path was timed")


def _gb(n):
    return "-" if n is None else f"{n / 2**30:.2f} GB"


def _quality_table(model: Optional[str], count: int, json_output: bool, floor: bool) -> None:
    from ..bench.quality import generator_quality
    from ..packs import Pack

    if not model:
        raise UsageError("--quality needs --model PACK (a pack with a generator and a domainnet)")
    pack = Pack.open(model)
    if not pack.has("domainnet"):
        raise UsageError(f"pack {pack.name!r} has no domain network to measure with")
    with console.status(f"generating, rendering and embedding {count} + {count} images"):
        result = generator_quality(pack.generator(), pack.load("domainnet"), count=count, floor=floor)
    table = Table("metric", "value", "target", *(["floor (rendered vs rendered)"] if floor else []),
                  title=f"{pack.name}: {count} generated vs {count} rendered images")
    for key, label, target in (("fid", "domain FID", "lower is better"), ("precision", "precision (k=3)", ">= 0.70"),
                               ("recall", "recall (k=3)", ">= 0.50")):
        table.add_row(label, f"{result[key]:.3f}", target, *([f"{result['floor'][key]:.3f}"] if floor else []))
    for name, a in result["attributes"].items():
        table.add_row(f"{name}: mean shift", f"{a['shift_in_std']:.3f} std", "<= 0.20")
    for name, c in result["categories"].items():
        table.add_row(f"{name}: total variation", f"{c['total_variation']:.3f}", "lower is better")
    show(table, json_output)
    for name, c in result["categories"].items():
        show(f"{name}, generated / rendered: " +
             ", ".join(f"{k} {c['generated'][k]:.0%} / {c['rendered'][k]:.0%}" for k in c["generated"]), json_output)
    if json_output:
        print(json.dumps(result, indent=2))


METHOD_HELP = ("Methods to compare (repeatable); options of a method after a colon, e.g. "
               "idinvert:chunk=16,precision=bf16 (the flags of `invert`, without the dashes).")


def parse_method(text: str) -> tuple[str, dict]:
    """A bench --method: NAME or NAME:OPTION=VALUE,... -> (name, options as the method's Option types); a one-line
    UsageError for an option the method does not take or a value it refuses."""
    from ..methods import get_method

    name, _, rest = text.partition(":")
    try:
        spec = get_method(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    declared = {o.name: o for o in spec.options}
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in declared:
            raise UsageError(f"--method {text}: {item!r} is not OPTION=VALUE with an option of {name} "
                             f"({', '.join(o.name for o in spec.options) or 'it takes none'})")
        if declared[key].type is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise UsageError(f"--method {text}: {key} takes true or false, not {value!r}")
            value = value.lower() in ("true", "1", "yes")
        options[key] = value
    try:
        spec.check_options(options)
    except ValueError as exc:
        raise UsageError(f"--method {text}: {exc}") from None
    return name, options


def _method_and_losses(method: str, model: str, device: str):
    from ..losses import LossNetworks
    from .editing import _open_method

    name, options = parse_method(method)
    runner, pack = _open_method(name, model, device, options)
    return runner, pack, LossNetworks.from_pack(pack)


SET_HELP = "indomain, detail, ood, geometric, or a folder of aligned images (optional labels.jsonl and NAME_mask.png)"


@contextmanager
def _usage_errors():
    """An unknown set, an unusable folder or a pack without an attribute predictor as a one-line usage error."""
    try:
        yield
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _slug(set_name: str) -> str:
    """A file-name part for a set name or folder path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", set_name).strip("_.") or "set"


def _cell(row: dict, key: str, fmt: str) -> str:
    """row[key] formatted, "-" where the row does not have it; fmt "ms" writes seconds as milliseconds."""
    if key not in row:
        return "-"
    return f"{row[key] * 1e3:.1f} ms" if fmt == "ms" else format(row[key], fmt)


class Column(NamedTuple):
    """A column of the inversion table; its key is the row's (inversion.json's)."""
    header: str
    key: str
    fmt: str = ""
    optional: bool = False  # shown only when some row has the key (measures that need masks)


INVERSION_COLUMNS = (
    Column("method", "method"), Column("set", "set"), Column("PSNR", "psnr", ".2f"), Column("SSIM", "ssim", ".3f"),
    Column("MS-SSIM", "ms_ssim", ".3f"), Column("L2", "l2", ".4f"), Column("percept.", "perceptual", ".4f"),
    Column("ID sim", "id_similarity", ".3f"), Column("PSNR inside", "psnr_inside", ".2f", optional=True),
    Column("PSNR outside", "psnr_outside", ".2f", optional=True), Column("FID", "domain_fid", ".2f"),
    Column("attr. err", "attribute_error_std", ".3f"), Column("mask IoU", "mask_iou", ".3f", optional=True),
    Column("mask area", "mask_area", ".3f", optional=True), Column("s/img", "seconds_per_image", "ms"),
    Column("batch s/img", "batch_seconds_per_image", "ms", optional=True),
)


@bench_app.command("inversion")
def inversion_command(
    method: list[str] = typer.Option(["e4e"], "--method", help=METHOD_HELP),
    model: str = typer.Option("synthface-64", "--model", "-m", help="Pack to evaluate on."),
    sets: list[str] = typer.Option(["indomain", "detail", "ood", "geometric"], "--set",
                                   help=f"Evaluation sets (repeatable): {SET_HELP}."),
    count: int = typer.Option(200, "--count", min=2, help="Images per set (a folder's first ones)."),
    out: Path = typer.Option(Path("bench-out"), "--out", "-o", help="Folder for inversion.json and comparisons."),
    timing_calls: int = typer.Option(30, "--timing-calls", min=1, help="Batch-1 calls timed (their median is "
                                     "s/img), after 3 warm-up calls."),
    batch_timing: int = typer.Option(0, "--batch-timing", min=0, help="Also time calls on this many images at once "
                                     "(the 'batch s/img' column: the median of 3 calls after one warm-up, per image); "
                                     "0: not timed."),
    device: str = DeviceOption,
):
    """Reconstruction quality and speed of each method on evaluation sets; writes JSON and comparison images.

    Example: stylecli bench inversion --method e4e --model synthface-64 --count 200 --set ood --set data/my-faces
    """
    from ..bench.inversion import evaluate_inversion
    from ..bench.masks import MASK_THRESHOLD
    from ..data.sets import check_evaluation_set
    from ..imageio import save_image

    with _usage_errors():
        for set_name in sets:
            check_evaluation_set(set_name)

    for name in method:  # every --method checked before the first is benched
        parse_method(name)
    rows, unreadable = [], {}
    for name in method:
        runner, pack, losses = _method_and_losses(name, model, device)
        for set_name in sets:
            with progress_bar(f"{name} on {set_name}", count, runner) as advance, _usage_errors():
                row, comparison = evaluate_inversion(runner, losses, set_name, count, timing_calls=timing_calls,
                                                     on_batch=advance, timing_batch=batch_timing)
            row["method"] = name
            rows.append(row)
            save_image(comparison, out / f"{_slug(name)}_{_slug(set_name)}.png")
            if row.get("unreadable"):
                unreadable[set_name] = row["unreadable"]
    # Columns that only some runs have (masks: of the set, of the method) are shown when a row has them, so that a
    # table of methods without masks on sets without masks stays as narrow as before.
    columns = [c for c in INVERSION_COLUMNS if not c.optional or any(c.key in row for row in rows)]
    table = Table(*(c.header for c in columns), title=f"inversion on {model} (up to {count} images per set)")
    notes = {}  # note -> the sets it applies to
    for row in rows:
        table.add_row(*(_cell(row, c.key, c.fmt) for c in columns))
        for metric, why in row["skipped"].items():
            if metric in {c.key for c in columns}:  # a note for each '-' in the table (inversion.json: all of them)
                notes.setdefault(f"{metric}: '-' where {why}", set()).add(row["set"])
    for set_name, files in unreadable.items():
        notes[f"{set_name}: {len(files)} unreadable file(s) passed over, e.g. {files[0]}"] = set()
    show(table)
    shown = {c.key for c in columns}
    if "psnr_inside" in shown:
        console.print("PSNR inside / outside: over the pixels inside / outside the set's masks (what was added to the "
                      "face / the face around it)")
    if "mask_iou" in shown:
        console.print(f"mask IoU: the method's mask >= {MASK_THRESHOLD} against the set's masks, over all the set's "
                      "pixels; mask area: the mean of the method's mask (inversion.json: per-image IoU too)")
    for note, on in notes.items():
        console.print(note + (f" ({', '.join(sorted(on))})" if on else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "inversion.json").write_text(json.dumps(rows, indent=2))
    console.print(f"wrote {out}/inversion.json and comparison images (inputs on top, reconstructions below)")


@bench_app.command("editing")
def editing_command(
    method: list[str] = typer.Option(["e4e"], "--method", help=METHOD_HELP),
    model: str = typer.Option("synthface-64", "--model", "-m", help="Pack to evaluate on."),
    direction: list[str] = typer.Option([], "--direction", "-d", help="Directions (default: all fitted ones)."),
    strength: float = typer.Option(2.0, "--strength", help="Edit strength."),
    count: int = typer.Option(100, "--count", min=2, help="Images from the set."),
    set_name: str = typer.Option("indomain", "--set", help=f"Evaluation set: {SET_HELP}."),
    layers: list[str] = typer.Option([], "--layers", help="Also measure each direction restricted to W+ rows "
                                     "START-END (inclusive; repeatable), to choose a direction's layers."),
    reference: bool = typer.Option(False, "--reference", help="Also score the renderer's exact edit (each face "
                                   "rendered again with its attribute moved by 1 std): what an ideal edit scores; "
                                   "needs a synthetic set or a `data synth` folder."),
    out: Path = typer.Option(Path("bench-out"), "--out", "-o", help="Folder for editing.json."),
    timing_calls: int = typer.Option(30, "--timing-calls", min=0, help="Batch-1 edits timed per direction (their "
                                     "median is the edit column), after 3 warm-up calls; 0: not timed."),
    device: str = DeviceOption,
):
    """Edit quality: target-attribute change, drift of the other attributes, identity kept, time of an edit.

    Example: stylecli bench editing --method e4e --direction smile --strength 2 --layers 0-3 --layers 2-5
    """
    from ..bench.inversion import evaluate_editing, evaluate_reference_editing
    from ..data.sets import check_evaluation_set
    from ..directions import check_strengths, get_direction, load_directions, parse_layers, restricted

    with _usage_errors():
        check_evaluation_set(set_name)

    for name in method:  # every --method checked before the first is benched
        parse_method(name)
    ranges = [parse_layers(text) for text in layers]
    rows, per_units = [], []

    def add(row: dict, method_name: str, per_unit: str) -> None:
        rows.append({**row, "method": method_name})
        per_units.append(per_unit)

    for name in method:
        runner, pack, losses = _method_and_losses(name, model, device)
        chosen = {d: get_direction(pack, d) for d in direction} if direction else {
            d: v for d, v in load_directions(pack).items() if v.kind in ("interfacegan", "learned")}
        if not chosen:
            raise UsageError(f"pack {pack.name!r} has no fitted directions (see `stylecli directions fit`)")
        check_strengths([(d, v.vector, strength) for d, v in chosen.items()])  # a learned direction's range
        targets = {d: v.info.get("attribute", d) for d, v in chosen.items()}
        chosen.update({r.name: r for r in [restricted(v, span) for v in list(chosen.values()) for span in ranges]})
        what = f"{name}: inverting, then {len(chosen)} direction{'s' if len(chosen) > 1 else ''}"
        with progress_bar(what, count * (1 + len(chosen)), runner) as advance, _usage_errors():
            for row in evaluate_editing(runner, losses, chosen, count, strength, on_batch=advance, set_name=set_name,
                                        timing_calls=timing_calls):
                add(row, name, f"{row['target_change_per_unit']:+.2f}")
    if reference:
        with console.status(f"renderer reference on {count} images"), _usage_errors():
            for row in evaluate_reference_editing(losses, targets, count, runner.resolution, set_name=set_name):
                add(row, "renderer", "(+1 std)")
    # On a set with masks: how much of what was added survives each edit (a column only then).
    kept = any("psnr_kept" in row for row in rows)
    local = any("psnr_outside_edit" in row for row in rows)
    inside = any("change_inside_edit" in row for row in rows)
    flips = any("flipped_share" in row for row in rows)
    timed = any("edit_seconds_per_image" in row for row in rows)
    table = Table("method", "direction", "target change ± SE", "per unit", "max drift", "ID sim",
                  *(["edit"] if timed else []),
                  *(["PSNR outside edit"] if local else []), *(["change inside"] if inside else []),
                  *(["flipped"] if flips else []),
                  *(["PSNR kept in mask"] if kept else []),
                  title=f"editing on {model}, {set_name}, at strength {strength} ({count} images), in attribute std")
    for row, per_unit in zip(rows, per_units):
        table.add_row(row["method"], row["direction"],
                      f"{row['target_change_std']:+.2f} ± {row['target_change_se']:.2f}", per_unit,
                      f"{row['max_drift_std']:.2f}", f"{row['id_similarity']:.3f}",
                      *([_cell(row, "edit_seconds_per_image", "ms")] if timed else []),
                      *([_cell(row, "psnr_outside_edit", ".2f")] if local else []),
                      *([_cell(row, "change_inside_edit", ".0%")] if inside else []),
                      *([_cell(row, "flipped_share", ".0%")] if flips else []),
                      *([_cell(row, "psnr_kept", ".2f")] if kept else []))
    show(table)
    if timed:
        console.print(f"edit: one edit of an inverted face at batch 1 (the median of {timing_calls} calls), on top "
                      "of its inversion")
    if local:
        console.print("PSNR outside edit: the edited image against the input outside the region the renderer's own "
                      "edit of the attribute changes, in dB (edit locality: detail and background kept)"
                      + ("; change inside: the share of the edit's squared pixel change that falls inside that "
                         "region" if inside else ""))
    if flips:
        console.print("flipped: for a binary attribute, the share of faces without it that gain it (positive strength) "
                      "or with it that lose it (negative)")
    if kept:
        console.print("PSNR kept in mask: the edited image against the input inside the set's masks, in dB (how much "
                      "of what was added survives the edit)" + ("; '-' for the renderer, which renders the face "
                                                               "again without it" if reference else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "editing.json").write_text(json.dumps(rows, indent=2))
