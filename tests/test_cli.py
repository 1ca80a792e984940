"""The command line as a user meets it: help, generate, weights, bench, and one-line errors."""

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from checkpoint_fixtures import random_networks, write_rosinality_pt
from cli_runner import stylecli as run


@pytest.mark.parametrize("command", [[], ["generate"], ["invert"], ["edit"], ["blend"], ["train"],
                                     ["train", "generator"], ["weights"], ["weights", "convert"], ["bench"],
                                     ["bench", "generator"]])
def test_every_command_has_help_with_an_example(command):
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    if command and command[-1] not in ("weights", "bench", "train"):  # groups: their commands carry the examples
        assert "Example: stylecli" in out.stdout


def test_generate_writes_seeded_images_and_a_grid(tmp_path):
    out = run("generate", "--model", "random:tiny-32", "--seeds", "0-2,5", "--grid", "-o", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png", "seed0005.png"]
    assert Image.open(tmp_path / "s" / "seed0000.png").size == (32, 32)
    again = run("generate", "--model", "random:tiny-32", "--seeds", "0", "-o", str(tmp_path / "t"))
    assert again.returncode == 0
    # Same seed, same image, whether generated alone or in a batch (up to one level of rounding).
    alone = np.asarray(Image.open(tmp_path / "t" / "seed0000.png"), dtype=int)
    batched = np.asarray(Image.open(tmp_path / "s" / "seed0000.png"), dtype=int)
    assert np.abs(alone - batched).max() <= 1
    one = Image.open(tmp_path / "s" / "seed0001.png")
    assert one.tobytes() != Image.open(tmp_path / "s" / "seed0000.png").tobytes()


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "no-such-pack"], "no model pack 'no-such-pack'"),
    (["generate", "--model", "random:tiny-32", "--seeds", "5-1"], "bad seed range"),
    (["generate", "--model", "random:huge"], "unknown configuration"),
    (["edit", "face.jpg", "-d", "smile", "--method", "e4e", "--steps", "5"], "--steps: not an option of method 'e4e'"),
    (["invert", "x.png", "--method", "nope"], "unknown method"),
    (["weights", "info", "nowhere"], "no model pack"),
    (["bench", "generator", "--config", "tiny-32", "--dtype", "fp16", "--device", "cpu"], "fp16 timing needs"),
    (["invert", "x.png", "--batch", "0"], "Invalid value for '--batch'"),      # the parser's own errors too
    (["invert", "x.png", "--no-such-flag"], "No such option: --no-such-flag"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_weights_convert_info_verify_and_generate_from_the_pack(tmp_path):
    G, D = random_networks(3)
    write_rosinality_pt(tmp_path / "model.pt", G, D)
    out = run("weights", "convert", str(tmp_path / "model.pt"), str(tmp_path / "packs" / "mini"), "--fp16")
    assert out.returncode == 0, out.stderr
    assert "generator:" in out.stderr and "mapped" in out.stderr
    info = run("weights", "info", str(tmp_path / "packs" / "mini"), "--json")
    manifest = json.loads(info.stdout)
    assert manifest["networks"]["generator"]["dtype"] == "float16"
    assert set(manifest["files"]) == {"generator.safetensors", "discriminator.safetensors"}
    env = {"STYLECLI_WEIGHTS": str(tmp_path / "packs")}
    listing = run("weights", "list", env=env)
    assert "mini" in listing.stdout  # results on stdout, to pipe; messages and progress on stderr
    assert run("weights", "verify", "mini", env=env).returncode == 0
    gen = run("generate", "--model", "mini", "--seeds", "0-1", "-o", str(tmp_path / "img"), env=env)
    assert gen.returncode == 0, gen.stderr
    assert len(list((tmp_path / "img").glob("seed*.png"))) == 2
    (tmp_path / "packs" / "mini" / "generator.safetensors").write_bytes(b"garbage")
    bad = run("weights", "verify", "mini", env=env)
    assert bad.returncode == 1 and "generator.safetensors" in bad.stderr


def test_generate_straight_from_a_checkpoint_file(tmp_path):
    G, D = random_networks(4)
    write_rosinality_pt(tmp_path / "model.pt", G, D)
    out = run("generate", "--model", str(tmp_path / "model.pt"), "--seeds", "3", "-o", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "o" / "seed0003.png").is_file()


def test_bench_generator_and_ops_print_tables():
    out = run("bench", "generator", "--config", "tiny-32", "--device", "cpu", "--batch", "1", "--batch", "4",
              "--repeats", "2", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["seconds_per_image"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert "s/img" in out.stderr  # with --json, stdout holds the JSON alone and the table goes to stderr
    ops = run("bench", "ops", "--device", "cpu", "--repeats", "1")
    assert ops.returncode == 0, ops.stderr
    assert "upsample2d" in ops.stdout and "only the reference path" in ops.stderr


def test_console_width_follows_columns_as_it_is_when_printing(monkeypatch):
    from stylecli.cli.common import PlainConsole

    monkeypatch.setenv("COLUMNS", "50")
    console = PlainConsole(stderr=False)
    assert console.width == 50
    monkeypatch.setenv("COLUMNS", "300")  # set after the console exists (tests, and a resized terminal)
    assert console.width == 300
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # redirected: room for wide tables, not rich's 80
    assert console.width == 160
