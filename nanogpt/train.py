"""The training loop: nanoGPT's train.py as a function of a TrainConfig.

One process, or one of many under torchrun (DDP or FSDP, see distributed.py). Each optimizer step runs
gradient_accumulation_steps micro-batches in total, split evenly over the ranks; the batch of every step is a pure
function of the seed and the step number (see data.py), and so are the dropout draws, so an interrupted and resumed
run computes exactly what a straight run computes.

Read it in this order: `train` (the entry), `run_loop` (the loop, on one screen), then the pieces it calls:
`set_up` builds a Session (model, optimizer, data, where we are; on resume, the checkpoint's dataset and
architecture win), `forward_backward` and `update` make one optimizer step, `evaluate` estimates the losses and
decides what to save, `save` writes a checkpoint. SIGINT/SIGTERM stop the run within about a second of work at
any point (StopRequest), saving what it trained since its last checkpoint.
"""

import difflib
import math
import os
import signal
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from nanogpt import checkpoint, evaluate as tasks, runtime
from nanogpt.bpe import VOCAB_SIZE as GPT2_VOCAB_SIZE
from nanogpt.config import TrainConfig, validate
from nanogpt.data import (EVAL_TRAIN_STREAM, EVAL_VAL_STREAM, Batches, Dataset, batch_offsets, move_batch,
                          ramped_batch_size)
from nanogpt.distributed import (
    Dist,
    all_reduce_mean,
    all_reduce_sum,
    full_state,
    full_tensor,
    init_distributed,
    load_optimizer_state,
    load_sharded_state,
    on_meta,
    parallelize,
    set_gradient_sync,
    sharded_state,
    shutdown,
    uses_fsdp,
    without_ddp,
)
from nanogpt.errors import UserError
from nanogpt.metrics import MetricsWriter, format_duration
from nanogpt.model import GPT, GPTConfig
from nanogpt.optim import build_optimizer, describe_lr_rule, get_lr, set_lr, step_unless
from nanogpt.tokenizers import tokenizer_from_meta


def padded_vocab_size(vocab_size):
    # GPT-2's 50257 rounded up to a multiple of 64 (50304) runs markedly faster on GPUs; tiny char vocabularies
    # are kept exact, as in nanoGPT
    return vocab_size if vocab_size < 1024 else 64 * math.ceil(vocab_size / 64)


class StopTraining(Exception):
    """Raised to leave the loop when a stop was requested; the run then saves what it trained and ends."""


class StopRequest:
    """SIGINT/SIGTERM handling. The first signal asks the run to stop: at once where the work in hand may be
    abandoned (a forward/backward pass, an evaluation, compiling: see abandonable), otherwise as soon as the step
    in hand (the optimizer update, a checkpoint being written) is done. A second signal ends the process at once
    (KeyboardInterrupt) without saving; checkpoint files are written atomically, so none is left half-written.

    Under torchrun the ranks must stop at the same point, so there the request is only noted here, and the loop
    asks all ranks (stop_requested) between steps and between evaluation batches."""

    def __init__(self, abandon_at_once=True):
        self.requested = None  # the name of the signal that asked to stop
        self.interrupted = False  # a second signal came
        self.abandon_at_once = abandon_at_once
        self._abandonable = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            self.interrupted = True
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self._abandonable:
            raise StopTraining

    @contextmanager
    def abandonable(self):
        """Work that a stop request may interrupt: nothing it leaves half-done is saved."""
        if self.abandon_at_once:
            if self.requested:
                raise StopTraining
            self._abandonable = True
        try:
            yield
        finally:
            self._abandonable = False

    def __exit__(self, *exc):
        self._abandonable = False
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
    eval_model: torch.nn.Module  # what evaluation calls: model without the DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object  # the context manager the forward passes run in
    log: object
    peak: tuple  # (what it is of, flop/s) that MFU is measured against; None where no peak is known
    batches: Batches  # this rank's training batches, read ahead
    iter_num: int = 0
    best_val_loss: float = float("inf")
    saved_iter: int = None  # the iteration out_dir's checkpoint holds, if this run knows it
    metrics: MetricsWriter = None  # rank 0's writer of out_dir/metrics.jsonl (None on other ranks, and eval_only)
    guard: object = None  # the NonfiniteGuard of the steps since the last logging step
    compiled: bool = False  # torch.compile is on, and training has not compiled yet: a failure may fall back

    @property
    def device_type(self):
        return runtime.device_type(self.device)

    @property
    def micro_steps(self):
        """This rank's share of the gradient accumulation steps."""
        return self.cfg.gradient_accumulation_steps // self.dinfo.world_size


def train(cfg: TrainConfig, log=print, given=None):
    """Train (or evaluate) as cfg says. Returns a TrainResult; raises UserError for bad input. given: the settings
    the user set (config files and --key=value), which a resumed run must not silently override; None means every
    setting that differs from its default."""
    validate(cfg)
    device = runtime.resolve_device(cfg.device)
    dinfo, device = init_distributed(cfg.backend, device)
    try:
        with StopRequest(abandon_at_once=not dinfo.enabled) as stop:
            log = log if dinfo.is_master else (lambda *a, **k: None)
            try:
                with stop.abandonable():  # nothing is trained yet: a stop here just ends the run
                    session = set_up(cfg, device, dinfo, log, given)
            except StopTraining:
                log(f"stop requested ({stop.requested}) while setting up: exiting, nothing trained, nothing to save")
                return TrainResult(stopped_by_signal=True)
            try:
                return run_loop(session, stop)
            except Exception:
                if stop.interrupted:  # torch.save turns an interrupt in mid-write into a RuntimeError of its own
                    raise KeyboardInterrupt from None
                raise
            finally:
                session.batches.close()
                if session.metrics is not None:
                    session.metrics.close()
    finally:
        shutdown(dinfo)
        finish_wandb()


def run_loop(s, stop):
    """nanoGPT's loop: evaluate every eval_interval (and save), one optimizer step, log it; until max_iters or a
    stop request. Only logging steps (every log_interval) read values back from the device: the others queue their
    work and go on, as upstream nanoGPT's loop does."""
    cfg = s.cfg
    result = TrainResult(iter_num=s.iter_num, best_val_loss=s.best_val_loss)
    meter = StepMeter(s)
    batch = None
    try:
        while True:
            lr = set_lr(s.optimizer, s.iter_num, cfg)
            last_iteration = s.iter_num >= cfg.max_iters
            if s.iter_num % cfg.eval_interval == 0 or last_iteration or cfg.eval_only:
                result.last_losses = evaluate(s, stop, trained=meter.steps > 0 and not cfg.eval_only,
                                              last=last_iteration)
                if cfg.wandb_log and s.dinfo.is_master:
                    wandb_log(cfg, s.iter_num, result.last_losses, lr, meter.running_mfu)
            if cfg.eval_only or last_iteration:
                break
            logging = s.iter_num % cfg.log_interval == 0
            # under torchrun the ranks agree on a stop at logging steps only: a collective per step would cost more
            if (logging or not s.dinfo.enabled) and stop_requested(stop, s.dinfo, s.device):
                raise StopTraining
            with stop.abandonable():
                if s.compiled:  # the training graph compiles at the first step
                    loss, batch = compiled_or_uncompiled(s, lambda: forward_backward(s, batch))
                    s.compiled = False
                else:
                    loss, batch = forward_backward(s, batch)
            grad_norm = update(s, loss)
            if logging:
                loss_value = all_reduce_mean(loss, s.dinfo, s.device)
                skipped = s.guard.report(s)
                meter.log_step(s.iter_num, None if skipped else loss_value, lr, grad_norm, result)
            else:
                meter.tick()
            s.iter_num += 1
    except StopTraining:
        stop_and_save(s, stop, trained=meter.steps > 0)
        result.stopped_by_signal = True
    result.iter_num, result.best_val_loss = s.iter_num, s.best_val_loss
    log_summary(s, result, meter)
    return result


class StepMeter:
    """Times the steps and keeps the running MFU estimate for the `iter` log lines."""

    def __init__(self, s):
        self.s = s
        self.steps = 0  # optimizer steps this process has taken
        self.running_mfu = None  # not measured until the loop settles, nor on a device without a known peak
        self.peak = s.peak
        self.started = self.t0 = time.time()
        self.since_log = 0  # steps since the last logged one

    def tick(self):
        self.steps += 1
        self.since_log += 1

    def log_step(self, iter_num, loss, lr, grad_norm, result):
        """Log a step (loss None: the step was skipped, so only its time counts). Its time is the mean over the
        steps since the last logged one: the device runs behind the host between logging steps, and this step's
        read waited for all of them."""
        s = self.s
        self.tick()
        t1 = time.time()
        dt, self.t0 = (t1 - self.t0) / self.since_log, t1
        self.since_log = 0
        if loss is None:
            return
        grad_norm = grad_norm.item()
        # the remaining steps at this session's pace so far, evaluations included
        eta = (self.t0 - self.started) / self.steps * (s.cfg.max_iters - iter_num - 1)
        if self.steps > 5 and self.peak:  # let the training loop settle first
            # this process's share of the work against its device's peak
            mfu = s.raw_model.estimate_mfu(s.batches.size_at(iter_num) * s.micro_steps, dt, self.peak[1])
            self.running_mfu = mfu if self.running_mfu is None else 0.9 * self.running_mfu + 0.1 * mfu
        tokens_per_iter = s.batches.size_at(iter_num) * s.cfg.gradient_accumulation_steps * s.cfg.block_size
        result.ms_per_iter.append(dt * 1000)
        result.train_losses[iter_num] = loss
        s.log(
            f"iter {iter_num}: loss {loss:.4f}, time {dt * 1000:.2f}ms, mfu {format_mfu(self.running_mfu)}, "
            f"tok/s {tokens_per_iter / dt:.0f}, lr {lr:.3e}, grad norm {grad_norm:.2f}, eta {format_duration(eta)}"
        )
        if s.metrics is not None:
            s.metrics.write("iter", iter_num, loss=loss, lr=lr, tok_s=tokens_per_iter / dt, ms=dt * 1000,
                            mfu=None if self.running_mfu is None else self.running_mfu * 100, grad_norm=grad_norm,
                            tokens=tokens_seen(s.cfg, iter_num + 1))


def format_mfu(mfu):
    return "n/a" if mfu is None else f"{mfu * 100:.2f}%"


def stop_and_save(s, stop, trained):
    """A stop was requested: save the iteration reached if this run trained since its last checkpoint."""
    s.optimizer.zero_grad(set_to_none=True)  # an abandoned step's partial gradients
    s.guard.report(s)
    if trained and s.saved_iter != s.iter_num:
        s.log(f"stop requested at iteration {s.iter_num} ({stop.requested}): saving a checkpoint and exiting")
        save(s, is_best=False)
    else:
        s.log(f"stop requested at iteration {s.iter_num} ({stop.requested}): exiting, nothing trained since "
              f"{'the last checkpoint' if s.saved_iter is not None else 'the start'}, nothing to save")


def log_summary(s, result, meter):
    """One line on what the run did, where its checkpoints are, and how to sample from it."""
    if meter.steps == 0:
        return
    parts = [f"done: {s.iter_num} iterations"]
    if result.ms_per_iter:
        parts[0] += f", median {statistics.median(result.ms_per_iter):.2f}ms/iter"
    parts.append(f"{meter.steps} trained in {format_duration(time.time() - meter.started)}")
    if s.saved_iter is not None:
        best = s.out_dir / checkpoint.BEST
        if best.exists() and math.isfinite(s.best_val_loss):
            parts.append(f"best val loss {s.best_val_loss:.4f} in {best}")
        parts.append(f"last checkpoint {s.out_dir / checkpoint.LATEST} (iteration {s.saved_iter})")
        parts.append(f"sample with: python sample.py --out_dir={s.out_dir}")
    s.log("; ".join(parts))


# ------------------------------------------------------------------------------------------------------- set-up


def set_up(cfg, device, dinfo, log, given=None):
    """Check the settings against this machine, load the data and build (or resume) the model and optimizer."""
    device, _, dtype = runtime.set_up(device, cfg.dtype, threads=cfg.threads)
    check_parallel_settings(cfg, dinfo, dtype)
    if cfg.eval_only and cfg.init_from == "scratch":
        raise UserError("eval_only needs trained weights: add --init_from=resume to evaluate the run in out_dir, or "
                        "--init_from=gpt2 (or another pretrained model)")
    out_dir = Path(cfg.out_dir)
    check_out_dir(cfg, out_dir)
    ckpt = None
    if cfg.init_from == "resume":
        log(f"resuming training from {out_dir}")
        # an FSDP run reads a sharded checkpoint's weights after sharding the model, each rank its share
        ckpt = checkpoint.load_checkpoint(out_dir, weights=not uses_fsdp(cfg, dinfo))
        cfg = resumed_settings(cfg, ckpt, given, log)
    log(f"tokens per iteration will be: {cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size:,}")
    if cfg.batch_ramp_iters:
        log(f"batch ramp: {cfg.batch_ramp_start} sequences per micro-step at step 0, growing to {cfg.batch_size} "
            f"at step {cfg.batch_ramp_iters}")
    if cfg.decay_lr and cfg.max_iters < cfg.lr_decay_iters and not cfg.eval_only:
        log(f"note: max_iters ({cfg.max_iters}) is below lr_decay_iters ({cfg.lr_decay_iters}), so the learning rate "
            f"ends at {get_lr(cfg.max_iters, cfg):.2e}, not min_lr {cfg.min_lr:.2e} (as nanoGPT does); set "
            f"--lr_decay_iters={cfg.max_iters} to decay fully")
    peak = runtime.peak_flops(device, dtype)
    log(f"mfu is measured against the peak of {peak[0]}, {peak[1] / 1e12:.0f} TFLOPS" if peak else
        f"mfu: n/a on {device} (no known peak flop/s)")
    dataset = open_dataset(cfg)
    if dataset.masked:
        log(f"the loss is over the assistant's tokens only: {dataset.folder} is a chat dataset, whose loss mask rules "
            "out system and user tokens (the losses logged are over assistant tokens)")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank, drawn by parallelize
    raw_model = build_model(cfg, dataset, ckpt, log)
    if starts_from_run(cfg.init_from):  # the run's weights fix the architecture: the saved settings say which
        cfg = replace(cfg, **{k: getattr(raw_model.config, k) for k in ARCHITECTURE})
    if not raw_model.lm_head.weight.is_meta:
        raw_model.to(device)
    compile_model = runtime.resolve_compile(cfg.compile, runtime.device_type(device))
    if compile_model:
        log("compiling the model... (takes a ~minute)")
    # loaded weights are loaded before parallelize (under FSDP each rank then keeps its shard of them); a model
    # on the meta device gets its storage and initial weights there
    model = parallelize(raw_model, cfg, dinfo, device, compile_model, dtype)
    scaler = torch.amp.GradScaler(runtime.device_type(device), enabled=(dtype == "float16"))
    optimizer = build_optimizer(raw_model, cfg, runtime.device_type(device), sharded=uses_fsdp(cfg, dinfo))
    if cfg.lr_rule != "off":
        log(describe_lr_rule(optimizer, raw_model, cfg))
    batches = Batches(dataset, cfg.seed, cfg.batch_size, cfg.gradient_accumulation_steps, dinfo.rank,
                      dinfo.world_size, cfg.block_size, device, cfg.document_aligned,
                      start_step=ckpt["iter_num"] if ckpt else 0, ramp=(cfg.batch_ramp_start, cfg.batch_ramp_iters))
    s = Session(cfg, dinfo, device, dataset, out_dir, raw_model, model, without_ddp(model), optimizer, scaler,
                runtime.autocast(runtime.device_type(device), dtype), log, peak, batches)
    s.guard = NonfiniteGuard(device)
    s.compiled = compile_model
    if ckpt:
        restore_training_state(s, ckpt)
    tasks.parse_tasks(cfg.eval_tasks)  # an unknown task name fails now, not at the first evaluation
    if dinfo.is_master and not cfg.eval_only:
        s.metrics = MetricsWriter(out_dir, s.iter_num, cfg.tensorboard_log)
    return s


def open_dataset(cfg):
    """The dataset to train on, with a message naming how to make it when it is missing."""
    folder = Path(cfg.data_dir) / cfg.dataset
    if not folder.is_dir():
        from nanogpt.datasets import RECIPES, how_to_prepare

        prepared = [p.name for p in Path(cfg.data_dir).iterdir() if p.is_dir()] if Path(cfg.data_dir).is_dir() else []
        close = difflib.get_close_matches(cfg.dataset, prepared + sorted(RECIPES), n=1)
        hint = f"did you mean --dataset={close[0]}? Otherwise " if close else ""
        raise UserError(f"dataset folder {folder} not found: {hint}{how_to_prepare(cfg.dataset, cfg.data_dir)}")
    dataset = Dataset(folder)
    dataset.check_block_size(cfg.block_size)
    return dataset


def resumed_settings(cfg, ckpt, given, log):
    """The settings a resumed run trains with: the checkpoint's dataset and architecture, this command's for the
    rest. Asking for another dataset or architecture is refused, never silently replaced or ignored."""
    saved = ckpt.get("config") or {}
    model_config = checkpoint.gpt_config(ckpt, cfg.out_dir)
    kept = {k: getattr(model_config, k) for k in ARCHITECTURE}
    if saved.get("dataset"):
        kept["dataset"] = saved["dataset"]
    kept["optimizer"] = saved.get("optimizer", "adamw")  # its saved state fits no other optimizer
    defaults = TrainConfig()
    for key, value in kept.items():
        asked = key in given if given is not None else getattr(cfg, key) != getattr(defaults, key)
        if asked and getattr(cfg, key) != value:
            what = key if key in ("dataset", "optimizer") else "architecture"
            raise UserError(
                f"the run in {cfg.out_dir} was trained with {key}={value!r}, and a resumed run keeps its {what}; "
                f"this command asks for {key}={getattr(cfg, key)!r}: remove {key} from the command line and config "
                "files, or start a new run in another --out_dir"
            )
    cfg = replace(cfg, **kept)
    cfg = saved_settings_with_changes(cfg, saved, given, log)
    for key in ("batch_size", "gradient_accumulation_steps", "seed", "batch_ramp_start", "batch_ramp_iters"):
        if key in saved and saved[key] != getattr(cfg, key):
            log(f"warning: {key} is {getattr(cfg, key)}, the run was trained with {saved[key]}: it goes on, but no "
                "longer computes exactly what an uninterrupted run would")
    return cfg


# settings that describe this command rather than the run: never taken from the saved config
INVOCATION = ("out_dir", "init_from", "eval_only", "reset_optimizer")


def saved_settings_with_changes(cfg, saved, given, log):
    """A resumed run continues with the settings it saved, except those this command sets (config files and
    --key=value), which are listed in one line; nanoGPT's config file plus overrides keeps working."""
    names = {f.name for f in fields(TrainConfig)}
    if not saved:
        return cfg
    if given is None:
        defaults = TrainConfig()
        given = {k for k in names if getattr(cfg, k) != getattr(defaults, k)}
    kept = {k: v for k, v in saved.items() if k in names and k not in INVOCATION and k not in given}
    changes = [f"{k}={getattr(cfg, k)!r} (was {saved[k]!r})" for k in sorted(given)
               if k in saved and k not in INVOCATION and saved[k] != getattr(cfg, k)]
    log("resuming with the run's saved settings" + (f"; changed by this command: {', '.join(changes)}" if changes
                                                     else ", none changed by this command"))
    return validate(replace(cfg, **kept))


# the TrainConfig settings that shape the model: a resumed run keeps the checkpoint's (dropout may change)
ARCHITECTURE = tuple(
    f.name for f in fields(GPTConfig) if f.name in {g.name for g in fields(TrainConfig)} and f.name != "dropout"
)


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
    if s.iter_num >= s.cfg.max_iters and not s.cfg.eval_only:
        raise UserError(
            f"the run in {s.out_dir} is already at iteration {s.iter_num} and max_iters is {s.cfg.max_iters}: pass "
            f"a larger --max_iters to train on (e.g. --max_iters={2 * s.iter_num} --lr_decay_iters={2 * s.iter_num})"
        )
    if "sharded" in ckpt:
        folder = checkpoint.sharded_folder(s.out_dir, ckpt)
        fsdp = uses_fsdp(s.cfg, s.dinfo)
        load_sharded_state(s.raw_model, s.optimizer, ckpt["optimizer_groups"],
                           lambda tensors: checkpoint.read_sharded(folder, tensors, whole=not fsdp), with_model=fsdp)
        return
    state = checkpoint.load_optimizer_state(s.out_dir, ckpt)
    if s.cfg.reset_optimizer:
        s.log("reset_optimizer=True: the optimizer's moments start fresh; the weights and iteration are the checkpoint's")
    elif state is None and not s.cfg.eval_only:
        raise UserError(
            f"the checkpoint in {s.out_dir} holds no optimizer state (e.g. best.pt copied to ckpt.pt, or a file from "
            "another tool): resuming would restart the optimizer's moments; pass --reset_optimizer=True to do so"
        )
    elif state is not None:
        load_optimizer_state(s.raw_model, s.optimizer, state["optimizer"], s.cfg, s.dinfo)
        if "scaler" in state:
            s.scaler.load_state_dict(state["scaler"])


# ---------------------------------------------------------------------------------------------- one training step


def train_batch(s, step, micro_step):
    """This rank's (inputs, targets) for one micro-step of an optimizer step, on the device (read ahead by
    data.Batches)."""
    return s.batches.get(step, micro_step)


def forward_backward(s, batch):
    """Forward and backward over this rank's micro-batches of one step, gradients accumulated. Returns (this rank's
    mean loss, a tensor on the device, and the first batch of the next step). Nothing here reads a value back from
    the device or changes the weights, so a stop request may abandon it at any point."""
    cfg, accum = s.cfg, s.micro_steps
    batch = batch or train_batch(s, s.iter_num, 0)
    # dropout's random draws are a function of (seed, rank, step) too, so a resumed run repeats them exactly
    seed_dropout(step_seed(cfg.seed, s.dinfo.rank, s.iter_num), s.device_type)
    loss_sum = torch.zeros((), device=s.device)
    for micro_step in range(accum):
        last = micro_step == accum - 1
        if s.dinfo.enabled:
            # only the last micro-step's backward reduces the gradients; the others accumulate locally
            set_gradient_sync(s.model, last)
        with s.autocast:
            _, loss = s.model(*batch)
            loss = loss / accum
        loss_sum += loss.detach()
        if last:
            # a non-finite loss on any micro-step makes this rank's gradients non-finite (times 1.0 otherwise,
            # which changes no bit), so the reduced gradient norm is non-finite on every rank and all ranks skip
            # the step together, with no collective of their own
            loss = loss * torch.where(torch.isfinite(loss_sum), 1.0, math.nan)
        # draw the next batch while the device works on this one
        batch = train_batch(s, s.iter_num + (micro_step + 1) // accum, (micro_step + 1) % accum)
        s.scaler.scale(loss).backward()
    return loss_sum, batch


def compiled_or_uncompiled(s, work):
    """work() — the first evaluation or training step, where torch.compile compiles — and, if compiling fails (no
    Triton, an unsupported platform), a run that left compile='auto' says so in one line and does the work again
    uncompiled from then on; compile=True asked for it: a one-line error. Under torchrun every rank fails alike,
    and the wrapped model cannot be rebuilt in place: an error."""
    try:
        return work()
    except StopTraining:
        raise
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if s.cfg.compile is True or s.dinfo.enabled:
            raise UserError(f"torch.compile failed at the first step ({reason}); run with --compile=False") from None
        s.log(f"torch.compile failed at the first step ({reason}); continuing uncompiled (--compile=False skips it)")
        s.optimizer.zero_grad(set_to_none=True)
        s.raw_model.train()  # a failed evaluation leaves it in eval mode
        s.model = s.eval_model = s.raw_model
        s.compiled = False
        return work()


def update(s, loss):
    """Clip the accumulated gradients and take the optimizer step, skipped on the device where the gradient norm
    (or, under float16, the loss) is not finite; s.guard reports it at the next logging step. Returns the gradient
    norm before clipping, a tensor on the device."""
    s.scaler.unscale_(s.optimizer)
    if s.cfg.grad_clip != 0.0:
        grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.grad_clip)
    else:  # measured all the same: the guard reads it
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in s.model.parameters() if p.grad is not None])
    grad_norm = full_tensor(grad_norm)  # under FSDP, the all-reduce of each rank's share
    if s.scaler.is_enabled():
        # float16: the scaler skips steps with inf/nan gradients itself (found_inf) and lowers its scale; those
        # are routine, so only a non-finite loss is reported
        bad = ~torch.isfinite(loss)
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        bad = ~torch.isfinite(grad_norm)
        step_unless(s.optimizer, bad.float())
    s.guard.note(s.iter_num, bad, loss, grad_norm)
    s.optimizer.zero_grad(set_to_none=True)
    return grad_norm


class NonfiniteGuard:
    """Steps whose loss or gradient norm was nan/inf, recorded on the device as they happen (the steps themselves
    were skipped there) and read by the host at logging steps, before evaluating and before saving: a bad step never
    reaches the weights nor a checkpoint, and it is reported with the iteration it happened at. Every rank records
    the same skips (the gradient norm is the reduced one), so all ranks report and stop at the same point."""

    def __init__(self, device):
        # [steps skipped since the last read, the first one's iteration, its loss, its gradient norm]
        self.record = torch.zeros(4, dtype=torch.float64, device=device)
        self.last_bad = torch.zeros((), dtype=torch.bool, device=device)

    def note(self, iter_num, bad, loss, grad_norm):
        # torch.full, not torch.tensor: a fill on the device, not a copy from the host that waits for it
        row = torch.stack([torch.full((), iter_num, dtype=torch.float64, device=bad.device),
                           loss.double(), grad_norm.double()])
        first = bad & (self.record[0] == 0)
        self.record = torch.cat([self.record[:1] + bad, torch.where(first, row, self.record[1:])])
        self.last_bad = bad

    def report(self, s):
        """Read the record (the host waits for the device here): log skipped steps (skip_nonfinite) or stop with
        a UserError, the last checkpoint intact. Returns whether the latest step was skipped."""
        count, iter_num, loss, grad_norm, last_bad = [*self.record.tolist(), self.last_bad.item()]
        if count == 0:
            return False
        self.record = torch.zeros_like(self.record)
        what, value = ("the loss", loss) if not math.isfinite(loss) else ("the gradient norm", grad_norm)
        iter_num, more = int(iter_num), int(count) - 1
        if not s.cfg.skip_nonfinite:
            raise UserError(
                f"{what} became {value} at iteration {iter_num}; stopped, the last checkpoint in {s.out_dir} is "
                "intact. Lower --learning_rate, check the data, or pass --skip_nonfinite=True to skip such steps"
            )
        s.log(f"iter {iter_num}: {what} is {value}; skipping this step (skip_nonfinite=True), weights unchanged"
              + (f"; {more} more step{'s' * (more > 1)} skipped since" if more else ""))
        return bool(last_bad)


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


def evaluate(s, stop, trained, last):
    """Estimate the losses, log them, and save a checkpoint if this run trained and the val loss improved (or
    always_save_checkpoint, or this is the run's last iteration). Returns the losses."""
    s.guard.report(s)  # a step skipped since the last logging step stops the run here, before anything is saved
    with stop.abandonable():
        # the first evaluation compiles the evaluation graph
        losses = compiled_or_uncompiled(s, lambda: estimate_loss(s, stop)) if s.compiled else estimate_loss(s, stop)
    train_loss = f"{losses['train']:.4f}" if "train" in losses else "n/a"
    s.log(f"step {s.iter_num}: train loss {train_loss}, val loss {losses['val']:.4f}")
    with stop.abandonable():
        task_figures = evaluate_tasks(s) if s.cfg.eval_tasks else {}
    if hasattr(s.raw_model, "reshard"):
        # FSDP leaves the root group's weights gathered after a forward with no backward; saving needs the shards
        s.raw_model.reshard()
    if s.metrics is not None:
        s.metrics.write("eval", s.iter_num, train_loss=losses.get("train"), val_loss=losses["val"],
                        tokens=tokens_seen(s.cfg, s.iter_num), **task_figures)
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


def evaluate_tasks(s):
    """Run cfg.eval_tasks on the model (every rank: under FSDP forwards are collective) and log the figures."""
    ctx = tasks.EvalContext(s.raw_model, tokenizer_from_meta(s.dataset.meta), s.device, s.autocast,
                            dataset=s.dataset, batch_size=s.cfg.batch_size, progress=False)
    figures = tasks.flatten(tasks.run_tasks(ctx, tasks.parse_tasks(s.cfg.eval_tasks)))
    s.log(f"step {s.iter_num}: " + ", ".join(f"{name} {value:.4f}" for name, value in figures.items()))
    return figures


def tokens_seen(cfg, iter_num):
    """Training tokens consumed before iteration iter_num (at this run's batch settings, its ramp included)."""
    ramped = min(iter_num, cfg.batch_ramp_iters)
    rows = sum(ramped_batch_size(cfg.batch_size, cfg.batch_ramp_start, cfg.batch_ramp_iters, step)
               for step in range(ramped)) + (iter_num - ramped) * cfg.batch_size
    return rows * cfg.gradient_accumulation_steps * cfg.block_size


@torch.no_grad()
def estimate_loss(s, stop):
    """Mean loss over eval_iters batches of each split (val only without eval_train), shared out over the ranks
    (batch k is rank k % world_size's) and summed over them, so the figure is a single process's. It runs the model
    as training compiled it, without the DDP wrapper (no collectives but the final sum; under FSDP each forward
    gathers the weights collectively, so every rank runs the same number of forwards, a rank past the end counting
    its extra one for nothing). A long evaluation reports its progress every ten seconds."""
    cfg, rank, world = s.cfg, s.dinfo.rank, s.dinfo.world_size
    rounds = math.ceil(cfg.eval_iters / world)
    s.raw_model.eval()
    splits = (("train", EVAL_TRAIN_STREAM),) * cfg.eval_train + (("val", EVAL_VAL_STREAM),)
    sums = torch.zeros(len(splits), dtype=torch.float64, device=s.device)
    progress = Progress(s.log, len(splits) * rounds, "batches")
    for i, (split, stream) in enumerate(splits):
        # a chat dataset's rows start at conversations, as its training rows do: a row anywhere could hold no
        # assistant token at all, and the mean of no losses is nan
        starts = s.dataset.document_starts(split, cfg.block_size) if s.dataset.masked else None
        offsets = batch_offsets(cfg.seed, stream, s.iter_num, cfg.eval_iters * cfg.batch_size,
                                s.dataset.lengths[split], cfg.block_size, starts)
        for r in range(rounds):
            if s.dinfo.enabled and stop_requested(stop, s.dinfo, s.device):
                raise StopTraining
            k = r * world + rank
            mine = k < cfg.eval_iters
            k = k if mine else rank
            x, y = s.dataset.batch(split, offsets[k * cfg.batch_size:(k + 1) * cfg.batch_size], cfg.block_size)
            with s.autocast:
                _, loss = s.eval_model(*move_batch(x, y, torch.device(s.device)))
            if mine:
                sums[i] += loss.double()
            progress.advance(f"evaluating at step {s.iter_num}")
    all_reduce_sum(sums, s.dinfo)
    s.raw_model.train()
    return dict(zip((split for split, _ in splits), (sums / cfg.eval_iters).tolist()))


class Progress:
    """Log lines that show a long piece of work advancing, with an ETA: silent for work that ends quickly."""

    def __init__(self, log, total, unit, every=10.0):
        self.log, self.total, self.unit, self.every = log, total, unit, every
        self.done = 0
        self.started = self.last = time.time()

    def advance(self, what):
        self.done += 1
        now = time.time()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            eta = (now - self.started) / self.done * (self.total - self.done)
            self.log(f"{what}: {self.done}/{self.total} {self.unit}, eta {format_duration(eta)}")


def save(s, is_best):
    """Checkpoint this iteration. Called on every rank: under FSDP each rank writes its shards; otherwise rank 0
    writes what every rank holds."""
    model_args, model_extra = checkpoint.model_settings(s.raw_model.config)
    state = {
        "model_args": model_args,
        "model_extra": model_extra,
        "iter_num": s.iter_num,
        "best_val_loss": s.best_val_loss,
        "config": s.cfg.to_dict(),
        "tokenizer": {k: v for k, v in s.dataset.meta.items() if k != "dtype"},
    }
    s.saved_iter = s.iter_num
    if uses_fsdp(s.cfg, s.dinfo):
        tensors, param_groups = sharded_state(s.raw_model, s.optimizer)
        checkpoint.save_sharded(s.out_dir, dict(state, optimizer_groups=param_groups), tensors, is_best)
        where = f"{s.out_dir / checkpoint.LATEST} and {s.out_dir / checkpoint.SHARDED}{s.iter_num:06d}"
    else:
        weights, optimizer_state = full_state(s.raw_model, s.optimizer, s.dinfo)
        if not s.dinfo.is_master:
            return
        training_state = {"optimizer": optimizer_state, "scaler": s.scaler.state_dict(), "iter_num": s.iter_num}
        checkpoint.save_checkpoint(s.out_dir, dict(state, model=weights), training_state, is_best)
        where = s.out_dir / checkpoint.LATEST
    best = f"; the best val loss so far, also {s.out_dir / checkpoint.BEST}" if is_best else ""
    s.log(f"saving checkpoint to {where} (iteration {s.iter_num}{best})")


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


def build_model(cfg, dataset, ckpt, log):
    """The model to train: fresh, from the resumed checkpoint, or pretrained weights."""
    if cfg.init_from == "scratch":
        vocab_size = padded_vocab_size(dataset.vocab_size)
        log(f"initializing a new model from scratch (vocab_size {vocab_size} from {dataset.folder})")
        # nanoGPT's shape settings and the modern recipe's switches
        model_args = {k: getattr(cfg, k) for k in ("dropout", *ARCHITECTURE) if k != "vocab_size"}
        # no storage yet: parallelize gives it (under FSDP, each rank its shards)
        return on_meta(lambda: GPT(GPTConfig(vocab_size=vocab_size, **model_args)))
    if cfg.init_from == "resume":
        check_same_tokenizer(ckpt, dataset, cfg.out_dir)
        # architecture comes from the checkpoint; dropout may be changed when resuming. A sharded checkpoint's
        # weights are loaded once the model is sharded (restore_training_state)
        if "model" in ckpt:
            model = checkpoint.load_model(ckpt, cfg.out_dir, dropout=cfg.dropout)
        else:
            model = on_meta(lambda: GPT(checkpoint.gpt_config(ckpt, cfg.out_dir, dropout=cfg.dropout)))
        fit_to_dataset(model, dataset, cfg.block_size, "the checkpoint")
        return model
    if starts_from_run(cfg.init_from):
        return model_of_run(cfg, dataset, log)
    log(f"initializing from pretrained weights {cfg.init_from} (dropout {cfg.dropout})")
    model = GPT.from_pretrained(cfg.init_from, {"dropout": cfg.dropout})
    if model.config.vocab_size >= GPT2_VOCAB_SIZE and dataset.meta.get("tokenizer") != "gpt2":
        # a GPT-2-sized vocabulary means BPE weights; character ids would index unrelated BPE embeddings
        raise UserError(
            f"dataset {dataset.folder} uses the '{dataset.meta.get('tokenizer')}' tokenizer, but {cfg.init_from} reads "
            "GPT-2 BPE tokens: prepare the text with the GPT-2 tokenizer (e.g. data/shakespeare/prepare.py)"
        )
    fit_to_dataset(model, dataset, cfg.block_size, cfg.init_from)
    return model


def starts_from_run(init_from):
    """Whether init_from names another run's folder (one holding ckpt.pt), to start a new run from its weights."""
    return init_from not in ("scratch", "resume") and (Path(init_from) / checkpoint.LATEST).is_file()


def model_of_run(cfg, dataset, log):
    """A new run starting from another run's weights (init_from=RUN, a folder holding ckpt.pt), e.g. chat
    finetuning a pretrained run: its architecture, none of its optimizer state or iteration count."""
    source = Path(cfg.init_from)
    log(f"initializing from the weights of the run in {source} (dropout {cfg.dropout})")
    ckpt = checkpoint.load_checkpoint(source, "latest")
    trained_with = ckpt.get("tokenizer") or {}
    if not extends(dataset.meta, trained_with):
        raise UserError(
            f"dataset {dataset.folder} holds {describe_tokenizer(dataset.meta)} tokens, but the run in {source} was "
            f"trained on {describe_tokenizer(trained_with)} tokens: prepare the data with its tokenizer "
            f"(--tokenizer_from={source})"
        )
    model = checkpoint.load_model(ckpt, source, dropout=cfg.dropout)
    fit_to_dataset(model, dataset, cfg.block_size, f"the run in {source}")
    return model


def extends(meta, base):
    """Whether a dataset's tokenizer reads the base tokenizer's ids as it does: the same one, or the same with the
    chat turn tokens added after its ids (a chat dataset's)."""
    keys = ("tokenizer", "chars")
    if any(meta.get(k) != base.get(k) for k in keys) or meta.get("vocab_size", 0) < base.get("vocab_size", 0):
        return False
    if meta.get("tokenizer") != "bpe" or meta.get("tokenizer_json") == base.get("tokenizer_json"):
        return True
    from nanogpt.bpe import ranks_from_json

    (ours, special), (theirs, base_special) = ranks_from_json(meta["tokenizer_json"]), ranks_from_json(
        base["tokenizer_json"])
    return ours == theirs and all(special.get(t) == i for t, i in base_special.items())


def check_same_tokenizer(ckpt, dataset, out_dir):
    """A resumed run must read token ids made by the tokenizer it was trained with."""
    trained_with = ckpt.get("tokenizer")
    now = {k: v for k, v in dataset.meta.items() if k != "dtype"}
    if trained_with and trained_with != now:
        raise UserError(
            f"dataset {dataset.folder} now holds {describe_tokenizer(now)} tokens, but the run in {out_dir} was "
            f"trained on {describe_tokenizer(trained_with)} tokens: prepare its text again with that tokenizer, "
            "or start a new run in another --out_dir"
        )


def describe_tokenizer(meta):
    return f"'{meta.get('tokenizer')}' ({meta.get('vocab_size')} entries)"


def fit_to_dataset(model, dataset, block_size, source):
    """Check that a loaded model can read the dataset's token ids at this block size, and crop its context to
    block_size (finetuning GPT-2's 1024 on shorter blocks saves memory and time). A chat dataset's turn tokens past
    the model's vocabulary (OpenAI's GPT-2 has exactly 50,257) grow its embedding and head."""
    if dataset.vocab_size > model.config.vocab_size and dataset.meta.get("chat"):
        model.grow_vocab(padded_vocab_size(dataset.vocab_size))
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
    return all_reduce_mean(float(bool(stop.requested)), dinfo, device) > 0


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
    wandb.log({"iter": iter_num, **({"train/loss": losses["train"]} if "train" in losses else {}),
               "val/loss": losses["val"], "lr": lr,
               **({"mfu": mfu * 100} if mfu is not None else {})})

