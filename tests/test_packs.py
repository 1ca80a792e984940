"""A broken pack or a bad --device is one line and a non-zero exit, never a traceback or a silent load.

Each test copies the shipped synthface-64 pack to tmp_path, breaks it one way, and checks the error both from the
Python API and from the command line (`main()` in process, as the `stylecli` script runs it: exit 2 with one
`error: ...` line, or exit 1 with one line per problem for `weights verify`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stylecli.packs.pack as pack_module
from stylecli.models import ModelError, resolve_device
from stylecli.packs import Pack, PackError, verify_pack

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights" / "synthface-64"


@pytest.fixture
def pack(tmp_path):
    """A fresh copy of the shipped pack (20 MB: a few ms to copy)."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "copy"))


@pytest.fixture(autouse=True)
def fresh_hash_cache(monkeypatch):
    """Each test starts with no hashes remembered and with the default verify mode."""
    monkeypatch.setattr(pack_module, "_hashes", {})
    monkeypatch.delenv("STYLECLI_VERIFY", raising=False)


def edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)  # in place (its return value is ignored: dict.pop's would mean nothing)
    (root / "manifest.json").write_text(json.dumps(manifest))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def relist(root: Path, file: str) -> None:
    """Record `file`'s current size and hash in the manifest, as if the pack had been written that way."""
    edit_manifest(root, lambda m: m["files"].__setitem__(file, {"bytes": (root / file).stat().st_size,
                                                                "sha256": pack_module.sha256_of(root / file)}))


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """Run the `stylecli` entry point in process; returns (exit code, stdout + stderr)."""
    from stylecli.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["stylecli", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out + out.err
    return run


def one_line_error(cli, *args, code=2) -> str:
    """The single line a command fails with; asserts the exit code and that no traceback was printed."""
    rc, out = cli(*args)
    assert rc == code, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return lines[0]


def load_generator_cli(cli, root, tmp_path):
    """`stylecli generate` on the pack: it loads the generator (and needs nothing else)."""
    return one_line_error(cli, "generate", "--model", root, "--seeds", "0", "--device", "cpu", "-o", tmp_path / "out")


# --- the manifest --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [([1, 2], "the manifest is an array, expected an object"),
                                            ("pack", "the manifest is a string ('pack'), expected an object"),
                                            (None, "the manifest is null, expected an object")])
def test_a_manifest_that_is_not_an_object(pack, cli, value, message):
    (pack / "manifest.json").write_text(json.dumps(value))
    with pytest.raises(PackError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Pack.open(pack)
    line = one_line_error(cli, "weights", "info", pack)
    assert "error:" in line and str(pack) in line and message in line
    assert message in one_line_error(cli, "weights", "verify", pack, code=1)


def test_a_manifest_that_is_not_json(pack, cli):
    (pack / "manifest.json").write_text("{not json")
    with pytest.raises(PackError, match="unreadable manifest"):
        Pack.open(pack)
    assert "unreadable manifest" in one_line_error(cli, "weights", "info", pack)
    assert "unreadable manifest" in one_line_error(cli, "weights", "verify", pack, code=1)


@pytest.mark.parametrize("key", ["format", "name", "resolution", "networks", "files"])
def test_a_missing_key(pack, cli, key):
    edit_manifest(pack, lambda m: m.pop(key))
    with pytest.raises(PackError, match=f"{pack}: bad manifest.json: {key}: missing"):
        Pack.open(pack)
    assert f"{key}: missing" in one_line_error(cli, "weights", "info", pack)
    # verify lists every problem: a missing networks or files also leaves networks' files unlisted, and so on
    rc, out = cli("weights", "verify", pack)
    assert rc == 1 and f"{key}: missing" in out and "Traceback" not in out


@pytest.mark.parametrize("key, value, message", [
    ("format", "stylecli-pack/9", "format: unknown pack format 'stylecli-pack/9'"),
    ("name", 5, "name: expected a non-empty string, got a number (5)"),
    ("resolution", "64", "resolution: expected a positive integer, got a string ('64')"),
    ("resolution", True, "resolution: expected a positive integer, got a boolean (true)"),
    ("provenance", "trained", "provenance: expected an object, got a string"),
    ("networks", ["generator"], "networks: expected an object of network name -> {file, class, config}, got an array"),
    ("files", ["generator.safetensors"], "files: expected an object of file name -> {sha256, bytes}, got an array"),
    ("w_avg", "mapping.w_avg", "w_avg: expected an object with file and key strings"),
])
def test_a_key_of_the_wrong_type(pack, cli, key, value, message):
    edit_manifest(pack, lambda m: m.__setitem__(key, value))
    with pytest.raises(PackError) as info:
        Pack.open(pack)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert message in one_line_error(cli, "weights", "info", pack)
    rc, out = cli("weights", "verify", pack)
    assert rc == 1 and message in out and "Traceback" not in out


@pytest.mark.parametrize("edit, message", [
    (lambda net: "generator.safetensors", "networks.generator: expected an object with file, class and config, "
                                          "got a string"),
    (lambda net: net.pop("config") and None, "networks.generator.config: missing"),
    (lambda net: net.pop("file") and None, "networks.generator.file: missing"),
    (lambda net: net.__setitem__("config", [256]), "networks.generator.config: expected an object"),
    (lambda net: net.__setitem__("class", 7), "networks.generator.class: expected a dotted class path"),
])
def test_a_network_entry_of_the_wrong_shape(pack, cli, edit, message):
    def change(m):
        result = edit(m["networks"]["generator"])
        if result is not None:
            m["networks"]["generator"] = result
    edit_manifest(pack, change)
    with pytest.raises(PackError, match="bad manifest.json: " + message.split(":")[0]):
        Pack.open(pack)
    assert message in one_line_error(cli, "weights", "info", pack)


@pytest.mark.parametrize("meta, message", [
    ({"bytes": -1, "sha256": "0" * 64}, "bytes: expected a non-negative integer"),
    ({"bytes": 10, "sha256": "abc"}, "sha256: expected 64 lowercase hex digits"),
    ("3041912", "expected an object with sha256 and bytes"),
])
def test_a_files_entry_of_the_wrong_shape(pack, cli, meta, message):
    edit_manifest(pack, lambda m: m["files"].__setitem__("generator.safetensors", meta))
    with pytest.raises(PackError, match=message):
        Pack.open(pack)
    assert message in one_line_error(cli, "weights", "info", pack)


def test_every_problem_of_a_manifest_is_listed_by_verify(pack, cli):
    def two_problems(m):
        m["resolution"] = -64
        m["networks"]["domainnet"]["class"] = "os.system"
    edit_manifest(pack, two_problems)
    with pytest.raises(PackError, match=r"resolution: .* \(and 1 more: stylecli weights verify "):
        Pack.open(pack)
    rc, out = cli("weights", "verify", pack)
    assert rc == 1 and "Traceback" not in out
    assert out.strip().splitlines() == [
        "manifest.json: resolution: expected a positive integer, got a number (-64)",
        "manifest.json: networks.domainnet.class: 'os.system' is not a class inside stylecli (stylecli.module.Class); "
        "packs cannot name other code"]


# --- file names ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../generator.safetensors", "/etc/passwd", "sub/generator.safetensors", "..", "",
                                  "..\\generator.safetensors"])
def test_a_file_name_that_leaves_the_pack_folder(pack, cli, name):
    def point_outside(m):
        m["files"][name] = m["files"]["generator.safetensors"]
        m["networks"]["generator"]["file"] = name
    edit_manifest(pack, point_outside)
    with pytest.raises(PackError) as info:
        Pack.open(pack)
    expected = "expected a file name" if not name else "is not a plain file name inside the pack folder"
    assert expected in str(info.value)
    assert expected in one_line_error(cli, "weights", "info", pack)
    assert expected in load_generator_cli(cli, pack, pack.parent)


def test_a_symlink_that_leaves_the_pack_folder(pack, cli, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(pack / "generator.safetensors", outside)
    (pack / "generator.safetensors").unlink()
    (pack / "generator.safetensors").symlink_to(outside)
    with pytest.raises(PackError, match="generator.safetensors' is a symlink leading out of the pack folder"):
        Pack.open(pack)
    assert "symlink leading out of the pack folder" in load_generator_cli(cli, pack, tmp_path)
    # A link that stays inside the folder is an ordinary file of the pack.
    (pack / "generator.safetensors").unlink()
    (pack / "generator.safetensors").symlink_to(outside.rename(pack / "g.bin").name)
    Pack.open(pack).generator()


def test_a_network_file_not_listed_under_files(pack, cli, tmp_path):
    edit_manifest(pack, lambda m: m["files"].pop("generator.safetensors"))
    with pytest.raises(PackError, match="networks.generator.file: 'generator.safetensors' is not listed under files"):
        Pack.open(pack)
    assert "is not listed under files" in load_generator_cli(cli, pack, tmp_path)


# --- classes -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dotted", ["os.system", "torch.nn.Linear", "stylecli", "stylecli..Generator",
                                    "stylecli_evil.Generator", "stylecli.core.networks.Generator()"])
def test_a_class_outside_stylecli_is_refused_when_the_pack_opens(pack, cli, dotted, tmp_path):
    edit_manifest(pack, lambda m: m["networks"]["generator"].__setitem__("class", dotted))
    with pytest.raises(PackError, match="is not a class inside stylecli"):
        Pack.open(pack)
    assert "packs cannot name other code" in load_generator_cli(cli, pack, tmp_path)


@pytest.mark.parametrize("dotted, message", [
    ("stylecli.no_such_module.Generator", "no module 'stylecli.no_such_module' in stylecli"),
    ("stylecli.packs.pack.Pack", "'stylecli.packs.pack.Pack' is not a network class"),
    ("stylecli.core.networks.NoSuchClass", "is not a network class"),
    ("stylecli.packs.pack.Linear", "is torch.nn.modules.linear.Linear, outside stylecli"),
])
def test_a_class_that_is_not_a_stylecli_network_fails_to_load(pack, cli, monkeypatch, dotted, message, tmp_path):
    monkeypatch.setattr(pack_module, "Linear", torch.nn.Linear, raising=False)  # torch's class reached via stylecli
    edit_manifest(pack, lambda m: m["networks"]["generator"].__setitem__("class", dotted))
    opened = Pack.open(pack)
    with pytest.raises(PackError, match=message):
        opened.generator()
    assert message in load_generator_cli(cli, pack, tmp_path)
    assert message in one_line_error(cli, "weights", "verify", pack, code=1)


# --- the weights files ---------------------------------------------------------------------------------------------

def test_a_flipped_byte_is_found_on_load_and_by_verify(pack, cli, tmp_path):
    path = pack / "generator.safetensors"
    flip_byte(path, path.stat().st_size // 2)  # inside a tensor: the file still parses
    with pytest.raises(PackError, match="generator.safetensors: sha256 differs from the manifest"):
        Pack.open(pack).generator()
    assert "sha256 differs" in load_generator_cli(cli, pack, tmp_path)
    assert one_line_error(cli, "weights", "verify", pack, code=1).startswith("generator.safetensors: sha256 differs")


def test_the_size_only_opt_out_skips_hashing(pack, cli, monkeypatch, tmp_path):
    """STYLECLI_VERIFY=size (or check="size"): the flipped byte of the test above loads; `weights verify` still
    hashes and finds it."""
    path = pack / "generator.safetensors"
    flip_byte(path, path.stat().st_size // 2)
    hashed = []
    monkeypatch.setattr(pack_module, "sha256_of", lambda p: hashed.append(p) or "0" * 64)
    Pack.open(pack, check="size").generator()
    monkeypatch.setenv("STYLECLI_VERIFY", "size")
    Pack.open(pack).generator()
    assert hashed == []
    rc, out = cli("generate", "--model", pack, "--seeds", "0", "--device", "cpu", "-o", tmp_path / "out")
    assert rc == 0, out
    assert hashed == []
    monkeypatch.undo()  # the real hash again, and no STYLECLI_VERIFY
    assert "sha256 differs" in one_line_error(cli, "weights", "verify", pack, code=1)


@pytest.mark.parametrize("mode", ["SIZE", "none", "md5"])
def test_an_unknown_verify_mode_is_one_line(pack, cli, monkeypatch, mode, tmp_path):
    with pytest.raises(PackError, match=f"check= must be one of sha256, size, not '{mode}'"):
        Pack.open(pack, check=mode)
    monkeypatch.setenv("STYLECLI_VERIFY", mode)
    with pytest.raises(PackError, match=rf"\$STYLECLI_VERIFY must be one of sha256, size, not '{mode}'"):
        Pack.open(pack)
    assert "$STYLECLI_VERIFY must be one of" in load_generator_cli(cli, pack, tmp_path)


def test_a_hash_is_computed_once_per_file_and_again_when_the_file_changes(pack, monkeypatch):
    calls = []
    real = pack_module.sha256_of
    monkeypatch.setattr(pack_module, "sha256_of", lambda p: calls.append(Path(p).name) or real(p))
    opened = Pack.open(pack)
    opened.generator()
    opened.generator()
    Pack.open(pack).generator()
    assert calls == ["generator.safetensors"]
    assert opened.verify() == []  # verify hashes every file; the generator's hash is remembered
    assert sorted(calls) == sorted(json.loads((pack / "manifest.json").read_text())["files"])  # each file once
    path = pack / "generator.safetensors"
    flip_byte(path, path.stat().st_size // 2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))  # a new mtime however coarse
    with pytest.raises(PackError, match="sha256 differs"):
        opened.generator()


def test_a_truncated_file_is_a_size_mismatch(pack, cli, tmp_path):
    path = pack / "generator.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    message = f"generator.safetensors: {size // 2} bytes, manifest says {size}"
    with pytest.raises(PackError, match=message):
        Pack.open(pack, check="size").generator()  # sizes are checked even without hashing
    assert message in load_generator_cli(cli, pack, tmp_path)
    assert message in one_line_error(cli, "weights", "verify", pack, code=1)


@pytest.mark.parametrize("keep, safetensors_error", [(0.5, "incomplete metadata, file not fully covered"),
                                                     (5, "header too small")])
def test_a_truncated_safetensors_file_listed_as_it_is(pack, cli, keep, safetensors_error, tmp_path):
    """Sizes and hashes match (the pack was written from a broken file): safetensors' own error, in one line."""
    path = pack / "generator.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    relist(pack, "generator.safetensors")
    with pytest.raises(PackError, match=f"generator.safetensors is not a readable safetensors file .*"
                                        f"{safetensors_error}"):
        Pack.open(pack).generator()
    assert safetensors_error in load_generator_cli(cli, pack, tmp_path)
    assert safetensors_error in one_line_error(cli, "weights", "verify", pack, code=1)


def test_a_broken_header_and_a_broken_file_that_is_no_network(pack, cli):
    flip_byte(pack / "generator.safetensors", 20)    # inside the JSON header
    (pack / "directions.safetensors").write_bytes(b"not safetensors at all")
    relist(pack, "generator.safetensors")
    relist(pack, "directions.safetensors")
    with pytest.raises(PackError, match="generator.safetensors is not a readable safetensors file"):
        Pack.open(pack).generator()
    rc, out = cli("weights", "verify", pack)
    assert rc == 1 and "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("generator.safetensors is not a readable safetensors file (Error while deserializing")
    assert lines[1].startswith("directions.safetensors is not a readable safetensors file")


def test_a_missing_file(pack, cli, tmp_path):
    (pack / "generator.safetensors").unlink()
    with pytest.raises(PackError, match="generator.safetensors: missing"):
        Pack.open(pack).generator()
    assert "generator.safetensors: missing" in load_generator_cli(cli, pack, tmp_path)
    assert one_line_error(cli, "weights", "verify", pack, code=1) == "generator.safetensors: missing"


# --- weights that do not fit the class -----------------------------------------------------------------------------

def test_a_config_whose_shapes_do_not_fit_the_weights(pack, cli, tmp_path):
    edit_manifest(pack, lambda m: m["networks"]["generator"]["config"].__setitem__("w_dim", 128))
    with pytest.raises(PackError) as info:
        Pack.open(pack).generator()
    message = str(info.value)
    assert "\n" not in message and "network generator: generator.safetensors does not fit" in message
    assert re.search(r": \d+ wrong shape \(\S+ is \[128, 256\], the class wants \[128, 128\]; ", message), message
    assert "wrong shape" in load_generator_cli(cli, pack, tmp_path)
    assert one_line_error(cli, "weights", "verify", pack, code=1).startswith("network generator: generator.safetensors "
                                                                             "does not fit")


def test_the_file_of_another_network(pack, cli, tmp_path):
    edit_manifest(pack, lambda m: m["networks"]["generator"].__setitem__("file", "domainnet.safetensors"))
    with pytest.raises(PackError, match=r"does not fit stylecli.core.networks.Generator: \d+ missing .*\d+ unexpected"):
        Pack.open(pack).generator()
    assert "missing" in load_generator_cli(cli, pack, tmp_path)


def test_a_config_the_class_cannot_take(pack, cli, tmp_path):
    edit_manifest(pack, lambda m: m["networks"]["generator"]["config"].__setitem__("colour", "blue"))
    with pytest.raises(PackError, match="network generator: cannot build stylecli.core.networks.Generator from its "
                                        "config \\(TypeError: .*colour"):
        Pack.open(pack).generator()
    assert "cannot build" in load_generator_cli(cli, pack, tmp_path)
    assert "cannot build" in one_line_error(cli, "weights", "verify", pack, code=1)


# --- the CLI around packs ------------------------------------------------------------------------------------------

def test_list_shows_a_broken_pack_beside_the_sound_ones(pack, cli, monkeypatch):
    (pack.parent / "broken").mkdir()
    (pack.parent / "broken" / "manifest.json").write_text("[]")
    monkeypatch.setenv("STYLECLI_WEIGHTS", str(pack.parent))
    monkeypatch.setenv("COLUMNS", "400")
    rc, out = cli("weights", "list")
    assert rc == 0, out
    assert "broken" in out and "unusable" in out and "the manifest is an array" in out
    assert "synthface-64" in out and "generator" in out


def test_verify_of_a_sound_copy_and_of_no_pack(pack, cli):
    rc, out = cli("weights", "verify", pack)
    assert rc == 0 and out.startswith("ok:"), out
    assert verify_pack(pack) == (pack, [])
    assert "no model pack" in one_line_error(cli, "weights", "verify", pack.parent / "nothing-here", code=2)


def test_a_fresh_process_fails_in_one_line(pack, tmp_path):
    """The real entry point, once, in a fresh process: exit codes and no traceback."""
    flip_byte(pack / "generator.safetensors", (pack / "generator.safetensors").stat().st_size // 2)
    script = ("import sys; from stylecli.cli import main\n"
              "for args in sys.argv[1:]:\n"
              "    sys.argv = ['stylecli', *args.split('|')]\n"
              "    try: main()\n"
              "    except SystemExit as exc: print('exit', exc.code, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", script, f"generate|--model|{pack}|--seeds|0|-o|{tmp_path}",
                          f"weights|verify|{pack}", "generate|--device|mps|--seeds|0"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    assert [line for line in text.splitlines() if line.startswith("exit")] == ["exit 2", "exit 1", "exit 2"], text


# --- devices -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["mps", "meta", "cuda:x", "cuda:", "cuda:-1", "cpu:0", "CUDA", " cpu", "gpu", ""])
def test_an_unknown_device_is_one_line(cli, device, tmp_path):
    with pytest.raises(ModelError, match=f"unknown device {device!r}; use cpu, cuda, cuda:N"):
        resolve_device(device)
    line = one_line_error(cli, "generate", "--device", device, "--seeds", "0", "-o", tmp_path)
    assert "error:" in line
    assert line.endswith(f"unknown device {device!r}; use cpu, cuda, cuda:N (N = 0, 1, ...) or auto")


def test_the_devices_that_are_accepted(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ModelError, match=f"--device {device} asked for, but no CUDA device is available"):
            resolve_device(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ModelError, match=r"--device cuda:2: there are 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
