"""DDP and torch.compile: compile the model and then wrap it in DDP, or wrap it and then compile the wrapper? And
which gradient bucket size? The evidence behind the order nanogpt/distributed.py's parallelize uses.

    python benchmarks/ddp_order.py [--ranks=2] [--rounds=5] [--steps=10]

Starts itself under torchrun on --ranks CPU processes (gloo). Each rank builds nanoGPT's README CPU model (4 layers
of 128, block 64, batch 12; random tokens, no dataset) in every variant, compiles it (inductor), warms it up, then
times --steps training steps of each variant in turn, --rounds times, alternating; it prints the median ms/step of
each and writes benchmarks/results/ddp_order.json. Wrapping first lets dynamo's DDPOptimizer split the graph at
bucket boundaries, so each bucket's all-reduce can start while the backward still runs; compiling first gives one
backward graph whose gradients all arrive at its end.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [("compile_then_wrap", 25), ("wrap_then_compile", 25), ("compile_then_wrap", 1), ("wrap_then_compile", 1)]


def build(order, bucket_mb):
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nanogpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0, bias=False))
    if order == "compile_then_wrap":
        model = DDP(torch.compile(model), bucket_cap_mb=bucket_mb, broadcast_buffers=False)
    else:
        model = torch.compile(DDP(model, bucket_cap_mb=bucket_mb, broadcast_buffers=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    return model, optimizer


def steps(model, optimizer, x, y, n):
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    return (time.perf_counter() - t0) / n * 1000


def worker(args):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(rank)
    x = torch.randint(0, 65, (12, 64), generator=g)
    y = torch.randint(0, 65, (12, 64), generator=g)
    runs, compile_s = [], []
    for order, bucket_mb in VARIANTS:
        model, optimizer = build(order, bucket_mb)
        t0 = time.perf_counter()
        steps(model, optimizer, x, y, 3)  # compiles (forward and backward) and warms up
        compile_s.append(time.perf_counter() - t0)
        runs.append((model, optimizer))
    times = [[] for _ in VARIANTS]
    for _ in range(args.rounds):
        for i, (model, optimizer) in enumerate(runs):
            times[i].append(steps(model, optimizer, x, y, args.steps))
    if rank == 0:
        from results import write_results

        figures = {}
        print(f"{'variant':<22} {'bucket MB':>9} {'ms/step (median)':>17} {'compile+warm-up s':>18}")
        for (order, bucket_mb), t, c in zip(VARIANTS, times, compile_s):
            print(f"{order:<22} {bucket_mb:>9} {statistics.median(t):>17.2f} {c:>18.1f}")
            figures[f"{order}_bucket{bucket_mb}mb_ms_per_step"] = round(statistics.median(t), 2)
            figures[f"{order}_bucket{bucket_mb}mb_compile_s"] = round(c, 1)
        figures.update(ranks=dist.get_world_size(), rounds=args.rounds, steps=args.steps)
        write_results("ddp_order", figures, notes=(
            "CPU ranks (gloo, 1 thread each), README CPU model on random tokens, medians over alternating rounds; "
            "machine shared with other jobs"), command=" ".join(["python", "benchmarks/ddp_order.py", *args.argv]))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds; medians over these")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a != "--worker"]
    if args.worker:
        return worker(args)
    here = Path(__file__).resolve().parent
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(here.parent), str(here), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={args.ranks}", __file__, "--worker", *argv], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
