"""Does torch.compile pay on a CPU? CPU time per training step, eager against compiled (inductor), one thread.

    python benchmarks/cpu_compile.py [--config=config/train_code_bpe_cpu.py] [--steps=25] [--repeats=2] [--k=v ...]

Builds the config's model (vocab 4096), Muon+AdamW as the config sets them, and times forward, backward and the
optimizer step on one fixed batch, each mode in its own process, alternating (eager, compiled, eager, ...). The
figure is the median CPU time (time.process_time: this process only, so other work on the machine does not enter
it) over the steps after the first five; the first step's wall time shows the compilation's cost. Inductor needs a
C++ compiler on the PATH.
"""

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def child(mode, config, steps, overrides):
    """One mode's run: prints 'first_wall_s step_cpu_s' for the caller."""
    import torch

    torch.set_num_threads(1)
    from nanogpt import optim
    from nanogpt.config import load_config
    from nanogpt.model import GPT, GPTConfig

    cfg = load_config([config, *overrides])
    arch = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)
            if hasattr(cfg, f.name) and f.name != "vocab_size"}
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4096, **arch))
    opt = optim.build_optimizer(model, cfg, "cpu")
    run = torch.compile(model) if mode == "compiled" else model
    x = torch.randint(0, 4096, (cfg.batch_size, cfg.block_size))
    cpu, start = [], time.perf_counter()
    for i in range(steps):
        c = time.process_time()
        _, loss = run(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu.append(time.process_time() - c)
        if i == 0:
            first = time.perf_counter() - start
    print(f"{first:.2f} {statistics.median(cpu[5:]):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/train_code_bpe_cpu.py")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.steps < 6:
        sys.exit("--steps must be at least 6: the first five are not timed")
    if args.child:
        return child(args.child, args.config, args.steps, overrides)
    runs = {"eager": [], "compiled": []}
    for r in range(args.repeats):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, f"--child={mode}", f"--config={args.config}",
                                  f"--steps={args.steps}", *overrides], cwd=REPO, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"the {mode} run failed:\n{out.stderr[-2000:]}")
            first, step = map(float, out.stdout.split()[-2:])
            runs[mode].append({"first_step_wall_s": first, "step_cpu_s": step})
            print(f"repeat {r + 1} {mode:<9} first step {first:7.1f} s wall, then {step:.3f} s CPU per step")
    table = {mode: {"step_cpu_s": statistics.median(x["step_cpu_s"] for x in xs),
                    "first_step_wall_s": statistics.median(x["first_step_wall_s"] for x in xs)}
             for mode, xs in runs.items()}
    ratio = table["compiled"]["step_cpu_s"] / table["eager"]["step_cpu_s"]
    print(f"compiled/eager CPU time per step: {ratio:.3f} (medians over {args.repeats} repeat(s))")
    notes = f"{args.config}, one thread, {args.steps} steps per run, medians over {args.repeats} repeat(s)"
    print(f"results written to {write_results('cpu_compile', {'modes': table, 'compiled/eager': round(ratio, 3)}, notes=notes)}")


if __name__ == "__main__":
    main()
