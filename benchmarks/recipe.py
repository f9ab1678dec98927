"""The modern recipe side by side: upstream nanoGPT's README CPU command, ours verbatim, and our fast CPU preset.

    python benchmarks/recipe.py [--repeats=3] [--reference=../shared/reference/nanoGPT] [--png=recipe.png]
                                [--runs=upstream,ours,fast] [--fast=--key=value ...]

Runs, back to back in one process tree and alternating within each repetition, (a) upstream nanoGPT's
`python train.py config/train_shakespeare_char.py --device=cpu ...` from a scratch copy of the checkout that
--reference names, (b) the same command on this project, (c) `train.py config/train_shakespeare_char_cpu_fast.py`.
Every log line is timestamped as it arrives, so each run gives a curve of val loss over wall time (process start to
the eval line). Prints per run and as medians over the repetitions: median ms/iter of (a) and (b), the final val
loss and wall time, the time to first reach val loss 1.88, and the val loss reached within (a)'s total wall time;
writes the curves as one PNG when matplotlib is installed. Data: the canonical tiny Shakespeare from ../shared.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CANONICAL = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
UPSTREAM = REPO.parent / "shared" / "reference" / "nanoGPT"  # the default --reference
README_ARGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
               "--lr_decay_iters=2000", "--dropout=0.0"]
TARGET = 1.88
EVAL_LINE = re.compile(r"^step (\d+): train loss (?:[\d.]+|n/a), val loss ([\d.]+)")
ITER_LINE = re.compile(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms")


def prepare(work, reference=None):
    """Our dataset of the canonical text and, given an upstream checkout, a scratch copy of it with its data
    prepared; returns (upstream dir or None, our data dir)."""
    if not CANONICAL.is_file():
        sys.exit(f"the canonical tiny Shakespeare is not at {CANONICAL}")
    data = work / "data"
    (data / "shakespeare_char").mkdir(parents=True)
    shutil.copy(CANONICAL, data / "shakespeare_char" / "input.txt")
    subprocess.run([sys.executable, "-m", "nanogpt.cli", "prepare", "shakespeare_char", f"--data_dir={data}"],
                   cwd=REPO, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if reference is None:
        return None, data
    upstream = work / "upstream"
    shutil.copytree(reference, upstream, ignore=shutil.ignore_patterns(".git", "out*"))
    shutil.copy(CANONICAL, upstream / "data" / "shakespeare_char" / "input.txt")
    subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=upstream, check=True,
                   capture_output=True)
    return upstream, data


def commands(upstream, data, out, fast_args, threads):
    # our runs get upstream's thread count (PyTorch's default: every core; one under --clock=cpu): left to `auto`,
    # they would read the load average the run before them left and take fewer
    ours = [f"--data_dir={data}", f"--threads={threads}"]
    return {
        "upstream": ([sys.executable, "train.py", "config/train_shakespeare_char.py", *README_ARGS,
                      f"--out_dir={out / 'upstream'}"], upstream),
        "ours": ([sys.executable, "train.py", "config/train_shakespeare_char.py", *README_ARGS, *ours,
                  f"--out_dir={out / 'ours'}"], REPO),
        "fast": ([sys.executable, "train.py", "config/train_shakespeare_char_cpu_fast.py", *ours, *fast_args,
                  f"--out_dir={out / 'fast'}"], REPO),
    }


def cpu_seconds(pid):
    """User + system CPU time a running process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_jobs(run, jobs, clock):
    """run(job) for every job: all at once under clock='cpu' (each on its own thread, timed in its CPU time), else
    one after the other, so wall times do not measure each other."""
    if clock == "cpu":
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(run, jobs))
    else:
        for job in jobs:
            run(job)


def timed_run(cmd, cwd, clock="wall"):
    """Run a training command; returns {wall_s, curve [(seconds, val loss, step)], ms [per logged iteration]}.
    clock='cpu' runs it on one thread and reads the seconds as the CPU time it has used: on a machine shared with
    other work that is close to what its wall time alone would be, where wall time measures the neighbours."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    if clock == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    curve, ms, tail, cpu = [], [], [], 0.0
    for line in proc.stdout:
        if clock == "cpu":
            cpu = cpu_seconds(proc.pid)
        now = cpu if clock == "cpu" else time.perf_counter() - t0
        tail = (tail + [line])[-20:]
        if m := EVAL_LINE.match(line):
            curve.append((now, float(m.group(2)), int(m.group(1))))
        elif m := ITER_LINE.match(line):
            ms.append(float(m.group(1)))
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    if clock == "cpu":
        # the training steps' CPU time between the first and last evaluation, per step (evaluations included)
        (t_first, _, s_first), (t_last, _, s_last) = curve[0], curve[-1]
        ms = [1000 * (t_last - t_first) / max(1, s_last - s_first)]
    return {"wall_s": cpu if clock == "cpu" else time.perf_counter() - t0, "curve": curve, "ms": ms}


def step_times(log):
    """ms of every logged training iteration in the text of a training log."""
    return [float(m.group(1)) for m in map(ITER_LINE.match, log.splitlines()) if m]


def val_losses(log):
    """Every val loss a training log reports, in order."""
    return [float(m.group(2)) for m in map(EVAL_LINE.match, log.splitlines()) if m]


def time_to(curve, target):
    return next((t for t, v, _ in curve if v <= target), float("nan"))


def loss_within(curve, seconds):
    """The last val loss measured by `seconds` into the run (nan if none was)."""
    return next((v for t, v, _ in reversed(curve) if t <= seconds), float("nan"))


def figures(run, budget):
    return {"ms/iter": statistics.median(run["ms"]) if run["ms"] else float("nan"),
            "final val": run["curve"][-1][1], "wall s": run["wall_s"],
            f"s to {TARGET}": time_to(run["curve"], TARGET), "val @ (a) wall": loss_within(run["curve"], budget)}


def plot(results, path, xlabel):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"upstream": "tab:gray", "ours": "tab:blue", "fast": "tab:red"}
    for name, runs in results.items():
        for i, run in enumerate(runs):
            t, v, _ = zip(*run["curve"])
            ax.plot(t, v, color=colors[name], alpha=0.8, label=name if i == 0 else None)
    ax.axhline(TARGET, color="black", lw=0.5, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("val loss")
    ax.set_ylim(1.4, 3.0)
    ax.set_title(f"tiny Shakespeare (char): val loss over {xlabel}")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"curves written to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; medians are over these")
    parser.add_argument("--reference", default=str(UPSTREAM),
                        help="an upstream nanoGPT checkout")
    parser.add_argument("--png", default="recipe.png", help="where to write the curves")
    parser.add_argument("--runs", default="upstream,ours,fast", help="which runs, comma-separated")
    parser.add_argument("--fast", action="append", default=[], help="an extra --key=value for the fast preset")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="'cpu': one thread per run, time read as the CPU time each run used, and every run of "
                             "every repetition started at once (for a machine busy with other work)")
    args = parser.parse_args()
    names = args.runs.split(",")

    work = Path(tempfile.mkdtemp(prefix="nanogpt-recipe-"))
    try:
        upstream, data = prepare(work, Path(args.reference))
        load_at_start = os.getloadavg()[0]  # what else the machine was doing before this benchmark loaded it
        results = {name: [None] * args.repeats for name in names}
        jobs = [(r, name) for r in range(args.repeats) for name in names]

        def run(job):
            r, name = job
            threads = 1 if args.clock == "cpu" else os.cpu_count()
            results[name][r] = timed_run(*commands(upstream, data, work / f"out-{r}", args.fast, threads)[name],
                                         args.clock)

        run_jobs(run, jobs, args.clock)
        figures = report(results, names, args.clock)
        notes = (f"{args.repeats} repetition(s), medians; seconds of {args.clock} time"
                 + ("; one thread per run, all runs started at once" if args.clock == "cpu" else "")
                 + f"; data: the canonical tiny Shakespeare; 1-minute load average {load_at_start:.2f} before the "
                 "first run (other work on the machine)")
        print(f"results written to {write_results('recipe', figures, notes=notes)}")
        plot(results, args.png, "CPU time, one thread (s)" if args.clock == "cpu" else "wall time (s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results, names, clock):
    repeats = len(results[names[0]])
    budgets = [run["wall_s"] for run in results["upstream"]] if "upstream" in names else [float("inf")] * repeats
    per_run = {name: [figures(run, budget) for run, budget in zip(results[name], budgets)] for name in names}
    for r in range(repeats):
        for name in names:
            print(f"repeat {r + 1} {name:<9}" + "  ".join(f"{k} {v:.3f}" for k, v in per_run[name][r].items()))
    table = {name: {k: statistics.median(f[k] for f in runs) for k in runs[0]} for name, runs in per_run.items()}
    print(f"\nmedians over {repeats} repetition(s), seconds of {clock} time; (a) upstream's total time "
          "is the budget")
    keys = list(next(iter(table.values())))
    print(f"{'run':<10}" + "".join(f"{k:>17}" for k in keys))
    for name in names:
        print(f"{name:<10}" + "".join(f"{table[name][k]:>17.3f}" for k in keys))
    if "upstream" in names and "ours" in names:
        print(f"ours/upstream median ms/iter: {table['ours']['ms/iter'] / table['upstream']['ms/iter']:.3f}")
    if "upstream" in names and "fast" in names:
        key = f"s to {TARGET}"
        upstream_needs = table["upstream"][key]
        if upstream_needs != upstream_needs:  # nan: it never got there, so the ratio to its whole run is an upper bound
            upstream_needs, bound = table["upstream"]["wall s"], f" (upstream never reached {TARGET}: its whole run)"
        else:
            bound = ""
        print(f"fast/upstream time to {TARGET}: {table['fast'][key] / upstream_needs:.3f}{bound} (acceptance: <= 0.25)")
        print(f"fast val loss within upstream's wall time: {table['fast']['val @ (a) wall']:.3f} (acceptance: <= 1.60)")
    # nan (never reached) is stored as null: JSON has no nan
    return {"runs": {name: {k: (round(v, 4) if v == v else None) for k, v in table[name].items()} for name in names}}


if __name__ == "__main__":
    main()
