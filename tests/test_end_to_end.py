"""A short train -> checkpoint -> resume -> sample on a small corpus, through the same functions the CLI calls."""

import dataclasses

import torch

from nanogpt.checkpoint import load_checkpoint
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


def test_eval_only_writes_nothing(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    out_dir = tmp_path / "eval"
    logs = []
    result = train(tiny_config(data_dir, out_dir, eval_only=True), log=logs.append)
    assert result.iter_num == 0 and "val" in result.last_losses
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_same_seed_same_run(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    a = train(tiny_config(data_dir, tmp_path / "a", max_iters=5), log=lambda *_: None)
    b = train(tiny_config(data_dir, tmp_path / "b", max_iters=5), log=lambda *_: None)
    assert a.train_losses == b.train_losses
    wa = load_checkpoint(tmp_path / "a")["model"]
    wb = load_checkpoint(tmp_path / "b")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
