"""The KV cache against the plain path, the next-token filters, stop strings, and `sample`'s user errors."""

import pytest
import torch

from nanogpt import checkpoint
from nanogpt.cli import run
from nanogpt.generate import (SlotCache, TextStream, complete, generate_ids, mask_vocab, sample_tokens, top_k_filter,
                              top_p_filter, window_start)
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
    """Each row's n greedy tokens after its prompt, from the engine."""
    idx = torch.tensor(prompt, dtype=torch.long)
    return generate_ids(model, idx, n, temperature=0, kv_cache=kv_cache, window_shift=window_shift)[:, idx.size(1):].tolist()


def argmax_token(logits):
    return sample_tokens(logits, [0] * logits.size(0), [None] * logits.size(0), [None] * logits.size(0),
                         torch.zeros(logits.size(0)))


@pytest.mark.parametrize("window_shift", [1, 0])  # exact sliding window, and the default (half a block)
def test_cache_and_plain_path_agree_for_200_tokens_past_block_size(window_shift):
    model = tiny_model(block_size=16)
    prompt = [[1, 2, 3, 4, 5]]
    with_cache = greedy(model, prompt, 200, True, window_shift)
    without = greedy(model, prompt, 200, False, window_shift)
    assert with_cache == without
    assert len(set(with_cache[0][-100:])) > 5, "a constant sequence would prove little"


def test_cache_logits_equal_plain_logits_at_every_step_as_the_cache_grows():
    """Prefill 5 tokens, then decode one at a time to position 150: the cache grows from 64 positions to 128 and
    then to the block size, copying what it holds, and every step's logits equal a plain forward of the prefix."""
    model = tiny_model(block_size=160)
    torch.manual_seed(0)
    x = torch.randint(0, 64, (2, 150))
    cache = SlotCache.for_model(model, max_batch=4)
    sizes = set()
    with torch.no_grad():
        logits, _ = model(x[:, :5], kv_cache=cache.prefill([0, 1], [0, 0], "cpu"))
        for t in range(5, 150):
            torch.testing.assert_close(logits[:, -1], model(x[:, :t])[0][:, -1], atol=1e-4, rtol=0)
            logits, _ = model(x[:, t:t + 1], kv_cache=cache.decode(2))
            sizes.add(cache.k[0].shape)
    assert sorted(s[2] for s in sizes) == [64, 128, 160] and {s[0] for s in sizes} == {2}


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


def nanogpt_greedy(model, idx, n):
    """nanoGPT's generate loop, written out here as the reference: the whole cropped context read at every step."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


def test_model_generate_is_the_engine_and_matches_nanogpts_loop():
    model = tiny_model()
    idx = torch.tensor([[5, 6], [1, 9]])
    with torch.no_grad():
        assert torch.equal(model.generate(idx, 40, temperature=0), nanogpt_greedy(model, idx, 40))  # past block 16
    torch.manual_seed(3)
    first = model.generate(idx, 30, temperature=1.0, top_k=10)
    torch.manual_seed(3)
    assert torch.equal(model.generate(idx, 30, temperature=1.0, top_k=10), first)  # torch.manual_seed reproduces
    assert first.shape == (2, 32) and torch.equal(first[:, :2], idx)


def test_batched_greedy_rows_are_independent():
    model = tiny_model()
    prompts = [[1, 2, 3], [9, 8, 7], [4, 4, 4]]
    batched = greedy(model, prompts, 40, True)
    for row, prompt in enumerate(prompts):
        assert batched[row] == greedy(model, [prompt], 40, True)[0]


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert argmax_token(logits).tolist() == [1, 0]
    # filters do not change the greedy choice
    assert sample_tokens(logits, [0, 0], [2, 2], [0.1, 0.1], torch.rand(2)).tolist() == [1, 0]


def test_sampler_follows_each_rows_filtered_distribution():
    """3000 draws per row against the expected counts, worked out by hand: row 0 keeps its top 3 tokens (top_k),
    row 1 the nucleus {0.5, 0.3} (top_p 0.7), row 2 everything at temperature 2; ids 4 and 5 are padding."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 9.0, 9.0],
                           [0.5, 0.3, 0.15, 0.05, 1.0, 1.0],
                           [0.0, 2.0, 0.0, 0.0, 9.0, 9.0]])
    logits[1, :4] = logits[1, :4].log()
    logits = mask_vocab(logits, 4)
    n = 3000
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_tokens(logits, [1.0, 1.0, 2.0], [3, 0, None], [1.0, 0.7, None],
                                       torch.rand(3, generator=generator)) for _ in range(n)])
    e = torch.tensor(1.0).exp()
    expected = [[1 / (1 + e + e * e), e / (1 + e + e * e), e * e / (1 + e + e * e), 0, 0, 0],
                [0.5 / 0.8, 0.3 / 0.8, 0, 0, 0, 0],
                [1 / (3 + e), e / (3 + e), 1 / (3 + e), 1 / (3 + e), 0, 0]]  # 2/2 = 1: exp(1) for id 1
    for row in range(3):
        counts = torch.bincount(draws[:, row], minlength=6).tolist()
        for got, p in zip(counts, expected[row]):
            p = float(p)
            assert (got == 0) if p == 0 else abs(got - n * p) < 5 * (n * p * (1 - p)) ** 0.5, (row, counts)


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
    logits = mask_vocab(torch.zeros(1000, 8).index_fill(1, torch.tensor([6, 7]), 10.0), 6)  # 6, 7: padding
    ids = sample_tokens(logits, [1.0] * 1000, [3] * 1000, [None] * 1000, torch.rand(1000))
    assert ids.max() < 6
    assert torch.isinf(logits[:, 6:]).all()
    # a uniform number at the very top end still lands on a token of positive probability
    assert sample_tokens(logits[:1], [1.0], [None], [None], torch.tensor([1.0 - 1e-8])).item() < 6


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
