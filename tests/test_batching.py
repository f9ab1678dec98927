"""Continuous batching (generate.BatchEngine): a completion's tokens do not depend on what else runs beside it."""

import torch

from nanogpt.generate import BatchEngine, Completion, complete, next_token, pick_token
from nanogpt.tokenizers import CharTokenizer
from tests.test_generate import CHARS, tiny_model

TOKENIZER = CharTokenizer(CHARS)


def solo(model, c):
    """What c gives alone: (text, finish_reason). Greedy: from complete(), the one-request path `sample` uses;
    sampled: from an engine running nothing else (it draws its random numbers differently from `sample`)."""
    if c.temperature == 0:
        events = list(complete(model, TOKENIZER, c.prompt, c.max_tokens, temperature=0, top_k=c.top_k,
                               top_p=c.top_p, stop=c.stop))
        return "".join(text for _, text, _ in events), events[-1][2]
    copy = Completion(c.prompt, c.max_tokens, c.temperature, c.top_k, c.top_p, c.seed, c.stop)
    results, _ = run(BatchEngine(model, TOKENIZER, max_batch=1), {0: [copy]})
    return results[id(copy)]


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
    assert first_tokens == [next_token(model(torch.tensor([s]))[0][:, -1], temperature=0).item() for s in seqs]
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


def test_pick_token_follows_the_distribution_and_never_picks_a_filtered_token():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 9.0, 9.0])  # the last two ids are padding beyond a vocabulary of 4
    generator = torch.Generator().manual_seed(0)
    picks = [pick_token(logits, 1.0, 3, None, 4, generator) for _ in range(3000)]
    counts = [picks.count(i) for i in range(6)]
    assert counts[3] == counts[4] == counts[5] == 0  # filtered by top_k=3, and padding
    expected = torch.softmax(logits[:3], -1) * 3000
    assert all(abs(c - e) < 5 * e.sqrt() for c, e in zip(counts, expected))
    assert pick_token(logits, 0, None, None, 4, generator) == 2
