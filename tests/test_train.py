"""Pieces of training checked against values worked out by hand: the learning-rate schedule, the vocabulary
padding, gradient clipping and bfloat16 autocast on the CPU."""

import dataclasses

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from nanogpt.checkpoint import load_checkpoint
from nanogpt.config import TrainConfig
from nanogpt.model import GPT
from nanogpt.train import get_lr, padded_vocab_size, train
from tests.conftest import tiny_config


def quiet(*_):
    pass


# learning_rate 1, min_lr 0.1, 4 warmup steps, decay over iterations 4..12
SCHEDULE = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=4, lr_decay_iters=12)


@pytest.mark.parametrize("it, lr", [
    (0, 0.2),  # warmup: (it + 1) / (warmup_iters + 1) of the peak, as nanoGPT
    (1, 0.4),
    (3, 0.8),
    (4, 1.0),  # the peak, where the cosine starts
    (6, 0.868198052),  # a quarter of the way: 0.1 + 0.9 * (1 + cos(pi / 4)) / 2
    (8, 0.55),  # half way: midway between peak and floor
    (10, 0.231801948),  # three quarters: 0.1 + 0.9 * (1 + cos(3 pi / 4)) / 2
    (12, 0.1),  # the floor at lr_decay_iters
    (13, 0.1),  # and after it
    (10_000, 0.1),
])
def test_lr_schedule(it, lr):
    assert get_lr(it, SCHEDULE) == pytest.approx(lr, abs=1e-9)


def test_lr_schedule_without_warmup_or_decay():
    assert get_lr(0, dataclasses.replace(SCHEDULE, warmup_iters=0)) == 1.0
    flat = dataclasses.replace(SCHEDULE, decay_lr=False)
    assert [get_lr(it, flat) for it in (0, 3, 8, 12, 100)] == [1.0] * 5


@pytest.fixture
def optimizer_steps():
    """Records, at every optimizer step, its learning rate and the total norm of the gradients it applies."""
    steps = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        steps.append({"lr": optimizer.param_groups[0]["lr"], "grad_norm": norm})

    handle = register_optimizer_step_pre_hook(record)
    yield steps
    handle.remove()


def test_the_optimizer_steps_with_the_scheduled_lr(char_dataset, tmp_path, optimizer_steps):
    data_dir, _ = char_dataset
    # learning_rate 1e-2, min_lr 1e-3, 2 warmup steps, decay to iteration 20
    train(tiny_config(data_dir, tmp_path / "run"), log=quiet)
    lrs = [step["lr"] for step in optimizer_steps]
    assert len(lrs) == 20
    assert lrs[0] == pytest.approx(1e-2 / 3)
    assert lrs[1] == pytest.approx(2e-2 / 3)
    assert lrs[2] == pytest.approx(1e-2)
    assert lrs[11] == pytest.approx(5.5e-3)  # half way through the decay
    assert lrs[19] == pytest.approx(1.06836e-3, rel=1e-4)  # 1e-3 + 9e-3 * (1 + cos(17 pi / 18)) / 2


@pytest.mark.parametrize("vocab_size, padded", [
    (65, 65),  # character vocabularies stay exact, as in nanoGPT
    (1023, 1023),
    (1024, 1024),
    (1025, 1088),  # larger ones round up to a multiple of 64
    (50257, 50304),  # GPT-2's vocabulary, as nanoGPT pads it
    (50304, 50304),
    (100277, 100288),
])
def test_padded_vocab_size(vocab_size, padded):
    assert padded_vocab_size(vocab_size) == padded


def test_grad_clip_bounds_the_gradient_norm_of_every_step(char_dataset, tmp_path, optimizer_steps):
    data_dir, _ = char_dataset
    train(tiny_config(data_dir, tmp_path / "free", max_iters=5, grad_clip=0.0), log=quiet)
    free = [step["grad_norm"] for step in optimizer_steps]
    optimizer_steps.clear()
    train(tiny_config(data_dir, tmp_path / "clipped", max_iters=5, grad_clip=0.05), log=quiet)
    clipped = [step["grad_norm"] for step in optimizer_steps]
    assert len(free) == len(clipped) == 5
    assert min(free) > 0.2, "the unclipped gradients should be well above the clip, or this test proves nothing"
    assert max(clipped) <= 0.05 * (1 + 1e-5)
    assert clipped[0] == pytest.approx(0.05, rel=1e-4)  # the same first batch, its gradient scaled down to the clip


def test_bfloat16_autocast_on_the_cpu_trains(char_dataset, tmp_path, monkeypatch):
    data_dir, _ = char_dataset
    forward = GPT.forward
    logits_dtypes = []

    def spy(self, idx, targets=None, **kw):
        logits, loss = forward(self, idx, targets, **kw)
        if self.training:
            logits_dtypes.append(logits.dtype)
        return logits, loss

    monkeypatch.setattr(GPT, "forward", spy)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        logits_dtypes.clear()
        runs[dtype] = train(tiny_config(data_dir, tmp_path / dtype, dtype=dtype), log=quiet)
        assert set(logits_dtypes) == {getattr(torch, dtype)}  # the forward ran under autocast, or not
    for result in runs.values():
        assert result.train_losses[19] < result.train_losses[0] - 0.5
    assert runs["bfloat16"].last_losses["val"] == pytest.approx(runs["float32"].last_losses["val"], abs=0.1)
    # autocast computes in bfloat16 but the weights, and the checkpoint, stay float32
    assert all(v.dtype == torch.float32 for v in load_checkpoint(tmp_path / "bfloat16")["model"].values())
