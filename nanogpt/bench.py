"""Time the training step alone (forward, backward, optimizer step), without evaluation or checkpoints:
nanoGPT's bench.py as a function of a BenchConfig.

Like nanoGPT's `real_data=True`, it times real batches when `dataset` names a prepared dataset, with the model train
would build for it (the dataset's vocabulary); with no dataset it draws random tokens from `vocab_size`.
"""

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanogpt import runtime
from nanogpt.config import check_at_least, check_device, check_model_shape
from nanogpt.data import TRAIN_STREAM, Dataset, batch_offsets, move_batch
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import padded_vocab_size


@dataclass
class BenchConfig:
    batch_size: int = 12  # sequences per step
    block_size: int = 1024  # tokens per sequence
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block; must divide n_embd
    n_embd: int = 768  # width of the residual stream (the embedding size)
    bias: bool = False  # biases inside LayerNorm and Linear layers
    dataset: str = ""  # a prepared dataset under data_dir to draw batches from; empty: random tokens
    data_dir: str = "data"  # the folder that holds the dataset folders
    vocab_size: int = 50304  # the vocabulary of the random tokens (GPT-2's, padded); a dataset brings its own
    seed: int = 1337  # seeds the weights and the batches
    warmup_steps: int = 10  # untimed steps first (compilation, allocator warm-up)
    steps: int = 20  # timed steps
    device: str = "auto"  # 'auto' picks cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' picks bfloat16 where supported, else float16 on CUDA, else float32
    threads: int = 0  # CPU threads; 0: PyTorch's default, capped at the idle cores
    compile: object = "auto"  # True/False, or 'auto': torch.compile on CUDA where it pays off
    profile: bool = False  # write a torch profiler trace (open in chrome://tracing or Perfetto)
    profile_dir: str = "bench_trace"  # where the profiler trace goes

    def to_dict(self):
        return asdict(self)


def validate_bench(cfg):
    """The checks train makes on the same settings, plus the benchmark's own. Raises UserError."""
    check_device(cfg)
    check_model_shape(cfg)
    check_at_least(cfg, 1, "vocab_size", "steps")
    check_at_least(cfg, 0, "warmup_steps")
    return cfg


def batches(cfg, device):
    """(get_batch(step) -> (x, y) on the device, vocab_size of the model to build, a description of the data)."""
    if not cfg.dataset:
        x = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
        y = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
        return (lambda step: (x, y)), cfg.vocab_size, f"random tokens of a {cfg.vocab_size:,}-token vocabulary"
    data = Dataset(Path(cfg.data_dir) / cfg.dataset)
    data.check_block_size(cfg.block_size)

    def get_batch(step):
        offsets = batch_offsets(cfg.seed, TRAIN_STREAM, step, cfg.batch_size, data.lengths["train"], cfg.block_size)
        return move_batch(*data.batch("train", offsets, cfg.block_size), torch.device(device))

    return get_batch, padded_vocab_size(data.vocab_size), f"{data.folder} (vocab size {data.vocab_size:,})"


def bench(cfg, log=print):
    """Run the benchmark; returns a dict of the figures it printed."""
    validate_bench(cfg)
    device, device_type, dtype = runtime.set_up(cfg.device, cfg.dtype, cfg.seed, cfg.threads)
    get_batch, vocab_size, data_name = batches(cfg, device)

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
    peak = runtime.peak_flops(device, dtype)
    mfu = model.estimate_mfu(cfg.batch_size, dt, peak[1]) if peak else None
    figures = {"ms_per_iter": dt * 1000, "tokens_per_s": tokens / dt, "mfu": mfu, "loss": loss.item(),
               "parameters": model.get_num_params()}
    log(f"{figures['parameters'] / 1e6:.2f}M parameters, {device}, {dtype}, batch {cfg.batch_size}x{cfg.block_size}"
        f" of {data_name}")
    log(f"median over {cfg.steps} steps: {dt * 1000:.2f} ms/iter, {tokens / dt:,.0f} tokens/s, "
        f"mfu {format_mfu(mfu, peak)}, loss {loss.item():.4f}")
    return figures


def format_mfu(mfu, peak):
    return f"{mfu * 100:.2f}% of the peak of {peak[0]}" if peak else "n/a (no known peak for this device)"
