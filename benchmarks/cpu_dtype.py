"""Does bfloat16 autocast pay off for a training step on this CPU? The evidence behind dtype='auto' on CPUs.

    python benchmarks/cpu_dtype.py [--max_iters=500] [--repeats=3]

Runs nanoGPT's README CPU command (4 layers of 128, block 64, batch 12) for --max_iters steps with --dtype=float32
and with --dtype=bfloat16, alternating, on the canonical tiny Shakespeare from ../shared, and prints for each the
median ms/iter, the val loss at the end, and what this CPU offers (PyTorch's CPU capability, native bfloat16 in
oneDNN). dtype='auto' picks float32 on CPUs; this is the measurement to repeat on a CPU where that may be wrong.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402
from recipe import README_ARGS, REPO, prepare, timed_run  # noqa: E402


def describe_cpu():
    import torch

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return f"PyTorch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, " \
           f"native bfloat16 in oneDNN: {native}, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_iters", type=int, default=500, help="steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; medians are over these")
    args = parser.parse_args()
    print(describe_cpu(), flush=True)

    work = Path(tempfile.mkdtemp(prefix="nanogpt-dtype-"))
    try:
        _, data = prepare(work)
        rows = {"float32": [], "bfloat16": []}
        for r in range(args.repeats):
            for dtype in rows:
                out = work / f"out-{r}-{dtype}"
                cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *README_ARGS,
                       f"--max_iters={args.max_iters}", f"--eval_interval={args.max_iters}", f"--dtype={dtype}",
                       f"--data_dir={data}", f"--out_dir={out}"]
                run = timed_run(cmd, REPO)
                rows[dtype].append((statistics.median(run["ms"]), run["curve"][-1][1]))
                print(f"repeat {r + 1} {dtype:<9} ms/iter {rows[dtype][-1][0]:.2f}  val loss at step "
                      f"{args.max_iters} {rows[dtype][-1][1]:.4f}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        print(f"\nmedians over {args.repeats} repetition(s), {args.max_iters} steps")
        for dtype, runs in rows.items():
            print(f"{dtype:<9} ms/iter {statistics.median(ms for ms, _ in runs):8.2f}   val loss "
                  f"{statistics.median(v for _, v in runs):.4f}")
        ratio = statistics.median(ms for ms, _ in rows["bfloat16"]) / statistics.median(ms for ms, _ in rows["float32"])
        print(f"bfloat16/float32 ms/iter: {ratio:.2f}")
        figures = {"runs": {dtype: {"ms/iter": round(statistics.median(ms for ms, _ in runs), 2),
                                    f"val loss at step {args.max_iters}": round(statistics.median(v for _, v in runs), 4)}
                            for dtype, runs in rows.items()},
                   "bfloat16/float32 ms/iter": round(ratio, 3)}
        path = write_results("cpu_dtype", figures, notes=f"{describe_cpu()}; {args.repeats} repetition(s), medians")
        print(f"results written to {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
