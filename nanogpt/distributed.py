"""Distributed set-up in one place: which rank this process is, and wrapping a model for data parallelism.

Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE in the environment) each process joins the process group and
takes one device; run alone, it is rank 0 of 1 and nothing is initialised.

Two kinds of data parallelism, chosen by TrainConfig.parallelism:
  ddp   every rank holds the whole model and optimizer; gradients are all-reduced (DistributedDataParallel).
  fsdp  every parameter, gradient and optimizer moment is split over the ranks (FSDP2, `fully_shard`), one group
        per transformer block and one for the rest, as torchtitan does.
DDP runs save the single-process layout (rank 0 writes what every rank holds); FSDP runs save each rank's shards
with torch.distributed.checkpoint (see checkpoint.py), never gathered. Either resumes under the other, or alone, on
any number of ranks.
"""

import inspect
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


def parallelize(model, cfg, info, device, compile_model=False, dtype="float32"):
    """Wrap the model for this run: compiled and/or DDP or FSDP under torchrun, unchanged alone.

    The optimizer must be built after this, from the returned model's parameters: FSDP replaces each parameter
    by its shard (a DTensor). `model` itself stays the module whose state_dict is the checkpoint's. A model built on
    the meta device is materialised here: sharded first under FSDP, so no rank ever holds the whole model."""
    on_meta = model.lm_head.weight.is_meta
    if uses_fsdp(cfg, info):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (info.world_size,))
        # a bfloat16 run computes and all-gathers the weights in bfloat16 (half the bytes of each gather) and
        # reduce-scatters the gradients in float32, so the sum over ranks loses nothing; the shards the
        # optimizer updates stay float32
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if dtype == "bfloat16" else MixedPrecisionPolicy()
        # one all-gather per block keeps only one block's full weights alive at a time; the embeddings, final
        # LayerNorm and (tied) lm_head form the root group
        for block in model.transformer.h:
            if compile_model:
                block.compile()  # per block, in place (no key prefix), inside FSDP's hooks, as torchtitan does
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        if on_meta:
            materialize(model, device)
        return model
    if on_meta:
        materialize(model, device)
    # Compile, then wrap in DDP (at its default 25 MB buckets). benchmarks/ddp_order.py timed both orders on 2 CPU
    # ranks: at 25 MB they were within 2%, noise on a shared machine; wrapping first only pulled ahead with 1 MB
    # buckets, where dynamo's DDPOptimizer splits the graph at bucket boundaries so reductions overlap the
    # backward, and 1 MB buckets would mean hundreds of small all-reduces per GPT-2 step on GPUs, which is
    # unmeasured. Compiling first keeps one graph whatever the buckets, no_sync outside it (no recompile for the
    # micro-step that syncs, tests/test_step_sync.py), and the compiled module for evaluation without DDP.
    if compile_model:
        model = torch.compile(model)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # the model's only buffers (rotary's frequencies) are constants: broadcasting them would add a collective
        # to every forward (newer PyTorch names the setting forward_sync_buffers)
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(DDP).parameters else {"broadcast_buffers": False})
        model = DDP(model, device_ids=[info.local_rank] if device.startswith("cuda") else None, **no_buffer_sync)
    return model


# in-place random fills a constructor may make itself; torch.nn.init's in-place functions are noted too
RANDOM_FILLS = ("uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_")


def on_meta(build):
    """build() run on the meta device (shapes, no storage), noting the random draws its constructors would have
    made on the CPU, so that materialize makes the same draws first: the weights then come out bit for bit as
    those of a model built directly on the CPU from the same seed (nanoGPT's, upstream's)."""
    from torch.overrides import TorchFunctionMode

    fills = {getattr(torch.Tensor, name) for name in RANDOM_FILLS}

    class NoteDraws(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.draws = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            # nn.init's functions arrive whole (their inner uniform_/normal_ run with this mode off)
            if func in fills or (getattr(func, "__module__", "") == "torch.nn.init" and func.__name__.endswith("_")):
                rest = dict(kwargs or {})
                tensor, args_ = (args[0], args[1:]) if args else (rest.pop("tensor"), ())
                self.draws.append((func, tuple(tensor.shape), args_, rest))
            return func(*args, **(kwargs or {}))

    with torch.device("meta"), NoteDraws() as noted:
        model = build()
    model.construction_draws = noted.draws  # read (and dropped) by materialize
    return model


@torch.no_grad()
def materialize(model, device):
    """Storage on `device` and initial weights for a model built on the meta device (on_meta): its constructors'
    draws are made first, then each parameter's value is drawn whole, one at a time, in the order a single process
    draws them (GPT.initial_values), and a rank under FSDP keeps only its shard, so every layout starts from the
    weights a model built directly on the CPU has."""
    from torch.distributed.tensor import DTensor, Shard

    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives each module its own tensor; FSDP keeps the tie itself
    for func, shape, args, kwargs in model.__dict__.pop("construction_draws", ()):
        func(torch.empty(shape), *args, **kwargs)  # the draws building the model on the CPU makes, one at a time
    for p, value in model.initial_values():
        if isinstance(p, DTensor):
            # FSDP2 splits dim 0 as torch.chunk does; every rank drew the same value and keeps its own chunk
            assert tuple(p.placements) == (Shard(0),), p.placements
            chunks = value.chunk(p.device_mesh.size(), dim=0)
            rank = p.device_mesh.get_local_rank()
            local = p.to_local()
            if rank < len(chunks):
                local.copy_(chunks[rank])
            else:
                assert local.numel() == 0
        else:
            p.copy_(value)
    model.init_buffers()


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


def full_state(model, optimizer, info):
    """(weights, optimizer state) in the single-process layout for rank 0 of a DDP run (or a single process) to
    save; (None, None) on the other ranks, whose copies are the same. FSDP runs save sharded (sharded_state)."""
    if not info.is_master:
        return None, None
    return model.state_dict(), optimizer.state_dict()


def sharded_state(model, optimizer):
    """An FSDP run's ({'model': weights, 'optimizer': optimizer tensors}, optimizer param_groups): each rank's
    shards (DTensors), keyed by parameter name, for torch.distributed.checkpoint. Nothing is gathered."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    optim = get_optimizer_state_dict(model, optimizer)
    return {"model": get_model_state_dict(model), "optimizer": optim["state"]}, optim["param_groups"]


def load_sharded_state(model, optimizer, param_groups, read, with_model):
    """Fill the optimizer (and, with_model, the model: an FSDP run) from a sharded checkpoint. read(tensors) fills
    a state dict of this run's tensors in place: DTensor shards under FSDP, whole tensors otherwise, so a checkpoint
    saved on any number of ranks resumes on any other."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    tensors = {"optimizer": get_optimizer_state_dict(model, optimizer)["state"]}  # creates the state to fill
    if with_model:
        tensors["model"] = get_model_state_dict(model)
    read(tensors)
    if with_model:
        set_model_state_dict(model, tensors["model"])
    set_optimizer_state_dict(model, optimizer, {"state": tensors["optimizer"], "param_groups": param_groups})


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


def _by_name(indexed, names):
    return {
        "state": {names[i]: s for i, s in indexed["state"].items()},
        "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in indexed["param_groups"]],
    }
