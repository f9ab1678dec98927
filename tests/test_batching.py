"""Continuous batching (generate.BatchEngine): a completion's tokens do not depend on what else runs beside it.

The expectation is computed here, without the engine: the plain model reads each completion's whole window at
every step, and its token is drawn from the sampler with the completion's own seeded random numbers."""

import torch

from nanogpt.generate import BatchEngine, Completion, sample_tokens, window_start
from nanogpt.tokenizers import CharTokenizer
from tests.test_generate import CHARS, tiny_model

TOKENIZER = CharTokenizer(CHARS)
BLOCK = 16


@torch.no_grad()
def solo(model, c, stop_token=None):
    """What c gives alone, by the plain path: (text, finish_reason). Past the block size the window moves by half
    a block at a time, the engine's default."""
    generator = torch.Generator().manual_seed(c.seed) if c.seed is not None else None
    tokens, start = list(c.prompt), max(0, len(c.prompt) - BLOCK)
    text = ""
    for _ in range(c.max_tokens):
        start = window_start(len(tokens), start, BLOCK, BLOCK // 2)
        logits = model(torch.tensor([tokens[start:]]))[0][:, -1]
        u = torch.rand(1, generator=generator) if generator else torch.zeros(1)
        token = sample_tokens(logits, [c.temperature], [c.top_k], [c.top_p], u).item()
        if token == stop_token:
            return text, "stop"
        tokens.append(token)
        text = TOKENIZER.decode(tokens[len(c.prompt):])
        cuts = [text.find(s) for s in c.stop if s in text]
        if cuts:
            return text[:min(cuts)], "stop"
    return text, "length"


def run(engine, arrivals):
    """Drive the engine; arrivals maps a step number to the completions that join at that step. Returns each
    completion's (text, finish_reason) and the largest batch seen."""
    results, texts, step, widest = {}, {}, 0, 0
    while arrivals or engine.running:
        for c in arrivals.pop(step, []):
            engine.add(c)
        widest = max(widest, engine.running)
        for c, text, reason in engine.step():
            texts[id(c)] = texts.get(id(c), "") + text
            if reason:
                results[id(c)] = (texts[id(c)], reason)
        step += 1
    return results, widest


def test_batched_greedy_equals_solo_greedy_for_mixed_prompts_and_settings():
    model = tiny_model(block_size=16, vocab_size=len(CHARS))
    prompts = [[1], [5, 9, 2, 7, 7, 3, 1, 30, 40], [11, 12], list(range(20, 36)), [3, 3, 3, 3]]
    greedy = [Completion(p, max_tokens=n, temperature=0) for p, n in zip(prompts, (40, 25, 7, 33, 1))]
    # greedy with filters and a stop string, and seeded samples, all in the same batch
    greedy.append(Completion([2, 4], max_tokens=30, temperature=0, top_k=3, top_p=0.5))
    sampled = [Completion([7, 8, 9], max_tokens=30, temperature=1.0, top_k=20, top_p=0.9, seed=s) for s in (1, 2)]
    all_of_them = greedy + sampled
    expected = {id(c): solo(model, c) for c in all_of_them}
    stop_text = expected[id(greedy[0])][0][12:14]
    with_stop = Completion([1], max_tokens=40, temperature=0, stop=(stop_text,))
    expected[id(with_stop)] = solo(model, with_stop)
    assert expected[id(with_stop)][1] == "stop"
    arrivals = {0: greedy[:3], 1: [with_stop], 4: greedy[3:] + sampled[:1], 9: sampled[1:]}
    results, widest = run(BatchEngine(model, TOKENIZER, max_batch=8), arrivals)
    assert widest >= 6, "the completions should really have shared the batch"
    assert results == expected
    assert len({text for text, _ in expected.values()}) == len(expected), "distinct outputs prove more"


def test_a_full_batch_waits_and_an_abandoned_completion_leaves_at_once():
    model = tiny_model(block_size=16, vocab_size=len(CHARS))
    engine = BatchEngine(model, TOKENIZER, max_batch=2)
    keep = Completion([4, 5], max_tokens=20, temperature=0)
    leave = Completion([6], max_tokens=1000, temperature=0)
    engine.add(keep)
    engine.add(leave)
    assert engine.free == 0
    text = "".join(t for _ in range(2) for c, t, _ in engine.step() if c is keep)
    engine.remove(leave)
    assert engine.free == 1
    text += "".join(t for _ in range(30) for c, t, _ in engine.step() if c is keep)
    assert engine.running == 0 and (text, "length") == solo(model, keep)


def test_stop_token_ends_a_completion():
    model = tiny_model(block_size=16, vocab_size=len(CHARS))
    free_run = Completion([1], max_tokens=20, temperature=0)
    text, _ = solo(model, free_run)
    stop_token = TOKENIZER.encode(text[5])[0]
    assert text[5] not in text[:5]
    engine = BatchEngine(model, TOKENIZER, max_batch=1, stop_token=stop_token)
    results, _ = run(engine, {0: [Completion([1], max_tokens=20, temperature=0)]})
    assert list(results.values()) == [(text[:5], "stop")]


def test_zero_max_tokens_finishes_at_once():
    engine = BatchEngine(tiny_model(vocab_size=len(CHARS)), TOKENIZER, max_batch=1)
    c = Completion([1], max_tokens=0)
    engine.add(c)
    assert engine.step() == [(c, "", "length")] and engine.running == 0


def test_rows_at_different_positions_match_the_plain_forward():
    model = tiny_model(block_size=16, vocab_size=len(CHARS))
    engine = BatchEngine(model, TOKENIZER, max_batch=3)
    seqs = [[1, 2, 3, 4, 5, 6], [9], [7, 7, 8]]
    cs = [Completion(s, max_tokens=5, temperature=0) for s in seqs]
    for c in cs:
        engine.add(c)
    engine.step()  # prefill all three in one forward, the shorter ones left-padded
    first_tokens = [c.tokens[-1] for c in cs]
    assert first_tokens == [model(torch.tensor([s]))[0][0, -1].argmax().item() for s in seqs]
    captured = {}
    original = model.forward

    def spy(idx, targets=None, kv_cache=None):
        logits, loss = original(idx, targets, kv_cache)
        captured["logits"] = logits
        return logits, loss

    model.forward = spy
    try:
        engine.step()  # one batched decode: rows at positions 6, 1 and 3
    finally:
        del model.forward
    for c in cs:
        plain, _ = model(torch.tensor([c.tokens[:-1]]))
        torch.testing.assert_close(captured["logits"][c.row, -1], plain[0, -1], atol=1e-4, rtol=0)
