"""How fast sampling is: our sample.py beside upstream nanoGPT's, measured side by side, and the KV cache's gain.

(a) the whole `python sample.py --out_dir=RUN --device=cpu` process (imports, loading, 10 samples x 500 tokens)
    for the CPU quick-start model (4 layers, 128 wide, block 64): ours and upstream nanoGPT's sample.py, run from a
    scratch copy of a nanoGPT checkout (--reference), with the same Python and torch, on the very same ckpt.pt (ours
    with --checkpoint=last, the file upstream reads) and the same settings (its defaults: temperature 0.8,
    top_k 200, seed 1337, float32 on the CPU). The runs alternate between the programs, and each line shows the
    median of --runs runs and its ratio to upstream's median;
(b) a GPT-2-small-shaped model (124M parameters, block 1024, random weights): tokens/s for 256 new tokens after
    a 512-token prompt, cache against no cache.

    python benchmarks/sample_speed.py [--out_dir=RUN] [--reference=NANOGPT] [--runs=5] [--threads=N] [--skip=a|b]
                                      [--quick] [--notes=TEXT]

A missing run is trained first (data/shakespeare_char/prepare.py, then train.py with the CPU quick-start config).
--threads sets OMP_NUM_THREADS / torch's threads for every measurement; on a shared machine 1 is often fastest.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402
REFERENCE = REPO.parent / "shared" / "reference" / "nanoGPT"  # an upstream nanoGPT checkout, where there is one
UPSTREAM = "upstream nanoGPT sample.py"
# the floor of any sample.py built on torch: starting Python and importing it, ending as our commands end (os._exit,
# no interpreter teardown, which takes ~0.4 s more once torch is loaded)
IMPORTS = "imports alone: python -c 'import os, nanogpt.sample; os._exit(0)'"


def environment(threads, pythonpath):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
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


def upstream_copy(reference, out_dir):
    """A scratch copy of the nanoGPT checkout (never run in place), with the run's meta.pkl where upstream's
    sample.py looks for it: data/<dataset>/meta.pkl under the directory it runs in."""
    import torch

    scratch = Path(tempfile.mkdtemp(prefix="nanogpt-reference-"))
    shutil.copytree(reference, scratch / "nanoGPT", ignore=shutil.ignore_patterns(".git", "*.bin", "out*"))
    config = torch.load(Path(out_dir) / "ckpt.pt", map_location="cpu", weights_only=True, mmap=True)["config"]
    meta = REPO / config["data_dir"] / config["dataset"] / "meta.pkl"
    if meta.is_file():  # a BPE run has none, and upstream then decodes GPT-2 BPE, as it should
        (scratch / "nanoGPT" / "data" / config["dataset"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(meta, scratch / "nanoGPT" / "data" / config["dataset"] / "meta.pkl")
    return scratch


def seconds(cmd, cwd, env):
    """Wall time of one fresh process, output discarded."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_processes(out_dir, runs, threads, reference, quick=False):
    ours_env, upstream_env = environment(threads, REPO), environment(threads, None)
    sample = [sys.executable, "sample.py", f"--out_dir={out_dir}", "--device=cpu", "--checkpoint=last"]
    cases = [  # (label, command, directory, environment)
        (IMPORTS, [sys.executable, "-c", "import os, nanogpt.sample; os._exit(0)"], REPO, ours_env),
        ("ours: KV cache (default: window_shift = half the block)", sample, REPO, ours_env),
        ("ours: KV cache, --window_shift=1 (exact sliding window)", sample + ["--window_shift=1"], REPO, ours_env),
        ("ours: --kv_cache=False (batched, no cache)", sample + ["--kv_cache=False"], REPO, ours_env),
    ]
    if quick:  # the goal's comparison alone: default settings against upstream, and the import time
        cases = cases[:2]
    scratch = None
    if reference.is_dir():
        scratch = upstream_copy(reference, out_dir)
        upstream_sample = [sys.executable, "sample.py", f"--out_dir={out_dir}", "--device=cpu"]
        cases.insert(0, (UPSTREAM, upstream_sample, scratch / "nanoGPT", upstream_env))
    else:
        print(f"no nanoGPT checkout at {reference}: measuring ours only (pass --reference=PATH to compare)")
    try:
        times = {label: [] for label, *_ in cases}
        for _ in range(runs):  # alternate: each round runs every case once, so slow spells hit all of them
            for label, cmd, cwd, env in cases:
                times[label].append(seconds(cmd, cwd, env))
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    import torch

    print(f"\n(a) whole process: 10 samples x 500 tokens from {out_dir}/ckpt.pt, CPU, torch {torch.__version__}, "
          f"median of {runs} alternating runs")
    upstream = statistics.median(times[UPSTREAM]) if scratch else None
    figures = {}
    width = max(len(label) for label, *_ in cases)
    for label, *_ in cases:
        median = statistics.median(times[label])
        ratio = f"{upstream / median:5.2f}x as fast" if upstream and label.startswith("ours") else ""
        runs_text = ", ".join(f"{t:.2f}" for t in times[label])
        print(f"    {label:<{width}} {median:6.2f} s  {ratio:<22} (runs: {runs_text})", flush=True)
        figures[label] = {"median_s": median, "runs_s": times[label],
                          **({"times_as_fast_as_upstream": upstream / median} if ratio else {})}
    if upstream:  # no sampler that imports torch can beat this ratio on this machine
        ceiling = upstream / statistics.median(times[IMPORTS])
        print(f"    ceiling: upstream / imports alone = {ceiling:.2f}x (sampling in no time at all)")
        figures["ceiling_upstream_over_imports"] = ceiling
    return figures


def bench_124m(threads, prompt_len=512, new_tokens=256, plain_steps=6):
    import torch

    from nanogpt.generate import generate_ids
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
        start = time.perf_counter()
        generate_ids(model, idx, 1, temperature=0)  # the prefill and the first token alone
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        generate_ids(model, idx, new_tokens, temperature=0)  # the engine, as sample and serve run it
        total = time.perf_counter() - start
        decode_rate = (new_tokens - 1) / (total - prefill)

        # without a cache each step reads the whole context, which grows from 512 to 767 tokens; running all 256
        # steps would take minutes, so time the first few and scale each by its context length
        seconds_per_context_token = []
        seq = idx
        for _ in range(plain_steps):
            step_start = time.perf_counter()
            logits = model(seq)[0][:, -1]
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
    return {"kv_cache_tokens_per_s": new_tokens / total, "prefill_s": prefill, "decode_tokens_per_s": decode_rate,
            "no_cache_tokens_per_s_extrapolated": new_tokens / plain_total, "speed_up": plain_total / total}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="out-shakespeare-char", help="the CPU quick-start run (trained if missing)")
    parser.add_argument("--reference", default=str(REFERENCE), help="an upstream nanoGPT checkout (copied, not run "
                                                                    "in place)")
    parser.add_argument("--runs", type=int, default=5, help="runs per process measurement (the median is shown)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--train_iters", type=int, default=0, help="iterations when training a missing run "
                                                                    "(default: the config's 2000)")
    parser.add_argument("--skip", choices=["a", "b"], help="leave out one part")
    parser.add_argument("--quick", action="store_true", help="(a) with default settings only, beside upstream")
    parser.add_argument("--notes", default="", help="free text saved with the figures (e.g. 'machine shared')")
    args = parser.parse_args()
    out_dir = str(Path(args.out_dir).resolve())
    sys.path.insert(0, str(REPO))
    figures = {}
    if args.skip != "a":
        ensure_run(out_dir, environment(args.threads, REPO), args.train_iters)
        figures["whole_process"] = bench_processes(out_dir, args.runs, args.threads, Path(args.reference).resolve(),
                                                   args.quick)
    if args.skip != "b":
        figures["gpt2_124m"] = bench_124m(args.threads)
    write_results("sample_speed", figures, notes=args.notes)


if __name__ == "__main__":
    main()
