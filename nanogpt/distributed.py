"""Distributed set-up in one place: which rank this process is, and wrapping a model for data parallelism.

Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE in the environment) each process joins the process group and
takes one device; run alone, it is rank 0 of 1 and nothing is initialised.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nanogpt.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self):
        return self.world_size > 1 or "RANK" in os.environ

    @property
    def is_master(self):
        return self.rank == 0


def init_distributed(backend, device):
    """Join the process group when launched by torchrun; returns this process's place and its device."""
    if "RANK" not in os.environ:
        return Dist(), device
    info = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError("backend 'nccl' needs CUDA GPUs; on CPU pass --backend=gloo")
    dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
    return info, device


def all_reduce_mean(value, info, device):
    """The mean of a float over all ranks (the value itself when alone)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / info.world_size


def shutdown(info):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
