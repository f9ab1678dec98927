"""A short train -> checkpoint -> resume -> sample on a small corpus, through the same functions the CLI calls."""

import dataclasses

import pytest
import torch

from nanogpt.checkpoint import load_checkpoint
from nanogpt.errors import UserError
from nanogpt.sample import SampleConfig, sample
from nanogpt.train import train
from tests.conftest import tiny_config


def test_train_checkpoint_resume_sample(char_dataset, tmp_path):
    data_dir, tokenizer = char_dataset
    out_dir = tmp_path / "run"
    logs = []
    cfg = tiny_config(data_dir, out_dir, max_iters=20, always_save_checkpoint=True)
    result = train(cfg, log=logs.append)
    assert result.iter_num == 20
    assert any(line.startswith("step 20: train loss ") and ", val loss " in line for line in logs)
    assert any(line.startswith("iter 19: loss ") and "ms, mfu " in line for line in logs)
    first, last = result.train_losses[0], result.train_losses[19]
    assert last < first - 0.5, "training should lower the loss"

    ckpt = load_checkpoint(out_dir)
    assert ckpt["iter_num"] == 20 and ckpt["tokenizer"]["chars"] == tokenizer.chars
    assert ckpt["config"]["n_layer"] == 2

    resumed = train(dataclasses.replace(cfg, init_from="resume", max_iters=30, lr_decay_iters=30), log=logs.append)
    assert resumed.iter_num == 30 and min(resumed.train_losses) == 20
    assert load_checkpoint(out_dir)["iter_num"] == 30

    printed = []
    samples = sample(SampleConfig(out_dir=str(out_dir), device="cpu", num_samples=2, max_new_tokens=30,
                                  start="All:\n"), write=printed.append)
    assert len(samples) == 2
    for text in samples:
        assert text.startswith("All:\n") and len(text) == len("All:\n") + 30
        assert set(text) <= set(tokenizer.chars)


def test_eval_only_evaluates_a_trained_run_and_writes_nothing(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    trained = train(tiny_config(data_dir, out_dir, max_iters=10, eval_interval=10), log=lambda *_: None)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    logs = []
    result = train(tiny_config(data_dir, out_dir, eval_only=True, init_from="resume"), log=logs.append)
    assert result.iter_num == 10
    # the same batches as the run's own last evaluation: the same val loss
    assert result.last_losses["val"] == trained.last_losses["val"]
    assert any(line.startswith("step 10: train loss") for line in logs)
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_eval_only_without_weights_says_so(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    with pytest.raises(UserError, match="eval_only needs trained weights"):
        train(tiny_config(data_dir, tmp_path / "eval", eval_only=True), log=lambda *_: None)
    assert not (tmp_path / "eval").exists()


def test_same_seed_same_run(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    a = train(tiny_config(data_dir, tmp_path / "a", max_iters=5), log=lambda *_: None)
    b = train(tiny_config(data_dir, tmp_path / "b", max_iters=5), log=lambda *_: None)
    assert a.train_losses == b.train_losses
    wa = load_checkpoint(tmp_path / "a")["model"]
    wb = load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
