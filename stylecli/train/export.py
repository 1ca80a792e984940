"""Turn finished training runs into pack networks, with a provenance record each."""

from __future__ import annotations

from pathlib import Path

from ..core.networks import Discriminator, Generator
from ..data.domainnet import DomainNet
from .checkpoint import MetricsLog, load_checkpoint
from .domainnet import evaluate_domainnet


def load_run(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir)
    if state is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt")
    return state


def generator_from_run(run_dir: Path) -> tuple[dict, dict]:
    """{"generator": G_ema, "discriminator": D} and their record (config, kimg, wall time, last metrics)."""
    state = load_run(run_dir)
    cfg = state["config"]
    G = Generator(z_dim=cfg["z_dim"], w_dim=cfg["w_dim"], img_resolution=cfg["resolution"],
                  mapping_layers=cfg["mapping_layers"], channel_base=cfg["channel_base"], channel_max=cfg["channel_max"])
    D = Discriminator(img_resolution=cfg["resolution"], channel_base=cfg["channel_base"], channel_max=cfg["channel_max"])
    G.load_state_dict(state["G_ema"])
    D.load_state_dict(state["D"])
    metrics = MetricsLog(run_dir / "metrics.jsonl").read()
    record = {"trained_by": "stylecli train generator", "config": cfg, "kimg": state["nimg"] / 1000,
              "steps": state["step"], "wall_time_h": round(state["elapsed"] / 3600, 2),
              "hardware": state.get("hardware", "not recorded"), "last_metrics": metrics[-1] if metrics else None}
    return {"generator": G, "discriminator": D}, record


def domainnet_from_run(run_dir: Path, eval_count: int = 300) -> tuple[dict, dict]:
    """{"domainnet": net} and its record, with the network's held-out figures under "evaluation" (that is how they
    reach the pack's manifest): `evaluate_domainnet` on the first `eval_count` `indomain` faces at the run's resolution
    and identity verification on 100 pairs, a few seconds of rendering. The full 1,000-image table in the pack's
    TRAINING.md comes from a longer call of the same function."""
    state = load_run(run_dir)
    net = DomainNet()
    net.load_state_dict(state["net"])
    record = step_run_record(run_dir, state, "stylecli train domainnet")
    resolution = state["config"]["resolution"]
    report = evaluate_domainnet(net, count=eval_count, resolution=resolution, pairs=100)
    record["evaluation"] = {"set": "indomain", "images": eval_count, "identity_pairs": 100, "resolution": resolution,
                            **_rounded(report)}
    return {"domainnet": net}, record


def _rounded(value, digits: int = 4):
    """Figures for a manifest: floats to `digits` decimals, through nested dicts."""
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return round(value, digits) if isinstance(value, float) else value


def step_run_record(run_dir: Path, state: dict, trained_by: str) -> dict:
    """The provenance of a step-counted run: command, config, steps, wall time, hardware, last metrics."""
    metrics = MetricsLog(run_dir / "metrics.jsonl").read()
    return {"trained_by": trained_by, "config": state["config"], "steps": state["step"],
            "wall_time_h": round(state["elapsed"] / 3600, 2), "hardware": state.get("hardware", "not recorded"),
            "last_metrics": metrics[-1] if metrics else None}
