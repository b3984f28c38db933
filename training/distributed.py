"""Data-parallel DeDe training under ``torchrun`` (DistributedDataParallel): NCCL on GPUs, gloo on CPUs.

    torchrun --standalone --nproc_per_node 2 -m training.cli train --encoder ... --preset paper --out ...

Each rank caches the victim embeddings of its own shard of the auxiliary set (``images[rank::world]``), so
auxiliary sets that outgrow one device split across them; gradients are averaged by DDP; only rank 0 writes
checkpoints, calibrates and writes the run. Without ``WORLD_SIZE`` > 1 nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank()
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return DistEnv(rank, dist.get_world_size())


def wrap(model: nn.Module, env: DistEnv, device: str) -> nn.Module:
    if env.world == 1:
        return model
    ids = [torch.cuda.current_device()] if device.startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_across(value: float, env: DistEnv, device: str) -> float:
    if env.world == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return float(t.item()) / env.world


def teardown(env: DistEnv) -> None:
    if env.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
