"""2 processes under torchrun (gloo, CPU) compute what 1 process computes with the same global batch, under DDP and
FSDP, and their checkpoints resume under either or alone."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from nanogpt.checkpoint import load_checkpoint
from nanogpt.train import train
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")


# gradient_accumulation_steps is the total over ranks: 4 micro-steps on 1 rank, 2 on each of 2 ranks
SETTINGS = dict(gradient_accumulation_steps=4, lr_decay_iters=35, warmup_iters=3, eval_interval=10, dropout=0.0,
                always_save_checkpoint=False)


def config(data_dir, out_dir, **overrides):
    return tiny_config(data_dir, out_dir, **dict(SETTINGS, **overrides))


def torchrun(cfg, cwd, **overrides):
    """Run train.py on 2 CPU processes with cfg's settings; returns {iteration: loss} from rank 0's log."""
    settings = dict(dataclasses.asdict(cfg), backend="gloo", **overrides)
    args = [f"--{k}={v!r}" for k, v in settings.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    env["TMPDIR"] = str(cwd)  # torchrun's log folders (torchelastic_*) go with the test's files, not into /tmp
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
         *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {int(i): float(v) for i, v in re.findall(r"^iter (\d+): loss ([\d.]+),", proc.stdout, re.M)}


def assert_close(losses, reference):
    assert losses and set(losses) <= set(reference)
    for i, loss in losses.items():
        assert abs(loss - reference[i]) < 1e-3, f"iteration {i}: {loss} vs {reference[i]} on one process"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dataset, a one-process reference run of 35 iterations, and a 2-process DDP run of the first 20."""
    from tests.conftest import CORPUS
    from nanogpt.data import write_dataset
    from nanogpt.tokenizers import CharTokenizer

    root = tmp_path_factory.mktemp("dist")
    tokenizer = CharTokenizer.from_text(CORPUS)
    ids = tokenizer.encode(CORPUS)
    n = int(len(ids) * 0.9)
    write_dataset(root / "data" / "tiny", ids[:n], ids[n:], tokenizer.describe())
    reference = train(config(root / "data", root / "one", max_iters=35), log=lambda *_: None).train_losses
    ddp_losses = torchrun(config(root / "data", root / "ddp", max_iters=20), cwd=root)
    return root, reference, ddp_losses


def grad_norms(out_dir):
    """iteration -> logged gradient norm, from a run's metrics.jsonl (which must hold each iteration once)."""
    from nanogpt.metrics import read_metrics, split_kinds

    iters, _ = split_kinds(read_metrics(out_dir))
    assert len({r["iter"] for r in iters}) == len(iters), "an iteration logged twice (by two ranks?)"
    return {r["iter"]: r["grad_norm"] for r in iters}


def test_ddp_two_ranks_match_one_rank(runs):
    root, reference, ddp_losses = runs
    assert sorted(ddp_losses) == list(range(20))
    assert_close(ddp_losses, reference)
    # rank 0 alone writes metrics.jsonl, and the gradient norm is that of the global batch
    norms = grad_norms(root / "ddp")
    assert sorted(norms) == list(range(20))
    assert norms == pytest.approx({k: v for k, v in grad_norms(root / "one").items() if k < 20}, rel=1e-2)


def test_fsdp_matches_one_rank_and_checkpoints_move_between_ddp_fsdp_and_one_process(runs):
    root, reference, _ = runs
    shutil.copytree(root / "ddp", root / "fsdp")
    # DDP's checkpoint of iteration 20, resumed under FSDP: the full weights and optimizer state are sharded
    fsdp_losses = torchrun(config(root / "data", root / "fsdp", max_iters=30, init_from="resume"), cwd=root,
                           parallelism="fsdp")
    assert sorted(fsdp_losses) == list(range(20, 30))
    assert_close(fsdp_losses, reference)
    # the resumed run continued DDP's metrics.jsonl; FSDP's norm gathers every shard's share
    norms = grad_norms(root / "fsdp")
    assert sorted(norms) == list(range(30))
    assert norms == pytest.approx({k: v for k, v in grad_norms(root / "one").items() if k < 30}, rel=1e-2)
    # FSDP saved each rank's shards (DCP), never gathered: ckpt.pt names the folder and holds no weights
    assert sorted(p.name for p in (root / "fsdp").glob("sharded-*")) == ["sharded-000030"]
    assert sorted(p.name for p in (root / "fsdp" / "sharded-000030").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert "model" not in torch.load(root / "fsdp" / "ckpt.pt", weights_only=True)
    assert load_checkpoint(root / "fsdp")["iter_num"] == 30  # read whole (sample, export, eval)
    shutil.copytree(root / "fsdp", root / "fsdp-again")

    # the 2-rank sharded checkpoint, resumed by a single process (2 -> 1) ...
    alone = train(config(root / "data", root / "fsdp", max_iters=35, init_from="resume"), log=lambda *_: None)
    assert sorted(alone.train_losses) == list(range(30, 35))
    assert_close(alone.train_losses, reference)
    # ... and on 2 ranks again, each reading its own shards (2 -> 2; a 1-rank checkpoint resumes on 2 as DDP's did)
    again = torchrun(config(root / "data", root / "fsdp-again", max_iters=35, init_from="resume"), cwd=root,
                     parallelism="fsdp")
    assert sorted(again) == list(range(30, 35))
    assert_close(again, reference)


def test_fsdp_from_scratch_matches_one_rank(runs):
    root, reference, _ = runs
    losses = torchrun(config(root / "data", root / "fsdp-scratch", max_iters=20), cwd=root, parallelism="fsdp")
    assert sorted(losses) == list(range(20))
    assert_close(losses, reference)
    one, fsdp = load_checkpoint(root / "one", which="best"), load_checkpoint(root / "fsdp-scratch")
    assert sorted(fsdp["model"]) == sorted(one["model"])  # the single-process layout, tied weights included


def test_unknown_parallelism_is_a_user_error(tmp_path):
    from nanogpt.config import load_config
    from nanogpt.errors import UserError

    with pytest.raises(UserError, match="unknown parallelism 'tp': use ddp or fsdp"):
        train(load_config(["--parallelism=tp"]), log=lambda *_: None)


def test_ddp_with_muon_and_the_modern_architecture_matches_one_rank(runs):
    """Muon runs on the all-reduced gradients, so every rank takes the same step a single process takes."""
    root, _, _ = runs
    modern = dict(optimizer="muon", position="rope", qk_norm=True, activation="relu2", tie_embeddings=False,
                  zero_init_proj=True, logit_softcap=15.0, max_iters=10)
    reference = train(config(root / "data", root / "muon-one", **modern), log=lambda *_: None).train_losses
    losses = torchrun(config(root / "data", root / "muon-ddp", **modern), cwd=root)
    assert sorted(losses) == list(range(10))
    assert_close(losses, reference)
    assert set(load_checkpoint(root / "muon-ddp")["model"]) == set(load_checkpoint(root / "muon-one")["model"])


def test_fsdp_with_the_other_switches_matches_one_rank(runs):
    """FSDP shards what the GPT-2 layout does not have too: RMSNorm gains, SwiGLU's wider matrix, grouped-query
    key/value heads and an untied head."""
    root, _, _ = runs
    modern = dict(position="rope", rope_base=500.0, norm="rmsnorm", qk_norm=True, activation="swiglu", n_kv_head=1,
                  tie_embeddings=False, logit_softcap=10.0, max_iters=10)
    reference = train(config(root / "data", root / "switches-one", **modern), log=lambda *_: None).train_losses
    losses = torchrun(config(root / "data", root / "switches-fsdp", **modern), cwd=root, parallelism="fsdp")
    assert sorted(losses) == list(range(10))
    assert_close(losses, reference)
    one, fsdp = load_checkpoint(root / "switches-one"), load_checkpoint(root / "switches-fsdp")
    assert sorted(fsdp["model"]) == sorted(one["model"])
