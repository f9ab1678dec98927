"""The ablation behind docs/concepts/modern-recipe.md: each modern-recipe switch alone on nanoGPT's CPU quick start,
and the fast preset, against the GPT-2 baseline.

    python benchmarks/ablation.py [--max_iters=2000] [--repeats=1] [--only=rope,muon]

Every run is nanoGPT's README CPU command (4 layers of 128, block 64, batch 12, the same schedule) on the canonical
tiny Shakespeare with one switch changed; `preset` is config/train_shakespeare_char_cpu_fast.py as it stands. Prints
for each: the final val loss after max_iters steps (equal steps), median ms/iter, wall time, and the val loss it
had reached within the baseline's wall time (equal time). Runs alternate within each repetition; medians over them.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402
from recipe import README_ARGS, REPO, loss_within, prepare, timed_run  # noqa: E402

SWITCHES = {
    "baseline": [],
    "rope": ["--position=rope"],
    "rmsnorm": ["--norm=rmsnorm"],
    "qk_norm": ["--qk_norm=True"],
    "relu2": ["--activation=relu2"],
    "swiglu": ["--activation=swiglu"],
    "untied": ["--tie_embeddings=False"],
    "zero_init": ["--zero_init_proj=True"],
    "softcap": ["--logit_softcap=15.0"],
    "muon": ["--optimizer=muon"],
    "wsd": ["--lr_schedule=wsd"],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_iters", type=int, default=2000, help="steps per run (the schedule is fitted to them)")
    parser.add_argument("--repeats", type=int, default=1, help="repetitions; medians are over these")
    parser.add_argument("--only", default="", help="comma-separated switches to run, in this order (the baseline "
                        "always runs first)")
    args = parser.parse_args()
    names = ["baseline"] + [n for n in (args.only.split(",") if args.only else [*SWITCHES, "preset"])
                            if n != "baseline"]

    work = Path(tempfile.mkdtemp(prefix="nanogpt-ablation-"))
    try:
        _, data = prepare(work)
        rows = {name: [] for name in names}
        for r in range(args.repeats):
            budget = None
            for name in names:
                out = work / f"out-{r}-{name}"
                if name == "preset":
                    cmd = ["train.py", "config/train_shakespeare_char_cpu_fast.py"]
                else:
                    cmd = ["train.py", "config/train_shakespeare_char.py", *README_ARGS, *SWITCHES[name],
                           f"--max_iters={args.max_iters}", f"--lr_decay_iters={args.max_iters}"]
                run = timed_run([sys.executable, *cmd, f"--data_dir={data}", f"--out_dir={out}",
                                 "--eval_interval=250"], REPO)
                budget = budget or run["wall_s"]
                row = {"final val": run["curve"][-1][1], "ms/iter": statistics.median(run["ms"]),
                       "wall s": run["wall_s"], "val @ baseline wall": loss_within(run["curve"], budget)}
                rows[name].append(row)
                print(f"repeat {r + 1} {name:<10}" + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
                shutil.rmtree(out, ignore_errors=True)
        print(f"\nmedians over {args.repeats} repetition(s), {args.max_iters} iterations (preset: its own)")
        keys = list(rows["baseline"][0])
        print(f"{'switch':<12}" + "".join(f"{k:>22}" for k in keys))
        for name in names:
            print(f"{name:<12}" + "".join(f"{statistics.median(r[k] for r in rows[name]):>22.3f}" for k in keys))
        figures = {"runs": {name: {k: (round(v, 3) if v == v else None)  # nan (never reached) as null
                                   for k in keys for v in [statistics.median(r[k] for r in rows[name])]}
                            for name in names}}
        notes = f"{args.repeats} repetition(s), medians; {args.max_iters} iterations (preset: its own); wall clock"
        print(f"results written to {write_results('ablation', figures, notes=notes)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
