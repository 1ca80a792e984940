"""Learned non-linear edits (issue #24): calibration, the edit network, training and resume on a tiny pack, storage in
a pack (shapes refused), `directions list` with measured effects, every method's edit path, and the CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from stylecli.edits import (Calibration, EditChain, LearnedEdit, calibrated_shift, combine, edit_step, moved_to)
from stylecli.train.edits import EditTrainer, EditTrainingConfig
from tiny_runs import train_tiny_runs
from cli_runner import stylecli

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    return stylecli(*args, env={"COLUMNS": "300"})  # tables whole, whatever the terminal running the tests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A pack with a tiny generator (32 px, W of 16 dims) and a domain network, and one with the generator alone."""
    root = tmp_path_factory.mktemp("learned")
    train_tiny_runs(root)
    out = cli("weights", "from-runs", str(root / "pack"), str(root / "g"), str(root / "dn"))
    assert out.returncode == 0, out.stderr
    out = cli("weights", "from-runs", str(root / "bare"), str(root / "g"))
    assert out.returncode == 0, out.stderr
    return root


def tiny_config(root: Path, run: str, **changes) -> EditTrainingConfig:
    base = dict(run_dir=str(root / run), name="smile", attribute="smile", model=str(root / "pack"), steps=4, batch=4,
                pool=32, hidden=32, lr=3e-3, log_every=1, checkpoint_every=2)
    return EditTrainingConfig(**{**base, **changes})


# --- calibration ------------------------------------------------------------------------------------------------------

def test_calibrated_shift_has_the_known_answer():
    # Uniform on [-1, 1], every face stopping at 1: a shift k changes the mean by k - k^2 / 4 (k <= 2).
    values = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    for k in (0.5, 1.0, 1.5):
        assert calibrated_shift(values, k - k * k / 4, -1.0, 1.0) == pytest.approx(k, abs=1e-4)
        assert calibrated_shift(values, -(k - k * k / 4), -1.0, 1.0) == pytest.approx(-k, abs=1e-4)
    assert calibrated_shift(values, 1.5, -1.0, 1.0) == 2.0   # more than the range allows: everything to the bound
    # A binary attribute, 30% of faces with it: adding 0.35 on average is half of every other face's way to 1.
    binary = torch.tensor([1.0] * 30 + [0.0] * 70, dtype=torch.float64)
    assert calibrated_shift(binary, 0.35, 0.0, 1.0) == pytest.approx(0.5, abs=1e-6)
    assert calibrated_shift(binary, -0.15, 0.0, 1.0) == pytest.approx(-0.5, abs=1e-6)
    assert calibrated_shift(binary, 0.9, 0.0, 1.0) == 1.0
    # Faces never move backwards: one already past the bound stays where it is.
    assert moved_to(torch.tensor([1.2, 0.5]), 0.8, -1.0, 1.0).tolist() == pytest.approx([1.2, 1.0])


def test_calibration_moves_the_mean_by_strength_standard_deviations():
    values = torch.rand(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    cal = Calibration.fit("smile", values, binary=False, quantile=0.0)
    std = float(values.std())
    for s in (-1.5, -1.0, 0.5, 1.0, 1.25):
        moved = cal.targets(values, torch.full_like(values, s))
        assert float((moved - values).mean()) / std == pytest.approx(s, abs=0.01)
    # 2 std asks more than the range holds (uniform: at most sqrt(3) std): everything goes to the end.
    assert cal.reached[cal.strengths.index(2.0)] == pytest.approx(3 ** 0.5, abs=0.02)
    assert cal.reached[cal.strengths.index(-2.0)] == pytest.approx(-3 ** 0.5, abs=0.02)
    assert cal.shift(torch.tensor([0.0])).item() == 0
    binary = Calibration.fit("glasses", (torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.3).double(),
                             binary=True)
    assert (binary.low, binary.high) == (0.0, 1.0)
    assert binary.shift(torch.tensor([3.0])).item() == 1.0 and binary.shift(torch.tensor([-3.0])).item() == -1.0
    assert Calibration.from_record(json.loads(json.dumps(cal.record()))).strengths == cal.strengths


# --- the edit network -------------------------------------------------------------------------------------------------

def test_a_learned_edit_is_the_identity_at_zero_and_keeps_its_rows():
    torch.manual_seed(0)
    edit = LearnedEdit(6, 8, start=2, end=5, hidden=16, max_strength=3.0)
    torch.nn.init.normal_(edit.out.weight)  # a trained edit: the output layer no longer zero
    w = torch.randn(4, 6, 8)
    assert torch.equal(edit.apply(w, 0.0), w)
    moved = edit.apply(w, 2.0)
    assert torch.equal(moved[:, :2], w[:, :2]) and torch.equal(moved[:, 5:], w[:, 5:])
    assert (moved[:, 2:5] - w[:, 2:5]).abs().min() > 0
    assert torch.equal(edit.apply(w, 7.0), edit.apply(w, 3.0))          # beyond its range the edit holds
    per_code = edit.apply(w, torch.tensor([0.0, 1.0, 2.0, -1.0]))        # one strength per code
    assert torch.equal(per_code[2], moved[2]) and torch.equal(per_code[0], w[0])
    # edit_step serves both kinds: a W+ vector is added as it always was, a code edit gives its own step per code.
    d = torch.randn(6, 8)
    assert torch.equal(edit_step(w, d, 2.0), 2.0 * d)
    assert torch.equal(w + edit_step(w, edit, 2.0), moved)
    assert torch.equal(combine([(d, 1.0), (d, 2.0)]), d * 1.0 + d * 2.0)  # all linear: the summed vector
    chain = combine([(d, 1.0), (edit, 2.0)])
    assert isinstance(chain, EditChain)
    torch.testing.assert_close(chain.apply(w, 1.0), edit.apply(w + d, 2.0))


# --- training ---------------------------------------------------------------------------------------------------------

def test_a_learned_edit_moves_its_attribute_on_its_training_codes(tiny):
    trainer = EditTrainer(tiny_config(tiny, "moves", steps=60, checkpoint_every=60,
                                      weights=dict(target=1.0, hold=0.1, identity=0.1, code=0.01, pixel=0.1)))

    @torch.no_grad()
    def change(strength: float) -> float:
        """The mean predicted smile change on the training codes, in std over them."""
        codes = trainer.codes
        x = trainer.G.synthesis(trainer.edit(codes, strength), noise_mode="const")
        return float((trainer.net.predict(x)["smile"] - trainer.base["smile"]).mean()) / trainer.std["smile"]

    assert change(2.0) == 0  # the output layer starts at zero: no change before training
    trainer.run()
    trainer.edit.eval()
    up, down = change(2.0), change(-2.0)
    assert up > 0.5 and down < -0.5, (up, down)
    assert change(1.0) < up
    metrics = [json.loads(l) for l in (tiny / "moves" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["target_error_std"] < metrics[0]["target_error_std"]


def test_resume_is_exact(tiny):
    straight = EditTrainer(tiny_config(tiny, "a", steps=4))
    straight.run()
    EditTrainer(tiny_config(tiny, "b", steps=2)).run()
    with pytest.raises(ValueError, match=r"changed: --seed 5 \(the run has 0\)"):
        EditTrainer(tiny_config(tiny, "b", steps=4, seed=5), resume=True)
    with pytest.raises(ValueError, match="holds the codes of a run with other settings"):
        EditTrainer(tiny_config(tiny, "b", attribute="age"))  # its pool was made for smile
    resumed = EditTrainer(tiny_config(tiny, "b", steps=4), resume=True)
    assert resumed.step == 2
    resumed.run()
    assert torch.equal(resumed.codes, straight.codes)
    for key, value in straight.edit.state_dict().items():
        assert torch.equal(resumed.edit.state_dict()[key], value), key
    assert torch.equal(resumed.gen.get_state(), straight.gen.get_state())


def test_learning_needs_a_domain_network(tiny):
    with pytest.raises(ValueError, match="needs a domain network"):
        EditTrainer(tiny_config(tiny, "none", model=str(tiny / "bare")))
    out = cli("directions", "learn", "smile", "--model", str(tiny / "bare"), "--run-dir", str(tiny / "none2"))
    assert out.returncode == 2 and "needs a domain network" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with pytest.raises(ValueError, match="predicts no scalar attribute 'hair_style'"):
        EditTrainer(tiny_config(tiny, "categorical", attribute="hair_style"))


# --- storage, listing -------------------------------------------------------------------------------------------------

def test_learn_stores_the_edit_and_list_prints_its_effect(tiny, tmp_path):
    from stylecli.directions import get_direction, load_directions
    from stylecli.packs import Pack

    pack = tmp_path / "pack"
    shutil.copytree(tiny / "pack", pack)
    out = cli("directions", "fit", "smile", "--model", str(pack), "--samples", "60", "--gradient-samples", "0",
              "--effect-count", "16")
    assert out.returncode == 0, out.stderr
    out = cli("directions", "learn", "smile", "--model", str(pack), "--steps", "3", "--batch", "4", "--pool", "16",
              "--run-dir", str(tmp_path / "run"), "--effect-count", "16")
    assert out.returncode == 0, out.stderr
    assert "the linear smile is now smile-linear" in out.stderr
    opened = Pack.open(str(pack))
    assert opened.verify() == []
    found = load_directions(opened)
    assert found["smile"].kind == "learned" and found["smile-linear"].kind == "interfacegan"
    info = found["smile"].info
    assert info["record"]["steps"] == 3 and info["record"]["trained_by"].startswith("stylecli directions learn")
    assert {"-2", "-1", "+1", "+2"} <= set(info["effect"]) and "target_change_std" in info["effect"]["+2"]
    assert info["dtype"] in ("float16", "float32") and info["ms_per_image"] > 0
    assert opened.manifest["directions"]["smile"]["file"] == "learned_smile.safetensors"
    assert get_direction(opened, "smile").vector.config["w_dim"] == 16
    listing = cli("directions", "list", "--model", str(pack))
    assert listing.returncode == 0, listing.stderr
    lines = {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if line.count("│") > 3}
    effect = info["effect"]["+2"]
    assert "learned" in lines["smile"] and "1 std of smile" in lines["smile"]
    assert f"{effect['target_change_std']:+.2f}" in lines["smile"] and f"{effect['id_similarity']:.3f}" in lines["smile"]
    linear_effect = found["smile-linear"].info["effect"]["+2"]
    assert "1 std of W" in lines["smile-linear"] and f"{linear_effect['target_change_std']:+.2f}" in lines["smile-linear"]
    # Fitting a linear direction under the learned one's name replaces it, and its file leaves the pack.
    out = cli("directions", "fit", "smile", "--model", str(pack), "--samples", "60", "--gradient-samples", "0",
              "--effect-count", "0")
    assert out.returncode == 0, out.stderr
    opened = Pack.open(str(pack))
    assert opened.verify() == [] and not (pack / "learned_smile.safetensors").exists()
    assert load_directions(opened)["smile"].kind == "interfacegan"


def test_the_loader_refuses_a_learned_edit_that_does_not_fit_the_generator(tiny, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from stylecli.directions import Direction, DirectionError, get_direction, load_directions, save_directions
    from stylecli.packs import Pack
    from stylecli.packs.pack import sha256_of

    shutil.copytree(tiny / "pack", tmp_path / "pack")
    pack = Pack.open(str(tmp_path / "pack"))
    G = pack.generator()
    save_directions(pack, [Direction("wide", LearnedEdit(G.num_ws, G.w_dim * 2, hidden=8), "learned",
                                     {"attribute": "face_width"})])
    with pytest.raises(DirectionError, match=rf"edits {G.num_ws} x {G.w_dim * 2} codes; the generator takes "
                                             rf"{G.num_ws} x {G.w_dim}"):
        get_direction(pack, "wide")
    with pytest.raises(DirectionError, match="'wide'"):
        load_directions(pack)
    out = cli("directions", "list", "--model", str(tmp_path / "pack"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "the generator takes" in out.stderr
    # Tensors that do not fit the recorded network (another hidden width) are refused too.
    shutil.copytree(tiny / "pack", tmp_path / "other")
    save_directions(Pack.open(str(tmp_path / "other")),
                    [Direction("wide", LearnedEdit(G.num_ws, G.w_dim, hidden=8), "learned", {})])
    path = tmp_path / "other" / "learned_wide.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    wrong = {k: (torch.zeros(v.shape[0], 4) if k == "mid.weight" else v) for k, v in load_file(str(path)).items()}
    save_file(wrong, str(path), metadata=metadata)
    manifest = json.loads((tmp_path / "other" / "manifest.json").read_text())
    manifest["files"]["learned_wide.safetensors"] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DirectionError, match="do not fit its network .*mid.weight"):
        get_direction(Pack.open(str(tmp_path / "other")), "wide")


# --- every edit path --------------------------------------------------------------------------------------------------

class LinearAsCodeEdit:
    """A W+ direction dressed as a code edit: every method must edit with it exactly as with the vector."""

    def __init__(self, vector):
        self.vector = vector

    def to(self, device):
        return LinearAsCodeEdit(self.vector.to(device))

    def apply(self, codes, strength=1.0):
        return codes + strength * self.vector.to(codes.dtype)


def test_every_method_edits_with_a_code_edit_as_with_its_vector():
    from stylecli.data.sets import make_sample
    from stylecli.directions import get_direction
    from stylecli.imageio import image_to_tensor
    from stylecli.methods import METHODS
    from stylecli.packs import Pack

    pack = Pack.open(str(REPO / "weights" / "synthface-64"))
    x = torch.cat([image_to_tensor(make_sample("indomain", i).image) for i in range(2)])
    d = get_direction(pack, "smile-linear").vector  # the linear smile, before and after learned ones ship
    tried = []
    for name, spec in METHODS.items():
        if spec.missing_networks(pack):
            continue
        options = {"steps": 2} if any(o.name == "steps" for o in spec.options) else {}
        method = spec.load(pack, **options)
        inv = method.invert(x)
        for strength in (2.0, -1.0):
            expected = method.edit_inversion(inv, d, strength)
            got = method.edit_inversion(inv, LinearAsCodeEdit(d), strength)
            torch.testing.assert_close(got.image, expected.image, msg=name)
            torch.testing.assert_close(got.latents["w_plus"], expected.latents["w_plus"], msg=name)
        # A re-edit of the edited codes (a latent file of an edit) chains from where the first edit left them.
        again = method.edit_inversion(method.edit_inversion(inv, LinearAsCodeEdit(d), 1.0), LinearAsCodeEdit(d), 1.0)
        torch.testing.assert_close(again.image, method.edit_inversion(inv, d, 2.0).image, msg=name, atol=1e-4,
                                   rtol=1e-4)
        tried.append(name)
    assert {"e4e", "sfe", "samm"} <= set(tried)


def test_fwplus_moves_only_its_detail_rows_by_a_learned_edit(tmp_path):
    """F/W+ takes a learned edit on the rows after its base layer, the base code kept (a random tiny pack)."""
    import dataclasses

    from stylecli.core.networks import Generator
    from stylecli.data.domainnet import DomainNet
    from stylecli.methods.fwplus import NETWORK, PSPACE
    from stylecli.methods.fwplus.encoder import BaseCodeEncoder, BaseEncoderConfig
    from stylecli.methods.fwplus.method import FWPlus
    from stylecli.methods.fwplus.pspace import PSpaceWhitening
    from stylecli.packs import Pack, write_pack

    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=32, mapping_layers=2, channel_base=256, channel_max=16).eval()
    E = BaseCodeEncoder(**dataclasses.asdict(BaseEncoderConfig.for_generator(G, 8, widths=[4, 8, 8],
                                                                             convs_per_stage=1))).eval()
    white = PSpaceWhitening.fit(G.mapping, G.z_dim, samples=1000, batch=1000)
    write_pack(tmp_path / "fw", "fw", {"generator": G, "domainnet": DomainNet(widths=(4, 8, 8, 8), embed_dim=8),
                                       NETWORK: E, PSPACE: white}, 32, {"note": "test"})
    method = FWPlus(Pack.open(tmp_path / "fw"), steps=1)
    inv = method.invert(torch.rand(2, 3, 32, 32) * 2 - 1)
    edit = LearnedEdit(G.num_ws, G.w_dim, hidden=8)
    torch.nn.init.normal_(edit.out.weight, std=0.1)
    edited = method.edit_inversion(inv, edit, 2.0)
    w, moved, first = inv.latents["w_plus"], edited.latents["w_plus"], method.first
    assert torch.equal(moved[:, :first], w[:, :first])
    torch.testing.assert_close(moved[:, first:], edit.apply(w, 2.0)[:, first:])
    assert torch.equal(edited.latents["f_base"], inv.latents["f_base"])
    assert (edited.image - inv.image).abs().mean() > 1e-4


def test_edit_from_the_shell_with_a_learned_direction(tmp_path):
    """A learned direction (random weights) in a copy of the shipped pack: edits alone, with a linear one, as a sweep,
    and as a re-edit of saved latents; strengths outside its range are one line."""
    from stylecli.data.sets import make_sample
    from stylecli.directions import Direction, get_direction, save_directions
    from stylecli.packs import Pack

    pack_dir = tmp_path / "synthface-64"
    shutil.copytree(REPO / "weights" / "synthface-64", pack_dir)
    pack = Pack.open(str(pack_dir))
    G = pack.generator()
    torch.manual_seed(0)
    edit = LearnedEdit(G.num_ws, G.w_dim, hidden=16)
    torch.nn.init.normal_(edit.out.weight, std=0.05)
    linear = get_direction(pack, "smile")
    save_directions(pack, [Direction("smile-linear", linear.vector, linear.kind, linear.info),
                           Direction("smile", edit, "learned", {"attribute": "smile"})])
    make_sample("indomain", 0).image.save(tmp_path / "face.png")
    m = str(pack_dir)
    out = cli("edit", str(tmp_path / "face.png"), "-d", "smile", "-s", "2", "-d", "pose", "-s", "1", "-m", m,
              "-o", str(tmp_path / "e"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "e" / "face_smile+2_pose+1.png").is_file()
    out = cli("edit", str(tmp_path / "face.png"), "-d", "smile", "-s", "-3:3:3", "-m", m, "-o", str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s" / "face_smile-3..+3.gif").is_file()
    out = cli("invert", str(tmp_path / "face.png"), "-m", m, "-o", str(tmp_path / "inv"), "--method", "sfe")
    assert out.returncode == 0, out.stderr
    out = cli("edit", str(tmp_path / "inv"), "--latent", "-d", "smile", "-s", "1", "-d", "smile-linear", "-s", "1",
              "-m", m, "--method", "sfe", "-o", str(tmp_path / "l"))
    assert out.returncode == 0, out.stderr
    out = cli("edit", str(tmp_path / "face.png"), "-d", "smile", "-s", "4", "-m", m, "-o", str(tmp_path / "x"))
    assert out.returncode == 2 and "within ±3" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    # The linear edit under its own name gives the same image as before learned edits existed.
    out = cli("edit", str(tmp_path / "face.png"), "-d", "smile-linear", "-s", "2", "-m", m, "-o", str(tmp_path / "n"))
    old = cli("edit", str(tmp_path / "face.png"), "-d", "smile", "-s", "2", "-o", str(tmp_path / "o"))
    assert out.returncode == 0 and old.returncode == 0, out.stderr + old.stderr
    if get_direction(Pack.open("synthface-64"), "smile").kind != "learned":
        assert (tmp_path / "n" / "face_smile-linear+2.png").read_bytes() == \
            (tmp_path / "o" / "face_smile+2.png").read_bytes()
