"""One training step of GPT-2 124M on one GPU, ours against upstream nanoGPT's bench.py: tokens/s, MFU, peak memory,
compile time. For a machine with a CUDA GPU; no figure from it has been measured by this project yet.

    python benchmarks/gpu_step.py [--rounds=2] [--steps=20] [--upstream=benchmarks/upstream/nanoGPT]

What it measures, on random tokens (no dataset; the output says so), batch 12 x block 1024 as upstream's bench.py:
  - ours, GPT-2 124M (config/train_gpt2.py's model: 12 layers of 768, bias=False, vocab 50304), bfloat16 autocast,
    torch.compile, fused AdamW, and our training step: the step of nanogpt/train.py (forward_backward + update:
    gradient clipping at 1.0, the on-device non-finite guard, no host read of the loss), re-stated here with the
    package's model, optimizer and step_unless, because nanogpt.train imports tiktoken and tqdm, which a bare GPU
    image may not have;
  - ours, config/train_gpt2_fast.py's model (rotary, RMSNorm, QK-norm, ReLU², untied head, soft-capping; Muon for
    the hidden matrices), same shapes and step;
  - upstream nanoGPT's own bench.py (`--real_data=False`, compile, bfloat16, same shapes), run as a program,
    alternating with our GPT-2 windows, --rounds times. What differs: upstream's loop reads the loss back
    (`loss.item()`) every step and clips nothing; ours clips and guards on the device and reads nothing.
For each: tokens/s and ms/step (medians over the rounds), MFU against the GPU's datasheet bfloat16 peak
(nanogpt/runtime.py's table) and against a bfloat16 matmul rate measured here (8192³, the best this GPU sustains on
one large matmul), peak memory (torch.cuda.max_memory_allocated; not reported for upstream, a separate process),
and compile time (the first step, which compiles forward and backward, minus a compiled step). It prints a table
and writes benchmarks/results/gpu_step.json (benchmarks/results.py). Budget: under 5 minutes on one H100/H200,
most of it compiling (upstream's second run reuses inductor's on-disk cache).

It needs only the machine's PyTorch (2.9 or newer) and Python 3.10+: no pip, no network, no dataset. Upstream's
code does not travel with the checkout (../shared is not on the GPU machine): copy it into an ignored folder of the
checkout before the run, and name that folder in the device tool's `carry`:

    mkdir -p benchmarks/upstream && cp -r ../shared/reference/nanoGPT benchmarks/upstream/nanoGPT
    # benchmarks/upstream/ is in .gitignore: never committed; run(..., carry=["benchmarks/upstream"])

Without it (--upstream missing) our figures are still measured and upstream's are reported as not run.
"""

import argparse
import gc
import re
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

BATCH, BLOCK, VOCAB = 12, 1024, 50304  # upstream bench.py's shapes; 50304: GPT-2's vocabulary padded to 64


def matmul_rate(n=8192, iters=30):
    """The bfloat16 matmul rate this GPU sustains, in flop/s: the ceiling an MFU figure can honestly be read
    against, next to the datasheet's."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def build(preset):
    """(model, compiled model, optimizer, settings) for a config file's model at upstream bench.py's shapes."""
    import torch

    from nanogpt.config import load_config
    from nanogpt.model import GPT, GPTConfig
    from nanogpt.optim import build_optimizer

    cfg = load_config([str(ROOT / "config" / preset), f"--batch_size={BATCH}", f"--block_size={BLOCK}",
                       "--gradient_accumulation_steps=1", "--dropout=0.0", "--dtype=bfloat16", "--device=cuda"])
    shape = {f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if hasattr(cfg, f.name)}
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**dict(shape, vocab_size=VOCAB))).cuda()
    optimizer = build_optimizer(model, cfg, "cuda")
    return model, torch.compile(model), optimizer, cfg


def make_step(compiled, optimizer, cfg):
    """nanogpt/train.py's step for one micro-batch: forward and backward under bfloat16 autocast, clip, step unless
    the gradient norm is not finite (decided on the device), zero the gradients. Reads nothing back."""
    import torch

    from nanogpt.optim import set_lr, step_unless

    x = torch.randint(VOCAB, (BATCH, BLOCK), device="cuda")
    y = torch.randint(VOCAB, (BATCH, BLOCK), device="cuda")
    set_lr(optimizer, 100, cfg)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = compiled(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(compiled.parameters(), cfg.grad_clip or float("inf"))
        step_unless(optimizer, (~torch.isfinite(norm)).float())
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, n):
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def upstream_bench(folder):
    """One run of upstream's bench.py; its 'time per iteration' in seconds."""
    cmd = [sys.executable, "bench.py", "--real_data=False", "--compile=True", f"--batch_size={BATCH}",
           f"--block_size={BLOCK}", "--bias=False", "--dtype=bfloat16"]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    found = re.search(r"time per iteration: ([\d.]+)ms", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"upstream bench.py failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return float(found.group(1)) / 1000


def measure_ours(name, preset, args, peaks, between=None):
    """Compile and time one of our models; between(): run after each of our timing windows (upstream's runs)."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    model, compiled, optimizer, cfg = build(preset)
    step = make_step(compiled, optimizer, cfg)
    first = timed(step, 1)  # compiles forward and backward
    timed(step, 5)  # warm-up
    windows = []
    for _ in range(args.rounds):
        windows.append(timed(step, args.steps))
        if between:
            between()
    dt = statistics.median(windows)
    row = {
        "model": name, "params_M": round(model.get_num_params() / 1e6, 1), "ms_per_step": round(dt * 1000, 2),
        "tokens_per_s": round(BATCH * BLOCK / dt),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "compile_s": round(first - dt, 1),
    }
    row.update(mfu(model, dt, peaks))
    del model, compiled, optimizer, step
    gc.collect()
    torch.cuda.empty_cache()
    return row


def mfu(model, dt, peaks):
    return {f"mfu_vs_{what}_pct": round(model.estimate_mfu(BATCH, dt, peak) * 100, 1) for what, peak in peaks.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="timing windows per model (upstream: runs); medians")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing window")
    parser.add_argument("--upstream", type=Path, default=HERE / "upstream" / "nanoGPT",
                        help="a copy of upstream nanoGPT (see the note at the top)")
    args = parser.parse_args()

    import torch

    from nanogpt.runtime import peak_flops, prepare_device
    from results import write_results

    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here: benchmarks/gpu_step.py measures a GPU step; run it on a GPU machine")
    prepare_device("cuda")
    gpu = torch.cuda.get_device_name(0)
    peaks = {"measured_matmul": matmul_rate()}
    datasheet = peak_flops("cuda", "bfloat16")
    if datasheet:
        peaks["datasheet"] = datasheet[1]
    print(f"{gpu}, PyTorch {torch.__version__}; random tokens (no dataset), batch {BATCH} x block {BLOCK}, bfloat16, "
          f"torch.compile, fused AdamW")
    print(f"bfloat16 matmul rate measured here: {peaks['measured_matmul'] / 1e12:.0f} TFLOPS; datasheet peak: "
          f"{'unknown' if not datasheet else f'{datasheet[1] / 1e12:.0f} TFLOPS'}")

    upstream_times = []
    have_upstream = (args.upstream / "bench.py").is_file()
    between = (lambda: upstream_times.append(upstream_bench(args.upstream))) if have_upstream else None
    rows = [measure_ours("ours: GPT-2 124M", "train_gpt2.py", args, peaks, between)]
    if upstream_times:
        from nanogpt.model import GPT, GPTConfig

        dt = statistics.median(upstream_times)
        with torch.device("meta"):  # the same model's flop count (upstream's GPT-2 at these shapes)
            reference = GPT(GPTConfig(block_size=BLOCK, vocab_size=VOCAB, bias=False))
        rows.append({"model": "upstream bench.py: GPT-2 124M", "ms_per_step": round(dt * 1000, 2),
                     "tokens_per_s": round(BATCH * BLOCK / dt), **mfu(reference, dt, peaks)})
    rows.append(measure_ours("ours: train_gpt2_fast.py's model", "train_gpt2_fast.py", args, peaks))

    columns = ["model", "tokens_per_s", "ms_per_step", "mfu_vs_datasheet_pct", "mfu_vs_measured_matmul_pct",
               "peak_memory_gib", "compile_s"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "-")) for c in columns))
    if not have_upstream:
        print(f"upstream nanoGPT not run: no {args.upstream / 'bench.py'} (see the note at the top of this file)")
    figures = {"gpu": gpu, "rows": rows, "matmul_tflops": round(peaks["measured_matmul"] / 1e12, 1),
               "datasheet_tflops": datasheet and round(datasheet[1] / 1e12), "rounds": args.rounds,
               "steps": args.steps, "upstream_runs_s_per_step": upstream_times}
    write_results("gpu_step", figures, notes=(
        "random tokens (no dataset); batch 12 x block 1024, bfloat16 autocast, torch.compile; ours: the step of "
        "nanogpt/train.py (clip 1.0, on-device non-finite guard, no host read); upstream: its bench.py as a program "
        "(reads the loss every step, no clipping), alternating with our GPT-2 windows; medians"))


if __name__ == "__main__":
    main()
