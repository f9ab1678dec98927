"""Shared fixtures: a small character corpus written as a prepared dataset, and a tiny trained run."""

import pytest
import torch

from nanogpt.config import TrainConfig
from nanogpt.data import write_dataset
from nanogpt.tokenizers import CharTokenizer

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 40


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread: on a busy machine two threads spin-waiting on each other can make
    each step ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(data_dir, out_dir, **overrides):
    """A model and run small enough to train in about a second on a CPU."""
    settings = dict(
        out_dir=str(out_dir), data_dir=str(data_dir), dataset="tiny", device="cpu", compile=False, dtype="float32",
        n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4, gradient_accumulation_steps=1,
        max_iters=20, lr_decay_iters=20, warmup_iters=2, eval_interval=10, eval_iters=2, log_interval=1,
        learning_rate=1e-2, min_lr=1e-3, dropout=0.0, bias=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture
def char_dataset(tmp_path):
    """A prepared character dataset at tmp_path/data/tiny; returns (data_dir, tokenizer)."""
    tokenizer = CharTokenizer.from_text(CORPUS)
    ids = tokenizer.encode(CORPUS)
    n = int(len(ids) * 0.9)
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "tiny", ids[:n], ids[n:], tokenizer.describe())
    return data_dir, tokenizer
