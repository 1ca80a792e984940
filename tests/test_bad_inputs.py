"""Hostile input to `invert` and `edit`, class by class (issue #16): each ends with a clear one-line reason and the
right exit code, the other files of a batch are done, nothing is half-written and no input is replaced.

Most classes run the pipeline with a tiny stand-in method (fast); the CLI runs use the shipped synthface-64 pack.
"""

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from stylecli import fileio
from stylecli import imageio
from stylecli.fileio import write_files
from stylecli.imageio import READABLE_SUFFIXES, ImageError, list_images, load_image
from stylecli.latents import SUFFIX, LatentError, LatentSpec, load_latent, save_latent
from stylecli.methods.base import Inversion
from stylecli.pipeline import edit_files, invert_files, output_stems, parse_strengths
from cli_runner import stylecli as run


class TinyMethod:
    """A stand-in method: W+ [N, 2, 4] from the image's channel means; the reconstruction is the image itself.
    An image whose red channel is saturated (255) makes it raise, like a method bug that one input triggers."""
    name = "tiny"
    resolution = 8

    def __init__(self):
        self.G = SimpleNamespace(num_ws=2, w_dim=4)
        self.calls = 0

    def invert(self, images):
        self.calls += 1
        if (images[:, 0] > 0.999).all(dim=(1, 2)).any():
            raise TypeError("tiny method bug")
        w = images.mean(dim=(2, 3)).mean(dim=1)[:, None, None].expand(-1, 2, 4).contiguous()
        return Inversion(latents={"w_plus": w}, image=images.clone())

    def edit(self, inversion, direction, strength):
        shift = (inversion.latents["w_plus"] + strength * direction).mean(dim=(1, 2))
        return (torch.zeros(len(shift), 3, 8, 8) + shift[:, None, None, None]).clamp(-1, 1)


def face(path, colour=(120, 80, 60), size=8):
    Image.new("RGB", (size, size), colour).save(path)
    return path


def one_line_error(out, code=2):
    """The command failed with `code` and said why in one line, without a traceback."""
    assert out.returncode == code, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def invert_folder(folder, out, **kwargs):
    method = TinyMethod()
    results = invert_files(method, "tiny-pack", list_images(folder), out, **kwargs)
    return {Path(r.source).name: r for r in results}, method


# --- one unreadable file fails that file only --------------------------------------------------------------------

def _symlink_loop(path):
    path.symlink_to(path)


def _fifo(path):
    os.mkfifo(path)


def _folder(path):
    path.mkdir()


def _huge_text_chunk(path):  # PIL raises ValueError (not OSError) while opening it
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def _text(path):
    path.write_text("not an image")


def _truncated(path):
    face(path, size=64)
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("make, reason", [
    (_symlink_loop, "a symlink loop"), (_fifo, "not a regular file (a FIFO)"), (_folder, "a folder, not a file"),
    (_huge_text_chunk, "cannot decode (ValueError"), (_text, "not an image file"), (_truncated, "cannot decode"),
])
def test_an_unreadable_file_fails_alone(tmp_path, make, reason):
    photos = tmp_path / "photos"
    photos.mkdir()
    face(photos / "a.png")
    make(photos / "bad.png")
    face(photos / "c.jpg")
    results, _ = invert_folder(photos, tmp_path / "out")
    assert results["a.png"].status == results["c.jpg"].status == "done"
    bad = results["bad.png"]
    assert bad.status == "failed" and reason in bad.error and "no such file" not in bad.error
    assert "\n" not in bad.error and bad.traceback is None  # bad input, not a bug
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.latent.safetensors", "a.png", "c.latent.safetensors", "c.png"]


def test_pil_warnings_stay_quiet(tmp_path):
    path = tmp_path / "exif.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(path).size == (8, 8)  # PIL warns "Corrupt EXIF data" while opening it
    assert not caught


# --- output pairs land together; odd file names ---------------------------------------------------------------

def test_a_non_utf8_file_name_writes_both_outputs(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    face(photos / os.fsdecode(b"caf\xe9.png"))  # Latin-1 bytes: not UTF-8
    results, _ = invert_folder(photos, tmp_path / "out")
    (result,) = results.values()
    assert result.status == "done" and result.source.endswith("caf\\xe9.png")  # printable, JSON- and UTF-8-safe
    latent = tmp_path / "out" / os.fsdecode(b"caf\xe9" + SUFFIX.encode())
    assert (tmp_path / "out" / os.fsdecode(b"caf\xe9.png")).is_file()
    inversion, meta = load_latent(latent, LatentSpec("tiny-pack", "tiny", 2, 4))
    assert meta["source"].endswith("caf\\xe9.png") and inversion.latents["w_plus"].shape == (1, 2, 4)


def test_outputs_land_together_or_not_at_all(tmp_path, monkeypatch):
    import stylecli.pipeline as pipeline

    def broken(*args, **kwargs):
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
    monkeypatch.setattr(pipeline, "latent_bytes", broken)
    face(tmp_path / "a.png")
    results = invert_files(TinyMethod(), "tiny-pack", [tmp_path / "a.png"], tmp_path / "out")
    assert results[0].status == "failed"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no orphan image

    # A rename that fails after the first one landed takes the first one back.
    renames = []
    real_replace = os.replace

    def failing_replace(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)
    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(fileio.OutputError, match="No space left"):
        write_files({tmp_path / "pair" / "x.png": b"1", tmp_path / "pair" / "x.latent": b"2"})
    assert list((tmp_path / "pair").iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_usual_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_files({tmp_path / "a.bin": b"x"})
        imageio.save_image(Image.new("RGB", (2, 2)), tmp_path / "b.png")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.png").stat().st_mode & 0o777 == mode


# --- names: same stem, every readable format, never an input ----------------------------------------------------

def test_files_sharing_a_stem_write_their_own_outputs(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    face(photos / "dup.png", (250, 10, 10))
    face(photos / "dup.jpg", (10, 10, 250))
    face(photos / "Dup.webp", (10, 250, 10))
    face(photos / "dup_png.bmp")  # the name a shared stem turns into is taken too
    assert output_stems(list_images(photos)) == ["Dup_webp", "dup_jpg", "dup_png", "dup_png_2"]
    first, _ = invert_folder(photos, tmp_path / "out")
    assert all(r.status == "done" for r in first.values())
    outputs = {o for r in first.values() for o in r.outputs}
    assert len(outputs) == 8  # 4 images and 4 latents, none shared
    again, method = invert_folder(photos, tmp_path / "out")
    assert all(r.status == "skipped" for r in again.values()) and method.calls == 0
    assert {o for r in again.values() for o in r.outputs} == outputs


def test_one_list_of_readable_formats(tmp_path):
    assert {".gif", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp"} <= set(READABLE_SUFFIXES)
    for suffix in (".gif", ".avif") if ".avif" in READABLE_SUFFIXES else (".gif",):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / f"x{suffix}")
        assert list_images(tmp_path / f"x{suffix}") == [tmp_path / f"x{suffix}"]  # alone
        assert tmp_path / f"x{suffix}" in list_images(tmp_path)                     # and from its folder
        assert load_image(tmp_path / f"x{suffix}").size == (8, 8)
    (tmp_path / "notes.txt").write_text("x")
    assert tmp_path / "notes.txt" not in list_images(tmp_path)
    with pytest.raises(ImageError, match="not a readable image type"):
        list_images(tmp_path / "notes.txt")


def test_outputs_never_replace_inputs(tmp_path):
    face(tmp_path / "a.png", (1, 1, 1))
    face(tmp_path / "b.jpg")
    before = (tmp_path / "a.png").read_bytes()
    results, method = invert_folder(tmp_path, tmp_path)  # out = the input folder: a.png would be replaced
    assert results["a.png"].status == "failed" and "refusing to overwrite an input" in results["a.png"].error
    assert results["b.jpg"].status == "done" and (tmp_path / "b.png").is_file()
    assert (tmp_path / "a.png").read_bytes() == before and method.calls == 1  # a.png was not even inverted


def test_protecting_inputs_costs_one_resolve_per_path(tmp_path, monkeypatch):
    calls = []
    real = imageio._resolve
    monkeypatch.setattr(imageio, "_resolve", lambda p: calls.append(p) or real(p))
    files = [face(tmp_path / f"{i:03d}.png") for i in range(60)]
    invert_files(TinyMethod(), "tiny-pack", files, tmp_path / "out", compare=True)
    assert len(calls) == 60 + 60 * 3  # each input once, each output once: not inputs x outputs


# --- 16-bit and float pixels -------------------------------------------------------------------------------------

def test_16_bit_and_float_pixels_are_scaled(tmp_path):
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(tmp_path / "g16.png")  # 32896 = 128 * 257
    assert load_image(tmp_path / "g16.png").getpixel((0, 0)) == (128, 128, 128)
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    assert load_image(tmp_path / "f.tif").getpixel((0, 0)) == (128, 128, 128)
    Image.fromarray(np.full((4, 4), 65535, np.int32)).save(tmp_path / "i32.tif")
    assert load_image(tmp_path / "i32.tif").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("array, reason", [
    (np.full((4, 4), 3.0, np.float32), "expected 0..1"),
    (np.full((4, 4), np.nan, np.float32), "NaN"),
    (np.full((4, 4), 70000, np.int32), "outside 0..65535"),
])
def test_pixels_of_unknown_range_are_refused(tmp_path, array, reason):
    Image.fromarray(array).save(tmp_path / "odd.tif")
    with pytest.raises(ImageError, match=reason):
        load_image(tmp_path / "odd.tif")


# --- latent files and strengths ----------------------------------------------------------------------------------

SPEC = LatentSpec("tiny-pack", "tiny", 2, 4)


def _latent(path, w=None, pack="tiny-pack", method="tiny", extra_key=None):
    w = torch.zeros(1, 2, 4) if w is None else w
    inversion = Inversion(latents={"w_plus" if extra_key is None else extra_key: w}, image=None)
    return save_latent(path, inversion, 0, pack, method, "x.png")


@pytest.mark.parametrize("make, reason", [
    (lambda p: _latent(p, torch.zeros(1, 3, 4)), r"W\+ code of shape \[1, 3, 4\], pack 'tiny-pack' needs \[1, 2, 4\]"),
    (lambda p: _latent(p, torch.full((1, 2, 4), float("nan"))), "NaN or infinite"),
    (lambda p: _latent(p, torch.zeros(1, 2, 4, dtype=torch.int64)), "expected one row of floats"),
    (lambda p: _latent(p, extra_key="w"), "no latent.w_plus"),
    (lambda p: _latent(p, pack="other"), "latent of pack 'other', not 'tiny-pack'"),
    (lambda p: _latent(p, method="e4e"), "latent of method 'e4e', not 'tiny'"),
    (lambda p: p.write_bytes(b"\xff" * 40), "not a stylecli latent file"),
    (lambda p: os.mkfifo(p), r"not a regular file \(a FIFO\)"),
    (lambda p: p.mkdir(), "a folder, not a file"),
])
def test_latent_files_are_checked_against_the_pack_and_method(tmp_path, make, reason):
    good = _latent(tmp_path / f"good{SUFFIX}")
    make(tmp_path / f"bad{SUFFIX}")
    with pytest.raises(LatentError, match=reason):
        load_latent(tmp_path / f"bad{SUFFIX}", SPEC)
    results = edit_files(TinyMethod(), "tiny-pack", [tmp_path / f"bad{SUFFIX}", good], [("d", torch.ones(2, 4), [1.0])],
                         tmp_path / "out", from_latents=True)
    assert [r.status for r in results] == ["failed", "done"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good_d+1.png"]


@pytest.mark.parametrize("text, reason", [
    ("nan", "finite"), ("inf", "finite"), ("-inf:1:3", "finite"), ("1e30", "within ±100"), ("101", "within ±100"),
    ("-3:3:100000000", "COUNT is 2 to 100"), ("-3:3:1", "COUNT is 2 to 100"), ("1:2", "START:END:COUNT"),
    ("", "use a number"), ("two", "use a number"),
])
def test_bad_strengths_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_strengths(text)


def test_good_strengths():
    assert parse_strengths("2") == [2.0] and parse_strengths("-100") == [-100.0]
    assert parse_strengths("-1:1:3") == [-1.0, 0.0, 1.0] and len(parse_strengths("0:1:100")) == 100


# --- method bugs -------------------------------------------------------------------------------------------------

def test_a_method_bug_fails_only_the_file_that_triggers_it_and_keeps_the_traceback(tmp_path):
    face(tmp_path / "a.png")
    face(tmp_path / "b.png", (255, 255, 255))  # TinyMethod raises on it
    face(tmp_path / "c.png")
    results, _ = invert_folder(tmp_path, tmp_path / "out", batch=3)
    assert results["a.png"].status == results["c.png"].status == "done"
    bug = results["b.png"]
    assert bug.status == "failed" and "internal error (TypeError: tiny method bug)" in bug.error
    assert "Traceback" in bug.traceback and "tiny method bug" in bug.traceback
    assert not list((tmp_path / "out").glob("b*"))
    edited = edit_files(TinyMethod(), "tiny-pack", [tmp_path / n for n in ("a.png", "b.png")],
                        [("d", torch.ones(2, 4), [1.0])], tmp_path / "edited")
    assert [r.status for r in edited] == ["done", "failed"] and edited[1].traceback


def test_debug_prints_the_traceback_of_a_method_bug(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stylecli.cli import app
    from stylecli.methods.e4e.method import E4E

    def buggy(self, images):
        raise TypeError("method bug")
    monkeypatch.setattr(E4E, "invert", buggy)
    face(tmp_path / "a.png")
    for debug in (False, True):
        out = CliRunner().invoke(app, ["invert", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--device",
                                       "cpu", "--align", "off"] + (["--debug"] if debug else []))
        assert out.exit_code == 1, out.output
        assert "internal error (TypeError: method bug)" in out.output
        assert ("Traceback" in out.output) == debug and ("--debug prints" in out.output) != debug


# --- the command line --------------------------------------------------------------------------------------------

def test_cli_batch_with_hostile_names_and_files(tmp_path):
    """Markup-like and non-UTF-8 names are printed as they are; bad files fail alone with exit code 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    face(photos / "[b]ok[_b].png")
    (photos / "[red]notes.png").write_text("not an image")
    (photos / "loop.png").symlink_to("loop.png")
    face(photos / os.fsdecode(b"caf\xe9.png"))
    out = run("invert", str(photos), "-o", str(tmp_path / "out"), "--device", "cpu", "--align", "off")  # not faces
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert f"failed: {photos}/[red]notes.png: not an image file" in out.stderr
    assert f"failed: {photos}/loop.png: a symlink loop" in out.stderr
    assert "inverted: 2 done, 2 failed" in out.stderr
    written = sorted(os.fsencode(p.name) for p in (tmp_path / "out").iterdir())
    assert written == [b"[b]ok[_b].latent.safetensors", b"[b]ok[_b].png", b"caf\xe9.latent.safetensors", b"caf\xe9.png"]


@pytest.mark.parametrize("setup, args, message", [
    (None, ["invert", "{t}/a.png", "--model", "[/b]x"], "no model pack '[/b]x'"),
    (None, ["invert", "{t}/[red]missing.png"], "{t}/[red]missing.png: no such file"),
    ("fifo", ["invert", "{t}/pipe.png"], "{t}/pipe.png: not a regular file (a FIFO)"),
    (None, ["invert", "{t}/a.png", "-o", "{t}/a.png"], "{t}/a.png: cannot write outputs there: it is a file"),
    (None, ["invert", "{t}/a.png", "-o", "{t}/a.png/sub"], "cannot write outputs there (Not a directory)"),
    (None, ["invert", "{t}/notes.txt"], "not a readable image type"),
    (None, ["edit", "{t}/a.png", "-d", "smile", "-s", "nan"], "bad strength 'nan'"),
    (None, ["edit", "{t}/a.png", "-d", "smile", "-s", "-3:3:100000000"], "COUNT is 2 to 100 frames"),
    (None, ["edit", "{t}", "--latent", "-d", "smile"], "nothing to edit (no .latent.safetensors files)"),
])
def test_cli_usage_errors_are_one_line_and_exit_code_2(tmp_path, setup, args, message):
    face(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    if setup == "fifo":
        os.mkfifo(tmp_path / "pipe.png")
    t = str(tmp_path)
    line = one_line_error(run(*[a.replace("{t}", t) for a in args], "--device", "cpu"))
    assert message.replace("{t}", t) in line
    assert not (tmp_path / "inverted").exists() and not (tmp_path / "edited").exists()


def test_cli_edit_latents_checks_each_file(tmp_path):
    face(tmp_path / "a.png")
    inverted = run("invert", str(tmp_path / "a.png"), "-o", str(tmp_path / "codes"), "--device", "cpu", "--align",
                   "off")  # a plain colour, not a face: used whole
    assert inverted.returncode == 0, inverted.stderr
    _latent(tmp_path / "codes" / f"small{SUFFIX}", pack="synthface-64", method="e4e")  # W+ of the wrong shape
    out = run("edit", str(tmp_path / "codes"), "--latent", "-d", "smile", "-s", "2", "-o", str(tmp_path / "ed"),
              "--device", "cpu")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "small.latent.safetensors: W+ code of shape [1, 2, 4], pack 'synthface-64' needs" in out.stderr
    assert [p.name for p in (tmp_path / "ed").iterdir()] == ["a_smile+2.png"]


def test_the_training_hint_names_the_pack_as_it_can_be_found(tmp_path, monkeypatch):
    """A pack opened by its folder is not found by its name: the hint gives the folder."""
    import json
    import shutil

    from stylecli.methods import get_method
    from stylecli.methods.base import MethodUnavailable
    from stylecli.packs import Pack

    shipped = Pack.open("synthface-64").root
    manifest = json.loads((shipped / "manifest.json").read_text())
    dropped = manifest["networks"].pop("e4e_encoder")["file"]
    manifest.get("files", {}).pop(dropped, None)
    manifest["name"] = "my faces"
    pack = tmp_path / "my faces"
    pack.mkdir()
    for file in manifest.get("files", {}):
        shutil.copy(shipped / file, pack / file)
    (pack / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MethodUnavailable, match=f"train it with `stylecli train e4e --model '{pack}'`"):
        get_method("e4e").load(Pack.open(pack))
    monkeypatch.setenv("STYLECLI_WEIGHTS", str(tmp_path))
    with pytest.raises(MethodUnavailable, match="train it with `stylecli train e4e --model 'my faces'`"):
        get_method("e4e").load(Pack.open("my faces"))


def test_an_output_two_inputs_would_write_fails_the_second_alone(tmp_path):
    """A folder leaves a's strip out of its listing, but a list given from Python may hold both: a.png's
    a_compare.png and the reconstruction of an input named a_compare.png are one path."""
    face(tmp_path / "a.png")
    face(tmp_path / "a_compare.png", (10, 200, 10))
    assert list_images(tmp_path) == [tmp_path / "a.png"]
    both = [tmp_path / "a.png", tmp_path / "a_compare.png"]
    results = {Path(r.source).name: r for r in invert_files(TinyMethod(), "tiny-pack", both, tmp_path / "out",
                                                            compare=True)}
    assert results["a.png"].status == "done"
    second = results["a_compare.png"]
    assert second.status == "failed" and "is also the output of" in second.error
