"""CPU threads against step time: `python bench.py` for a tiny model and the CPU quick-start model, at --threads=1,
at 2 and at 0 (auto: PyTorch's default capped at the cores other processes leave idle), in alternating fresh
processes, medians. This is the measurement behind `threads`' default (nanogpt/runtime.py: resolve_threads).

    python benchmarks/threads.py [--runs=3] [--threads=1,2,0] [--notes=...]

Run it on a busy machine too: there the oversubscribed threads wait for each other.
"""

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402

MODELS = {  # name -> bench.py settings
    "tiny (2 layers, 32 wide, block 16)": ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
                                           "--batch_size=4", "--vocab_size=65"],
    "quick-start (4 layers, 128 wide, block 64)": ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=64",
                                                   "--batch_size=12", "--vocab_size=65"],
}
MS_PER_ITER = re.compile(r"median over \d+ steps: ([\d.]+) ms/iter")


def ms_per_iter(model_args, threads):
    cmd = [sys.executable, "bench.py", "--device=cpu", "--compile=False", "--dtype=float32", "--warmup_steps=3",
           "--steps=15", f"--threads={threads}", *model_args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True, timeout=600).stdout
    return float(MS_PER_ITER.search(out).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", default="1,2,0", help="thread counts to compare (0: auto)")
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    figures = {}
    for name, model_args in MODELS.items():
        times = {t: [] for t in counts}
        for _ in range(args.runs):  # alternate, so a slow spell hits every thread count
            for t in counts:
                times[t].append(ms_per_iter(model_args, t))
        print(f"{name}: median ms/iter over {args.runs} alternating runs")
        for t in counts:
            print(f"    threads={t} {'(auto)' if t == 0 else '':<7} {statistics.median(times[t]):8.2f} ms  "
                  f"(runs: {', '.join(f'{x:.1f}' for x in times[t])})", flush=True)
        figures[name] = {f"threads_{t}": {"median_ms": statistics.median(times[t]), "runs_ms": times[t]}
                         for t in counts}
    write_results("threads", figures, notes=args.notes)


if __name__ == "__main__":
    main()
