"""Generator training in small configurations: it learns, checkpoints atomically, resumes exactly, and runs
as two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylecli.train import checkpoint as ckpt_mod
from stylecli.train.generator import GeneratorTrainer, GeneratorTrainingConfig
from cli_runner import stylecli


def tiny(run_dir, **kw):
    base = dict(run_dir=str(run_dir), resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128,
                channel_max=16, batch=4, kimg=0.016, checkpoint_kimg=0.008, sample_kimg=0.008, log_kimg=0.004,
                g_reg_interval=2, d_reg_interval=2)
    base.update(kw)
    return GeneratorTrainingConfig(**base)


def test_a_few_steps_update_every_network_and_write_the_run(tmp_path):
    trainer = GeneratorTrainer(tiny(tmp_path))
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    d_before = trainer.D.b16.fromrgb.weight.clone()
    trainer.run()
    assert trainer.step == 4 and trainer.nimg == 16
    changed = [k for k, v in trainer.G.state_dict().items() if not torch.equal(v, before[k])]
    assert "synthesis.b16.conv1.weight" in changed and "mapping.fc0.weight" in changed and "mapping.w_avg" in changed
    assert not torch.equal(trainer.D.b16.fromrgb.weight, d_before)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss_G", "loss_D", "loss_pl", "loss_r1"} <= set().union(*records)
    assert all(torch.isfinite(torch.tensor(r["loss_G"])) for r in records)
    assert (tmp_path / "checkpoint.pt").is_file() and list(tmp_path.glob("samples-*.png"))


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight = GeneratorTrainer(tiny(tmp_path / "a"))
    straight.run()
    first = GeneratorTrainer(tiny(tmp_path / "b", kimg=0.008))
    first.run()
    resumed = GeneratorTrainer(tiny(tmp_path / "b"), resume=True)
    assert resumed.step == 2
    resumed.run()
    for key, value in straight.G_ema.state_dict().items():
        torch.testing.assert_close(resumed.G_ema.state_dict()[key], value, msg=key)
    for key, value in straight.D.state_dict().items():
        torch.testing.assert_close(resumed.D.state_dict()[key], value, msg=key)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = GeneratorTrainer(tiny(tmp_path, kimg=0.004))
    trainer.run()
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(OSError):
        trainer.save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert not list(tmp_path.glob(".checkpoint.*"))


def test_resume_refuses_a_different_architecture(tmp_path):
    GeneratorTrainer(tiny(tmp_path, kimg=0.004)).run()
    with pytest.raises(ValueError, match="channel_max"):
        GeneratorTrainer(tiny(tmp_path, channel_max=32), resume=True)


@pytest.mark.slow
def test_two_processes_with_torchrun(tmp_path):
    """torchrun, gloo on the CPU: both ranks step in lock-step and rank 0 writes the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stylecli", "train", "generator", "--run-dir", str(tmp_path / "run"), "--kimg", "0.016",
           "--batch", "4", "--resolution", "16", "--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2", "--channel-base", "128",
           "--channel-max", "16", "--checkpoint-kimg", "0.008", "--sample-kimg", "0.016", "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["nimg"] == 16


def test_gradient_averaging_across_two_processes(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_average_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    grads = [torch.load(tmp_path / f"grad{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], torch.full((3,), 1.5))


def _average_worker(rank, store, out):
    import torch.distributed as dist
    from stylecli.train.distributed import DistContext, average_gradients
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    layer = torch.nn.Linear(3, 1, bias=False)
    layer.weight.grad = torch.full((1, 3), float(rank + 1))  # 1 and 2 -> mean 1.5
    average_gradients(layer, DistContext(rank, 2))
    torch.save(layer.weight.grad[0], Path(out) / f"grad{rank}.pt")
    dist.destroy_process_group()


def test_init_continues_a_packs_generator_and_discriminator_in_a_new_run(tmp_path):
    from stylecli.packs import write_pack
    from stylecli.train.export import generator_from_run

    GeneratorTrainer(tiny(tmp_path / "first", kimg=0.008)).run()
    networks, record = generator_from_run(tmp_path / "first")
    record["wall_time_h"] = 2.0
    pack = write_pack(tmp_path / "pack", "tinypack", networks, 16, record, dtype=torch.float16)
    trainer = GeneratorTrainer(tiny(tmp_path / "second", init=str(pack.root)))
    shipped = pack.state_dict("generator")
    for key, value in trainer.G.state_dict().items():     # the pack's EMA generator is both G and G_ema
        torch.testing.assert_close(value, shipped[key].float(), msg=key)
        torch.testing.assert_close(trainer.G_ema.state_dict()[key], value, msg=key)
    torch.testing.assert_close(trainer.D.b16.fromrgb.weight, pack.state_dict("discriminator")["b16.fromrgb.weight"].float())
    assert trainer.nimg == 8 and trainer.step == 2 and trainer.elapsed == 2.0 * 3600
    assert float(trainer.pl_mean) > 0                      # estimated, not a fresh zero
    trainer.run()                                          # up to kimg 0.016: two more steps
    assert trainer.step == 4 and not torch.equal(trainer.G.state_dict()["mapping.fc0.weight"],
                                                 shipped["mapping.fc0.weight"].float())
    resumed = GeneratorTrainer(tiny(tmp_path / "second", init=str(pack.root), kimg=0.02), resume=True)
    assert resumed.step == 4                               # the run's own checkpoint wins over --init


def test_init_refuses_a_pack_it_cannot_continue(tmp_path):
    from stylecli.packs import write_pack
    from stylecli.train.export import generator_from_run

    GeneratorTrainer(tiny(tmp_path / "first", kimg=0.004)).run()
    networks, record = generator_from_run(tmp_path / "first")
    write_pack(tmp_path / "g-only", "g-only", {"generator": networks["generator"]}, 16, record)
    with pytest.raises(ValueError, match="no discriminator"):
        GeneratorTrainer(tiny(tmp_path / "a", init=str(tmp_path / "g-only")))
    write_pack(tmp_path / "both", "both", networks, 16, record)
    with pytest.raises(ValueError, match="does not fit"):
        GeneratorTrainer(tiny(tmp_path / "b", init=str(tmp_path / "both"), channel_max=32))
    with pytest.raises(ValueError, match="no model pack"):
        GeneratorTrainer(tiny(tmp_path / "c", init=str(tmp_path / "missing")))


def test_domainnet_trains_resumes_and_runs_join_a_pack_that_the_quality_bench_reads(tmp_path):
    from stylecli.train.domainnet import DomainNetTrainer, DomainNetTrainingConfig
    dn_cfg = lambda steps: DomainNetTrainingConfig(run_dir=str(tmp_path / "dn"), resolution=32, identities=4,
                                                   steps=steps, checkpoint_every=2, log_every=1)
    first = DomainNetTrainer(dn_cfg(2))
    first.run()
    resumed = DomainNetTrainer(dn_cfg(3), resume=True)
    assert resumed.step == 2
    resumed.run()
    records = [json.loads(l) for l in (tmp_path / "dn" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["identity"] > 0 for r in records)
    GeneratorTrainer(tiny(tmp_path / "g", resolution=32, kimg=0.004)).run()
    pack = tmp_path / "packs" / "minipack"
    out = stylecli("weights", "from-runs", pack, tmp_path / "g", tmp_path / "dn")
    assert out.returncode == 0, out.stderr
    manifest = json.loads((pack / "manifest.json").read_text())
    assert set(manifest["networks"]) == {"generator", "discriminator", "domainnet"}
    assert manifest["provenance"]["generator"]["kimg"] == 0.004
    assert manifest["provenance"]["domainnet"]["steps"] == 3
    assert manifest["provenance"]["domainnet"]["evaluation"]["images"] == 300  # evaluate_domainnet's figures
    bench = stylecli("bench", "generator", "--model", pack, "--quality", "--count", "20", "--floor", "--json")
    assert bench.returncode == 0, bench.stderr
    result = json.loads(bench.stdout[bench.stdout.index("{"):])
    assert result["fid"] > 0 and 0 <= result["precision"] <= 1 and set(result["attributes"]) >= {"smile", "glasses"}
    # An untrained generator scores far from rendered-vs-rendered. Precision is the robust signal here: its blurry
    # samples sit off the rendered manifold, while recall on 20 samples of a 3-step domain net flips with the thread
    # count (measured: 0.45-0.85 against a floor of 0.8-0.9).
    assert result["floor"]["fid"] < result["fid"] and result["floor"]["precision"] > result["precision"]
    hair = result["categories"]["hair_style"]
    assert abs(sum(hair["generated"].values()) - 1) < 1e-6 and 0 <= hair["total_variation"] <= 1


def _ranger_reference(p0, grads, lr, centre, b1=0.95, b2=0.999, eps=1e-5, k=6, alpha=0.5, threshold=5.0):
    """Ranger from its equations (RAdam, Lookahead, gradient centralisation), one tensor, written out step by step."""
    import math
    p, slow, m, v = p0.clone(), p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, 1):
        if centre:  # each output unit's gradient minus its mean
            g = g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        if rho > threshold:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            p = p - lr * r * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
        else:
            p = p - lr / (1 - b1 ** t) * m
        if t % k == 0:
            slow = slow + alpha * (p - slow)
            p = slow.clone()
    return p


def test_ranger_matches_its_equations_over_both_radam_branches_and_a_lookahead_step():
    from stylecli.train.optim import Ranger
    torch.manual_seed(0)
    params = [torch.randn(4, 3) * 1e-2, torch.randn(2, 3, 3, 3) * 1e-2, torch.randn(4) * 1e-2]  # linear, conv, bias
    # Gradients of ~1e-4: sqrt(v) is then near eps (1e-5), so eps's value and place show in the result.
    grads = [[torch.randn_like(p) * 1e-4 for _ in range(8)] for p in params]
    b2 = 0.999
    rho = [2 / (1 - b2) - 1 - 2 * t * b2 ** t / (1 - b2 ** t) for t in range(1, 9)]
    assert min(rho) <= 5 < max(rho)  # steps on both sides of the rectification threshold, Lookahead at step 6
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Ranger(ps, lr=1e-2)
    for t in range(8):
        for p, g in zip(ps, grads):
            p.grad = g[t].clone()
        opt.step()
    for p0, g, p, centre in zip(params, grads, ps, (True, True, False)):
        torch.testing.assert_close(p.detach(), _ranger_reference(p0, g, 1e-2, centre), rtol=1e-5, atol=1e-9)


def test_ranger_centralises_linear_and_conv_weight_gradients_per_output_unit():
    from stylecli.train.optim import Ranger
    for conv_only in (False, True):
        lin, conv = torch.nn.Linear(3, 4), torch.nn.Conv2d(3, 2, 3)
        before = [p.detach().clone() for p in (lin.weight, lin.bias, conv.weight)]
        # Every output unit's gradient is constant over its inputs: centralised, nothing is left of it.
        lin.weight.grad = torch.arange(4.0)[:, None].expand(4, 3).clone() + 1
        conv.weight.grad = torch.tensor([2.0, -3.0])[:, None, None, None].expand(2, 3, 3, 3).clone()
        lin.bias.grad = torch.ones(4)
        Ranger([lin.weight, lin.bias, conv.weight], lr=0.1, gc_conv_only=conv_only).step()
        assert torch.equal(conv.weight, before[2])
        assert torch.equal(lin.weight, before[0]) != conv_only  # gc_conv_only leaves linear weights alone
        torch.testing.assert_close(lin.bias.detach(), before[1] - 0.1)  # step 1: p - lr g (biases never centred)


def test_ranger_state_dict_resumes_exactly_across_lookahead_steps(tmp_path):
    from stylecli.train.optim import Ranger
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randn(16, 1)

    def make():
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return net, Ranger(net.parameters(), lr=1e-2)

    def steps(net, opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()

    straight, opt = make()
    steps(straight, opt, 13)
    first, opt = make()
    steps(first, opt, 5)
    torch.save({"net": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # as the trainers read checkpoints
    assert {"step", "exp_avg", "exp_avg_sq", "slow_buffer"} <= set(state["opt"]["state"][0])
    resumed, opt = make()
    resumed.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    steps(resumed, opt, 8)  # through Lookahead's steps 6 and 12
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_domainnet_resume_is_exact_and_independent_of_the_global_random_streams(tmp_path):
    import numpy as np
    from stylecli.train.domainnet import DomainNetTrainer, DomainNetTrainingConfig
    cfg = lambda name: DomainNetTrainingConfig(run_dir=str(tmp_path / name), resolution=32, identities=4, steps=4,
                                               checkpoint_every=100, log_every=1)
    straight = DomainNetTrainer(cfg("a"))
    straight.run()
    interrupted = DomainNetTrainer(cfg("b"))
    for _ in range(2):
        interrupted.train_step()
    interrupted.save()
    torch.manual_seed(123), np.random.seed(123)  # another program's draws in between must not matter
    resumed = DomainNetTrainer(cfg("b"), resume=True)
    assert resumed.step == 2
    resumed.run()
    for key, value in straight.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key


def test_domainnet_export_records_its_held_out_figures(tmp_path):
    from stylecli.train.domainnet import DomainNetTrainer, DomainNetTrainingConfig
    from stylecli.train.export import domainnet_from_run
    DomainNetTrainer(DomainNetTrainingConfig(run_dir=str(tmp_path), resolution=32, identities=4, steps=1)).run()
    networks, record = domainnet_from_run(tmp_path)
    figures = record["evaluation"]
    assert set(networks) == {"domainnet"} and record["steps"] == 1
    assert figures["images"] == 300 and figures["resolution"] == 32 and figures["set"] == "indomain"
    assert figures["smile"]["r2"] < 0.9 and 0 < figures["smile"]["std"] < 1  # one step: not yet predicting smile
    assert 0 <= figures["glasses"]["accuracy"] <= 1 and 0 <= figures["identity"]["verification_accuracy"] <= 1
    json.dumps(record)  # it goes into the pack's manifest as it is
