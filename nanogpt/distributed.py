"""Distributed set-up in one place: which rank this process is, and wrapping a model for data parallelism.

Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE in the environment) each process joins the process group and
takes one device; run alone, it is rank 0 of 1 and nothing is initialised.

Two kinds of data parallelism, chosen by TrainConfig.parallelism:
  ddp   every rank holds the whole model and optimizer; gradients are all-reduced (DistributedDataParallel).
  fsdp  every parameter, gradient and optimizer moment is split over the ranks (FSDP2, `fully_shard`), one group
        per transformer block and one for the rest, as torchtitan does.
Either way a checkpoint holds the full, unsharded weights and optimizer state in the single-process layout, so a
run saved under one resumes under the other, or alone.
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
    """The mean over all ranks of a float or a one-element tensor, as a float (reading a tensor waits for the
    device)."""
    if not info.enabled:
        return float(value)
    t = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / info.world_size


def all_reduce_sum(tensor, info):
    """Sum a tensor over all ranks, in place (nothing to do when alone)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def without_ddp(model):
    """The module inside a DDP wrapper (forwards without DDP's hooks: evaluation), or model itself."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def shutdown(info):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def uses_fsdp(cfg, info):
    return info.enabled and cfg.parallelism == "fsdp"


def parallelize(model, cfg, info, device, compile_model=False):
    """Wrap the model for this run: compiled and/or DDP or FSDP under torchrun, unchanged alone.

    The optimizer must be built after this, from the returned model's parameters: FSDP replaces each parameter
    by its shard (a DTensor). `model` itself stays the module whose state_dict is the checkpoint's."""
    if uses_fsdp(cfg, info):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (info.world_size,))
        # one all-gather per block keeps only one block's full weights alive at a time; the embeddings, final
        # LayerNorm and (tied) lm_head form the root group
        for block in model.transformer.h:
            if compile_model:
                block.compile()  # per block, in place (no key prefix), inside FSDP's hooks, as torchtitan does
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if compile_model:
        model = torch.compile(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # broadcast_buffers=False: the model's only buffers (rotary's frequencies) are constants, and
        # broadcasting them would add a collective to every forward
        model = DDP(model, device_ids=[info.local_rank] if device.startswith("cuda") else None,
                    broadcast_buffers=False)
    return model


def set_gradient_sync(model, enabled):
    """Turn the gradient all-reduce / reduce-scatter of the next backward on or off: with gradient accumulation
    only the last micro-step needs it, the others just accumulate locally."""
    inner = getattr(model, "_orig_mod", model)  # under torch.compile, the FSDP module is inside
    if hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(enabled)
    elif hasattr(model, "require_backward_grad_sync"):
        model.require_backward_grad_sync = enabled


def full_tensor(value):
    """A tensor as a plain, whole tensor: DTensors (FSDP's shards, or a norm computed over them) are gathered."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def full_state(model, optimizer, cfg, info):
    """(weights, optimizer state) in the single-process layout, on the CPU, for rank 0 to save; (None, None) on
    the other ranks. Under FSDP every rank must call it: the shards are gathered collectively."""
    if not uses_fsdp(cfg, info):
        if not info.is_master:
            return None, None
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not info.is_master:
        return None, None
    return weights, _by_index(named, _param_names(model, optimizer))


def load_optimizer_state(model, optimizer, state, cfg, info):
    """Load a single-process-layout optimizer state dict (as full_state returns) into this run's optimizer."""
    if not uses_fsdp(cfg, info):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    named = _by_name(state, _param_names(model, optimizer))
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


def _param_names(model, optimizer):
    """The name of each optimizer parameter, in the order torch's optimizer state_dict numbers them (a tied
    parameter goes by its first name, as torch.distributed.checkpoint names it)."""
    names = {}
    for name, p in model.named_parameters():
        names.setdefault(p, name)
    return [names[p] for group in optimizer.param_groups for p in group["params"]]


def _by_index(named, names):
    # torch.distributed.checkpoint keys optimizer state by parameter name; torch.optim (and nanoGPT) by position
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: s for name, s in named["state"].items()},
        "param_groups": [dict(g, params=[index[name] for name in g["params"]]) for g in named["param_groups"]],
    }


def _by_name(indexed, names):
    return {
        "state": {names[i]: s for i, s in indexed["state"].items()},
        "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in indexed["param_groups"]],
    }
