"""How fast sampling is, with and without the KV cache, printed beside nanoGPT's figure.

(a) the whole `python sample.py --out_dir=RUN --device=cpu` process (imports, loading, 10 samples x 500 tokens)
    for the CPU quick-start model (4 layers, 128 wide, block 64), median of --runs runs, against the ~11 s
    nanoGPT's sample.py takes for the same job (its README's CPU quick start);
(b) a GPT-2-small-shaped model (124M parameters, block 1024, random weights): tokens/s for 256 new tokens after
    a 512-token prompt, cache against no cache.

    python benchmarks/sample_speed.py [--out_dir=RUN] [--runs=3] [--threads=N] [--skip=a|b]

A missing run is trained first (data/shakespeare_char/prepare.py, then train.py with the CPU quick-start config).
--threads sets OMP_NUM_THREADS / torch's threads for every measurement; on a shared machine 1 is often fastest.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NANOGPT_REFERENCE_S = 11.0  # nanoGPT sample.py, 10 x 500 tokens from the CPU quick-start model, per the brief


def environment(threads):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def ensure_run(out_dir, env, train_iters):
    if (Path(out_dir) / "ckpt.pt").is_file():
        return
    print(f"no run at {out_dir}: preparing shakespeare_char and training the CPU quick-start model", flush=True)
    subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=REPO, env=env, check=True)
    extra = [f"--max_iters={train_iters}", f"--lr_decay_iters={train_iters}"] if train_iters else []
    subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char_cpu.py", f"--out_dir={out_dir}",
                    *extra], cwd=REPO, env=env, check=True)


def process_seconds(args, env, runs):
    """Median wall time of a fresh `python ARGS` process, output discarded."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def bench_processes(out_dir, runs, env):
    sample = ["sample.py", f"--out_dir={out_dir}", "--device=cpu"]
    cases = [
        ("python -c 'import nanogpt.sample' (imports alone)", ["-c", "import nanogpt.sample"]),
        ("sample.py, KV cache (default: window_shift = half the block)", sample),
        ("sample.py, KV cache, --window_shift=1 (exact sliding window)", sample + ["--window_shift=1"]),
        ("sample.py --kv_cache=False (batched, no cache)", sample + ["--kv_cache=False"]),
    ]
    print(f"\n(a) whole process: 10 samples x 500 tokens, {out_dir}, median of {runs} runs")
    print(f"    {'nanoGPT sample.py (reference figure)':<52} {NANOGPT_REFERENCE_S:6.2f} s")
    for label, args in cases:
        median, times = process_seconds(args, env, runs)
        speedup = f"{NANOGPT_REFERENCE_S / median:5.1f}x vs 11 s" if "sample.py" in label else ""
        runs_text = ", ".join(f"{t:.2f}" for t in times)
        print(f"    {label:<52} {median:6.2f} s  {speedup}  (runs: {runs_text})", flush=True)
    loop = nanogpt_loop_seconds(out_dir, int(env.get("OMP_NUM_THREADS", 0)))
    print(f"    {'nanoGPT loop (GPT.generate per sample), here':<52} {loop:6.2f} s  in-process, without the imports "
          f"and loading (one run)")


def nanogpt_loop_seconds(out_dir, threads):
    """nanoGPT's own sampling loop measured here, in this process (imports and loading excluded): one sample after
    another, each re-reading its whole context for every token (GPT.generate)."""
    import torch

    from nanogpt.runs import load_run

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_run(out_dir, "cpu")
    model.eval()
    x = torch.tensor([tokenizer.encode("\n")])
    torch.manual_seed(1337)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(10):
            model.generate(x, 500, temperature=0.8, top_k=200)
    return time.perf_counter() - start


def bench_124m(threads, prompt_len=512, new_tokens=256, plain_steps=6):
    import torch

    from nanogpt.generate import KVCache, next_logits
    from nanogpt.model import GPT, GPTConfig

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()  # GPT-2 small: 12 layers, 12 heads, 768 wide, block 1024
    n_params = model.get_num_params() / 1e6
    idx = torch.randint(0, 50257, (1, prompt_len))
    print(f"\n(b) {n_params:.0f}M-parameter GPT-2 shape, random weights, fp32 CPU ({torch.get_num_threads()} threads): "
          f"{new_tokens} new tokens after a {prompt_len}-token prompt, greedy")

    with torch.no_grad():
        cache = KVCache.for_model(model)
        start = time.perf_counter()
        logits = next_logits(model, idx, cache)
        prefill = time.perf_counter() - start
        seq = idx
        for _ in range(new_tokens - 1):
            seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=1)
            logits = next_logits(model, seq, cache)
        total = time.perf_counter() - start
        decode_rate = (new_tokens - 1) / (total - prefill)

        # without a cache each step reads the whole context, which grows from 512 to 767 tokens; running all 256
        # steps would take minutes, so time the first few and scale each by its context length
        seconds_per_context_token = []
        seq = idx
        for _ in range(plain_steps):
            step_start = time.perf_counter()
            logits = next_logits(model, seq)
            seconds_per_context_token.append((time.perf_counter() - step_start) / seq.size(1))
            seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), dim=1)
    per_token = statistics.median(seconds_per_context_token[1:])  # the first step also warms up
    plain_total = per_token * sum(range(prompt_len, prompt_len + new_tokens))
    print(f"    {'KV cache':<28} {new_tokens / total:7.2f} tokens/s  ({total:.1f} s: prefill {prefill:.2f} s, "
          f"then {decode_rate:.1f} tokens/s)")
    print(f"    {'no cache (extrapolated)':<28} {new_tokens / plain_total:7.2f} tokens/s  ({plain_total:.1f} s "
          f"estimated from {plain_steps - 1} timed steps at ~{prompt_len} context, scaled by context length;")
    print(f"    {'':<28} attention grows faster than that, so the real no-cache time is a little longer)")
    print(f"    {'speed-up':<28} {plain_total / total:7.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="out-shakespeare-char", help="the CPU quick-start run (trained if missing)")
    parser.add_argument("--runs", type=int, default=3, help="runs per process measurement (the median is shown)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--train_iters", type=int, default=0, help="iterations when training a missing run "
                                                                    "(default: the config's 2000)")
    parser.add_argument("--skip", choices=["a", "b"], help="leave out one part")
    args = parser.parse_args()
    out_dir = str(Path(args.out_dir).resolve())
    env = environment(args.threads)
    sys.path.insert(0, str(REPO))
    if args.skip != "a":
        ensure_run(out_dir, env, args.train_iters)
        bench_processes(out_dir, args.runs, env)
    if args.skip != "b":
        bench_124m(args.threads)


if __name__ == "__main__":
    main()
