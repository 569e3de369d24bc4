"""Joining a data-parallel run: torchrun's or accelerate's environment gives each process its rank; gloo on CPU,
NCCL on CUDA (one device per local rank)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import C2CError
from ..inference.factory import check_device, default_device
from .config import TrainConfig


def join_process_group(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(world size, rank, this process's device), the process group joined when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.batch_size % (world * cfg.micro_batch_size):
        raise C2CError(f"batch_size {cfg.batch_size} must be a multiple of processes ({world}) x "
                       f"micro_batch_size ({cfg.micro_batch_size})")  # fmt: skip
    device = check_device(cfg.device or default_device())
    if world > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return world, rank, torch.device(device)


def my_micro_batches(batch: list, micro_batch_size: int, world: int, rank: int) -> list[tuple[int, list]]:
    """This process's share of the global batch, as (global micro-batch index, examples). The batch is sorted by
    sharer prompt length first, so micro-batches pad less; the step's gradient is unchanged."""
    batch = sorted(batch, key=lambda e: (len(e.prompt.sharer_ids), len(e.prompt.receiver_ids)))
    micro = [batch[i:i + micro_batch_size] for i in range(0, len(batch), micro_batch_size)]
    per_rank = len(micro) // world
    return [(rank * per_rank + j, micro[rank * per_rank + j]) for j in range(per_rank)]


def all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    """`t` summed over the processes, in place (itself when there is one)."""
    if world > 1:
        dist.all_reduce(t)
    return t
