"""Runs that never surprise: a real training process stops within seconds of Ctrl-C at any point and keeps what it
trained, a second Ctrl-C exits at once, a resume cannot change what a run is, and the log says what happened."""

import dataclasses
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanogpt.checkpoint import load_checkpoint
from nanogpt.data import write_dataset
from nanogpt.errors import UserError
from nanogpt.tokenizers import CharTokenizer
from nanogpt.train import train
from tests.conftest import CORPUS, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def quiet(*_):
    pass


def start_training(cfg, cwd, **overrides):
    """`python train.py --k=v ...` as a user runs it, its output read through a pipe line by line."""
    args = [f"--{k}={v!r}" for k, v in dict(dataclasses.asdict(cfg), **overrides).items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONUNBUFFERED", None)  # the pipe must show lines as they are written without it
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_until(proc, pattern, lines, timeout=60):
    """Read the process's output until a line matches pattern, while the process is still running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        assert line, "training exited early:\n" + "".join(lines)
        lines.append(line)
        if re.search(pattern, line):
            assert proc.poll() is None
            return line
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "".join(lines))


def finish(proc, lines, timeout=30):
    out, _ = proc.communicate(timeout=timeout)
    lines.append(out)
    return "".join(lines)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def test_log_lines_reach_a_pipe_as_they_are_written(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    cfg = tiny_config(data_dir, tmp_path / "run", max_iters=100_000, lr_decay_iters=100_000, eval_interval=100_000)
    proc = start_training(cfg, tmp_path)
    lines = []
    try:
        read_until(proc, r"^iter 3: loss", lines)  # the process is still running: the lines were not held back
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_during_a_long_first_evaluation_exits_at_once(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    # an evaluation of 40,000 batches takes tens of seconds here, and reports its progress after ten
    cfg = tiny_config(data_dir, tmp_path / "run", eval_iters=20_000)
    proc = start_training(cfg, tmp_path)
    lines = []
    read_until(proc, r"^evaluating at step 0: \d+/40000 batches, eta", lines)  # its first progress report
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    took = time.time() - sent
    text = finish(proc, lines)
    assert took < 3, f"took {took:.1f} s to stop"
    assert "stop requested at iteration 0 (SIGINT): exiting, nothing trained since the start, nothing to save" in text
    assert "step 0: train loss" not in text  # the evaluation was abandoned, not finished
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_ctrl_c_mid_training_saves_that_iteration_and_resumes_exactly(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    straight = train(tiny_config(data_dir, tmp_path / "straight", max_iters=200, lr_decay_iters=200), log=quiet)

    out_dir = tmp_path / "stopped"
    cfg = tiny_config(data_dir, out_dir, max_iters=200, lr_decay_iters=200, eval_interval=1000)
    proc = start_training(cfg, tmp_path)
    lines = []
    read_until(proc, r"^iter 30: loss", lines)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    text = finish(proc, lines)
    stopped_at = int(re.search(r"^stop requested at iteration (\d+) \(SIGINT\): saving a checkpoint", text,
                               re.M).group(1))
    assert f"saving checkpoint to {out_dir / 'ckpt.pt'} (iteration {stopped_at})" in text
    last_logged = max(int(i) for i in re.findall(r"^iter (\d+): loss", text, re.M))
    assert stopped_at == last_logged + 1 and stopped_at < 200
    assert load_checkpoint(out_dir)["iter_num"] == stopped_at

    resumed = train(dataclasses.replace(cfg, init_from="resume"), log=quiet)
    assert resumed.train_losses == {i: straight.train_losses[i] for i in range(stopped_at, 200)}  # bit for bit


def test_a_second_ctrl_c_exits_at_once_without_a_partial_file(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    # a larger model, so a checkpoint takes a while to write, and a checkpoint at every step: the second signal
    # lands in the stop's own save, or in one of the loop's, or just after the process ended
    cfg = tiny_config(data_dir, out_dir, max_iters=100_000, lr_decay_iters=100_000, eval_interval=1, eval_iters=1,
                      always_save_checkpoint=True, n_layer=4, n_embd=256, n_head=4)
    proc = start_training(cfg, tmp_path)
    lines = []
    read_until(proc, r"^saving checkpoint .*iteration 3\b", lines)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)  # two signals sent at once arrive as one
    proc.send_signal(signal.SIGINT)
    status = proc.wait(timeout=10)
    text = finish(proc, lines)
    assert status in (0, 130), text[-2000:]
    if status == 130:
        assert text.rstrip().endswith("interrupted")
    assert not list(out_dir.glob("*.tmp")), "a half-written file was left behind"
    ckpt = load_checkpoint(out_dir)  # whichever checkpoint is there is whole
    assert (out_dir / ckpt["optimizer_file"]).is_file()


def test_a_second_signal_interrupts_at_once_and_an_interrupted_write_leaves_no_file(tmp_path):
    from nanogpt.files import write_atomically
    from nanogpt.train import StopRequest, StopTraining

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first only asks to stop...
        assert stop.requested == "SIGINT"
        with pytest.raises(StopTraining):
            with stop.abandonable():  # ...at once where work may be abandoned
                pass
        with pytest.raises(KeyboardInterrupt):  # the second ends the process
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)

    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"the previous checkpoint")

    def interrupted(f):
        f.write(b"half of a new one")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert target.read_bytes() == b"the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_summary_line_names_the_checkpoints_and_the_sample_command(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    logs = []
    result = train(tiny_config(data_dir, out_dir, always_save_checkpoint=False), log=logs.append)
    summary = logs[-1]
    assert summary.startswith("done: 20 iterations, median ")
    assert re.search(r"; 20 trained in (\d+m)?\d\d?s;", summary)
    assert f"best val loss {result.best_val_loss:.4f} in {out_dir / 'best.pt'}" in summary
    assert f"last checkpoint {out_dir / 'ckpt.pt'} (iteration 20)" in summary
    assert summary.endswith(f"sample with: python sample.py --out_dir={out_dir}")
    saves = [line for line in logs if line.startswith("saving checkpoint")]
    assert saves[0] == (f"saving checkpoint to {out_dir / 'ckpt.pt'} (iteration 10; the best val loss so far, also "
                        f"{out_dir / 'best.pt'})")


@pytest.fixture
def trained(char_dataset, tmp_path):
    """A run trained for 10 iterations, and a second char dataset with other characters."""
    data_dir, _ = char_dataset
    other = CharTokenizer.from_text(CORPUS.upper())
    ids = other.encode(CORPUS.upper())
    write_dataset(data_dir / "shouting", ids[:5000], ids[5000:], other.describe())
    cfg = tiny_config(data_dir, tmp_path / "run", max_iters=10, lr_decay_iters=20)
    train(cfg, log=quiet)
    return cfg


@pytest.mark.parametrize("change, message", [
    ({"dataset": "shouting"}, "trained with dataset='tiny', and a resumed run keeps its dataset"),
    ({"n_layer": 3}, "trained with n_layer=2, and a resumed run keeps its architecture"),
    ({"n_embd": 64, "n_head": 2}, "trained with n_embd=32"),
])
def test_resume_refuses_another_dataset_or_architecture(trained, change, message):
    before = digest(trained.out_dir)
    cfg = dataclasses.replace(trained, init_from="resume", max_iters=20, **change)
    with pytest.raises(UserError, match=re.escape(message)):
        train(cfg, log=quiet, given=set(change) | {"init_from", "max_iters"})
    assert digest(trained.out_dir) == before


def test_resume_refuses_a_dataset_prepared_again_with_another_tokenizer(trained, char_dataset):
    data_dir, _ = char_dataset
    before = digest(trained.out_dir)
    other = CharTokenizer.from_text(CORPUS + "~")
    ids = other.encode(CORPUS)
    write_dataset(data_dir / "tiny", ids[:5000], ids[5000:], other.describe(), overwrite=True)
    n = len(set(CORPUS))
    with pytest.raises(UserError, match=f"now holds 'char' \\({n + 1} entries\\) tokens, but the run .* 'char' \\({n} "):
        train(dataclasses.replace(trained, init_from="resume", max_iters=20), log=quiet)
    assert digest(trained.out_dir) == before


def test_resume_keeps_the_checkpoints_settings_unless_asked_and_records_what_it_used(trained):
    # the command does not name the dataset or the architecture: the checkpoint's are used, not the defaults
    cfg = dataclasses.replace(trained, init_from="resume", dataset="openwebtext", n_layer=12, n_head=12, n_embd=768,
                              max_iters=15, learning_rate=5e-3)
    result = train(cfg, log=quiet, given={"init_from", "max_iters", "learning_rate", "out_dir", "data_dir"})
    assert result.iter_num == 15
    saved = load_checkpoint(trained.out_dir)["config"]
    assert (saved["dataset"], saved["n_layer"], saved["n_embd"]) == ("tiny", 2, 32)
    assert (saved["max_iters"], saved["learning_rate"]) == (15, 5e-3)


def test_resume_warns_when_a_change_makes_it_inexact(trained):
    logs = []
    train(dataclasses.replace(trained, init_from="resume", max_iters=12, batch_size=8), log=logs.append)
    assert any(line.startswith("warning: batch_size is 8, the run was trained with 4") for line in logs)


def test_prepare_does_not_replace_a_different_dataset_unless_asked(tmp_path, capsys):
    from nanogpt.cli import run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    args = [f"--input={corpus}", "--name=mine", "--tokenizer=char", f"--data_dir={tmp_path / 'data'}"]
    assert run("prepare", args) == 0
    capsys.readouterr()
    first = digest(tmp_path / "data" / "mine")
    assert run("prepare", args) == 0  # the very same dataset again: nothing changes, nothing is refused
    assert digest(tmp_path / "data" / "mine") == first

    corpus.write_text(CORPUS.upper())
    assert run("prepare", args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines: one line that says why
    assert err.startswith("error: ") and "already holds a different dataset" in err and "--overwrite=True" in err
    assert digest(tmp_path / "data" / "mine") == first and not list((tmp_path / "data" / "mine").glob("*.tmp"))

    assert run("prepare", args + ["--overwrite=True"]) == 0
    assert digest(tmp_path / "data" / "mine") != first


def test_prepare_suggests_a_command_that_finishes_here(tmp_path, capsys):
    from nanogpt.cli import run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    assert run("prepare", [f"--input={corpus}", "--name=mine", "--tokenizer=char", f"--data_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    # no GPU here: the fast CPU preset, which finishes in minutes, not GPT-2 124M's defaults
    assert (f"train on it with `python train.py config/train_shakespeare_char_cpu_fast.py --dataset=mine "
            f"--data_dir={tmp_path} --out_dir=out-mine`") in out


def test_preparing_the_same_char_dataset_again_adds_a_missing_meta_pkl(tmp_path):
    from nanogpt.legacy import read_meta_pkl

    tokenizer = CharTokenizer.from_text(CORPUS)
    ids = tokenizer.encode(CORPUS)
    write_dataset(tmp_path / "d", ids[:5000], ids[5000:], tokenizer.describe())
    (tmp_path / "d" / "meta.pkl").unlink()  # as a dataset prepared before meta.pkl was written
    write_dataset(tmp_path / "d", ids[:5000], ids[5000:], tokenizer.describe())
    assert read_meta_pkl(tmp_path / "d" / "meta.pkl")["chars"] == tokenizer.chars
