"""`bench`: its settings are checked like train's (one-line errors), and a named dataset is timed with real batches
and the model train would build for it."""

import math

import numpy as np
import pytest

from nanogpt.bench import BenchConfig, batches, bench
from nanogpt.cli import run
from nanogpt.data import Dataset

TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=2, steps=2, warmup_steps=1, device="cpu",
            dtype="float32", compile=False)


def tiny(data_dir, **overrides):
    return BenchConfig(**{**TINY, "data_dir": str(data_dir), **overrides})


@pytest.mark.parametrize("args, message", [
    (["--device=tpu"], "unknown device 'tpu'"),
    (["--dtype=float8"], "unknown dtype 'float8'"),
    (["--n_head=5", "--n_embd=128"], "n_embd (128) must be divisible by n_head (5)"),
    (["--n_head=0"], "n_head must be at least 1, got 0"),
    (["--batch_size=0"], "batch_size must be at least 1"),
    (["--steps=0"], "steps must be at least 1"),
    (["--warmup_steps=-1"], "warmup_steps must not be negative"),
    (["--vocab_size=0"], "vocab_size must be at least 1"),
    (["--dataset=nowhere"], "dataset folder"),
    (["--dataset=tiny", "--block_size=100000"], "use a smaller --block_size"),
    (["--n_layr=2"], "did you mean 'n_layer'"),
])
def test_bench_errors_are_one_line(char_dataset, capsys, args, message):
    data_dir, _ = char_dataset
    assert run("bench", ["--device=cpu", "--compile=False", f"--data_dir={data_dir}", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_bench_batches_come_from_the_named_dataset(char_dataset):
    data_dir, tokenizer = char_dataset
    get_batch, vocab_size, _ = batches(tiny(data_dir, dataset="tiny"), "cpu")
    assert vocab_size == tokenizer.vocab_size  # a char vocabulary is small enough to stay unpadded
    train = Dataset(data_dir / "tiny").tokens("train").astype(np.int64).tolist()
    x, y = get_batch(0)
    assert x.shape == (2, 16) and y.shape == (2, 16)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        assert row_x[1:] == row_y[:-1]  # targets are the inputs shifted by one
        assert any(train[i:i + 17] == row_x + row_y[-1:] for i in range(len(train) - 16))
    assert not all(get_batch(0)[0].equal(get_batch(s)[0]) for s in (1, 2, 3))  # a new batch each step


def test_bench_on_a_real_dataset_times_the_model_train_would_build(char_dataset):
    data_dir, tokenizer = char_dataset
    lines = []
    figures = bench(tiny(data_dir, dataset="tiny"), log=lines.append)
    # counted by hand for 1 layer, 16 wide, no biases, tied embeddings, position table left out: the token
    # embedding, two LayerNorm gains and the final one, q/k/v and the attention projection, the 4x MLP
    d, v = 16, tokenizer.vocab_size
    expected = v * d + 3 * d + (d * 3 * d + d * d) + (d * 4 * d + 4 * d * d)
    assert figures["parameters"] == expected
    # a fresh model's loss is about ln(vocab size): ~4 for this char data, ~10.8 for 50,304 random tokens
    assert abs(figures["loss"] - math.log(tokenizer.vocab_size)) < 1
    assert figures["ms_per_iter"] > 0 and str(data_dir / "tiny") in lines[0]


def test_bench_without_a_dataset_draws_random_tokens(tmp_path):
    lines = []
    figures = bench(tiny(tmp_path, vocab_size=1000), log=lines.append)
    assert figures["loss"] > math.log(1000) - 1
    assert "random tokens of a 1,000-token vocabulary" in lines[0]
