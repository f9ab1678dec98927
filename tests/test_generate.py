"""The KV cache against the plain path, the next-token filters, stop strings, and `sample`'s user errors."""

import pytest
import torch

from nanogpt import checkpoint
from nanogpt.cli import run
from nanogpt.generate import (KVCache, TextStream, complete, generate_ids, mask_vocab, next_logits, next_token,
                              top_k_filter, top_p_filter, window_start)
from nanogpt.model import GPT, GPTConfig
from nanogpt.sample import OrderedPrinter, SampleConfig, sample
from nanogpt.tokenizers import CharTokenizer

CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # 61 characters


def tiny_model(block_size=16, vocab_size=64, seed=1):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, bias=True))
    with torch.no_grad():
        # At GPT-2's N(0, 0.02) a random model's greedy output soon repeats one token forever; 30x larger layer
        # weights make it depend on the context, so 200 greedy tokens vary (about 30 distinct ids with seed 1)
        # while the top two logits stay far apart compared to float32 rounding
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.startswith("transformer.w"):
                p.mul_(30)
    return model.eval()


def greedy(model, prompt, n, kv_cache, window_shift=1):
    idx = torch.tensor(prompt, dtype=torch.long)
    return list(generate_ids(model, idx, n, temperature=0, kv_cache=kv_cache, window_shift=window_shift))


@pytest.mark.parametrize("window_shift", [1, 0])  # exact sliding window, and the default (half a block)
def test_cache_and_plain_path_agree_for_200_tokens_past_block_size(window_shift):
    model = tiny_model(block_size=16)
    prompt = [[1, 2, 3, 4, 5]]
    with_cache = greedy(model, prompt, 200, True, window_shift)
    without = greedy(model, prompt, 200, False, window_shift)
    assert with_cache == without
    assert len(set(t[0] for t in with_cache[-100:])) > 5, "a constant sequence would prove little"


@pytest.mark.parametrize("window_shift", [1, 5])
def test_cache_logits_equal_plain_logits_at_every_step(window_shift):
    model = tiny_model(block_size=16)
    idx = torch.tensor([[7, 3, 9], [1, 1, 2]])
    cache = KVCache.for_model(model)
    generator = torch.Generator().manual_seed(0)
    start = 0
    with torch.no_grad():
        for _ in range(40):  # well past block_size: the window moves and the cache is refilled
            new_start = window_start(idx.size(1), start, 16, window_shift)
            if new_start != start:
                cache.reset()
            start = new_start
            assert idx.size(1) - start <= 16
            cached = next_logits(model, idx[:, start:], cache)
            plain = next_logits(model, idx[:, -16:] if window_shift == 1 else idx[:, start:])
            torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)
            idx = torch.cat((idx, next_token(cached, 1.0, generator=generator)[:, None]), dim=1)


def test_window_shift_prefills_only_every_shift_tokens():
    model = tiny_model(block_size=16)
    prompt = [[1, 2, 3]]
    assert greedy(model, prompt, 100, True, window_shift=8) == greedy(model, prompt, 100, False, window_shift=8)
    starts, start = [], 0
    for length in range(3, 60):
        start = window_start(length, start, 16, 8)
        starts.append(start)
        assert 16 - 8 < length - start <= 16 or length <= 16
    assert len(set(starts)) == 7  # 0, then a move at lengths 17, 25, 33, 41, 49 and 57: once every 8 tokens


def test_plain_path_matches_model_generate():
    model = tiny_model()
    idx = torch.tensor([[5, 6]])
    torch.manual_seed(3)
    reference = model.generate(idx, 30, temperature=1.0)[0, 2:].tolist()
    torch.manual_seed(3)
    ours = [t[0] for t in generate_ids(model, idx, 30, temperature=1.0, kv_cache=False, window_shift=1)]
    assert ours == reference


def test_batched_greedy_rows_are_independent():
    model = tiny_model()
    prompts = [[1, 2, 3], [9, 8, 7], [4, 4, 4]]
    batched = greedy(model, prompts, 40, True)
    for row, prompt in enumerate(prompts):
        alone = greedy(model, [prompt], 40, True)
        assert [t[row] for t in batched] == [t[0] for t in alone]


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert next_token(logits, temperature=0).tolist() == [1, 0]
    # filters do not change the greedy choice
    assert next_token(logits, temperature=0, top_k=2, top_p=0.1).tolist() == [1, 0]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, True, False]]
    assert torch.equal(top_k_filter(logits, None), logits) and torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()[0]
    assert kept(0.5) == [True, False, False, False]  # the first token alone reaches 0.5
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.85) == [True, True, True, False]  # 0.8 is short of 0.85, so the third is needed
    assert kept(0.01) == [True, False, False, False]  # the most likely token always stays
    assert kept(1.0) == [True, True, True, True]


def test_top_p_works_on_unsorted_rows_independently():
    logits = torch.tensor([[0.05, 0.15, 0.5, 0.3], [0.25, 0.25, 0.25, 0.25]]).log()
    kept = torch.isfinite(top_p_filter(logits, 0.7)).tolist()
    assert kept[0] == [False, False, True, True]  # 0.5 + 0.3 reaches 0.7
    assert kept[1].count(True) == 3  # a uniform row needs three of its four tokens


def test_sampling_never_picks_a_filtered_or_padded_token():
    logits = torch.zeros(1000, 8)
    logits[:, 6:] = 10.0  # ids 6 and 7 are padding beyond a vocabulary of 6
    ids = next_token(logits, temperature=1.0, top_k=3, vocab_size=6, generator=torch.Generator().manual_seed(0))
    assert ids.max() < 6
    assert torch.isinf(mask_vocab(logits, 6)[:, 6:]).all()


def test_seed_reproduces_samples():
    model, tokenizer = tiny_model(vocab_size=len(CHARS)), CharTokenizer(CHARS)
    draw = lambda seed: list(complete(model, tokenizer, [1, 2], 50, num_samples=3, temperature=1.0, seed=seed))
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


class Chars:
    """A tokenizer whose ids are the characters of a string, for stop-string tests."""

    vocab_size = 256

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def stream_text(text, stop):
    stream = TextStream(Chars(), stop)
    pieces = []
    for ch in text:
        pieces.append(stream.add(ord(ch)))
        if stream.finished:
            break
    pieces.append(stream.close())
    return pieces, stream


def test_stop_string_ends_the_sample_and_is_cut_off():
    pieces, stream = stream_text("hello\n\nworld", ["\n\n"])
    assert "".join(pieces) == "hello" and stream.finished
    # the first newline was held back until it was clear it starts the stop string
    assert "\n" not in "".join(pieces)


def test_held_back_prefix_is_released_when_no_stop_follows():
    pieces, _ = stream_text("a\nb\nc", ["\n\n"])
    assert "".join(pieces) == "a\nb\nc"
    assert pieces[1] == "" and pieces[2] == "\nb"  # "\n" waited one token


def test_earliest_of_several_stop_strings_wins():
    pieces, _ = stream_text("one END two STOP", ["STOP", "END"])
    assert "".join(pieces) == "one "


def test_complete_reports_finish_reasons():
    model, tokenizer = tiny_model(vocab_size=len(CHARS)), CharTokenizer(CHARS)
    full = "".join(t for _, t, _ in complete(model, tokenizer, [5], 30, temperature=0))
    stop = full[10:12]
    first = full.find(stop)
    events = list(complete(model, tokenizer, [5], 30, temperature=0, stop=[stop]))
    assert "".join(t for _, t, _ in events) == full[:first]
    assert events[-1][2] == "stop"
    assert list(complete(model, tokenizer, [5], 30, temperature=0))[-1][2] == "length"


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A random char-level model saved as a run."""
    out_dir = tmp_path_factory.mktemp("run")
    model = tiny_model(block_size=16, vocab_size=64)
    tokenizer = CharTokenizer(CHARS)
    state = {
        "model": model.state_dict(),
        "model_args": dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=64, dropout=0.0),
        "iter_num": 0,
        "best_val_loss": 9.9,
        "config": {},
        "tokenizer": tokenizer.describe(),
    }
    checkpoint.save_checkpoint(out_dir, state, {"optimizer": {}, "iter_num": 0}, is_best=False)
    return out_dir


def test_sample_prints_each_sample_then_the_separator(char_run):
    printed = []
    cfg = SampleConfig(out_dir=str(char_run), device="cpu", start="To be", num_samples=3, max_new_tokens=40)
    samples = sample(cfg, write=printed.append)
    assert len(samples) == 3 and all(s.startswith("To be") and len(s) == 45 for s in samples)
    assert "".join(printed) == "".join(s + "\n---------------\n" for s in samples)
    assert set("".join(samples)) <= set(CHARS)  # the 3 padding ids were never sampled


def test_printer_keeps_samples_in_order_when_a_later_one_finishes_first():
    printed = []
    printer = OrderedPrinter(3, "P:", printed.append)
    printer.add(1, "b1", False)
    printer.add(0, "a1", False)
    printer.add(1, "b2", True)  # sample 1 is done before sample 0
    printer.add(2, "c1", False)
    printer.add(0, "a2", True)
    printer.add(2, "c2", True)
    sep = "\n---------------\n"
    assert printed[:2] == ["P:", "a1"]  # sample 0 streams as it comes
    assert "".join(printed) == "P:a1a2" + sep + "P:b1b2" + sep + "P:c1c2" + sep


def test_sample_with_and_without_cache_agree_greedily(char_run):
    cfg = dict(out_dir=str(char_run), device="cpu", start="ab", num_samples=2, max_new_tokens=40, temperature=0.0)
    quiet = lambda text: None
    assert sample(SampleConfig(**cfg), quiet) == sample(SampleConfig(**cfg, kv_cache=False), quiet)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature=-0.5"], "temperature must not be negative"),
        (["--top_p=0"], "top_p must be in (0, 1]"),
        (["--top_p=1.5"], "top_p must be in (0, 1]"),
        (["--window_shift=-1"], "window_shift must be 0 (half the block) or more"),
        (["--start=FILE:/no/such/prompt.txt"], "prompt file /no/such/prompt.txt not found"),
        (["--start=caf\u00e9"], "is not in this model's vocabulary"),
    ],
)
def test_sample_user_errors_are_one_line(char_run, extra, message, capsys):
    status = run("sample", [f"--out_dir={char_run}", "--device=cpu", "--num_samples=1", "--max_new_tokens=3", *extra])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
