"""Multi-process training helpers: torchrun's environment, gloo on CPU and NCCL on GPU, gradient averaging."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, device)


def average_gradients(module: torch.nn.Module, ctx: DistContext) -> None:
    """All-reduce gradients explicitly (works with the double backward of R1/path length, unlike DDP hooks)."""
    if ctx.world_size == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value


def broadcast_module(module: torch.nn.Module, ctx: DistContext, buffers_only: bool = False) -> None:
    """Make every rank hold rank 0's parameters and buffers; buffers_only: just the buffers (BatchNorm running
    statistics, which each rank updates from its own images, as DDP's broadcast_buffers does every step)."""
    if ctx.world_size > 1:
        tensors = list(module.buffers()) if buffers_only else list(module.parameters()) + list(module.buffers())
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)
