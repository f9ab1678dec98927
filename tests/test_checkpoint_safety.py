"""Checkpoints are safe to load and hard to lose: a file that would run code is refused before anything runs,
upstream nanoGPT's files load, and a process killed at any moment (SIGKILL) or asked to stop (SIGTERM) leaves a
checkpoint that resumes."""

import dataclasses
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt import cli
from nanogpt.checkpoint import load_checkpoint, load_optimizer_state
from nanogpt.errors import UserError
from nanogpt.legacy import read_meta_pkl
from nanogpt.sample import SampleConfig, sample
from nanogpt.train import train
from tests.conftest import CORPUS, tiny_config

ROOT = Path(__file__).resolve().parents[1]



class RunsCode:
    """Unpickling this runs `touch marker`: what a malicious checkpoint or meta.pkl would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def cli_args(cfg, **overrides):
    return [f"--{k}={v!r}" for k, v in dict(dataclasses.asdict(cfg), **overrides).items()]


def script(name, args, cwd, **kw):
    """Run a root script (train.py, sample.py) as a user would."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / name), *args], cwd=cwd, env=env, text=True, **kw)


def write_malicious(path, marker, raw):
    """A checkpoint with nanoGPT's keys whose unpickling runs code: torch.save's zip format, or a raw pickle."""
    payload = {"model": {}, "model_args": {}, "iter_num": 1, "best_val_loss": 1.0, "hook": RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)


def assert_refused(code, stderr, marker):
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: refused to load ") and "could run code" in lines[0]
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("raw", [False, True], ids=["torch.save", "raw-pickle"])
def test_code_in_a_checkpoint_is_refused_and_never_runs(char_dataset, tmp_path, capsys, raw):
    data_dir, _ = char_dataset
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "run" / "ckpt.pt", marker, raw)
    cfg = tiny_config(data_dir, tmp_path / "run", init_from="resume")
    for command, args in (("sample", [f"--out_dir={tmp_path / 'run'}", "--device=cpu"]), ("train", cli_args(cfg))):
        assert_refused(cli.run(command, args), capsys.readouterr().err, marker)


def test_sample_and_train_scripts_refuse_a_malicious_checkpoint(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "run" / "ckpt.pt", marker, raw=False)
    runs = [
        script("sample.py", [f"--out_dir={tmp_path / 'run'}", "--device=cpu"], tmp_path, stderr=subprocess.PIPE),
        script("train.py", cli_args(tiny_config(data_dir, tmp_path / "run", init_from="resume")), tmp_path,
               stderr=subprocess.PIPE),
    ]
    for proc in runs:
        _, stderr = proc.communicate(timeout=60)
        assert_refused(proc.returncode, stderr, marker)


def test_code_in_an_optimizer_file_is_refused(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    cfg = tiny_config(data_dir, tmp_path / "run", max_iters=2)
    train(cfg, log=lambda *_: None)
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "run" / "optim-000002.pt", marker, raw=False)
    with pytest.raises(UserError, match="refused to load .*optim-000002.pt"):
        train(dataclasses.replace(cfg, init_from="resume", max_iters=4), log=lambda *_: None)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process, on purpose
def test_code_in_a_sharded_checkpoints_metadata_is_refused(char_dataset, tmp_path, capsys):
    """An FSDP run's folder (torch.distributed.checkpoint) is read through a restricted unpickler: DCP's own reader
    would run the code in a malicious .metadata."""
    import torch.distributed.checkpoint as dcp

    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    train(tiny_config(data_dir, out_dir, max_iters=2), log=lambda *_: None)
    # the run as an FSDP run leaves it: ckpt.pt names a DCP folder that holds the weights
    ckpt = torch.load(out_dir / "ckpt.pt", weights_only=True)
    dcp.save({"model": ckpt.pop("model")}, storage_writer=dcp.FileSystemWriter(out_dir / "sharded-000002"),
             no_dist=True)
    torch.save(dict(ckpt, sharded="sharded-000002"), out_dir / "ckpt.pt")
    (out_dir / "best.pt").unlink()
    args = [f"--out_dir={out_dir}", "--device=cpu", "--max_new_tokens=5", "--num_samples=1"]
    assert cli.run("sample", args) == 0  # the genuine folder samples
    capsys.readouterr()

    marker = tmp_path / "marker"
    (out_dir / "sharded-000002" / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    assert_refused(cli.run("sample", args), capsys.readouterr().err, marker)
    with pytest.raises(UserError, match="refused to load .*sharded-000002: it holds Python objects"):
        load_checkpoint(out_dir)
    assert not marker.exists()


def test_code_in_a_meta_pkl_is_refused(tmp_path):
    marker = tmp_path / "marker"
    for i, meta in enumerate([RunsCode(marker), {"vocab_size": 2, "itos": {0: "a", 1: RunsCode(marker)}}]):
        path = tmp_path / f"meta{i}.pkl"
        path.write_bytes(pickle.dumps(meta))
        with pytest.raises(UserError, match=r"refused .*meta\d.pkl: it is not a plain vocabulary pickle"):
            read_meta_pkl(path)
    assert not marker.exists()


REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nanoGPT"


def write_upstream_run(root):
    """A run written by upstream nanoGPT's own train.py (a scratch copy of ../shared/reference/nanoGPT): data/tiny
    as its prepare.py leaves it (train.bin, val.bin, meta.pkl; no meta.json), and one ckpt.pt with the optimizer
    inside, a tensor best_val_loss and no tokenizer. Three steps, saved at iteration 3."""
    if not (REFERENCE / "train.py").is_file():
        pytest.skip(f"upstream nanoGPT is not at {REFERENCE}: no run of its own to check against")
    shutil.copytree(REFERENCE, root, ignore=shutil.ignore_patterns(".git", "*.bin", "out*"))
    chars = sorted(set(CORPUS))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in CORPUS], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    data = root / "data" / "tiny"
    data.mkdir(parents=True)
    ids[:n].tofile(data / "train.bin")
    ids[n:].tofile(data / "val.bin")
    (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                                                  "stoi": stoi}))
    settings = dict(dataset="tiny", out_dir="run", device="cpu", compile=False, dtype="float32", n_layer=2, n_head=2,
                    n_embd=32, block_size=16, bias=False, dropout=0.0, batch_size=4, gradient_accumulation_steps=1,
                    max_iters=3, lr_decay_iters=3, warmup_iters=1, eval_interval=3, eval_iters=1, log_interval=1,
                    learning_rate=1e-3, always_save_checkpoint=True, wandb_log=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # upstream's own model.py, not ours
    proc = subprocess.run([sys.executable, "train.py", *(f"--{k}={v}" for k, v in settings.items())], cwd=root,
                          env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return chars


def test_upstream_nanogpt_run_samples_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "nanoGPT"
    chars = write_upstream_run(root)
    monkeypatch.chdir(root)  # upstream checkpoints name their dataset, found under ./data as nanoGPT does
    assert torch.load("run/ckpt.pt", weights_only=True)["iter_num"] == 3
    samples = sample(SampleConfig(out_dir="run", device="cpu", num_samples=2, max_new_tokens=20, start="All:"),
                     write=lambda *_: None)
    assert len(samples) == 2 and all(set(s) <= set(chars) and len(s) == 24 for s in samples)

    cfg = tiny_config("data", "run", init_from="resume", max_iters=6, eval_interval=100)
    result = train(cfg, log=lambda *_: None)
    assert sorted(result.train_losses) == [3, 4, 5]
    ckpt = load_checkpoint("run")
    assert ckpt["iter_num"] == 6 and ckpt["tokenizer"]["chars"] == "".join(chars)
    assert load_optimizer_state("run", ckpt)["optimizer"]["state"][0]["step"] == 6  # 3 upstream steps + 3 here


def saves(log):
    return log.read_text().count("saving checkpoint") if log.exists() else 0


def wait_for(predicate, proc, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "training exited early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def assert_resumable(out_dir):
    ckpt = load_checkpoint(out_dir)
    state = load_optimizer_state(out_dir, ckpt)  # weights_only, and checks its iteration matches ckpt.pt's
    assert state is not None and state["iter_num"] == ckpt["iter_num"] > 0
    if (out_dir / "best.pt").exists():
        load_checkpoint(out_dir, which="best")
    return ckpt


def test_sigkill_while_checkpointing_always_leaves_a_checkpoint_that_loads(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    # a checkpoint at every iteration, so most of the run is spent writing one
    cfg = tiny_config(data_dir, out_dir, max_iters=100_000, lr_decay_iters=100_000, eval_interval=1, eval_iters=1,
                      always_save_checkpoint=True)
    rng = random.Random()
    iters = []
    for round in range(4):
        log = tmp_path / f"log{round}"
        with open(log, "w") as f:
            proc = script("train.py", cli_args(cfg, init_from="resume" if round else "scratch"), tmp_path,
                          stdout=f, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: saves(log) >= 1, proc)
            if round % 2:
                time.sleep(rng.uniform(0, 0.3))  # anywhere in the loop
            else:
                # in the middle of writing the optimizer file, then ckpt.pt
                pattern = "optim-*.pt.tmp" if round == 0 else "ckpt.pt.tmp"
                wait_for(lambda: any(out_dir.glob(pattern)), proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        ckpt = assert_resumable(out_dir)
        iters.append(ckpt["iter_num"])
        assert len(list(out_dir.glob("optim-*.pt"))) <= 2, "old optimizer files pile up"
    assert iters == sorted(iters) and iters[-1] > iters[0]


def test_sigterm_saves_the_current_iteration_and_exits_cleanly(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    cfg = tiny_config(data_dir, out_dir, max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000)
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = script("train.py", cli_args(cfg), tmp_path, stdout=f, stderr=subprocess.STDOUT)
    wait_for(lambda: log.read_text().count("\niter ") >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
    text = log.read_text()
    stopped_at = int(re.search(r"^stop requested at iteration (\d+)", text, re.M).group(1))
    last_logged = max(int(i) for i in re.findall(r"^iter (\d+): loss", text, re.M))
    assert stopped_at == last_logged + 1
    assert assert_resumable(out_dir)["iter_num"] == stopped_at
