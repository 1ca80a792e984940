"""The method contract: every registered method conforms; options, training targets and converters are generic."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylecli.methods import METHODS, MethodUnavailable, get_method
from stylecli.methods.base import ConverterSpec, Method, MethodSpec, Option, resolve
from stylecli.packs import Pack
from stylecli.train.targets import TrainingSpec, training_targets
from cli_runner import stylecli

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "synthface-64"


def cli(*args):
    return stylecli(*args, env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def pack():
    return Pack.open(SHIPPED)


def pack_with_networks_of(spec, pack, tmp_path):
    """The shipped pack, or, for a method whose networks it does not hold yet, a copy with them trained for one step
    by the method's own trainer and exported by its own export function (the chain `train` + `from-runs`)."""
    import shutil

    from stylecli.packs import write_pack

    if not spec.missing_networks(pack):
        return pack
    assert spec.training is not None, f"the shipped pack lacks {spec.missing_networks(pack)} and {spec.name} cannot " \
                                      "train them"
    copy = tmp_path / "pack"
    shutil.copytree(SHIPPED, copy)
    target = spec.training
    names = {f.name for f in dataclasses.fields(target.config)}
    settings = {k: v for k, v in dict(model=str(copy), steps=1, batch=2, workers=0).items() if k in names}
    target.make_trainer(target.config(run_dir=str(tmp_path / "run"), **settings)).run()
    networks, record = target.export_run(tmp_path / "run")
    write_pack(copy, pack.name, networks, pack.manifest["resolution"], record)
    return Pack.open(copy)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_conforms_to_the_contract(name, pack, tmp_path):
    spec = METHODS[name]
    assert spec.name == name and spec.summary
    cls = resolve(spec.implementation)
    assert isinstance(cls, type) and issubclass(cls, Method) and cls.name == name
    assert not getattr(cls, "__abstractmethods__", None), f"{name} leaves abstract methods open"
    pack = pack_with_networks_of(spec, pack, tmp_path)
    assert not spec.missing_networks(pack)

    method = spec.load(pack, "cpu")
    G = pack.generator()
    R = method.resolution
    assert R == G.img_resolution and method.device == torch.device("cpu")
    images = torch.randint(0, 256, (2, 3, R, R)) / 127.5 - 1  # as read from 8-bit files
    inversion = method.invert(images)
    w = inversion.latents["w_plus"]
    assert w.shape == (2, G.num_ws, G.w_dim) and torch.isfinite(w).all()
    assert inversion.image.shape == (2, 3, R, R) and inversion.image.device == images.device
    for key, extra in inversion.extras.items():
        assert extra.shape[0] == 2, key
    if spec.makes_masks:
        mask = inversion.extras["mask"]
        assert mask.shape == (2, 1, R, R) and 0 <= mask.min() and mask.max() <= 1
        edited_pass = method.edit_inversion(inversion, torch.randn(G.num_ws, G.w_dim), 2.0)
        assert edited_pass.extras["mask"].shape == (2, 1, R, R)  # recomputed on the edited pass

    # A zero edit reproduces the reconstruction; a real direction changes it; batch items do not mix.
    direction = torch.randn(G.num_ws, G.w_dim)
    torch.testing.assert_close(method.edit(inversion, torch.zeros_like(direction), 1.0), inversion.image,
                               atol=1e-4, rtol=0)
    edited = method.edit(inversion, direction, 2.0)
    assert edited.shape == (2, 3, R, R) and (edited - inversion.image).abs().mean() > 1e-3
    alone = method.edit(method.invert(images[1:]), direction, 2.0)
    torch.testing.assert_close(alone, edited[1:], atol=1e-4, rtol=0)

    # An inversion read back from a latent file (no image) edits the same way.
    from stylecli.latents import load_latent, save_latent

    saved = save_latent(tmp_path / "x.latent.safetensors", inversion, 0, pack.name, name, "x.png")
    loaded, meta = load_latent(saved)
    assert meta["method"] == name and loaded.image is None
    torch.testing.assert_close(method.edit(loaded, direction, 2.0), edited[:1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_declares_how_it_trains_and_converts(name):
    spec = METHODS[name]
    if spec.training is not None:
        target = spec.training
        assert target.name == name and training_targets()[name] is target
        fields = dataclasses.fields(target.config)
        assert fields[0].name == "run_dir"
        assert {"data", "steps"} <= {f.name for f in target.flags()}, "every method trainer takes --data and --steps"
        assert callable(resolve(target.trainer)) and callable(resolve(target.export))
    if spec.converter is not None:
        assert callable(resolve(spec.converter.detect)) and callable(resolve(spec.converter.convert))
        assert resolve(spec.converter.detect)(SHIPPED / "manifest.json") is False


def test_unknown_methods_are_refused_in_one_line():
    assert {"e4e", "samm", "sfe", "idinvert", "fwplus"} <= set(METHODS)
    with pytest.raises(MethodUnavailable, match="unknown method 'nope'; choose from e4e"):
        get_method("nope")


def test_a_pack_without_the_methods_networks_names_the_command_that_trains_them(tmp_path, pack):
    from stylecli.packs import write_pack

    write_pack(tmp_path / "bare", "bare", {"generator": pack.generator()}, 64, {"note": "test"})
    with pytest.raises(MethodUnavailable, match=r"no e4e_encoder .*`stylecli train e4e --model .*bare`"):
        METHODS["e4e"].load(Pack.open(tmp_path / "bare"))


def test_options_are_checked_against_what_the_method_declares():
    spec = MethodSpec(name="toy", summary="a toy", implementation="stylecli.methods.e4e.method:E4E",
                      options=(Option("steps", int, 100, "Optimisation steps.", min=1, max=10_000),
                               Option("lr", float, 0.01, "Learning rate.", min=0)))
    assert spec.check_options({}) == {"steps": 100, "lr": 0.01}
    assert spec.check_options({"steps": "7", "lr": None}) == {"steps": 7, "lr": 0.01}
    for given, message in (({"steps": 0}, r"--steps: 0 is outside \[1, 10000\]"),
                           ({"lr": float("nan")}, "--lr: must be a finite number"),
                           ({"steps": "many"}, "--steps: expected int"),
                           ({"strength_of_will": 3}, "--strength-of-will: not an option of method 'toy'")):
        with pytest.raises(ValueError, match=message):
            spec.check_options(given)
    with pytest.raises(ValueError, match="it takes none"):
        METHODS["e4e"].check_options({"steps": 3})
    mask = MethodSpec(name="toy", summary="a toy", implementation="stylecli.methods.e4e.method:E4E",
                      options=(Option("mask", str, "none", "Mask.", choices=("none", "face")),))
    assert mask.check_options({"mask": "face"}) == {"mask": "face"}
    with pytest.raises(ValueError, match="--mask: 'hair' is not one of none, face"):
        mask.check_options({"mask": "hair"})


def test_train_has_one_subcommand_per_target_with_only_its_options():
    out = cli("train", "--help")
    assert out.returncode == 0
    for name in ("generator", "domainnet", *(n for n, s in METHODS.items() if s.training)):
        assert name in out.stdout
    e4e, generator = cli("train", "e4e", "--help").stdout, cli("train", "generator", "--help").stdout
    assert "--data" in e4e and "--steps" in e4e and "--kimg" not in e4e and "--channel-base" not in e4e
    assert "--kimg" in generator and "--steps" not in generator
    assert "--data" not in cli("train", "domainnet", "--help").stdout  # it renders its own faces
    refused = cli("train", "e4e", "--steps", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


def test_from_runs_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    out = cli("weights", "from-runs", str(tmp_path / "pack"), str(tmp_path / "empty"))
    assert out.returncode == 2 and "no checkpoint.pt" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "pack").exists()


def test_blend_needs_a_method_with_masks_and_its_networks(tmp_path, pack):
    from PIL import Image

    from stylecli.packs import write_pack

    Image.new("RGB", (64, 64)).save(tmp_path / "face.png")
    write_pack(tmp_path / "bare", "bare", {"generator": pack.generator(), "e4e_encoder": pack.load("e4e_encoder")},
               64, {"note": "test"})
    out = cli("blend", str(tmp_path / "face.png"), "-m", str(tmp_path / "bare"), "-o", str(tmp_path / "out"))
    assert out.returncode == 2 and "has no samm for method 'samm'; train it with `stylecli train samm" in out.stderr
    out = cli("blend", str(tmp_path / "face.png"), "--method", "e4e", "-o", str(tmp_path / "out"))
    assert out.returncode == 2 and "makes no invertibility mask" in out.stderr
    assert not (tmp_path / "out").exists()


def test_specs_are_light_to_import():
    """Declaring methods and targets imports no torch: `stylecli --help` answers at once."""
    code = ("import sys, stylecli.methods, stylecli.train.targets as t; t.training_targets(); "
            "import stylecli.cli; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_spec_types():
    for spec in METHODS.values():
        assert isinstance(spec, MethodSpec)
        assert spec.training is None or isinstance(spec.training, TrainingSpec)
        assert spec.converter is None or isinstance(spec.converter, ConverterSpec)


def test_method_options_become_flags_of_the_commands_that_invert():
    """Flags come from the specs: a toy method's --steps appears with its help and reaches the command as a dict."""
    import typer
    from typer.testing import CliRunner

    from stylecli.cli.options import with_method_options

    toy = MethodSpec(name="toy", summary="a toy", implementation="stylecli.methods.e4e.method:E4E",
                     options=(Option("steps", int, 100, "Optimisation steps.", min=1),))
    seen = {}

    def invert(input: str = typer.Argument(...), method_options: dict = None):
        """Invert."""
        seen.update(input=input, options=method_options)

    app = typer.Typer()
    app.command()(with_method_options(invert, [METHODS["e4e"], toy]))
    runner = CliRunner()
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--steps" in help_text and "Optimisation steps. (toy; default 100; min 1)" in help_text
    assert runner.invoke(app, ["a.png", "--steps", "5"]).exit_code == 0
    assert seen == {"input": "a.png", "options": {"steps": 5}}
    runner.invoke(app, ["b.png"])
    assert seen == {"input": "b.png", "options": {"steps": None}}
    # An option of editing only is a flag of the commands that edit, not of the others.
    masked = MethodSpec(name="masked", summary="a toy", implementation="stylecli.methods.e4e.method:E4E",
                        options=(Option("mask", str, "none", "Mask.", choices=("none", "face"), edits_only=True),))
    for edits in (True, False):
        app = typer.Typer()
        app.command()(with_method_options(invert, [masked], edits=edits))
        help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
        assert ("--mask" in help_text and "none|face" in help_text) == edits


def test_methods_command_lists_every_method():
    out = cli("methods")
    assert out.returncode == 0, out.stderr
    for name in METHODS:
        assert name in out.stdout
    assert "stylecli train e4e" in out.stdout and "e4e_encoder" in out.stdout
