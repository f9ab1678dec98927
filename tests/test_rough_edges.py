"""The edges a new user hit: threads, compile, resuming (its settings, its optimizer state), the train estimate,
the learning-rate note, "did you mean", the report's sample, the exit path, one set-up for every command."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt import runtime
from nanogpt.cli import run
from nanogpt.config import TrainConfig
from nanogpt.errors import UserError
from nanogpt.train import train
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def logged(cfg, **kw):
    lines = []
    train(cfg, log=lines.append, **kw)
    return lines


# ------------------------------------------------------------------------------------------------------- threads


def test_auto_threads_take_the_idle_cores_and_an_explicit_count_wins():
    assert runtime.resolve_threads(0, cores=2, load=8.9, current=2) == 1  # a busy two-core machine: one thread
    assert runtime.resolve_threads(0, cores=2, load=0.3, current=2) == 2  # a quiet one: PyTorch's own choice
    assert runtime.resolve_threads(0, cores=2, load=1.0, current=2) == 1  # one core busy: only the idle one
    assert runtime.resolve_threads(0, cores=8, load=5.2, current=8) == 3
    assert runtime.resolve_threads(0, cores=8, load=9.0, current=8) == 1
    assert runtime.resolve_threads(0, cores=8, load=0.0, current=3) == 3  # OMP_NUM_THREADS=3 is kept
    assert runtime.resolve_threads(2, cores=1, load=5.0, current=1) == 2


@pytest.mark.parametrize("command", ["train", "sample", "serve", "eval", "bench"])
def test_every_command_has_a_threads_setting(command, capsys):
    assert run(command, ["--help"]) == 0
    assert "--threads=0" in capsys.readouterr().out
    assert run(command, ["--threads=-1", "--device=cpu"]) == 1
    assert "threads must" in capsys.readouterr().err


def test_set_up_sets_the_threads():
    before = torch.get_num_threads()
    try:
        assert runtime.set_up("cpu", "auto", seed=1, threads=2) == ("cpu", "cpu", "float32")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_set_up_for_every_command():
    """No command resolves its device, number format or TF32 itself: runtime.set_up does, for all of them."""
    for name in ("sample", "serve", "evaluate", "bench", "train"):
        # train resolves its device name first: under torchrun it becomes this rank's GPU before set_up
        own = {"resolve_dtype", "prepare_device"} | ({"resolve_device"} if name != "train" else set())
        tree = ast.parse((REPO / "nanogpt" / f"{name}.py").read_text())
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert "set_up" in calls and not own & calls, name


# ------------------------------------------------------------------------------------------------------- compile


def test_native_dtype_is_bfloat16_only_on_cpus_that_compute_it_and_auto_stays_float32():
    assert runtime.resolve_dtype("native", "cpu", cpu_has_bf16=True) == "bfloat16"
    assert runtime.resolve_dtype("native", "cpu", cpu_has_bf16=False) == "float32"
    assert runtime.resolve_dtype("auto", "cpu", cpu_has_bf16=True) == "float32"  # nanoGPT's runs stay float32
    assert runtime.resolve_dtype("native", "mps") == "float32"
    assert runtime.cpu_bf16_is_native() in (True, False)


def test_auto_compiles_on_cuda_only_where_triton_is_importable(monkeypatch):
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: None)
    assert runtime.resolve_compile("auto", "cuda") is False
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: object())
    assert runtime.resolve_compile("auto", "cuda") is True
    assert runtime.resolve_compile("auto", "cpu") is False and runtime.resolve_compile(True, "cpu") is True


@pytest.fixture
def broken_compile(monkeypatch):
    """torch.compile whose compiled model fails at its first call, as it does where Triton is missing."""
    def compile(model, **kw):
        def fails(*args, **kwargs):
            raise RuntimeError("Cannot find a working triton installation\nmore detail")
        return fails

    monkeypatch.setattr(torch, "compile", compile)


def test_a_failed_auto_compile_says_so_and_trains_uncompiled(char_dataset, tmp_path, broken_compile, monkeypatch):
    data_dir, _ = char_dataset
    monkeypatch.setattr(runtime, "resolve_compile", lambda value, device_type: True)  # as 'auto' on CUDA
    lines = logged(tiny_config(data_dir, tmp_path / "out", compile="auto", max_iters=3))
    [line] = [line for line in lines if "torch.compile failed" in line]
    assert "continuing uncompiled" in line and "triton" in line and "\n" not in line
    assert any(line.startswith("iter 2:") for line in lines)


def test_a_failed_explicit_compile_is_a_one_line_error(char_dataset, tmp_path, broken_compile):
    data_dir, _ = char_dataset
    with pytest.raises(UserError, match="torch.compile failed at the first step .*--compile=False"):
        train(tiny_config(data_dir, tmp_path / "out", compile=True, max_iters=3), log=lambda *a: None)


# ------------------------------------------------------------------------------------------------------- resuming


def test_resuming_without_the_config_continues_with_the_saved_settings(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out = tmp_path / "out"
    train(tiny_config(data_dir, out, max_iters=4, lr_decay_iters=4, gradient_accumulation_steps=2,
                      learning_rate=3e-3, eval_interval=2), log=lambda *a: None)
    # `python train.py --out_dir=OUT --init_from=resume --max_iters=6`: every other setting at its default
    given = {"out_dir", "init_from", "max_iters", "data_dir", "device"}
    cfg = TrainConfig(out_dir=str(out), init_from="resume", max_iters=6, data_dir=str(data_dir), device="cpu")
    lines = logged(cfg, given=given)
    [line] = [line for line in lines if line.startswith("resuming with the run's saved settings")]
    assert line.endswith("changed by this command: max_iters=6 (was 4)")
    assert "tokens per iteration will be: 128" in lines  # 2 x 4 x 16, not the defaults' 40 x 12 x 1024
    saved = torch.load(out / "ckpt.pt", weights_only=True)["config"]
    assert saved["learning_rate"] == 3e-3 and saved["eval_interval"] == 2 and saved["max_iters"] == 6


def without_optimizer_state(char_dataset, tmp_path):
    """A run whose ckpt.pt is its best.pt, as the README suggests for sampling with nanoGPT: no optimizer state."""
    data_dir, _ = char_dataset
    out = tmp_path / "out"
    train(tiny_config(data_dir, out, max_iters=4, lr_decay_iters=4, eval_interval=2), log=lambda *a: None)
    shutil.copy(out / "best.pt", out / "ckpt.pt")
    return tiny_config(data_dir, out, max_iters=6, lr_decay_iters=6, eval_interval=2, init_from="resume")


def test_resuming_without_optimizer_state_is_refused(char_dataset, tmp_path):
    cfg = without_optimizer_state(char_dataset, tmp_path)
    with pytest.raises(UserError, match="holds no optimizer state.*--reset_optimizer=True"):
        train(cfg, log=lambda *a: None)


def test_reset_optimizer_resumes_with_fresh_moments_and_says_so(char_dataset, tmp_path):
    cfg = without_optimizer_state(char_dataset, tmp_path)
    cfg.reset_optimizer = True
    lines = logged(cfg)
    assert sum("the optimizer's moments start fresh" in line for line in lines) == 1
    assert any(line.startswith("iter 5:") for line in lines)


# ------------------------------------------------------------------------------------------------------- the log


def test_the_train_estimate_is_optional_and_the_log_line_keeps_its_shape(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    lines = logged(tiny_config(data_dir, tmp_path / "on", max_iters=2, eval_interval=2, eval_iters=3))
    assert any(line.startswith("step 2: train loss ") and "n/a" not in line for line in lines)
    off = tiny_config(data_dir, tmp_path / "off", max_iters=2, eval_interval=2, eval_iters=3, eval_train=False)
    lines = logged(off)
    assert any(line.startswith("step 2: train loss n/a, val loss ") for line in lines)
    records = [json.loads(line) for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records if r["kind"] == "eval"] == [None, None]


def test_max_iters_below_lr_decay_iters_is_noted_in_one_line(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    lines = logged(tiny_config(data_dir, tmp_path / "out", max_iters=4, lr_decay_iters=20))
    [note] = [line for line in lines if "below lr_decay_iters" in line]
    assert note.startswith("note: max_iters (4) is below lr_decay_iters (20)") and "--lr_decay_iters=4" in note


# ------------------------------------------------------------------------------------------------------- did you mean


def test_did_you_mean_for_commands_and_datasets(char_dataset, tmp_path, capsys):
    assert run("smaple", []) == 1
    assert "did you mean 'sample'?" in capsys.readouterr().err
    data_dir, _ = char_dataset
    with pytest.raises(UserError, match="did you mean --dataset=tiny?"):
        train(tiny_config(data_dir, tmp_path / "out", dataset="tinyy"), log=lambda *a: None)
    assert run("prepare", ["shakespeare-char"]) == 1
    assert "did you mean 'shakespeare_char'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- report, exit


def test_the_report_shows_a_generated_sample(char_dataset, tmp_path):
    data_dir, tokenizer = char_dataset
    out = tmp_path / "out"
    train(tiny_config(data_dir, out, max_iters=2, eval_interval=2), log=lambda *a: None)
    assert run("report", [f"--out_dir={out}"]) == 0
    text = (out / "report.md").read_text()
    sample = text.split("## Sample\n\n", 1)[1].split("\n## ", 1)[0]
    body = sample.split("```text\n", 1)[1].rsplit("\n```", 1)[0]
    assert len(body) == 200 and set(body) <= set(tokenizer.chars)


def test_the_exit_path_runs_atexit_handlers_so_loggers_flush(tmp_path):
    """Every command ends with exit_process (os._exit skips Python's slow teardown); wandb and TensorBoard flush and
    close their files in atexit handlers, which must still run."""
    flag = tmp_path / "flushed"
    code = ("import atexit, pathlib; from nanogpt.cli import exit_process; "
            f"atexit.register(pathlib.Path({str(flag)!r}).write_text, 'yes'); exit_process(3)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 3 and flag.read_text() == "yes"
