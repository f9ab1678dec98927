"""A training step that does not log never waits for the device: over 20 such steps, on 1 process and on 2 gloo DDP
ranks, nothing reads a tensor's value back to the host, and the only collective is DDP's gradient reduction, once
per step however many micro-steps accumulate (no_sync). Evaluation is shared out over the ranks and gives the figure
one process gives.

The 2-rank half runs this file as a module under torchrun (main), which counts on each rank and writes the counts
to a JSON file for the test to read."""

import functools
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]

# host reads of a tensor's value: each waits for the device to finish the work queued before it
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
# the collectives a Python caller can start (DDP's own gradient reduction runs in C++: counted by a comm hook)
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter_tensor",
               "broadcast", "broadcast_object_list", "barrier", "all_to_all", "reduce", "gather", "scatter",
               "_broadcast_coalesced")
# 20 quiet steps (1..20) between the logging and evaluating steps 0 and 21
SETTINGS = dict(max_iters=22, lr_decay_iters=22, log_interval=21, eval_interval=1000, eval_iters=3, grad_clip=1.0)


def count_everything(monkeypatch_attr):
    """Count host reads, Python collectives and DDP's gradient reductions, per training iteration (the loop's
    set_lr call marks where each begins); returns the Counter, keyed (iteration, what)."""
    from nanogpt import distributed, train as train_module

    counts = Counter()
    where = {"iter": None, "in_hook": False}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            if not where["in_hook"]:
                counts[(where["iter"], name)] += 1
            return original(*args, **kwargs)
        return wrapper

    for name in READS:
        monkeypatch_attr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    for name in COLLECTIVES:
        if hasattr(dist, name):
            monkeypatch_attr(dist, name, counting(name, getattr(dist, name)))

    set_lr = train_module.set_lr

    def marking_set_lr(optimizer, it, cfg):
        where["iter"] = it
        return set_lr(optimizer, it, cfg)

    monkeypatch_attr(train_module, "set_lr", marking_set_lr)

    parallelize = train_module.parallelize

    def counting_parallelize(*args, **kwargs):
        model = parallelize(*args, **kwargs)
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def hook(state, bucket):
                counts[(where["iter"], "ddp_bucket_reduction")] += 1
                where["in_hook"] = True  # the hook's own all_reduce is the reduction counted here
                try:
                    return allreduce_hook(state, bucket)
                finally:
                    where["in_hook"] = False

            model.register_comm_hook(None, hook)
        return model

    monkeypatch_attr(train_module, "parallelize", counting_parallelize)
    assert distributed  # parallelize is looked up in train's namespace, where it was imported
    return counts


def per_step(counts, steps):
    """{what: count} over the given iterations."""
    total = Counter()
    for (it, what), n in counts.items():
        if it in steps:
            total[what] += n
    return dict(total)


def main():
    """Under torchrun: train with the counters on; rank r writes its counts to argv[2] + f'.{r}'."""
    from nanogpt.train import train

    settings = json.loads(sys.argv[1])
    counts = count_everything(setattr)
    # aot_eager: dynamo and AOTAutograd trace as for inductor (so recompiles show), without its code generation
    torch.compile = functools.partial(torch.compile, backend="aot_eager")
    train(tiny_config(**settings), log=print)
    rows = [[it, what, n] for (it, what), n in counts.items()]
    rows.append([None, "graphs_compiled", torch._dynamo.utils.counters["stats"]["unique_graphs"]])
    Path(f"{sys.argv[2]}.{os.environ['RANK']}").write_text(json.dumps(rows))


def eval_losses(out_dir):
    from nanogpt.metrics import read_metrics, split_kinds

    _, evals = split_kinds(read_metrics(out_dir))
    return {r["iter"]: (r["train_loss"], r["val_loss"]) for r in evals}


def test_quiet_steps_read_nothing_back_on_one_process(char_dataset, tmp_path, monkeypatch):
    from nanogpt.train import train

    data_dir, _ = char_dataset
    counts = count_everything(monkeypatch.setattr)
    result = train(tiny_config(data_dir, tmp_path / "run", gradient_accumulation_steps=4, **SETTINGS),
                   log=lambda *_: None)
    assert sorted(result.train_losses) == [0, 21]
    assert per_step(counts, range(1, 21)) == {}
    assert per_step(counts, [0]).get("item", 0) + per_step(counts, [0]).get("tolist", 0) > 0  # the counters count


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_two_nodes_train_like_one_process_with_quiet_steps_that_read_nothing_and_reduce_once(char_dataset, tmp_path):
    """Two torchrun launchers on this machine, one rank each, meeting through c10d rendezvous on localhost: the
    multi-node launch (docs/distributed.md), with DDP over gloo, the model compiled."""
    from nanogpt.train import train

    data_dir, _ = char_dataset
    # 8 micro-steps in all: 4 on each rank, of which only the last reduces the gradients
    settings = dict(data_dir=str(data_dir), out_dir=str(tmp_path / "ddp"), gradient_accumulation_steps=8,
                    backend="gloo", compile=True, **SETTINGS)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
              "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{free_port()}", "--rdzv_id=nanogpt-test",
              "-m", "tests.test_step_sync", json.dumps(settings), str(tmp_path / "counts")]
    nodes = [subprocess.Popen(launch, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=180)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(out[-3000:] for out in outputs)

    for rank in (0, 1):
        counts = Counter({(it, what): n for it, what, n in
                          json.loads((tmp_path / f"counts.{rank}").read_text())})
        # the tiny model's gradients fit one DDP bucket: one reduction per step, not one per micro-step
        assert per_step(counts, range(1, 21)) == {"ddp_bucket_reduction": 20}, f"rank {rank}"
        assert per_step(counts, [0]).get("all_reduce", 0) > 0  # logging and evaluating steps do agree
        # compiled: one graph for training (whether or not a micro-step syncs gradients, which DDP does outside
        # it) and one for evaluation, made at step 0; the 21 steps and evaluation after it recompile nothing
        assert counts[(None, "graphs_compiled")] == 2, f"rank {rank}"

    # the same global batch on one process: the same losses (to rounding), and evaluation's 3 batches, shared
    # 2 + 1 over the ranks and summed, give one process's figure (at step 0, where the weights are the same)
    one = train(tiny_config(**dict(settings, out_dir=str(tmp_path / "one"), compile=False)), log=lambda *_: None)
    logged = {int(i): float(v) for out in outputs for i, v in re.findall(r"^iter (\d+): loss ([\d.]+),", out, re.M)}
    assert sorted(logged) == [0, 21]
    for i, loss in logged.items():
        assert abs(loss - one.train_losses[i]) < 1e-3, f"iteration {i}: {loss} vs {one.train_losses[i]}"
    two, alone = eval_losses(tmp_path / "ddp"), eval_losses(tmp_path / "one")
    assert two[0] == pytest.approx(alone[0], abs=1e-6)
    assert two[22] == pytest.approx(alone[22], abs=1e-3)


if __name__ == "__main__":
    main()
