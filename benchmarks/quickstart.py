"""The quick-start benchmark: nanoGPT's README CPU command, run here, against nanoGPT's figures on the same machine.

    python benchmarks/quickstart.py [--repeats=1] [--max_iters=2000]

Prepares character-level tiny Shakespeare into a temporary folder (the canonical input.txt from ../shared when it is
there, else whatever the recipe finds), runs `python train.py config/train_shakespeare_char.py --device=cpu ...`
with the exact README arguments, then `python sample.py`, and prints median ms/iter, final val loss and sample
time, and saves them in benchmarks/results/quickstart.json. Comparisons with upstream nanoGPT run it side by side:
benchmarks/recipe.py (training) and benchmarks/sample_speed.py (sampling).
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import CANONICAL, README_ARGS, REPO, step_times, val_losses  # noqa: E402
from results import write_results  # noqa: E402


def run(cmd, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="training runs to take medians over")
    parser.add_argument("--max_iters", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanogpt-quickstart-"))
    try:
        data = work / "data" / "shakespeare_char"
        data.mkdir(parents=True)
        source = "canonical tiny shakespeare" if CANONICAL.is_file() else "the recipe's own source (not canonical!)"
        if CANONICAL.is_file():
            shutil.copy(CANONICAL, data / "input.txt")
        run([sys.executable, "-m", "nanogpt.cli", "prepare", "shakespeare_char", f"--data_dir={work / 'data'}"],
            REPO)

        medians, final_vals, train_times, sample_times = [], [], [], []
        for r in range(args.repeats):
            out_dir = work / f"out-{r}"
            log, train_s = run([sys.executable, "train.py", "config/train_shakespeare_char.py", *README_ARGS,
                                f"--max_iters={args.max_iters}", f"--data_dir={work / 'data'}",
                                f"--out_dir={out_dir}"], REPO)
            medians.append(statistics.median(step_times(log)))
            final_vals.append(val_losses(log)[-1])
            train_times.append(train_s)
            _, sample_s = run([sys.executable, "sample.py", f"--out_dir={out_dir}", "--device=cpu"], REPO)
            sample_times.append(sample_s)
            print(f"run {r + 1}: median {medians[-1]:.2f} ms/iter, val loss {final_vals[-1]:.4f}, "
                  f"train {train_s:.1f} s, sample {sample_s:.1f} s", flush=True)

        ours = {"ms_per_iter": statistics.median(medians), "val_loss": statistics.median(final_vals),
                "train_s": statistics.median(train_times), "sample_s": statistics.median(sample_times)}
        print(f"\ndata: {source}; {args.max_iters} iterations; medians over {args.repeats} run(s)")
        labels = {"ms_per_iter": "median ms/iter", "val_loss": "final val loss", "train_s": "train.py wall time (s)",
                  "sample_s": "sample.py wall time (s)"}
        for key, label in labels.items():
            print(f"{label:<28}{ours[key]:>12.3f}")
        notes = f"data: {source}; {args.max_iters} iterations; medians over {args.repeats} run(s); wall clock"
        path = write_results("quickstart", {labels[k]: round(v, 4) for k, v in ours.items()}, notes=notes)
        print(f"results written to {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
