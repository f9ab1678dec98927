"""The training loop: nanoGPT's train.py as a function of a TrainConfig.

One process, or one of many under torchrun (DDP or FSDP, see distributed.py). Each optimizer step runs
gradient_accumulation_steps micro-batches in total, split evenly over the ranks; the batch of every step is a pure
function of the seed and the step number (see data.py), and so are the dropout draws, so an interrupted and resumed
run computes exactly what a straight run computes.

Read it in this order: `train` (the entry), `run_loop` (the loop, on one screen), then the pieces it calls:
`set_up` builds a Session (model, optimizer, data, where we are), `optimizer_step` runs one step's micro-batches,
`evaluate` estimates the losses and decides what to save, `save` writes a checkpoint.
"""

import math
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nanogpt import checkpoint, runtime
from nanogpt.bpe import VOCAB_SIZE as GPT2_VOCAB_SIZE
from nanogpt.config import TrainConfig, validate
from nanogpt.data import EVAL_TRAIN_STREAM, EVAL_VAL_STREAM, TRAIN_STREAM, Dataset, batch_offsets, move_batch
from nanogpt.distributed import (
    Dist,
    all_reduce_mean,
    full_state,
    full_tensor,
    init_distributed,
    load_optimizer_state,
    parallelize,
    set_gradient_sync,
    shutdown,
    uses_fsdp,
)
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig


def get_lr(it, cfg):
    """Linear warmup for warmup_iters, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def padded_vocab_size(vocab_size):
    # GPT-2's 50257 rounded up to a multiple of 64 (50304) runs markedly faster on GPUs; tiny char vocabularies
    # are kept exact, as in nanoGPT
    return vocab_size if vocab_size < 1024 else 64 * math.ceil(vocab_size / 64)


class StopRequest:
    """Records SIGTERM/SIGINT so the loop can save a checkpoint and exit at the end of the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    iter_num: int = 0
    best_val_loss: float = float("inf")
    last_losses: dict = field(default_factory=dict)  # the last train/val loss estimate
    ms_per_iter: list = field(default_factory=list)  # wall time of each logged step
    train_losses: dict = field(default_factory=dict)  # iteration -> logged train loss
    stopped_by_signal: bool = False


@dataclass
class Session:
    """One training run while it runs: what set_up built, and where the run is."""

    cfg: TrainConfig
    dinfo: Dist
    device: str
    dataset: Dataset
    out_dir: Path
    raw_model: GPT  # the module whose state_dict is the checkpoint
    model: torch.nn.Module  # what a step calls: raw_model compiled and/or wrapped for DDP/FSDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object  # the context manager the forward passes run in
    log: object
    iter_num: int = 0
    best_val_loss: float = float("inf")
    saved_iter: int = None  # the iteration out_dir's checkpoint holds, if this run knows it

    @property
    def device_type(self):
        return runtime.device_type(self.device)

    @property
    def micro_steps(self):
        """This rank's share of the gradient accumulation steps."""
        return self.cfg.gradient_accumulation_steps // self.dinfo.world_size


def train(cfg: TrainConfig, log=print):
    """Train (or evaluate) as cfg says. Returns a TrainResult; raises UserError for bad input."""
    validate(cfg)
    device = runtime.resolve_device(cfg.device)
    dinfo, device = init_distributed(cfg.backend, device)
    try:
        with StopRequest() as stop:
            session = set_up(cfg, device, dinfo, log if dinfo.is_master else (lambda *a, **k: None))
            return run_loop(session, stop)
    finally:
        shutdown(dinfo)
        finish_wandb()


def run_loop(s, stop):
    """nanoGPT's loop: evaluate every eval_interval (and save), stop when asked, one optimizer step, log it."""
    cfg, log = s.cfg, s.log
    result = TrainResult(iter_num=s.iter_num, best_val_loss=s.best_val_loss)
    local_iter = 0
    running_mfu = -1.0
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    batch = train_batch(s, s.iter_num, 0)
    t0 = time.time()
    while True:
        lr = get_lr(s.iter_num, cfg)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        last_iteration = s.iter_num >= cfg.max_iters
        if s.iter_num % cfg.eval_interval == 0 or last_iteration or cfg.eval_only:
            result.last_losses = evaluate(s, trained=local_iter > 0 and not cfg.eval_only, last=last_iteration)
            if cfg.wandb_log and s.dinfo.is_master:
                wandb_log(cfg, s.iter_num, result.last_losses, lr, running_mfu)
        if cfg.eval_only or last_iteration:
            break
        if stop_requested(stop, s.dinfo, s.device):
            log(f"stop requested at iteration {s.iter_num}: saving a checkpoint and exiting")
            if local_iter > 0 and s.saved_iter != s.iter_num:
                save(s, is_best=False)
            result.stopped_by_signal = True
            break

        loss, skipped, batch = optimizer_step(s, batch)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if s.iter_num % cfg.log_interval == 0 and not skipped:
            if local_iter >= 5:  # let the training loop settle first
                # this process's share of the work against one device's peak
                mfu = s.raw_model.estimate_mfu(cfg.batch_size * s.micro_steps, dt)
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            result.ms_per_iter.append(dt * 1000)
            result.train_losses[s.iter_num] = loss
            log(
                f"iter {s.iter_num}: loss {loss:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%, "
                f"tok/s {tokens_per_iter / dt:.0f}, lr {lr:.3e}"
            )
        s.iter_num += 1
        local_iter += 1

    result.iter_num, result.best_val_loss = s.iter_num, s.best_val_loss
    if result.ms_per_iter:
        log(f"done: {s.iter_num} iterations, median {statistics.median(result.ms_per_iter):.2f}ms/iter")
    return result


# ------------------------------------------------------------------------------------------------------- set-up


def set_up(cfg, device, dinfo, log):
    """Check the settings against this machine, load the data and build (or resume) the model and optimizer."""
    dtype = runtime.resolve_dtype(cfg.dtype, runtime.device_type(device))
    runtime.prepare_device(runtime.device_type(device))
    check_parallel_settings(cfg, dinfo, dtype)
    log(f"tokens per iteration will be: {cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size:,}")

    dataset = Dataset(Path(cfg.data_dir) / cfg.dataset)
    dataset.check_block_size(cfg.block_size)
    out_dir = Path(cfg.out_dir)
    check_out_dir(cfg, out_dir)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    raw_model, ckpt = build_model(cfg, dataset, out_dir, log)
    raw_model.to(device)
    compile_model = runtime.resolve_compile(cfg.compile, runtime.device_type(device))
    if compile_model:
        log("compiling the model... (takes a ~minute)")
    # the weights are loaded before parallelize: under FSDP each rank then keeps its shard of them
    model = parallelize(raw_model, cfg, dinfo, device, compile_model)
    scaler = torch.amp.GradScaler(runtime.device_type(device), enabled=(dtype == "float16"))
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                               runtime.device_type(device))
    s = Session(cfg, dinfo, device, dataset, out_dir, raw_model, model, optimizer, scaler,
                runtime.autocast(runtime.device_type(device), dtype), log)
    if ckpt:
        restore_training_state(s, ckpt)
    return s


def check_parallel_settings(cfg, dinfo, dtype):
    if cfg.gradient_accumulation_steps % dinfo.world_size != 0:
        raise UserError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by the number of "
            f"processes ({dinfo.world_size})"
        )
    if uses_fsdp(cfg, dinfo) and dtype == "float16":
        raise UserError("parallelism='fsdp' does not support float16's gradient scaling: use --dtype=bfloat16")


def restore_training_state(s, ckpt):
    """Continue where a checkpoint left off: its iteration, best val loss and optimizer (and scaler) state."""
    s.iter_num = s.saved_iter = ckpt["iter_num"]
    s.best_val_loss = float(ckpt["best_val_loss"])  # float(): upstream nanoGPT saves it as a 0-dim tensor
    state = checkpoint.load_optimizer_state(s.out_dir, ckpt)
    if state is not None:
        load_optimizer_state(s.raw_model, s.optimizer, state["optimizer"], s.cfg, s.dinfo)
        if "scaler" in state:
            s.scaler.load_state_dict(state["scaler"])


# ---------------------------------------------------------------------------------------------- one training step


def train_batch(s, step, micro_step):
    """This rank's (inputs, targets) for one micro-step of an optimizer step, on the device."""
    cfg = s.cfg
    offsets = batch_offsets(cfg.seed, TRAIN_STREAM, step, cfg.gradient_accumulation_steps * cfg.batch_size,
                            s.dataset.lengths["train"], cfg.block_size)
    index = s.dinfo.rank * s.micro_steps + micro_step
    mine = offsets[index * cfg.batch_size:(index + 1) * cfg.batch_size]
    return move_batch(*s.dataset.batch("train", mine, cfg.block_size), torch.device(s.device))


def optimizer_step(s, batch):
    """Forward and backward over this rank's micro-batches, then one optimizer update. Returns (the mean loss over
    the global batch, whether the update was skipped, the first batch of the next step)."""
    cfg, accum = s.cfg, s.micro_steps
    # dropout's random draws are a function of (seed, rank, step) too, so a resumed run repeats them exactly
    seed_dropout(step_seed(cfg.seed, s.dinfo.rank, s.iter_num), s.device_type)
    loss_sum = torch.zeros((), device=s.device)
    for micro_step in range(accum):
        if s.dinfo.enabled:
            set_gradient_sync(s.model, micro_step == accum - 1)
        with s.autocast:
            _, loss = s.model(*batch)
            loss = loss / accum
        loss_sum += loss.detach()
        # draw the next batch while the device works on this one
        batch = train_batch(s, s.iter_num + (micro_step + 1) // accum, (micro_step + 1) % accum)
        s.scaler.scale(loss).backward()

    # the mean over the global batch: each rank's mean over its micro-steps, averaged over the ranks
    loss_value = all_reduce_mean(loss_sum.item(), s.dinfo, s.device)
    skipped = not math.isfinite(loss_value)
    if skipped:
        nonfinite(s, "the loss", loss_value)
    elif cfg.grad_clip != 0.0:
        s.scaler.unscale_(s.optimizer)
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)).item()
        # under float16 the scaler itself skips steps with inf gradients and lowers its scale
        if not s.scaler.is_enabled() and not math.isfinite(grad_norm):
            skipped = True
            nonfinite(s, "the gradient norm", grad_norm)
    if not skipped:
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.optimizer.zero_grad(set_to_none=True)
    return loss_value, skipped, batch


def nonfinite(s, what, value):
    """A nan/inf loss or gradient norm: skip the step (skip_nonfinite) or stop with the checkpoint intact.
    Every rank sees the same value, so all take the same branch."""
    s.optimizer.zero_grad(set_to_none=True)
    if s.cfg.skip_nonfinite:
        s.log(f"iter {s.iter_num}: {what} is {value}; skipping this step (skip_nonfinite=True), weights unchanged")
        return
    raise UserError(
        f"{what} became {value} at iteration {s.iter_num}; stopped, the last checkpoint in {s.out_dir} is intact. "
        "Lower --learning_rate, check the data, or pass --skip_nonfinite=True to skip such steps"
    )


def step_seed(seed, rank, step):
    """A seed for the dropout draws of one rank at one step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_dropout(seed, device_type):
    """Seed the generators dropout draws from: this device's only (torch.manual_seed also walks every backend,
    which costs more than the seeding itself at every step)."""
    torch.default_generator.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)


# ---------------------------------------------------------------------------------------- evaluation and saving


def evaluate(s, trained, last):
    """Estimate the losses, log them, and save a checkpoint if this run trained and the val loss improved (or
    always_save_checkpoint, or this is the run's last iteration). Returns the losses."""
    losses = estimate_loss(s)
    s.log(f"step {s.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    if not s.cfg.eval_only and not math.isfinite(losses["val"]):
        raise UserError(
            f"the val loss became {losses['val']} at iteration {s.iter_num}; stopped, the last checkpoint in "
            f"{s.out_dir} is intact. Lower --learning_rate, or check the data"
        )
    improved = losses["val"] < s.best_val_loss
    if improved:
        s.best_val_loss = losses["val"]
    # a run that trained always ends with a checkpoint of its last iteration, so it can be resumed exactly;
    # in between, only improvements are saved unless always_save_checkpoint
    if trained and (improved or s.cfg.always_save_checkpoint or last):
        save(s, is_best=improved)
    return losses


@torch.no_grad()
def estimate_loss(s):
    """Mean loss over eval_iters batches of each split. Every rank evaluates the same batches (under FSDP each
    forward gathers the weights collectively)."""
    cfg = s.cfg
    s.raw_model.eval()
    out = {}
    for split, stream in (("train", EVAL_TRAIN_STREAM), ("val", EVAL_VAL_STREAM)):
        offsets = batch_offsets(cfg.seed, stream, s.iter_num, cfg.eval_iters * cfg.batch_size,
                                s.dataset.lengths[split], cfg.block_size)
        losses = torch.zeros(cfg.eval_iters)
        for k in range(cfg.eval_iters):
            x, y = s.dataset.batch(split, offsets[k * cfg.batch_size:(k + 1) * cfg.batch_size], cfg.block_size)
            with s.autocast:
                _, loss = s.raw_model(*move_batch(x, y, torch.device(s.device)))
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    s.raw_model.train()
    return out


def save(s, is_best):
    """Checkpoint this iteration. Called on every rank (FSDP gathers collectively); rank 0 writes."""
    weights, optimizer_state = full_state(s.raw_model, s.optimizer, s.cfg, s.dinfo)
    s.saved_iter = s.iter_num
    if not s.dinfo.is_master:
        return
    model_args, model_extra = checkpoint.model_settings(s.raw_model.config)
    state = {
        "model": weights,
        "model_args": model_args,
        "model_extra": model_extra,
        "iter_num": s.iter_num,
        "best_val_loss": s.best_val_loss,
        "config": s.cfg.to_dict(),
        "tokenizer": {k: v for k, v in s.dataset.meta.items() if k != "dtype"},
    }
    training_state = {"optimizer": optimizer_state, "scaler": s.scaler.state_dict(), "iter_num": s.iter_num}
    checkpoint.save_checkpoint(s.out_dir, state, training_state, is_best)
    s.log(f"saving checkpoint to {s.out_dir}")


# ------------------------------------------------------------------------------------------- model and out_dir


def check_out_dir(cfg, out_dir):
    """Refuse to start a fresh run on top of an existing one: nothing a user trained is overwritten silently."""
    if cfg.init_from == "resume" or cfg.eval_only:
        return
    existing = out_dir / checkpoint.LATEST
    if existing.exists():
        raise UserError(
            f"{out_dir} already holds a checkpoint: continue it with --init_from=resume, or pick a new --out_dir "
            f"(or delete {existing} yourself to start over)"
        )
    probe = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise UserError(f"cannot write to out_dir {out_dir}: choose a folder you can write to with --out_dir")


def build_model(cfg, dataset, out_dir, log):
    """The model to train: fresh, or from out_dir's checkpoint. Returns (model, checkpoint or None)."""
    if cfg.init_from == "scratch":
        vocab_size = padded_vocab_size(dataset.vocab_size)
        log(f"initializing a new model from scratch (vocab_size {vocab_size} from {dataset.folder})")
        model_args = {k: getattr(cfg, k) for k in checkpoint.MODEL_ARGS if k != "vocab_size"}
        model = GPT(GPTConfig(vocab_size=vocab_size, **model_args))
        return model, None
    if cfg.init_from == "resume":
        log(f"resuming training from {out_dir}")
        ckpt = checkpoint.load_checkpoint(out_dir)
        # architecture comes from the checkpoint; dropout may be changed when resuming
        model = checkpoint.load_model(ckpt, out_dir, dropout=cfg.dropout)
        fit_to_dataset(model, dataset, cfg.block_size, "the checkpoint")
        return model, ckpt
    log(f"initializing from pretrained weights {cfg.init_from} (dropout {cfg.dropout})")
    model = GPT.from_pretrained(cfg.init_from, {"dropout": cfg.dropout})
    if model.config.vocab_size >= GPT2_VOCAB_SIZE and dataset.meta.get("tokenizer") != "gpt2":
        # a GPT-2-sized vocabulary means BPE weights; character ids would index unrelated BPE embeddings
        raise UserError(
            f"dataset {dataset.folder} uses the '{dataset.meta.get('tokenizer')}' tokenizer, but {cfg.init_from} reads "
            "GPT-2 BPE tokens: prepare the text with the GPT-2 tokenizer (e.g. data/shakespeare/prepare.py)"
        )
    fit_to_dataset(model, dataset, cfg.block_size, cfg.init_from)
    return model, None


def fit_to_dataset(model, dataset, block_size, source):
    """Check that a loaded model can read the dataset's token ids at this block size, and crop its context to
    block_size (finetuning GPT-2's 1024 on shorter blocks saves memory and time)."""
    if dataset.vocab_size > model.config.vocab_size:
        raise UserError(
            f"dataset {dataset.folder} has token ids up to {dataset.vocab_size - 1}, but {source}'s vocabulary "
            f"is only {model.config.vocab_size}: train on a dataset made with the model's tokenizer"
        )
    if block_size > model.config.block_size:
        raise UserError(
            f"block_size {block_size} is longer than {source}'s context of {model.config.block_size}: "
            f"use --block_size={model.config.block_size} or less"
        )
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)


def stop_requested(stop, dinfo, device):
    """Whether any rank received SIGTERM/SIGINT; all ranks agree, so they stop at the same step."""
    if not dinfo.enabled:
        return stop.requested
    return all_reduce_mean(float(stop.requested), dinfo, device) > 0


def finish_wandb():
    """Close the Weights & Biases run, if this process started one (the entry points skip atexit handlers)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def wandb_log(cfg, iter_num, losses, lr, mfu):
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log=True needs the wandb package: pip install wandb") from None
    if wandb.run is None:
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=cfg.to_dict())
    wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
               "mfu": mfu * 100})

