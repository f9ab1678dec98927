"""Does the learning-rate rule transfer? The CPU fast preset at another shape, with the rule's rates, against a
learning-rate sweep at that shape.

    python benchmarks/lr_transfer.py [--width=256] [--batch=48] [--max_iters=650] [--multipliers=0.5,1,2]
                                     [--jobs=2] [--control=True] [--eval_iters=40]

Trains `config/train_shakespeare_char_cpu_fast.py` at n_embd=--width and batch_size=--batch with
`--lr_rule=transfer` from the shape its rates were tuned at (width 128, 24 x 64 tokens a step, 650 steps), once per
multiplier of every peak rate the rule chose (muon_lr, learning_rate, min_lr and any other rate the preset sets,
together; 1 is the rule's own run),
and, with --control, once with the preset's rates as they are (no rule). Prints each run's final val loss, the
best of the sweep, and how far the rule's run is from it: the rule transfers if it is within 2% of the best.
--max_iters shortens every run alike (the rule then also scales the rates for the shorter run). The runs are
seeded, one thread each, --jobs at a time; only losses are compared, so the machine's load does not enter them.
Data: the canonical tiny Shakespeare from ../shared. Writes benchmarks/results/lr_transfer.json.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import prepare  # noqa: E402
from results import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRESET = "config/train_shakespeare_char_cpu_fast.py"
# the shape the preset's rates were tuned at (docs/concepts/modern-recipe.md, "How the CPU preset was chosen")
TUNED = dict(width=128, batch_tokens=24 * 64, iters=650)
RULE = ["--lr_rule=transfer", f"--lr_ref_width={TUNED['width']}", f"--lr_ref_batch_tokens={TUNED['batch_tokens']}",
        f"--lr_ref_iters={TUNED['iters']}"]
TOLERANCE = 0.02
RATES = ("muon_lr", "learning_rate", "min_lr", "embedding_lr", "scalar_lr")  # what a sweep multiplies
VAL_LINE = re.compile(r"^step (\d+): train loss \S+, val loss ([\d.]+)")
RULE_LINE = re.compile(r"^learning-rate rule .*")


def preset_rates():
    """The preset's peak rates that are set ({setting: rate}), read the way train.py reads them."""
    from nanogpt.config import load_config

    cfg = load_config([str(REPO / PRESET)])
    return {name: getattr(cfg, name) for name in RATES if getattr(cfg, name)}


def run(name, args, data, out, eval_iters):
    """Train once; returns {name, val (final val loss), rule (the rule's log line or ''), seconds}."""
    cmd = [sys.executable, "train.py", PRESET, *args, f"--data_dir={data}", f"--out_dir={out / name}",
           "--threads=1", "--eval_train=False", f"--eval_iters={eval_iters}", "--log_interval=50"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    lines = proc.stdout.splitlines()
    vals = [float(m.group(2)) for line in lines if (m := VAL_LINE.match(line))]
    rule = next((line for line in lines if RULE_LINE.match(line)), "")
    return {"name": name, "args": args, "val": vals[-1], "rule": rule,
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--max_iters", type=int, default=TUNED["iters"])
    parser.add_argument("--multipliers", default="0.5,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--control", type=lambda s: s == "True", default=True)
    parser.add_argument("--eval_iters", type=int, default=40)
    args = parser.parse_args()
    multipliers = [float(m) for m in args.multipliers.split(",")]
    if 1.0 not in multipliers:
        sys.exit("--multipliers must include 1 (the rule's own run)")
    shape = [f"--n_embd={args.width}", f"--batch_size={args.batch}", f"--max_iters={args.max_iters}",
             f"--lr_decay_iters={args.max_iters}", f"--eval_interval={args.max_iters}"]
    rates = preset_rates()
    jobs = [(f"rule x{m:g}", shape + RULE + [f"--{k}={v * m:g}" for k, v in rates.items()]) for m in multipliers]
    if args.control:
        jobs.append(("preset rates, no rule", shape + ["--lr_rule=off"]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, data = prepare(work)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda job: run(*job, data, work / "out", args.eval_iters), jobs))
    sweep = results[:len(multipliers)]
    best = min(sweep, key=lambda r: r["val"])
    rule_run = sweep[multipliers.index(1.0)]
    gap = rule_run["val"] / best["val"] - 1
    print(f"shape: width {args.width}, batch {args.batch}, {args.max_iters} steps (rates tuned at width "
          f"{TUNED['width']}, batch {TUNED['batch_tokens'] // 64}, {TUNED['iters']} steps)")
    print(rule_run["rule"])
    print("| run | final val loss | seconds |\n|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['val']:.4f} | {r['seconds']:.0f} |")
    verdict = "transfers" if gap <= TOLERANCE else "does NOT transfer"
    print(f"best of the sweep: {best['name']} {best['val']:.4f}; the rule's run is {gap:+.2%} from it: the rule "
          f"{verdict} (tolerance {TOLERANCE:.0%})")
    figures = {
        "runs": {r["name"]: {"final val loss": r["val"], "vs best": f"{r['val'] / best['val'] - 1:+.2%}",
                             "seconds": r["seconds"]} for r in results},
        "shape": f"width {args.width}, batch {args.batch}, {args.max_iters} steps",
        "tuned at": f"width {TUNED['width']}, batch {TUNED['batch_tokens'] // 64}, {TUNED['iters']} steps",
        "rule's rates": rule_run["rule"].split(": peak rates ")[-1],
        "best of the sweep": best["name"], "rule vs best": f"{gap:+.2%}", "within 2%": gap <= TOLERANCE,
    }
    notes = (f"seeded runs, one thread each, {args.jobs} at a time; only final val losses (eval_iters="
             f"{args.eval_iters}, batch {args.batch}) are compared, so the machine's load does not enter them")
    name = "lr_transfer" if (args.width, args.batch) == (256, 48) else f"lr_transfer_w{args.width}_b{args.batch}"
    print(f"results: {write_results(name, figures, notes=notes)}")


if __name__ == "__main__":
    main()
