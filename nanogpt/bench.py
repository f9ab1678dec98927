"""Time the training step alone (forward, backward, optimizer step), without evaluation or checkpoints:
nanoGPT's bench.py as a function of a BenchConfig."""

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanogpt import runtime
from nanogpt.data import TRAIN_STREAM, Dataset, batch_offsets, move_batch
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig


@dataclass
class BenchConfig:
    batch_size: int = 12
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    bias: bool = False
    vocab_size: int = 50304  # used for synthetic data; a real dataset brings its own
    dataset: str = ""  # a prepared dataset under data_dir; empty means random tokens
    data_dir: str = "data"
    seed: int = 1337
    warmup_steps: int = 10  # untimed steps first (compilation, allocator warm-up)
    steps: int = 20  # timed steps
    device: str = "auto"
    dtype: str = "auto"
    compile: object = "auto"
    profile: bool = False  # write a torch profiler trace (open in chrome://tracing or Perfetto)
    profile_dir: str = "bench_trace"  # where the profiler trace goes

    def to_dict(self):
        return asdict(self)


def bench(cfg, log=print):
    """Run the benchmark; returns a dict of the figures it printed."""
    if cfg.steps < 1:
        raise UserError("steps must be at least 1")
    device = runtime.resolve_device(cfg.device)
    device_type = runtime.device_type(device)
    dtype = runtime.resolve_dtype(cfg.dtype, device_type)
    torch.manual_seed(cfg.seed)

    if cfg.dataset:
        data = Dataset(Path(cfg.data_dir) / cfg.dataset)
        data.check_block_size(cfg.block_size)
        vocab_size = data.vocab_size

        def get_batch(step):
            offsets = batch_offsets(cfg.seed, TRAIN_STREAM, step, cfg.batch_size, data.lengths["train"],
                                    cfg.block_size)
            return move_batch(*data.batch("train", offsets, cfg.block_size), torch.device(device))
    else:
        vocab_size = cfg.vocab_size
        x = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), device=device)
        y = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), device=device)

        def get_batch(step):
            return x, y

    model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, bias=cfg.bias)).to(device)
    optimizer = model.configure_optimizers(1e-2, 1e-4, (0.9, 0.95), device_type)
    step_model = torch.compile(model) if runtime.resolve_compile(cfg.compile, device_type) else model
    autocast = runtime.autocast(device_type, dtype)

    def step(i):
        xb, yb = get_batch(i)
        with autocast:
            _, loss = step_model(xb, yb)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize()

    for i in range(cfg.warmup_steps):
        step(i)
    sync()

    times = []
    profiler = None
    if cfg.profile:
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
            + ([torch.profiler.ProfilerActivity.CUDA] if device_type == "cuda" else []),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(cfg.profile_dir),
            record_shapes=False,
        )
        profiler.start()
    for i in range(cfg.steps):
        t0 = time.perf_counter()
        loss = step(cfg.warmup_steps + i)
        loss.item()  # waits for the device
        times.append(time.perf_counter() - t0)
        if profiler:
            profiler.step()
    if profiler:
        profiler.stop()
        log(f"profiler trace written to {cfg.profile_dir}/")

    dt = statistics.median(times)
    tokens = cfg.batch_size * cfg.block_size
    mfu = model.estimate_mfu(cfg.batch_size, dt)
    figures = {"ms_per_iter": dt * 1000, "tokens_per_s": tokens / dt, "mfu": mfu, "loss": loss.item()}
    log(f"{model.get_num_params() / 1e6:.2f}M parameters, {device}, {dtype}, batch {cfg.batch_size}x{cfg.block_size}")
    log(f"median over {cfg.steps} steps: {dt * 1000:.2f} ms/iter, {tokens / dt:,.0f} tokens/s, "
        f"mfu {mfu * 100:.2f}% (of an A100's bf16 peak), loss {loss.item():.4f}")
    return figures
