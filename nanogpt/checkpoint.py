"""Every byte written to or read from a run's out_dir.

Layout of out_dir:
  ckpt.pt          the latest weights, model_args, iter_num, best_val_loss, config and tokenizer (nanoGPT's keys);
                   model_args holds only the settings upstream nanoGPT's GPTConfig takes, so its sample.py reads
                   our checkpoints; the other model settings are in model_extra
  best.pt          the weights with the best validation loss so far
  optim-NNNNNN.pt  optimizer (and float16 GradScaler) state for the iteration ckpt.pt names; sampling and export
                   never read it. No RNG state is needed: batches and dropout are seeded per step
  sharded-NNNNNN/  FSDP runs only: the weights and optimizer state of iteration NNNNNN, each rank's shards in its
                   own file (torch.distributed.checkpoint, "DCP"), never gathered on one rank. ckpt.pt (and best.pt)
                   then hold the metadata and name the folder ('sharded') instead of holding 'model'. The folder is
                   written as sharded-NNNNNN.tmp/ and renamed into place when every rank has written its part, so a
                   killed run leaves the previous checkpoint whole. load_checkpoint reads such a run's weights whole
                   on any number of processes (sample, export, eval, a DDP or single-process resume); an FSDP
                   resume reads each rank's share (read_sharded), on any number of ranks

Every file is written to a temporary name, fsynced and renamed, so a crash at any moment leaves the previous
checkpoint or the new one, never a torn file. ckpt.pt is renamed into place after its optimizer file, and older
optimizer files are removed only after that, so ckpt.pt always points at an optimizer file that exists.

Loading uses torch.load(weights_only=True): a checkpoint that would run code when unpickled is refused. DCP's own
reader unpickles a sharded folder's .metadata with plain pickle, and its non-tensor entries with
weights_only=False: here the metadata goes through an unpickler that accepts only DCP's metadata classes and plain
values, and non-tensor entries are refused (ours hold none).
"""

import os
import pickle
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import torch

from nanogpt.errors import UserError
from nanogpt.files import fsync_path, write_atomically
from nanogpt.model import GPT, GPTConfig

LATEST = "ckpt.pt"
BEST = "best.pt"
SHARDED = "sharded-"  # the prefix of an FSDP run's DCP folders
COMPILE_PREFIX = "_orig_mod."  # torch.compile wraps the module and prefixes its state_dict keys
# the GPTConfig fields of upstream nanoGPT, which its sample.py passes to its own GPTConfig(**model_args)
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def save_checkpoint(out_dir, state, optimizer_state, is_best):
    """Write the latest checkpoint (and best.pt when is_best) atomically. `state` holds the weights and
    metadata; `optimizer_state` the optimizer state that resuming needs."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create out_dir {out_dir}: {e.strerror}") from None
    optim_name = f"optim-{state['iter_num']:06d}.pt"
    _save_atomically(optimizer_state, out_dir / optim_name)
    _save_atomically(dict(state, optimizer_file=optim_name), out_dir / LATEST)
    if is_best:
        _save_atomically(state, out_dir / BEST)
    # a process killed mid-save leaves a .tmp behind, and older optimizer files (and sharded folders of an earlier
    # FSDP session that best.pt does not name) are stale now
    keep = _referenced(out_dir)
    for old in [*out_dir.glob("optim-*.pt"), *out_dir.glob("optim-*.pt.tmp"), *out_dir.glob(f"{SHARDED}*")]:
        if old.name not in keep:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)


def _save_atomically(obj, path):
    write_atomically(path, lambda f: torch.save(obj, f), "checkpoint")


def model_settings(config):
    """(model_args, model_extra) to save for a GPTConfig: upstream nanoGPT's keys, and all the others."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    return {k: values[k] for k in MODEL_ARGS}, {k: v for k, v in values.items() if k not in MODEL_ARGS}


def gpt_config(ckpt, source, **overrides):
    """The GPTConfig a checkpoint was trained with (older checkpoints of ours kept every setting in model_args)."""
    values = {**ckpt["model_args"], **(ckpt.get("model_extra") or {}), **overrides}
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"checkpoint {source} has model setting '{unknown[0]}' that this version does not know")
    return GPTConfig(**values)


def load_weights(model, state_dict, source):
    """Load a state dict, naming the first tensor whose shape or name does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise UserError(f"checkpoint {source} lacks tensor '{missing[0]}' that this model needs")
    for k, v in state_dict.items():
        if k not in own:
            raise UserError(f"checkpoint {source} has tensor '{k}' that this model does not")
        if own[k].shape != v.shape:
            raise UserError(
                f"checkpoint {source}: tensor '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state_dict)


def load_model(ckpt, source, **overrides):
    """The GPT a loaded checkpoint holds, with its weights."""
    model = GPT(gpt_config(ckpt, source, **overrides))
    load_weights(model, ckpt["model"], source)
    return model


def checkpoint_path(out_dir, which="latest"):
    """The file of a run's checkpoint: which is 'latest' (ckpt.pt), 'best' (best.pt) or 'auto': the one upstream
    nanoGPT would have kept, the best for a run with always_save_checkpoint=False and the latest otherwise."""
    out_dir = Path(out_dir)
    if which == "auto":
        which = "best" if (out_dir / BEST).is_file() and not _always_saved(out_dir / LATEST) else "latest"
    path = out_dir / (LATEST if which == "latest" else BEST)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one first, or check --out_dir")
    return path


def _always_saved(latest):
    """Whether the run behind a ckpt.pt trained with always_save_checkpoint (the default, as in nanoGPT)."""
    ckpt = load_file(latest, mmap=True)  # mmap: only the small config is read, not the weights
    return bool((ckpt.get("config") or {}).get("always_save_checkpoint", True)) if isinstance(ckpt, dict) else True


def load_file(path, map_location="cpu", mmap=False):
    """torch.load with weights_only=True, turning every failure into a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one first, or check --out_dir")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "Unsupported global" in str(e) or "weights_only" in str(e):
            raise UserError(
                f"refused to load {path}: it holds Python objects that could run code when loaded, not only "
                "tensors and plain values. Only load checkpoints from sources you trust, and convert them first"
            ) from None
        raise UserError(f"{path} is not a valid checkpoint ({first_line}); it may be truncated or corrupt") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a valid checkpoint ({reason}); it may be truncated or corrupt") from None


def load_checkpoint(out_dir, which="latest", map_location="cpu", weights=True):
    """The weights and metadata of a run's checkpoint (which: see checkpoint_path), with torch.compile's key
    prefix removed. Accepts checkpoints written by upstream nanoGPT's train.py too. A sharded (FSDP) run's weights
    are read whole from its folder, unless weights=False (an FSDP resume reads each rank's share itself)."""
    path = checkpoint_path(out_dir, which)
    ckpt = load_file(path, map_location)
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or ("model" not in ckpt and "sharded" not in ckpt):
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks 'model' or 'model_args'")
    if "sharded" in ckpt:
        if weights:
            ckpt["model"] = read_sharded_whole(sharded_folder(out_dir, ckpt), "model")
        return ckpt
    ckpt["model"] = strip_compile_prefix(ckpt["model"])
    return ckpt


def load_optimizer_state(out_dir, ckpt, map_location="cpu"):
    """The optimizer state paired with ckpt: its optim file, or the 'optimizer' key of an upstream
    nanoGPT checkpoint, which keeps everything in one file."""
    if "optimizer" in ckpt:
        return {"optimizer": ckpt["optimizer"]}
    name = ckpt.get("optimizer_file")
    if name is None:
        return None
    path = Path(out_dir) / name
    if not path.is_file():
        raise UserError(
            f"{LATEST} in {out_dir} names the optimizer state {name}, which is missing: resuming needs it "
            "(sampling does not); restore it, or start a new run from these weights"
        )
    state = load_file(path, map_location)
    if not isinstance(state, dict) or "optimizer" not in state or state.get("iter_num") != ckpt["iter_num"]:
        raise UserError(f"{path} does not belong to {LATEST} in {out_dir} (not its iteration's optimizer state)")
    return state


def strip_compile_prefix(state_dict):
    return {(k[len(COMPILE_PREFIX):] if k.startswith(COMPILE_PREFIX) else k): v for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------ sharded (FSDP) checkpoints


def save_sharded(out_dir, state, tensors, is_best):
    """Write an FSDP run's checkpoint: `tensors` ({'model': ..., 'optimizer': ...}, each rank's shards) into a
    DCP folder, committed by renaming it into place, then ckpt.pt (and best.pt) naming it. Every rank calls this;
    rank 0 renames and writes the small files. out_dir must be one folder that every rank sees (shared storage
    across nodes)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    out_dir = Path(out_dir)
    master = dist.get_rank() == 0
    name = f"{SHARDED}{state['iter_num']:06d}"
    final, tmp = out_dir / name, out_dir / f"{name}.tmp"
    if master:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create out_dir {out_dir}: {e.strerror}") from None
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
        if final.exists() and name not in _referenced(out_dir):
            shutil.rmtree(final)  # written by a run killed before its ckpt.pt named it
    dist.barrier()
    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True))
    dist.barrier()  # every rank's files are on disk
    if master:
        if not final.exists():  # (a checkpoint of this very iteration is already committed otherwise)
            os.replace(tmp, final)
            fsync_path(out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        _save_atomically(dict(state, sharded=name), out_dir / LATEST)
        if is_best:
            _save_atomically(dict(state, sharded=name), out_dir / BEST)
        keep = _referenced(out_dir)
        for old in [*out_dir.glob(f"{SHARDED}*"), *out_dir.glob("optim-*.pt*")]:
            if old.name not in keep:
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    dist.barrier()  # no rank goes on (and may save again) before the checkpoint is committed


def _referenced(out_dir):
    """The sharded folders and optimizer files ckpt.pt and best.pt name."""
    names = set()
    for f in (LATEST, BEST):
        if (out_dir / f).is_file():
            ckpt = load_file(out_dir / f, mmap=True)
            names.update(ckpt.get(k) for k in ("sharded", "optimizer_file") if isinstance(ckpt, dict))
    return names - {None}


def sharded_folder(out_dir, ckpt):
    folder = Path(out_dir) / ckpt["sharded"]
    if not (folder / ".metadata").is_file():
        raise UserError(f"the checkpoint in {out_dir} names the sharded folder {folder}, which is missing or "
                        "incomplete: restore it, or start a new run")
    return folder


def read_sharded(folder, tensors, whole=False):
    """Fill `tensors` (a state dict of this rank's DTensor shards, or of whole tensors) from a DCP folder, in
    place. whole: read without a process group, every process on its own (the whole tensors)."""
    import torch.distributed.checkpoint as dcp

    with _read_errors(folder), warnings.catch_warnings():
        # DCP warns that it reads "in a single process" when no process group is up: that is the point here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(tensors, storage_reader=_safe_reader(folder), planner=_safe_load_planner(), no_dist=whole)


@contextmanager
def _read_errors(folder):
    """Turn what reading a DCP folder raises into one-line UserErrors."""
    import torch.distributed.checkpoint as dcp

    try:
        yield
    except (pickle.UnpicklingError, RuntimeError, ValueError, OSError, KeyError, dcp.api.CheckpointException) as e:
        # DCP reports a failure on any rank as a CheckpointException holding each rank's error
        if "refused" in str(e):
            raise UserError(f"refused to load {folder}: it holds Python objects that could run code when loaded, "
                            "not only tensors and plain values. Only load checkpoints from sources you trust") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{folder} is not a valid sharded checkpoint ({reason}); it may be truncated or "
                        "corrupt") from None


def read_sharded_whole(folder, part):
    """One part of a DCP folder ('model' or 'optimizer'), as whole tensors on the CPU, keyed as saved."""
    import torch.distributed.checkpoint as dcp

    with _read_errors(folder):
        metadata = _safe_reader(folder).read_metadata()
    prefix = f"{part}."
    template = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(meta, dcp.metadata.TensorStorageMetadata):
            template[key[len(prefix):]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not template:
        raise UserError(f"{folder} holds no '{part}' tensors: it is not a sharded nanoGPT checkpoint")
    state = {part: template}
    read_sharded(folder, state, whole=True)
    return state[part]


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's .metadata: its own dataclasses, torch sizes, dtypes and layouts, plain values; any other
    global (os.system, ...) is refused before it can run."""

    ALLOWED = {
        ("torch.distributed.checkpoint.metadata", name)
        for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                     "TensorProperties", "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING")
    } | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
         ("torch.serialization", "_get_layout"),  # a lookup of torch.strided and friends by name
         ("pathlib", "PosixPath"), ("pathlib._local", "PosixPath"),  # where a shard's file lives (a path)
         ("collections", "OrderedDict")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused: its metadata names {module}.{name}, which could run code")


def _safe_reader(folder):
    """DCP's file reader, its .metadata read through _MetadataUnpickler (DCP's is a plain pickle.load). Built on
    call: importing torch.distributed.checkpoint costs time that sampling a plain checkpoint need not pay."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            path = Path(self.path) / ".metadata"
            try:
                with open(path, "rb") as f:
                    metadata = _MetadataUnpickler(f).load()
            except FileNotFoundError:
                raise UserError(f"no sharded checkpoint at {self.path}: it lacks its .metadata file") from None
            if not isinstance(metadata, dcp.metadata.Metadata):
                raise pickle.UnpicklingError("refused: its metadata is not DCP's Metadata")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def _safe_load_planner():
    """DCP's default load planner, refusing non-tensor entries: ours holds only tensors (settings such as the
    optimizer's param_groups live in ckpt.pt), and DCP would unpickle those with weights_only=False."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            raise pickle.UnpicklingError(f"refused: entry '{read_item.dest_index.fqn}' is not a tensor")

    return SafeLoadPlanner()
