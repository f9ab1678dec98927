"""Every byte written to or read from a run's out_dir.

Layout of out_dir:
  ckpt.pt          the latest weights, model_args, iter_num, best_val_loss, config and tokenizer (nanoGPT's keys)
  best.pt          the weights with the best validation loss so far
  optim-NNNNNN.pt  optimizer (and float16 GradScaler) state for the iteration ckpt.pt names; sampling and export
                   never read it. No RNG state is needed: batches and dropout are seeded per step

Every file is written to a temporary name, fsynced and renamed, so a crash at any moment leaves the previous
checkpoint or the new one, never a torn file. ckpt.pt is renamed into place after its optimizer file, and older
optimizer files are removed only after that, so ckpt.pt always points at an optimizer file that exists.

Loading uses torch.load(weights_only=True): a checkpoint that would run code when unpickled is refused.
"""

import os
import pickle
from pathlib import Path

import torch

from nanogpt.errors import UserError

LATEST = "ckpt.pt"
BEST = "best.pt"
COMPILE_PREFIX = "_orig_mod."  # torch.compile wraps the module and prefixes its state_dict keys


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
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename is durable only once the directory entry is on disk
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {e.strerror}; the previous checkpoint is intact") from None


def fsync_path(path):
    """Flush a file, or a folder's entries, to disk by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_path(out_dir, which="latest"):
    out_dir = Path(out_dir)
    path = out_dir / (LATEST if which == "latest" else BEST)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one first, or check --out_dir")
    return path


def load_file(path, map_location="cpu"):
    """torch.load with weights_only=True, turning every failure into a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one first, or check --out_dir")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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
    """The weights and metadata of a run's checkpoint, with torch.compile's key prefix removed.
    Accepts checkpoints written by upstream nanoGPT's train.py too."""
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
