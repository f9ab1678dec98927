"""Every byte written to or read from a run's out_dir.

Layout of out_dir:
  ckpt.pt          the latest weights, model_args, iter_num, best_val_loss, config and tokenizer (nanoGPT's keys);
                   model_args holds only the settings upstream nanoGPT's GPTConfig takes, so its sample.py reads
                   our checkpoints; the other model settings are in model_extra
  best.pt          the weights with the best validation loss so far
  optim-NNNNNN.pt  optimizer (and float16 GradScaler) state for the iteration ckpt.pt names; sampling and export
                   never read it. No RNG state is needed: batches and dropout are seeded per step

Every file is written to a temporary name, fsynced and renamed, so a crash at any moment leaves the previous
checkpoint or the new one, never a torn file. ckpt.pt is renamed into place after its optimizer file, and older
optimizer files are removed only after that, so ckpt.pt always points at an optimizer file that exists.

Loading uses torch.load(weights_only=True): a checkpoint that would run code when unpickled is refused.
"""

import pickle
from dataclasses import fields
from pathlib import Path

import torch

from nanogpt.errors import UserError
from nanogpt.files import write_atomically
from nanogpt.model import GPT, GPTConfig

LATEST = "ckpt.pt"
BEST = "best.pt"
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
    # a process killed mid-save leaves a .tmp behind, and older optimizer files are stale now
    for old in [*out_dir.glob("optim-*.pt"), *out_dir.glob("optim-*.pt.tmp")]:
        if old.name != optim_name:
            old.unlink(missing_ok=True)


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


def load_checkpoint(out_dir, which="latest", map_location="cpu"):
    """The weights and metadata of a run's checkpoint (which: see checkpoint_path), with torch.compile's key
    prefix removed. Accepts checkpoints written by upstream nanoGPT's train.py too."""
    path = checkpoint_path(out_dir, which)
    ckpt = load_file(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks 'model' or 'model_args'")
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
