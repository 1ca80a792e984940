"""e4e end to end on a tiny pack: training, pack assembly, directions, and invert/edit from the shell."""

import json
import shutil

import pytest
import torch
from PIL import Image

from stylecli.methods.e4e.encoder import Encoder4Editing, EncoderConfig
from stylecli.methods.e4e.train import E4ETrainer, E4ETrainingConfig
from tiny_runs import train_tiny_runs
from cli_runner import stylecli as cli

TINY_ENCODER = dict(widths=[8, 8, 16, 16], units=[1, 1, 1, 1], stem=8)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("e4e")
    train_tiny_runs(root)
    pack = root / "packs" / "tinyface"
    out = cli("weights", "from-runs", str(pack), str(root / "g"), str(root / "dn"))
    assert out.returncode == 0, out.stderr
    cfg = E4ETrainingConfig(run_dir=str(root / "e4e"), model=str(pack), batch=2, steps=4, progressive_start=1,
                            progressive_step=1, encoder=TINY_ENCODER, checkpoint_every=2, log_every=1)
    trainer = E4ETrainer(cfg)
    trainer.run()
    rows = [json.loads(l)["active_rows"] for l in (root / "e4e" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]  # progressive: one more delta row per step after the start
    out = cli("weights", "from-runs", str(pack), str(root / "e4e"))
    assert out.returncode == 0, out.stderr
    out = cli("directions", "fit", "smile", "glasses", "pose=yaw", "--model", str(pack), "--samples", "60")
    assert out.returncode == 0, out.stderr
    return pack


def test_e4e_resume_is_exact(tmp_path, pack):
    base = dict(model=str(pack), batch=2, progressive_start=1, progressive_step=1, encoder=TINY_ENCODER,
                checkpoint_every=2, log_every=1, pool_size=3)  # pools full after the first checkpoint: swaps follow
    straight = E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "a"), steps=4, **base))
    straight.run()
    E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "b"), steps=2, **base)).run()
    with pytest.raises(ValueError, match=r"changed: --seed 5 \(the run has 0\)"):  # a resume keeps the run's settings
        E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "b"), steps=4, seed=5, **base), resume=True)
    resumed = E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "b"), steps=4, **base), resume=True)
    resumed.run()
    for key, value in straight.E.state_dict().items():
        torch.testing.assert_close(resumed.E.state_dict()[key], value, msg=key)
    for key, value in straight.D.state_dict().items():
        torch.testing.assert_close(resumed.D.state_dict()[key], value, msg=key)
    for name in ("real_pool", "fake_pool"):
        codes, again = getattr(straight, name).codes, getattr(resumed, name).codes
        assert len(codes) == len(again) == 3 and all(torch.equal(a, b) for a, b in zip(codes, again))
    # A run of the earlier trainer (a fake-only FIFO pool, Ranger without centralisation) is refused in one line.
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    del state["pool_rng"]
    torch.save(state, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(ValueError, match="--init"):
        E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "b"), steps=6, **base), resume=True)


def test_two_processes_take_identical_steps_on_their_own_images(tmp_path, pack):
    """torchrun's setting (gloo on the CPU): averaged gradients keep the ranks' encoders equal while each draws its
    own images; rank 0 alone writes the checkpoint and the log."""
    import torch.multiprocessing as mp
    mp.spawn(_e4e_rank, args=(str(pack), str(tmp_path), _free_port()), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(first["x"], second["x"])
    for key, value in first["E"].items():
        torch.testing.assert_close(second["E"][key], value, msg=key)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    initial = E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "fresh"), model=str(pack), encoder=TINY_ENCODER)).E
    assert any(not torch.equal(v, first["E"][k]) for k, v in initial.state_dict().items())


def _free_port() -> int:
    """A port the OS has just handed out (no fixed port: parallel test runs must not collide)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _e4e_rank(rank, pack, out, port):
    import os
    from pathlib import Path
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = E4ETrainer(E4ETrainingConfig(run_dir=str(Path(out) / "run"), model=pack, batch=4, steps=2,
                                           progressive_start=0, encoder=TINY_ENCODER, checkpoint_every=1, log_every=1))
    trainer.run()
    torch.save({"E": trainer.E.state_dict(), "x": trainer.source.batch(2)}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_e4e_fine_tunes_from_a_pack_or_a_run(tmp_path, pack):
    from stylecli.packs import Pack
    shipped = Pack.open(str(pack)).load("e4e_encoder").state_dict()
    base = dict(model=str(pack), batch=2, steps=1, checkpoint_every=1, log_every=1)
    from_pack = E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "a"), init=str(pack), **base))
    for key, value in shipped.items():
        torch.testing.assert_close(from_pack.E.state_dict()[key], value, msg=key)
    from_pack.run()
    logged = [json.loads(l)["active_rows"] for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [from_pack.G.num_ws]  # fine-tuning keeps every row active from the first step
    # Resuming a fine-tuning run rebuilds the encoder it started from (the tiny pack's, not the default widths).
    resumed = E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "a"), **dict(base, steps=2)), resume=True)
    assert resumed.step == 1 and resumed.E.config == from_pack.E.config and resumed.fine_tuning
    resumed.run()
    from_run = E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "b"), init=str(tmp_path / "a"), **base))
    for key, value in resumed.E.state_dict().items():
        torch.testing.assert_close(from_run.E.state_dict()[key], value, msg=key)
    wrong = dict(base, encoder={"widths": [8, 8, 16, 32]})
    with pytest.raises(ValueError, match="does not fit"):
        E4ETrainer(E4ETrainingConfig(run_dir=str(tmp_path / "c"), init=str(pack), **wrong))
    out = cli("train", "e4e", "--model", str(pack), "--init", str(tmp_path / "nowhere"), "--steps", "1",
              "--run-dir", str(tmp_path / "d"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_encoder_progressive_rows_and_official_configuration():
    E = Encoder4Editing(**TINY_ENCODER, input_size=32, w_dim=16, num_ws=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        E.progressive_stage = 1
        w = E(x)
        assert torch.allclose(w, w[:, :1].expand_as(w))  # only w0: every row equal
        E.progressive_stage = 8
        assert not torch.allclose(E(x)[:, 5], E(x)[:, 0])
    official = Encoder4Editing(**EncoderConfig.ffhq().__dict__)
    assert official.taps == (6, 20, 23)
    assert sum(p.numel() for p in official.parameters()) > 2.6e8


def test_latent_codes_pool_fills_then_returns_a_stored_code_half_the_time():
    from stylecli.methods.e4e.train import LatentCodesPool
    pool = LatentCodesPool(10, torch.Generator().manual_seed(0))
    codes = torch.arange(400.0)[:, None].expand(400, 3)  # code i is the constant i: every code is told apart
    first = pool.query(codes[:10])
    assert torch.equal(first, codes[:10]) and [int(c[0]) for c in pool.codes] == list(range(10))  # filling
    out = torch.cat([pool.query(codes[i:i + 5]) for i in range(10, 400, 5)])
    swapped = (out != codes[10:]).any(1)
    assert 0.42 < swapped.float().mean() < 0.58  # p = 1/2 over 390 draws (4 standard deviations: 0.40-0.60)
    # A swap hands out a stored code (an earlier one) and keeps the new one: the pool's ten codes plus those handed out
    # are exactly the first ten plus the swapped-in ones.
    handed, swapped_in = out[swapped, 0].long(), torch.arange(10, 400)[swapped]
    assert (handed < swapped_in).all()
    stock = sorted(handed.tolist() + [int(c[0]) for c in pool.codes])
    assert len(pool.codes) == 10 and stock == sorted(list(range(10)) + swapped_in.tolist())
    again = LatentCodesPool(10, torch.Generator().manual_seed(0))  # the same draws from the same generator
    assert torch.equal(torch.cat([again.query(codes[i:i + 5]) for i in range(0, 400, 5)]), torch.cat([first, out]))


def test_latent_codes_pool_takes_one_random_active_row_per_sample():
    from stylecli.methods.e4e.train import LatentCodesPool
    rows = torch.arange(3.0)[None, :, None].expand(600, 3, 2)  # row r of every sample is the constant r
    out = LatentCodesPool(1000, torch.Generator().manual_seed(1)).query(rows)
    assert out.shape == (600, 2)
    counts = torch.bincount(out[:, 0].long(), minlength=3)
    assert counts.min() > 150  # each row about 200 times
    assert torch.equal(LatentCodesPool(0, torch.Generator()).query(rows), rows[:, 0])  # no pool: w0, as e4e


def test_delta_regulariser_covers_every_active_delta_row_as_e4e_does():
    from stylecli.methods.e4e.train import delta_loss
    torch.manual_seed(0)
    w0, avg = torch.randn(3, 1, 4), torch.randn(1, 4)
    for active in range(1, 7):
        deltas = torch.randn(3, 6, 4)
        deltas[:, 0], deltas[:, active:] = 0, 0  # as the encoder writes them: w0's row and inactive rows are zero
        deltas.requires_grad_(True)
        loss = delta_loss(deltas, active)
        # e4e's coach at ProgressiveStage s = active - 1, on the codes it decodes (latent_avg added).
        latent, stage = w0 + deltas + avg, active - 1
        official = sum((latent[:, i] - latent[:, 0]).norm(2, dim=1).mean() for i in range(1, stage + 1))
        torch.testing.assert_close(loss, torch.as_tensor(official, dtype=loss.dtype))
        if active > 1:
            (grad,) = torch.autograd.grad(loss, deltas)
            touched = [i for i in range(6) if grad[:, i].abs().sum() > 0]
            assert touched == list(range(1, active))  # the newest delta included


def test_invert_a_folder_with_a_bad_file_then_skip_then_overwrite(tmp_path, pack):
    photos = tmp_path / "photos"
    assert cli("data", "synth", "--set", "indomain", "--count", "3", "--out", str(photos), "--resolution", "48").returncode == 0
    (photos / "broken.png").write_text("not an image")
    out = cli("invert", str(photos), "-o", str(tmp_path / "out"), "--method", "e4e", "--model", str(pack),
              "--compare", "--json")
    assert out.returncode == 1  # one file failed, the others are done
    results = json.loads(out.stdout)
    assert sorted(r["status"] for r in results) == ["done", "done", "done", "failed"]
    assert "broken.png" in out.stderr and "3 done" in out.stderr
    recon = Image.open(tmp_path / "out" / "000000.png")
    assert recon.size == (32, 32)
    assert (tmp_path / "out" / "000000.latent.safetensors").is_file()
    assert (tmp_path / "out" / "000000_compare.png").is_file()
    (photos / "broken.png").unlink()
    again = cli("invert", str(photos), "-o", str(tmp_path / "out"), "--model", str(pack))
    assert again.returncode == 0 and "3 skipped" in again.stderr
    redo = cli("invert", str(photos), "-o", str(tmp_path / "out"), "--model", str(pack), "--overwrite")
    assert redo.returncode == 0 and "3 done" in redo.stderr


def test_invert_never_overwrites_its_input(tmp_path, pack):
    assert cli("data", "synth", "--count", "1", "--out", str(tmp_path), "--resolution", "32").returncode == 0
    before = (tmp_path / "000000.png").read_bytes()
    out = cli("invert", str(tmp_path / "000000.png"), "-o", str(tmp_path), "--model", str(pack))
    assert out.returncode == 1 and "refusing to overwrite an input" in out.stderr
    assert (tmp_path / "000000.png").read_bytes() == before


def test_edit_images_latents_and_sweeps(tmp_path, pack):
    assert cli("data", "synth", "--count", "2", "--out", str(tmp_path / "in"), "--resolution", "32").returncode == 0
    assert cli("invert", str(tmp_path / "in"), "-o", str(tmp_path / "lat"), "--model", str(pack)).returncode == 0
    one = cli("edit", str(tmp_path / "in" / "000000.png"), "-d", "smile", "-s", "2", "-d", "glasses", "-s", "1",
              "--model", str(pack), "-o", str(tmp_path / "ed"))
    assert one.returncode == 0, one.stderr
    edited = tmp_path / "ed" / "000000_smile+2_glasses+1.png"
    recon = tmp_path / "lat" / "000000.png"
    assert edited.is_file()
    assert Image.open(edited).tobytes() != Image.open(recon).tobytes()
    sweep = cli("edit", str(tmp_path / "lat"), "--latent", "-d", "smile", "--strength", "-2:2:5", "--model", str(pack),
                "-o", str(tmp_path / "sw"))
    assert sweep.returncode == 0, sweep.stderr
    grid = Image.open(tmp_path / "sw" / "000001_smile-2..+2.png")
    assert grid.size[0] > 4 * 32
    gif = Image.open(tmp_path / "sw" / "000001_smile-2..+2.gif")
    assert gif.n_frames == 8  # there and back
    # Strength 0 reproduces the reconstruction from the saved latent.
    zero = cli("edit", str(tmp_path / "lat" / "000000.latent.safetensors"), "--latent", "-d", "smile", "-s", "0",
               "--model", str(pack), "-o", str(tmp_path / "z"))
    assert zero.returncode == 0
    assert Image.open(tmp_path / "z" / "000000_smile+0.png").tobytes() == Image.open(recon).tobytes()


@pytest.mark.parametrize("args, message", [
    (["-d", "frown"], "no direction 'frown'"),
    (["-d", "smile", "-s", "1:2"], "bad strength"),
    (["-d", "smile", "-d", "glasses", "-s", "1", "-s", "2", "-s", "3"], "2 directions but 3 strengths"),
])
def test_edit_errors_are_one_line(tmp_path, pack, args, message):
    assert cli("data", "synth", "--count", "1", "--out", str(tmp_path), "--resolution", "32").returncode == 0
    out = cli("edit", str(tmp_path / "000000.png"), "--model", str(pack), *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_directions_are_listed_with_their_fit(pack, tmp_path):
    out = cli("directions", "list", "--model", str(pack))
    assert out.returncode == 0 and "smile" in out.stdout and "glasses" in out.stdout
    # Layers read as they were typed: rows 0-3 inclusive (on a copy: the other tests expect the fixture's three).
    copy = tmp_path / "tinyface"
    shutil.copytree(pack, copy)
    assert cli("directions", "fit", "beard", "--layers", "0-3", "--samples", "60", "--gradient-samples", "0",
               "--model", str(copy)).returncode == 0
    listing = cli("directions", "list", "--model", str(copy)).stdout
    beard = next(line for line in listing.splitlines() if "beard" in line)
    assert " 0-3 " in beard
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["directions"]["smile"]["kind"] == "interfacegan"
    assert manifest["directions"]["pose"]["attribute"] == "yaw" and "yaw" not in manifest["directions"]
    assert "directions.safetensors" in manifest["files"]
    assert cli("weights", "verify", str(pack)).returncode == 0


def test_bench_inversion_and_editing_tables_and_json(tmp_path, pack):
    out = cli("bench", "inversion", "--timing-calls=2", "--method", "e4e", "--model", str(pack), "--set", "indomain",
              "--set", "ood", "--count", "12", "-o", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "inversion.json").read_text())
    assert [r["set"] for r in rows] == ["indomain", "ood"]
    for r in rows:
        assert 0 < r["psnr"] < 60 and -1 <= r["ssim"] <= 1 and 0 <= r["ms_ssim"] <= 1 and r["seconds_per_image"] > 0
    assert (tmp_path / "e4e_ood.png").is_file()
    ed = cli("bench", "editing", "--method", "e4e", "--model", str(pack), "--count", "4", "-o", str(tmp_path))
    assert ed.returncode == 0, ed.stderr
    rows = json.loads((tmp_path / "editing.json").read_text())
    assert {(r["direction"], r["attribute"]) for r in rows} == {("smile", "smile"), ("glasses", "glasses"), ("pose", "yaw")}
    assert all("drift_std" in r and -1 <= r["id_similarity"] <= 1 and r["target_change_se"] >= 0 for r in rows)
    # Layer sweeps: every direction is also measured restricted to each range of rows.
    ed = cli("bench", "editing", "--model", str(pack), "-d", "smile", "--layers", "0-3", "--layers", "7-7",
             "--count", "4", "-o", str(tmp_path))
    assert ed.returncode == 0, ed.stderr
    rows = {r["direction"]: r for r in json.loads((tmp_path / "editing.json").read_text())}
    assert set(rows) == {"smile", "smile[0-3]", "smile[7-7]"} and rows["smile[0-3]"]["attribute"] == "smile"
    # The renderer's exact edit as a reference: it moves the attribute and keeps the identity.
    ed = cli("bench", "editing", "--model", str(pack), "-d", "pose", "--reference", "--count", "4", "-o", str(tmp_path))
    assert ed.returncode == 0, ed.stderr
    ref = [r for r in json.loads((tmp_path / "editing.json").read_text()) if r["method"] == "renderer"]
    assert [(r["direction"], r["attribute"]) for r in ref] == [("pose", "yaw")]
    bad = cli("bench", "editing", "--model", str(pack), "-d", "smile", "--layers", "3-40", "--count", "2")
    assert bad.returncode == 2 and "layers 3-40 are outside the code's rows 0-" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_e4e_inverts_in_channels_last_as_the_encoder_does_in_the_default_layout(pack):
    from stylecli.methods.e4e import NETWORK
    from stylecli.methods.e4e.method import E4E
    from stylecli.packs import Pack

    opened = Pack.open(pack)
    method, encoder = E4E(opened), opened.load(NETWORK)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    inv = method.invert(x)
    with torch.no_grad():
        torch.testing.assert_close(inv.latents["w_plus"], encoder(x), atol=1e-5, rtol=1e-5)
    assert inv.latents["w_plus"].is_contiguous() and inv.image.shape == (3, 3, 32, 32)


def test_bench_reports_every_image_to_its_progress_bar(pack):
    from stylecli.bench.inversion import evaluate_editing, evaluate_inversion
    from stylecli.cli.bench import _method_and_losses
    from stylecli.directions import load_directions

    runner, opened, losses = _method_and_losses("e4e", str(pack), "cpu")
    done = []
    evaluate_inversion(runner, losses, "indomain", 5, batch=2, timing_images=2, on_batch=done.append)
    assert done == [2, 2, 1]
    done.clear()
    directions = load_directions(opened)
    evaluate_editing(runner, losses, directions, count=5, batch=4, on_batch=done.append)
    assert sum(done) == 5 * (1 + len(directions)) and done[:2] == [4, 1]


def test_edit_scores_measure_change_in_std_with_its_standard_error():
    from stylecli.bench.inversion import _edit_row
    from stylecli.losses import LossNetworks

    class MeanPixelPredictor:  # smile = mean of the red channel, yaw = mean of the green one
        def predict(self, x):
            return {"smile": x[:, 0].mean((1, 2)), "yaw": x[:, 1].mean((1, 2))}

    losses = LossNetworks(None, lambda a, b: torch.ones(len(a)), MeanPixelPredictor(), 8)
    base = torch.zeros(40, 3, 8, 8)
    step = torch.linspace(0.1, 0.5, 40)            # per-face change of smile; yaw moves by a fixed 0.05
    edited = base.clone()
    edited[:, 0] += step[:, None, None]
    edited[:, 1] += 0.05
    row = _edit_row("smile", "smile", base, edited, losses, {"smile": 0.5, "yaw": 0.25})
    assert row["target_change_std"] == pytest.approx(0.3 / 0.5, rel=1e-5)
    assert row["target_change_se"] == pytest.approx(float(step.std()) / 40 ** 0.5 / 0.5, rel=1e-5)
    assert row["drift_std"] == {"yaw": pytest.approx(0.2, rel=1e-5)}
    assert row["max_drift_std"] == pytest.approx(0.2, rel=1e-5)
    # The same extra change on every face moves the mean, not the error.
    edited[:, 0] += 0.3
    shifted = _edit_row("smile", "smile", base, edited, losses, {"smile": 0.5, "yaw": 0.25})
    assert shifted["target_change_std"] == pytest.approx(1.2, rel=1e-5)
    assert shifted["target_change_se"] == pytest.approx(row["target_change_se"], rel=1e-4)


def test_image_metrics_behave():
    from stylecli.bench.inversion import image_metrics
    from stylecli.losses import LossNetworks
    from stylecli.data.domainnet import DomainNet, id_similarity, perceptual_distance
    net = DomainNet().eval()
    losses = LossNetworks(lambda a, b: perceptual_distance(net, a, b), lambda a, b: id_similarity(net, a, b), net, 64)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    same = image_metrics(x, x, losses)
    noisy = image_metrics(x, (x + 0.1 * torch.randn_like(x)).clamp(-1, 1), losses)
    assert same["psnr"] > 90 and same["ssim"] > 0.999 and same["ms_ssim"] > 0.999 and same["l2"] == 0
    assert 20 < noisy["psnr"] < 30 and noisy["ssim"] < same["ssim"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_e4e_on_cuda_takes_cpu_images_and_matches_the_cpu_run(tmp_path, pack):
    from stylecli.methods.e4e.method import E4E
    from stylecli.packs import Pack

    opened = Pack.open(str(pack))
    on_cpu, on_gpu = E4E(opened, "cpu"), E4E(opened, "cuda")
    x = torch.rand(3, 3, on_cpu.resolution, on_cpu.resolution) * 2 - 1
    a, b = on_cpu.invert(x), on_gpu.invert(x)
    assert b.image.device.type == "cpu" and b.latents["w_plus"].device.type == "cpu"
    torch.testing.assert_close(b.latents["w_plus"], a.latents["w_plus"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b.image, a.image, atol=2e-3, rtol=1e-3)
    direction = torch.randn(a.latents["w_plus"].shape[1:])
    torch.testing.assert_close(on_gpu.edit(b, direction, 2.0), on_cpu.edit(a, direction, 2.0), atol=2e-3, rtol=1e-3)
    Image.new("RGB", (48, 48), (120, 90, 80)).save(tmp_path / "face.png")
    out = cli("invert", str(tmp_path / "face.png"), "-o", str(tmp_path / "inv"), "--model", str(pack), "--device", "cuda")
    assert out.returncode == 0, out.stderr
    out = cli("bench", "inversion", "--timing-calls=2", "--model", str(pack), "--set", "indomain", "--count", "10",
              "--device", "cuda", "-o", str(tmp_path / "bench"))
    assert out.returncode == 0, out.stderr
