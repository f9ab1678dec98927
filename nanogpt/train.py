"""The training loop: nanoGPT's train.py as a function of a TrainConfig.

One process, or one of many under torchrun (DDP or FSDP, see distributed.py). Each optimizer step runs
gradient_accumulation_steps micro-batches in total, split evenly over the ranks; the batch of every step is a pure
function of the seed and the step number (see data.py), and so are the dropout draws, so an interrupted and resumed
run computes exactly what a straight run computes.
"""

import math
import os
import signal
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nanogpt import checkpoint
from nanogpt.config import TrainConfig, validate
from nanogpt.data import EVAL_TRAIN_STREAM, EVAL_VAL_STREAM, TRAIN_STREAM, Dataset, batch_offsets, move_batch
from nanogpt.distributed import (
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

GPT2_VOCAB_SIZE = 50257
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout", "gelu_approximate")
# model args that are not training settings, with the value for checkpoints written before they existed
MODEL_ONLY_ARGS = {"gelu_approximate": "none"}


def resolve_device(name):
    """'auto' -> the best device here; otherwise check the named one exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but no CUDA GPU is available here: use --device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but Apple's MPS is not available here: use --device=cpu")
    return name


def resolve_dtype(name, device_type):
    """'auto' -> bfloat16 where the GPU supports it, float16 on older GPUs, float32 elsewhere."""
    if name == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if name == "float16" and device_type == "cpu":
        raise UserError("float16 training is not supported on the CPU: use --dtype=float32 or --dtype=bfloat16")
    return name


def resolve_compile(value, device_type):
    # torch.compile pays for its start-up time on CUDA; on CPU and MPS it rarely does for small models
    return device_type == "cuda" if value == "auto" else value


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


def train(cfg: TrainConfig, log=print):
    """Train (or evaluate) as cfg says. Returns a TrainResult; raises UserError for bad input."""
    validate(cfg)
    device = resolve_device(cfg.device)
    dinfo, device = init_distributed(cfg.backend, device)
    try:
        with StopRequest() as stop:
            return _train(cfg, device, dinfo, stop, log if dinfo.is_master else (lambda *a, **k: None))
    finally:
        shutdown(dinfo)
        finish_wandb()


def _train(cfg, device, dinfo, stop, log):
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = resolve_dtype(cfg.dtype, device_type)
    if device_type == "cuda":
        # TF32 matmuls: float32 range with ~10-bit mantissa, several times faster on Ampere and later
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.gradient_accumulation_steps % dinfo.world_size != 0:
        raise UserError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by the number of "
            f"processes ({dinfo.world_size})"
        )
    if uses_fsdp(cfg, dinfo) and dtype == "float16":
        raise UserError("parallelism='fsdp' does not support float16's gradient scaling: use --dtype=bfloat16")
    accum = cfg.gradient_accumulation_steps // dinfo.world_size
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    log(f"tokens per iteration will be: {tokens_per_iter:,}")

    dataset = Dataset(Path(cfg.data_dir) / cfg.dataset)
    dataset.check_block_size(cfg.block_size)
    out_dir = Path(cfg.out_dir)
    check_out_dir(cfg, out_dir)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    raw_model, ckpt = build_model(cfg, dataset, out_dir, log)
    raw_model.to(device)
    iter_num = ckpt["iter_num"] if ckpt else 0
    # float(): upstream nanoGPT saves it as a 0-dim tensor
    best_val_loss = float(ckpt["best_val_loss"]) if ckpt else float("inf")
    compile_model = resolve_compile(cfg.compile, device_type)
    if compile_model:
        log("compiling the model... (takes a ~minute)")
    # the weights are loaded before parallelize: under FSDP each rank then keeps its shard of them
    model = parallelize(raw_model, cfg, dinfo, device, compile_model)

    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                               device_type)
    if ckpt:
        state = checkpoint.load_optimizer_state(out_dir, ckpt)
        if state is not None:
            load_optimizer_state(raw_model, optimizer, state["optimizer"], cfg, dinfo)
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
    ckpt = state = None  # free the loaded tensors

    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast = nullcontext() if dtype == "float32" else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
    tokenizer_meta = {k: v for k, v in dataset.meta.items() if k != "dtype"}

    def train_batch(step, micro_step):
        offsets = batch_offsets(cfg.seed, TRAIN_STREAM, step, cfg.gradient_accumulation_steps * cfg.batch_size,
                                dataset.lengths["train"], cfg.block_size)
        index = dinfo.rank * accum + micro_step
        mine = offsets[index * cfg.batch_size:(index + 1) * cfg.batch_size]
        return move_batch(*dataset.batch("train", mine, cfg.block_size), torch.device(device))

    @torch.no_grad()
    def estimate_loss():
        # every rank evaluates the same batches (under FSDP each forward gathers the weights collectively)
        raw_model.eval()
        out = {}
        for split, stream in (("train", EVAL_TRAIN_STREAM), ("val", EVAL_VAL_STREAM)):
            offsets = batch_offsets(cfg.seed, stream, iter_num, cfg.eval_iters * cfg.batch_size,
                                    dataset.lengths[split], cfg.block_size)
            losses = torch.zeros(cfg.eval_iters)
            for k in range(cfg.eval_iters):
                x, y = dataset.batch(split, offsets[k * cfg.batch_size:(k + 1) * cfg.batch_size], cfg.block_size)
                with autocast:
                    _, loss = raw_model(*move_batch(x, y, torch.device(device)))
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        raw_model.train()
        return out

    saved_iter = iter_num if cfg.init_from == "resume" else None  # the iteration out_dir's checkpoint holds

    def save(is_best):
        """Checkpoint this iteration. Called on every rank (FSDP gathers collectively); rank 0 writes."""
        nonlocal saved_iter
        weights, optimizer_state = full_state(raw_model, optimizer, cfg, dinfo)
        saved_iter = iter_num
        if not dinfo.is_master:
            return
        state = {
            "model": weights,
            "model_args": {k: getattr(raw_model.config, k) for k in MODEL_ARGS},
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "config": cfg.to_dict(),
            "tokenizer": tokenizer_meta,
        }
        training_state = {"optimizer": optimizer_state, "scaler": scaler.state_dict(), "iter_num": iter_num}
        checkpoint.save_checkpoint(out_dir, state, training_state, is_best)
        log(f"saving checkpoint to {out_dir}")

    def nonfinite(what, value):
        """A nan/inf loss or gradient norm: skip the step (skip_nonfinite) or stop with the checkpoint intact.
        Every rank sees the same value, so all take the same branch."""
        optimizer.zero_grad(set_to_none=True)
        if cfg.skip_nonfinite:
            log(f"iter {iter_num}: {what} is {value}; skipping this step (skip_nonfinite=True), weights unchanged")
            return
        raise UserError(
            f"{what} became {value} at iteration {iter_num}; stopped, the last checkpoint in {out_dir} is intact. "
            "Lower --learning_rate, check the data, or pass --skip_nonfinite=True to skip such steps"
        )

    result = TrainResult(iter_num=iter_num, best_val_loss=best_val_loss)
    local_iter = 0
    running_mfu = -1.0
    x, y = train_batch(iter_num, 0)
    t0 = time.time()
    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        last_iteration = iter_num >= cfg.max_iters
        if iter_num % cfg.eval_interval == 0 or last_iteration or cfg.eval_only:
            losses = estimate_loss()
            result.last_losses = losses
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if not cfg.eval_only and not math.isfinite(losses["val"]):
                raise UserError(
                    f"the val loss became {losses['val']} at iteration {iter_num}; stopped, the last checkpoint in "
                    f"{out_dir} is intact. Lower --learning_rate, or check the data"
                )
            improved = losses["val"] < best_val_loss
            if improved:
                best_val_loss = losses["val"]
            # a run that trained always ends with a checkpoint of its last iteration, so it can be resumed exactly;
            # in between, only improvements are saved unless always_save_checkpoint
            trained = local_iter > 0 and not cfg.eval_only
            if trained and (improved or cfg.always_save_checkpoint or last_iteration):
                save(is_best=improved)
            if cfg.wandb_log and dinfo.is_master:
                wandb_log(cfg, iter_num, losses, lr, running_mfu)
        if cfg.eval_only or last_iteration:
            break
        if stop_requested(stop, dinfo, device):
            log(f"stop requested at iteration {iter_num}: saving a checkpoint and exiting")
            if local_iter > 0 and saved_iter != iter_num:
                save(is_best=False)
            result.stopped_by_signal = True
            break

        # dropout's random draws are a function of (seed, rank, step) too, so a resumed run repeats them exactly
        seed_dropout(step_seed(cfg.seed, dinfo.rank, iter_num), device_type)
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(accum):
            if dinfo.enabled:
                set_gradient_sync(model, micro_step == accum - 1)
            with autocast:
                _, loss = model(x, y)
                loss = loss / accum
            loss_sum += loss.detach()
            # draw the next batch while the device works on this one
            x, y = train_batch(iter_num + (micro_step + 1) // accum, (micro_step + 1) % accum)
            scaler.scale(loss).backward()

        # the mean over the global batch: each rank's mean over its micro-steps, averaged over the ranks
        loss_value = all_reduce_mean(loss_sum.item(), dinfo, device)
        skipped = not math.isfinite(loss_value)
        if skipped:
            nonfinite("the loss", loss_value)
        elif cfg.grad_clip != 0.0:
            scaler.unscale_(optimizer)
            grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)).item()
            # under float16 the scaler itself skips steps with inf gradients and lowers its scale
            if not scaler.is_enabled() and not math.isfinite(grad_norm):
                skipped = True
                nonfinite("the gradient norm", grad_norm)
        if not skipped:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % cfg.log_interval == 0 and not skipped:
            if local_iter >= 5:  # let the training loop settle first
                # this process's share of the work against one device's peak
                mfu = raw_model.estimate_mfu(cfg.batch_size * accum, dt)
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            result.ms_per_iter.append(dt * 1000)
            result.train_losses[iter_num] = loss_value
            log(
                f"iter {iter_num}: loss {loss_value:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%, "
                f"tok/s {tokens_per_iter / dt:.0f}, lr {lr:.3e}"
            )
        iter_num += 1
        local_iter += 1

    result.iter_num = iter_num
    result.best_val_loss = best_val_loss
    if result.ms_per_iter:
        log(f"done: {iter_num} iterations, median {statistics.median(result.ms_per_iter):.2f}ms/iter")
    return result


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
        model_args = {k: getattr(cfg, k) for k in MODEL_ARGS if k != "vocab_size" and k not in MODEL_ONLY_ARGS}
        model = GPT(GPTConfig(vocab_size=vocab_size, **model_args))
        return model, None
    if cfg.init_from == "resume":
        log(f"resuming training from {out_dir}")
        ckpt = checkpoint.load_checkpoint(out_dir)
        model_args = dict(MODEL_ONLY_ARGS, **ckpt["model_args"])
        # architecture comes from the checkpoint; dropout may be changed when resuming
        model_args["dropout"] = cfg.dropout
        model = GPT(GPTConfig(**{k: model_args[k] for k in MODEL_ARGS}))
        load_weights(model, ckpt["model"], out_dir)
        fit_to_dataset(model, dataset, cfg.block_size, "the checkpoint")
        return model, ckpt
    from nanogpt import hf  # safetensors and huggingface_hub are needed only here

    log(f"initializing from pretrained weights {cfg.init_from} (dropout {cfg.dropout})")
    model = hf.from_pretrained(cfg.init_from, {"dropout": cfg.dropout})
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


def step_seed(seed, rank, step):
    """A seed for the dropout draws of one rank at one step."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_dropout(seed, device_type):
    """Seed the generators dropout draws from: this device's only (torch.manual_seed also walks every backend,
    which costs more than the seeding itself at every step)."""
    torch.default_generator.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)


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

