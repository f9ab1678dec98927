"""Does FSDP save memory? Per-rank peak resident memory (RSS) while training a 300M-parameter model on 2 CPU ranks,
under parallelism='fsdp' and under 'ddp', with the project's own set-up and training step.

    flock /tmp/nanogpt-bench.lock python benchmarks/fsdp_memory.py [--ranks=2] [--steps=3] [--n_layer=24]

The model is GPT-2 medium's shape (24 layers of 1024, 16 heads; a 65-character vocabulary, so ~302M parameters),
trained on random characters (no dataset is needed: one is written to a temporary folder) with AdamW in float32,
batch 1 of 64 tokens, so the weights, gradients and optimizer moments dominate. Each layout runs as its own torchrun
job; every rank reports its peak RSS (getrusage's ru_maxrss: the whole process, from start-up to the last step,
model building included) and the ratio FSDP/DDP is printed and written to benchmarks/results/fsdp_memory.json.
Needs about 2 x 7 GB free for DDP's two ranks.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args):
    """One rank: set up training as train.py does and take --steps optimizer steps; write this rank's figures."""
    import torch

    from nanogpt import runtime
    from nanogpt.config import TrainConfig
    from nanogpt.distributed import init_distributed, shutdown
    from nanogpt.train import forward_backward, set_up, update

    torch.set_num_threads(1)
    cfg = TrainConfig(out_dir=str(args.work / f"out-{args.parallelism}"), data_dir=str(args.work / "data"),
                      dataset="random", device="cpu", dtype="float32", compile=False, backend="gloo",
                      parallelism=args.parallelism, n_layer=args.n_layer, n_head=16, n_embd=1024, block_size=64,
                      batch_size=1, gradient_accumulation_steps=args.ranks, dropout=0.0, bias=False)
    dinfo, device = init_distributed(cfg.backend, runtime.resolve_device(cfg.device))
    try:
        s = set_up(cfg, device, dinfo, log=lambda *_: None)
        params = sum(p.numel() for p in s.raw_model.parameters())  # FSDP: the full count (DTensors' global shapes)
        batch, times = None, []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss, batch = forward_backward(s, batch)
            update(s, loss)
            s.iter_num += 1
            float(loss)  # wait for the step (a no-op wait on the CPU)
            times.append(time.perf_counter() - t0)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
        out = args.work / f"{args.parallelism}.{dinfo.rank}.json"
        out.write_text(json.dumps({"peak_rss_gib": peak_gib, "params": params, "s_per_step": statistics.median(times)}))
    finally:
        shutdown(dinfo)


def write_random_dataset(folder):
    import numpy as np

    from nanogpt.data import write_dataset
    from nanogpt.tokenizers import CharTokenizer

    text = "".join(chr(c) for c in range(32, 97))  # 65 characters
    tokenizer = CharTokenizer.from_text(text)
    rng = np.random.default_rng(0)
    write_dataset(folder, rng.integers(0, 65, 200_000), rng.integers(0, 65, 20_000), tokenizer.describe())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    parser.add_argument("--n_layer", type=int, default=24, help="24: ~302M parameters")
    parser.add_argument("--parallelism", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.parallelism:
        return worker(args)

    from results import write_results

    with tempfile.TemporaryDirectory(prefix="nanogpt-fsdp-memory-") as work:
        work = Path(work)
        write_random_dataset(work / "data" / "random")
        env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(work),
                   PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        figures = {}
        for parallelism in ("fsdp", "ddp"):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}",
                   __file__, f"--parallelism={parallelism}", f"--work={work}", f"--ranks={args.ranks}",
                   f"--steps={args.steps}", f"--n_layer={args.n_layer}"]
            subprocess.run(cmd, env=env, check=True)
            ranks = [json.loads((work / f"{parallelism}.{r}.json").read_text()) for r in range(args.ranks)]
            figures[parallelism] = {
                "peak_rss_gib_per_rank": [round(r["peak_rss_gib"], 2) for r in ranks],
                "s_per_step": round(statistics.median(r["s_per_step"] for r in ranks), 2),
            }
            figures["params"] = ranks[0]["params"]
    fsdp, ddp = (max(figures[p]["peak_rss_gib_per_rank"]) for p in ("fsdp", "ddp"))
    figures["ratio_fsdp_to_ddp"] = round(fsdp / ddp, 3)
    print(f"model: {figures['params'] / 1e6:.0f}M parameters, {args.ranks} CPU ranks (gloo), float32 AdamW")
    print(f"{'layout':<6} {'peak RSS per rank (GiB)':>26} {'s/step':>8}")
    for p in ("fsdp", "ddp"):
        print(f"{p:<6} {', '.join(f'{g:.2f}' for g in figures[p]['peak_rss_gib_per_rank']):>26} "
              f"{figures[p]['s_per_step']:>8.2f}")
    print(f"FSDP / DDP peak RSS (the larger rank of each): {figures['ratio_fsdp_to_ddp']:.3f}")
    write_results("fsdp_memory", figures, notes=(
        "peak RSS is getrusage's ru_maxrss of each rank process, start-up and model building included; the model "
        "is built on the meta device and materialised shard by shard under FSDP; machine shared with other jobs"))


if __name__ == "__main__":
    sys.exit(main())
