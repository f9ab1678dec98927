"""What the metrics file, gradient norm and ETA cost per training step: the quick-start command, this checkout
against another one (the code before them), run alternately.

    git archive main | tar -x -C /tmp/before   # or any checkout without the change
    python benchmarks/metrics_overhead.py --before=/tmp/before [--runs=3] [--max_iters=300]

Each run is `python train.py config/train_shakespeare_char_cpu.py` shortened to max_iters, with log_interval=1
(every step logged and written to metrics.jsonl: the worst case) and one thread, on the dataset in this checkout's
data/shakespeare_char (prepare it first). Prints each run's median ms/iter, then the median of those medians per
side and their ratio; and, measured in this process (steadier on a busy machine), what writing one metrics.jsonl
line costs.
"""

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import REPO, step_times  # noqa: E402


def median_ms(code_dir, data_dir, out_dir, max_iters, extra, threads):
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char_cpu.py", f"--max_iters={max_iters}",
           f"--lr_decay_iters={max_iters}", f"--eval_interval={max_iters}", "--log_interval=1",
           f"--data_dir={data_dir}", f"--out_dir={out_dir}", *extra]
    # one thread: on a shared machine two threads spin-waiting on each other make steps many times slower
    env = {"PYTHONPATH": str(code_dir), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=code_dir, capture_output=True, text=True, env=env)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} in {code_dir} failed:\n{proc.stderr[-2000:]}")
    times = step_times(proc.stdout)
    # the first steps warm up; CPU seconds of the whole run are steadier than wall time on a busy machine
    return statistics.median(times[5:]), cpu_s


def metrics_line_us(folder, lines=2000):
    """Microseconds to write one `iter` line of metrics.jsonl (JSON encoding, write, flush)."""
    sys.path.insert(0, str(REPO))
    from nanogpt.metrics import MetricsWriter

    writer = MetricsWriter(folder)
    t0 = time.perf_counter()
    for i in range(lines):
        writer.write("iter", i, loss=2.5, lr=1e-3, tok_s=21000.0, ms=36.0, mfu=0.03, grad_norm=0.5, tokens=768 * i)
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed / lines * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a checkout of the code without the change")
    parser.add_argument("--runs", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--max_iters", type=int, default=300)
    parser.add_argument("--extra", default="", help="more overrides for both sides, space-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    args = parser.parse_args()
    data_dir = REPO / "data"
    work = Path(tempfile.mkdtemp(prefix="nanogpt-metrics-overhead-"))
    results = {"before": [], "after": []}
    cpu = {"before": [], "after": []}
    try:
        for r in range(args.runs):
            for side, code in (("before", Path(args.before).resolve()), ("after", REPO)):
                ms, cpu_s = median_ms(code, data_dir, work / f"{side}-{r}", args.max_iters, args.extra.split(),
                                      args.threads)
                results[side].append(ms)
                cpu[side].append(cpu_s)
                print(f"run {r + 1} {side:<6}: median {ms:.2f} ms/iter, {cpu_s:.2f} CPU s for the run", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    before, after = statistics.median(results["before"]), statistics.median(results["after"])
    print(f"\nmedian of medians: before {before:.2f} ms/iter, after {after:.2f} ms/iter, ratio {after / before:.3f}")
    cpu_before, cpu_after = statistics.median(cpu["before"]), statistics.median(cpu["after"])
    print(f"median CPU time per run: before {cpu_before:.2f} s, after {cpu_after:.2f} s, "
          f"ratio {cpu_after / cpu_before:.3f}")
    with tempfile.TemporaryDirectory() as folder:
        print(f"one metrics.jsonl line: {metrics_line_us(folder):.1f} us")


if __name__ == "__main__":
    main()
