"""Exact resume: stopping and resuming a run changes nothing it computes, and a run that goes wrong leaves its last
good checkpoint untouched."""

import dataclasses
import hashlib
import re

import pytest
import torch

from nanogpt import train as train_module
from nanogpt.checkpoint import load_checkpoint
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.train import train
from tests.conftest import tiny_config


def quiet(*_):
    pass


def resumable_config(data_dir, out_dir, **overrides):
    # dropout on, so the test also covers the per-step reseeding of dropout; the schedule spans all 60 iterations
    settings = dict(max_iters=60, lr_decay_iters=60, warmup_iters=5, dropout=0.1, eval_interval=25,
                    always_save_checkpoint=False, gradient_accumulation_steps=2)
    settings.update(overrides)
    return tiny_config(data_dir, out_dir, **settings)


def test_resumed_run_logs_the_same_losses_as_a_straight_one(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    straight = train(resumable_config(data_dir, tmp_path / "straight"), log=quiet)

    cfg = resumable_config(data_dir, tmp_path / "halves", max_iters=30)
    first = train(cfg, log=quiet)
    # iteration 30 is not an eval_interval and always_save_checkpoint is off: the run's end saves it anyway
    assert load_checkpoint(tmp_path / "halves")["iter_num"] == 30
    second = train(dataclasses.replace(cfg, init_from="resume", max_iters=60), log=quiet)

    assert sorted(straight.train_losses) == list(range(60))
    assert {**first.train_losses, **second.train_losses} == straight.train_losses  # bit for bit
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    assert a["iter_num"] == b["iter_num"] == 60
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["best_val_loss"] == b["best_val_loss"]


def logged_val_losses(lines):
    """{step: val loss} from the run's "step N: train loss X, val loss Y" lines."""
    found = (re.fullmatch(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", line) for line in lines)
    return {int(m[1]): float(m[2]) for m in found if m}


def test_best_checkpoint_holds_the_lowest_val_loss_the_run_logged(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    lines = []
    train(resumable_config(data_dir, out_dir, max_iters=20, eval_interval=5), log=lines.append)
    logged = logged_val_losses(lines)
    assert sorted(logged) == [0, 5, 10, 15, 20]
    trained = {step: loss for step, loss in logged.items() if step > 0}  # step 0 is the untrained model: not saved
    best_step = min(trained, key=trained.get)
    best = load_checkpoint(out_dir, which="best")
    assert best["iter_num"] == best_step
    assert best["best_val_loss"] == pytest.approx(trained[best_step], abs=5e-5)  # the log rounds to 4 decimals
    assert load_checkpoint(out_dir)["iter_num"] == 20


def test_best_checkpoint_is_the_iteration_with_the_lowest_val_loss(char_dataset, tmp_path, monkeypatch):
    """With val losses scripted to rise after iteration 10, best.pt stays at 10 while ckpt.pt moves on."""
    data_dir, _ = char_dataset
    val_losses = iter([4.0, 3.0, 2.5, 2.75, 2.6])  # at iterations 0, 5, 10, 15, 20

    def scripted(session, *_):
        return {"train": 1.0, "val": next(val_losses)}

    monkeypatch.setattr(train_module, "estimate_loss", scripted)
    out_dir = tmp_path / "run"
    result = train(resumable_config(data_dir, out_dir, max_iters=20, eval_interval=5), log=quiet)
    best, last = load_checkpoint(out_dir, which="best"), load_checkpoint(out_dir)
    assert (best["iter_num"], best["best_val_loss"]) == (10, 2.5)
    assert (last["iter_num"], last["best_val_loss"]) == (20, 2.5)
    assert result.best_val_loss == 2.5
    assert not torch.equal(best["model"]["lm_head.weight"], last["model"]["lm_head.weight"])


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def nan_from_call(monkeypatch):
    """Make the model's training forward return a nan loss from its n-th call on (counted from 0)."""
    forward = GPT.forward

    def arm(n, once=False):
        calls = []

        def poisoned(self, idx, targets=None, **kw):
            logits, loss = forward(self, idx, targets, **kw)
            if self.training and targets is not None:
                calls.append(1)
                hit = len(calls) - 1 == n if once else len(calls) - 1 >= n
                if hit:
                    loss = loss * float("nan")
            return logits, loss

        monkeypatch.setattr(GPT, "forward", poisoned)

    return arm


def test_nonfinite_loss_stops_with_the_checkpoint_intact(char_dataset, tmp_path, nan_from_call):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    cfg = tiny_config(data_dir, out_dir, max_iters=6, eval_interval=3)
    train(cfg, log=quiet)
    # metrics.jsonl goes on recording the steps that did run; the checkpoint files must not change
    before = {p.name: sha(p) for p in out_dir.iterdir() if p.name != "metrics.jsonl"}

    nan_from_call(2)  # the third training step of the resumed run
    with pytest.raises(UserError, match=r"loss became nan at iteration 8; stopped, the last checkpoint .* intact"):
        train(dataclasses.replace(cfg, init_from="resume", max_iters=20), log=quiet)
    assert {p.name: sha(p) for p in out_dir.iterdir() if p.name != "metrics.jsonl"} == before


def test_skip_nonfinite_skips_the_step_and_goes_on(char_dataset, tmp_path, nan_from_call):
    data_dir, _ = char_dataset
    logs = []
    nan_from_call(3, once=True)
    result = train(tiny_config(data_dir, tmp_path / "run", max_iters=8, skip_nonfinite=True), log=logs.append)
    assert result.iter_num == 8
    assert sorted(result.train_losses) == [0, 1, 2, 4, 5, 6, 7]
    assert any(line.startswith("iter 3: the loss is nan; skipping this step") for line in logs)
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "run")["model"].values())


def test_a_nonfinite_step_between_logging_steps_is_skipped_on_the_device_and_reported_with_its_iteration(
        char_dataset, tmp_path, nan_from_call):
    """Steps that do not log read nothing back: the bad step is skipped on the device and the run learns of it at
    the next logging step (here the evaluation at 5, which reads it first, so nothing is saved after it)."""
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    nan_from_call(3, once=True)
    cfg = tiny_config(data_dir, out_dir, max_iters=10, log_interval=5, eval_interval=5, always_save_checkpoint=True)
    with pytest.raises(UserError, match=r"the loss became nan at iteration 3; stopped, the last checkpoint .* intact"):
        train(cfg, log=quiet)
    assert not (out_dir / "ckpt.pt").exists()  # the evaluation at 5 stopped before saving

    logs = []
    nan_from_call(3, once=True)
    result = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "skip"), skip_nonfinite=True), log=logs.append)
    assert any(line.startswith("iter 3: the loss is nan; skipping this step") for line in logs)
    assert sorted(result.train_losses) == [0, 5]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(tmp_path / "skip")["model"].values())
