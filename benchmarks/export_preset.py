"""The best exportable preset beside the best overall: config/train_shakespeare_char_cpu_export.py against
config/train_shakespeare_char_cpu_fast.py on tiny Shakespeare, and a run of the first exported and checked.

    python benchmarks/export_preset.py [--repeats=2] [--clock=cpu] [--variants=1]

Trains both presets on the canonical tiny Shakespeare, alternating within each repetition (or, with --clock=cpu, all
runs at once on one thread each, timed by the CPU time each used: on a machine busy with other work that is close
to what each would take alone), and, --variants times each, the fast preset with the other sets of switches that
export (VARIANTS), to show why the exportable preset keeps the ones it does. Prints per run and as medians: the
final val loss (equal iterations: every run takes the same steps), the time taken, ms per step, and the val loss
each had reached at the fast preset's time (equal time). Then exports the last run of the exportable preset with
`nanogpt export` and checks it with transformers alone, offline, without remote code: the class it loads as, the
largest difference between its logits and ours on a validation window, whether greedy text to the end of the
context equals `nanogpt sample --temperature=0`, and how many tokens the text-generation pipeline gives when asked
past the context.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from recipe import REPO, prepare, run_jobs, timed_run  # noqa: E402
from results import write_results  # noqa: E402

# benchmarks/tokenizers.py would shadow Hugging Face's tokenizers package, which transformers imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCHMARKS]

PRESETS = {"fast": "config/train_shakespeare_char_cpu_fast.py", "export": "config/train_shakespeare_char_cpu_export.py"}
# the fast preset's other exportable versions: each gives up a different pair of the three switches no standard
# architecture holds together (LayerNorm, QK-norm, soft-cap; see docs/code-analysis/hf-interop.md)
VARIANTS = {"fast as VaultGemma (RMSNorm, soft-cap, no QK-norm)": ["--norm=rmsnorm", "--qk_norm=False"],
            "fast as Nemotron (LayerNorm, no QK-norm, no soft-cap)": ["--qk_norm=False", "--logit_softcap=0.0"]}
PROMPT = "ROMEO:\n"


def train(name, data, out, clock):
    preset, extra = (PRESETS["fast"], VARIANTS[name]) if name in VARIANTS else (PRESETS[name], [])
    cmd = [sys.executable, "train.py", preset, f"--data_dir={data}", *extra, f"--out_dir={out}"]
    return timed_run(cmd, REPO, clock)


def loss_at(curve, seconds):
    """The val loss at `seconds` into a run, interpolated linearly between the two evaluations around it (an
    evaluation every 50 of 650 steps is too coarse to read it off the last one before); the last one past its end."""
    for (t0, v0, _), (t1, v1, _) in zip(curve, curve[1:]):
        if t0 <= seconds <= t1:
            return v0 + (v1 - v0) * (seconds - t0) / (t1 - t0)
    return curve[-1][1] if seconds > curve[-1][0] else float("nan")


def figures(run, budget):
    _, final, steps = run["curve"][-1]
    return {"steps": steps, "final val": final, "seconds": run["wall_s"],
            "ms/step": statistics.median(run["ms"]) if run["ms"] else float("nan"),
            "val at fast's time": loss_at(run["curve"], budget)}


def check_export(run_dir, data, folder):
    """Export a run and check it with transformers alone (offline, no remote code); returns the figures."""
    import numpy as np
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from nanogpt.runs import load_run
    from nanogpt.sample import SampleConfig, sample

    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "nanogpt.cli", "export", f"--out_dir={run_dir}", f"--to={folder}"],
                   cwd=REPO, check=True, env=env)
    os.environ["HF_HUB_OFFLINE"] = "1"
    ours, tokenizer = load_run(run_dir, "cpu")
    block = ours.config.block_size
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    val = np.memmap(data / "shakespeare_char" / "val.bin", dtype=np.uint16, mode="r")
    idx = torch.from_numpy(val[:block].astype(np.int64))[None]
    with torch.no_grad():
        diff = (ours(idx, targets=idx)[0] - theirs(idx).logits).abs().max().item()
    n = block - len(tokenizer.encode(PROMPT))  # greedy text to the end of the context, where the two must agree
    (text,) = sample(SampleConfig(out_dir=str(run_dir), start=PROMPT, num_samples=1, max_new_tokens=n, temperature=0,
                                  device="cpu", dtype="float32"), write=lambda *a: None)
    generate = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    their_text = generate(PROMPT, max_new_tokens=n, do_sample=False)[0]["generated_text"]
    past = generate(PROMPT, max_new_tokens=2 * block, do_sample=False)[0]["generated_text"]
    return {"class": type(theirs).__name__, "largest logit difference": diff, "greedy tokens compared": n,
            "greedy text equal": their_text == text,
            "pipeline tokens asked past the context": 2 * block,
            "pipeline tokens given": len(tokenizer.encode(past)) - len(tokenizer.encode(PROMPT))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="repetitions; medians are over these")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="'cpu': one thread per run, all started at once, timed by the CPU time each used")
    parser.add_argument("--variants", type=int, default=1, help="runs of each of VARIANTS (0: none)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nanogpt-export-preset-"))
    load_at_start = os.getloadavg()[0]  # what else the machine was doing before this benchmark loaded it
    try:
        _, data = prepare(work)
        jobs = [(r, name) for r in range(args.repeats) for name in PRESETS]
        jobs += [(r, name) for r in range(args.variants) for name in VARIANTS]
        names = [*PRESETS, *(VARIANTS if args.variants else ())]
        results = {name: [None] * (args.repeats if name in PRESETS else args.variants) for name in names}

        def run(job):
            r, name = job
            results[name][r] = train(name, data, work / f"{names.index(name)}-{r}", args.clock)

        run_jobs(run, jobs, args.clock)
        budget = statistics.median(run["wall_s"] for run in results["fast"])  # the fast preset's time: equal time
        per_run = {name: [figures(run, budget) for run in results[name]] for name in names}
        for name in names:
            for r, row in enumerate(per_run[name]):
                print(f"{name}, run {r + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
        table = {name: {k: statistics.median(f[k] for f in runs) for k in runs[0]} for name, runs in per_run.items()}
        print(f"\nmedians, seconds of {args.clock} time")
        for name in names:
            print(f"{name}: " + "  ".join(f"{k} {v:.3f}" for k, v in table[name].items()))
        check = check_export(work / f"1-{args.repeats - 1}", data, work / "hf")
        print("\nexported run checked with transformers: " + ", ".join(f"{k} {v}" for k, v in check.items()))
        notes = (f"{args.repeats} repetition(s) of the presets, {args.variants} of each variant, medians; seconds of "
                 f"{args.clock} time"
                 + ("; one thread per run, all runs started at once" if args.clock == "cpu" else "")
                 + f"; data: the canonical tiny Shakespeare; 1-minute load average {load_at_start:.2f} before the "
                 "first run (other work on the machine)")
        rounded = {name: {k: round(v, 4) if v == v else None for k, v in row.items()} for name, row in table.items()}
        check = {k: f"{v:.2e}" if isinstance(v, float) else v for k, v in check.items()}
        print(f"results written to {write_results('export_preset', {'runs': rounded, 'export': check}, notes=notes)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
