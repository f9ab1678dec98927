"""Where a training step's time goes: upstream nanoGPT's README CPU command against ours, under torch.profiler.

    python benchmarks/profile_step.py [--steps=200] [--rows=18] [--reference=../shared/reference/nanoGPT]

Each command runs twice in a fresh process under torch.profiler (CPU activity): once for 50 iterations and once for
50 + --steps. The difference between the two is what --steps steady-state training steps cost, without the start-up
(imports, data, model) or the evaluations (eval_iters=1 in both), so the figures are per step. Prints, per step, the
wall time of the profiled run, the time inside PyTorch operators (self time, summed over every operator) and the rest
(Python, the training loop, the profiler's own bookkeeping), then the operators that cost the most, side by side.
Data: the canonical tiny Shakespeare from ../shared. The profiler slows both runs alike; compare the columns, and take
real step times from benchmarks/recipe.py.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import README_ARGS, REPO, UPSTREAM, prepare  # noqa: E402

WARMUP_ITERS = 50

# Runs in the child: the training command under the profiler, then every operator's self time as JSON on stdout's
# last line. runpy runs train.py as `python train.py ...` would, in this process; our train.py ends the process
# with os._exit (skipping interpreter teardown), which here must return to the profiler instead.
PROFILED = """
import json, os, runpy, sys, time
import torch
from torch.profiler import ProfilerActivity, profile
def exit_to_profiler(status):
    raise SystemExit(status)
os._exit = exit_to_profiler
sys.argv = sys.argv[1:]
with profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    wall = time.perf_counter() - t0
ops = {e.key: [e.self_cpu_time_total, e.count] for e in prof.key_averages()}
print(json.dumps({"wall_us": wall * 1e6, "ops": ops}))
"""


def profiled_run(cmd, cwd, out_dir, iters):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [*cmd, f"--out_dir={out_dir}-{iters}", f"--max_iters={iters}", "--eval_iters=1",
            f"--eval_interval={iters}", "--lr_decay_iters=2000"]
    proc = subprocess.run([sys.executable, "-c", PROFILED, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def per_step(short, long, steps):
    """(wall ms, {operator: (ms, calls)}) per step: the long run minus the short one, over the extra steps."""
    ops = {}
    for name, (us, calls) in long["ops"].items():
        us0, calls0 = short["ops"].get(name, (0, 0))
        ops[name] = ((us - us0) / steps / 1000, (calls - calls0) / steps)
    return (long["wall_us"] - short["wall_us"]) / steps / 1000, ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steady-state steps measured (beyond the first 50)")
    parser.add_argument("--rows", type=int, default=18, help="how many operators to list")
    parser.add_argument("--reference", default=str(UPSTREAM),
                        help="an upstream nanoGPT checkout")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanogpt-profile-"))
    try:
        upstream, data = prepare(work, Path(args.reference))
        runs = {
            "upstream": (["train.py", "config/train_shakespeare_char.py", *README_ARGS], upstream),
            "ours": (["train.py", "config/train_shakespeare_char.py", *README_ARGS, f"--data_dir={data}"], REPO),
        }
        steps = {}
        for name, (cmd, cwd) in runs.items():
            short = profiled_run(cmd, cwd, work / f"out-{name}", WARMUP_ITERS)
            long = profiled_run(cmd, cwd, work / f"out-{name}", WARMUP_ITERS + args.steps)
            steps[name] = per_step(short, long, args.steps)
            print(f"{name}: profiled", flush=True)
        report(steps, args.rows, args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(steps, rows, n):
    names = list(steps)
    print(f"\nper training step, the mean of {n} steady-state steps under the profiler (ms)")
    print(f"{'':<44}" + "".join(f"{name:>20}" for name in names))
    walls = {name: steps[name][0] for name in names}
    in_ops = {name: sum(ms for ms, _ in steps[name][1].values()) for name in names}
    print(f"{'wall time':<44}" + "".join(f"{walls[name]:>20.2f}" for name in names))
    print(f"{'inside PyTorch operators':<44}" + "".join(f"{in_ops[name]:>20.2f}" for name in names))
    print(f"{'outside them (Python, loop, profiler)':<44}" + "".join(f"{walls[n_] - in_ops[n_]:>20.2f}"
                                                                      for n_ in names))
    print(f"{'operator calls':<44}" + "".join(f"{sum(c for _, c in steps[name][1].values()):>20.0f}"
                                              for name in names))
    costliest = sorted({op for name in names for op in steps[name][1]},
                       key=lambda op: -max(steps[name][1].get(op, (0, 0))[0] for name in names))[:rows]
    print(f"\n{'operator (self time ms / calls per step)':<60}" + "".join(f"{name:>20}" for name in names))
    for op in costliest:
        cells = "".join(f"{ms:>12.2f} / {calls:>5.0f}" for ms, calls in (steps[name][1].get(op, (0, 0))
                                                                         for name in names))
        print(f"{op[:59]:<60}{cells}")


if __name__ == "__main__":
    main()
