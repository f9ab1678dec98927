"""Fast generation beside the model: a KV cache, pure functions that pick the next token from logits, and a
loop that turns a prompt into text pieces as they are produced (used by `sample` and `serve`).

The model never owns inference state. A KVCache is handed to `GPT.forward`, which asks it for the new tokens'
`positions`, whose attention layers call `extend` with the new keys and values (and get back every key and value
with the mask of which each query may see), and which calls `advance` once every layer has seen the new tokens.
"""

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from nanogpt.model import causal_mask_full


class KVCache:
    """Keys and values of every layer for a batch of sequences, preallocated to the model's block size.

    `pos` is how many positions the cache holds; the next tokens the model sees sit at positions pos, pos+1, ...
    The buffers are allocated on the first `extend`, so they take the device and dtype (autocast's included)
    that the keys really have.
    """

    def __init__(self, n_layer, max_len):
        self.max_len = max_len
        self.k = [None] * n_layer  # each (B, n_head, max_len, head_size) once allocated
        self.v = [None] * n_layer
        self.pos = 0

    @classmethod
    def for_model(cls, model):
        return cls(model.config.n_layer, model.config.block_size)

    def positions(self, t, device):
        """Positions of the next t tokens, the same for every row: (1, t)."""
        if self.pos + t > self.max_len:
            raise ValueError(f"cannot forward a sequence of length {self.pos + t}, block size is only {self.max_len}")
        return torch.arange(self.pos, self.pos + t, dtype=torch.long, device=device)[None]

    def extend(self, layer_idx, k, v):
        """Store the new keys and values (B, n_head, T, head_size) after the cached ones; return all of them and
        the attention mask: the T queries are the last T positions, so each sees the keys up to its own."""
        T = k.size(2)
        end = self.pos + T
        assert end <= self.max_len, "positions() checks the length before attention runs"
        if self.k[layer_idx] is None or self.k[layer_idx].shape[0] != k.size(0):
            shape = (k.size(0), k.size(1), self.max_len, k.size(3))
            self.k[layer_idx] = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v[layer_idx] = torch.empty(shape, dtype=v.dtype, device=v.device)
        self.k[layer_idx][:, :, self.pos:end] = k
        self.v[layer_idx][:, :, self.pos:end] = v
        mask = None if T == end or T == 1 else causal_mask_full(T, end, k.device)
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end], mask

    def advance(self, t):
        self.pos += t

    def reset(self):
        """Forget the cached positions (the buffers are kept and overwritten)."""
        self.pos = 0


# ---------------------------------------------------------------------------------------------------------------
# the next token from logits: pure functions of a (B, vocab) tensor


def mask_vocab(logits, vocab_size):
    """Rule out ids the tokenizer cannot decode: models pad their vocabulary to a multiple of 64 for speed."""
    if vocab_size is None or vocab_size >= logits.size(-1):
        return logits
    logits = logits.clone()
    logits[..., vocab_size:] = float("-inf")
    return logits


def top_k_filter(logits, k):
    """Keep the k largest logits of each row (ties with the k-th are kept too); None or 0 keeps all."""
    if not k or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., [-1]]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus sampling (Holtzman et al. 2019): keep the fewest most likely tokens whose probabilities sum to at
    least p. The most likely token always stays; p of None or 1 keeps all."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    # a token is dropped when the tokens before it already reach p
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sampling_logits(logits, temperature, top_k, top_p, vocab_size):
    """The logits a token is picked from: padding ids ruled out, then, unless greedy (temperature 0), divided by
    the temperature and cut to the top-k and top-p tokens."""
    logits = mask_vocab(logits.float(), vocab_size)
    if temperature == 0:
        return logits
    return top_p_filter(top_k_filter(logits / temperature, top_k), top_p)


def next_token(logits, temperature=1.0, top_k=None, top_p=None, vocab_size=None, generator=None):
    """Pick one token id per row of logits (B, vocab) -> (B,). Temperature 0 is greedy: the argmax."""
    logits = sampling_logits(logits, temperature, top_k, top_p, vocab_size)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------------
# the generation loop


def window_start(length, start, block_size, shift=1):
    """Where the model's context begins, for a sequence of `length` tokens whose context began at `start`.

    The model sees at most block_size tokens. shift=1 slides the window one token at a time, as nanoGPT's generate
    does: exact, but position embeddings are absolute, so once the window moves every cached key sits at the wrong
    position and the whole window is prefilled again, for every new token. A larger shift drops that many of the
    oldest tokens at once, so the window is prefilled only every `shift` tokens and the steps between are
    single-token cache steps: far faster, at the price of some tokens seeing a shorter context.
    """
    if length - start <= block_size:
        return start
    return length - (block_size - shift + 1)


def resolve_window_shift(window_shift, block_size):
    """0 means half the block: one re-prefill per block_size/2 tokens keeps the cache's speed (see
    benchmarks/sample_speed.py, side by side with nanoGPT's sample.py) while every token still sees at least half a block of context."""
    if window_shift == 0:
        return max(1, block_size // 2)
    if not 1 <= window_shift <= block_size:
        raise ValueError(f"window_shift must be between 0 and the block size {block_size}, got {window_shift}")
    return window_shift


def next_logits(model, context, cache=None):
    """Logits (B, vocab) for the token after context (B, T <= block_size). A cache holding the first cache.pos
    tokens of context is extended with the rest; without one the whole context is read."""
    if cache is None:
        logits, _ = model(context)
    else:
        logits, _ = model(context[:, cache.pos:], kv_cache=cache)
    return logits[:, -1, :]


@torch.no_grad()
def generate_ids(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, vocab_size=None,
                 generator=None, kv_cache=True, window_shift=0):
    """Yield the next token of every row of idx (B, T) as a list of B ints, max_new_tokens times.

    All rows advance together as one batch. kv_cache=False re-reads the whole context at every step, as
    `GPT.generate` does; it is kept to check the cache against and to measure what the cache saves. window_shift
    is explained in window_start. Closing the generator stops the work early.
    """
    block_size = model.config.block_size
    window_shift = resolve_window_shift(window_shift, block_size)
    cache = KVCache.for_model(model) if kv_cache else None
    start = max(0, idx.size(1) - block_size)
    for _ in range(max_new_tokens):
        new_start = window_start(idx.size(1), start, block_size, window_shift)
        if new_start != start and cache is not None:
            cache.reset()  # every position moved: the cached keys and values no longer apply
        start = new_start
        logits = next_logits(model, idx[:, start:], cache)
        nxt = next_token(logits, temperature, top_k, top_p, vocab_size, generator)
        yield nxt.tolist()
        idx = torch.cat((idx, nxt[:, None]), dim=1)


def pick_token(logits, temperature, top_k, top_p, vocab_size, generator):
    """One token id from one row of logits (vocab,), as next_token picks it, but drawn with a single uniform number
    (the first token whose cumulative probability passes it) where torch.multinomial draws one per vocabulary
    entry: a tenth of a 124M model's batched step on a CPU. The same seed therefore gives other samples than
    `sample`'s; greedy picks are the same."""
    logits = sampling_logits(logits, temperature, top_k, top_p, vocab_size)
    if temperature == 0:
        return int(logits.argmax())
    cdf = torch.cumsum(F.softmax(logits, dim=-1), dim=-1)
    u = torch.rand(1, generator=generator, device=logits.device) * cdf[-1]
    # right=True: a token of probability 0 adds nothing to the cdf, so no u lands on it
    return min(int(torch.searchsorted(cdf, u, right=True)), logits.size(-1) - 1)


class TextStream:
    """One sample's generated tokens as text that is safe to show as it grows.

    Holds back text that could still turn out to be part of a stop string, and a trailing U+FFFD that may be a
    UTF-8 character whose remaining bytes are still to come. Once the text contains a stop string, the sample
    is finished and its text ends just before the first stop string. Each token costs time in proportion to the
    stop strings' length, not the text's: only the text a stop string could still reach is kept.
    """

    def __init__(self, tokenizer, stop=()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.decoded = ""  # text of the tokens before `pending`, from character `offset` of the sample on
        self.offset = 0  # characters dropped from the front of `decoded`: no stop string can reach back to them
        self.pending = []  # tokens that decode to an unfinished UTF-8 character so far
        self.shown = 0  # characters shown so far
        self.finished = False

    def add(self, token):
        """Take one more token; return the new text that can be shown now."""
        assert not self.finished
        self.pending.append(token)
        tail = self.tokenizer.decode(self.pending)
        # decoding only the new tokens keeps each step O(1); a token may end inside a multi-byte character,
        # and then it waits for the tokens that complete it
        if tail.endswith("\ufffd"):
            full = self.decoded + tail[:-1]
        else:
            self.decoded += tail
            self.pending = []
            full = self.decoded
        # a stop string cannot lie wholly inside the text already shown, else it would have ended the sample
        start = max(0, self.shown - self.offset - self.longest_stop + 1)
        cut = min((i for i in (full.find(s, start) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.finished = True
            return self._show(full, cut)
        hold = max((overlap(full, s) for s in self.stop), default=0)
        return self._show(full, len(full) - hold)

    def close(self):
        """The text still held back, once no more tokens will come."""
        if self.finished:
            return ""
        self.finished = True
        full = self.decoded + self.tokenizer.decode(self.pending)
        return self._show(full, len(full))

    def _show(self, full, upto):
        """Show full[:upto] (full starts at character `offset`); return what was not shown before."""
        new = full[self.shown - self.offset: upto]
        self.shown += len(new)
        drop = min(len(self.decoded), max(0, self.shown - self.offset - self.longest_stop))
        self.decoded = self.decoded[drop:]
        self.offset += drop
        return new


def overlap(text, stop):
    """Length of the longest end of text that is the start of stop (a stop string may be half generated)."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def complete(model, tokenizer, prompt_ids, max_new_tokens, num_samples=1, temperature=1.0, top_k=None, top_p=None,
             stop=(), seed=None, kv_cache=True, window_shift=0, on_step=None):
    """Generate num_samples continuations of one prompt as a batch, yielding (index, text, finish_reason).

    Text comes in pieces as it is generated. Each sample's last event has finish_reason 'stop' (it produced a
    stop string, which is cut off) or 'length' (max_new_tokens reached); before that it is None. on_step, if
    given, is called after each generated token of the batch (a progress bar counts them).
    """
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    streams = [TextStream(tokenizer, stop) for _ in range(num_samples)]
    steps = generate_ids(model, idx, max_new_tokens, temperature, top_k, top_p, tokenizer.vocab_size, generator,
                         kv_cache, window_shift)
    try:
        for tokens in steps:
            if on_step is not None:
                on_step()
            for i, (stream, token) in enumerate(zip(streams, tokens)):
                if stream.finished:
                    continue  # its row keeps computing with the batch, but nobody reads it
                piece = stream.add(token)
                if stream.finished:
                    yield i, piece, "stop"
                elif piece:
                    yield i, piece, None
            if all(s.finished for s in streams):
                return
        for i, stream in enumerate(streams):
            if not stream.finished:
                yield i, stream.close(), "length"
    finally:
        steps.close()


# ---------------------------------------------------------------------------------------------------------------
# continuous batching: many completions, each with its own settings, joining and leaving one running batch


class SlotCache:
    """Keys and values for up to max_batch sequences at once, each in its own row at its own length.

    The sequences being decoded fill rows 0..n-1 and nothing else, so a decode step reads the buffers' first n rows
    without gathering them; when one leaves, the last row moves into its place. Two views of it go to the model:
    `prefill(rows, pads)` for sequences read from position 0, `decode(n)` for one new token in each of rows 0..n-1.
    """

    def __init__(self, n_layer, max_batch, max_len):
        self.max_batch = max_batch
        self.max_len = max_len
        self.k = [None] * n_layer  # each (max_batch, n_head, max_len, head_size) once allocated
        self.v = [None] * n_layer
        self.lengths = [0] * max_batch  # positions cached in each row

    @classmethod
    def for_model(cls, model, max_batch):
        return cls(model.config.n_layer, max_batch, model.config.block_size)

    def buffers(self, layer_idx, k):
        if self.k[layer_idx] is None:
            shape = (self.max_batch, k.size(1), self.max_len, k.size(3))
            # zeros, not empty: masked-out keys get weight 0, and 0 times a NaN left in free memory would be NaN
            self.k[layer_idx] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v[layer_idx] = torch.zeros(shape, dtype=k.dtype, device=k.device)
        return self.k[layer_idx], self.v[layer_idx]

    def move(self, src, dst):
        """Copy row src's cached keys and values into row dst."""
        n = self.lengths[src]
        for k, v in zip(self.k, self.v):
            if k is not None:
                k[dst, :, :n] = k[src, :, :n]
                v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst] = n

    def prefill(self, rows, pads, device):
        return _PrefillView(self, rows, pads, device)

    def decode(self, n):
        return _DecodeView(self, n)


class _PrefillView:
    """Several sequences read from position 0 into their rows at once. Shorter ones are padded on the left, so every
    row's last token is the batch's last position: row i's pads[i] padding tokens are seen by no real token (each
    padding position sees itself only, which keeps its attention finite), and its real tokens sit at 0, 1, ..."""

    def __init__(self, cache, rows, pads, device):
        self.cache, self.rows, self.pads = cache, rows, pads
        self.pad = torch.tensor(pads, dtype=torch.long, device=device)

    def positions(self, t, device):
        if t > self.cache.max_len:
            raise ValueError(f"cannot forward a sequence of length {t}, block size is only {self.cache.max_len}")
        self.mask = None  # no padding: plain causal attention
        if any(self.pads):
            ids = torch.arange(t, device=device)
            causal = ids[None, :] <= ids[:, None]  # (query, key)
            real_key = ids[None, :] >= self.pad[:, None]  # (row, key)
            self.mask = (causal[None] & (real_key[:, None, :] | torch.eye(t, dtype=torch.bool, device=device)))
            self.mask = self.mask[:, None]  # (row, 1, query, key)
        return (torch.arange(t, device=device)[None, :] - self.pad[:, None]).clamp(min=0)

    def extend(self, layer_idx, k, v):
        k_buf, v_buf = self.cache.buffers(layer_idx, k)
        for i, (row, pad) in enumerate(zip(self.rows, self.pads)):
            k_buf[row, :, :k.size(2) - pad] = k[i, :, pad:]
            v_buf[row, :, :k.size(2) - pad] = v[i, :, pad:]
        return k, v, self.mask

    def advance(self, t):
        for row, pad in zip(self.rows, self.pads):
            self.cache.lengths[row] = t - pad


class _DecodeView:
    """One new token for each of rows 0..n-1, each at its own position, attending to its own cached keys only."""

    def __init__(self, cache, n):
        self.cache, self.n = cache, n
        self.rows = None

    def positions(self, t, device):
        assert t == 1, "decoding takes one token per row"
        lengths = self.cache.lengths[:self.n]
        if max(lengths) >= self.cache.max_len:
            raise ValueError(f"cannot decode past the block size {self.cache.max_len}")
        self.pos = torch.tensor(lengths, dtype=torch.long, device=device)
        self.rows = torch.arange(self.n, device=device)
        self.width = max(lengths) + 1
        # row i sees its own keys 0..lengths[i] (the new one included), not the longer rows' keys beyond
        self.mask = (torch.arange(self.width, device=device)[None, :] <= self.pos[:, None])[:, None, None, :]
        return self.pos[:, None]

    def extend(self, layer_idx, k, v):
        k_buf, v_buf = self.cache.buffers(layer_idx, k)
        k_buf[self.rows, :, self.pos] = k[:, :, 0]
        v_buf[self.rows, :, self.pos] = v[:, :, 0]
        return k_buf[:self.n, :, :self.width], v_buf[:self.n, :, :self.width], self.mask

    def advance(self, t):
        for i in range(self.n):
            self.cache.lengths[i] += t


@dataclass
class Completion:
    """One completion to generate, with its own sampling settings; the engine keeps its progress here too."""

    prompt: list  # token ids
    max_tokens: int
    temperature: float = 1.0
    top_k: int = None  # None or 0: all tokens
    top_p: float = None  # None or 1: all tokens
    seed: int = None  # None: a fresh random seed
    stop: tuple = ()  # stop strings
    tag: object = None  # whatever the caller needs to route events (e.g. request and choice index)
    tokens: list = field(default_factory=list)  # prompt and generated ids: the context the model reads from
    generated: int = 0
    finish_reason: str = None  # 'stop' or 'length' once it has finished
    start: int = 0  # where the model's window begins in tokens
    row: int = None  # its row of the SlotCache while it is decoding
    stream: TextStream = None  # its text so far, stop strings held back
    generator: torch.Generator = None  # its own random numbers, so other completions never change its samples


class BatchEngine:
    """Continuous batching: completions join a running batch at the next step and leave it when they finish.

    Each step first prefills the completions that arrived (or whose window moved past the block size) together in
    one forward, giving each its first token, then advances every other running completion by one token in a single
    batched forward. Each completion samples with its own settings and seed, so its tokens are the ones it
    would get alone (greedy output is identical; see tests/test_batching.py). Not thread-safe: one thread drives it.
    """

    def __init__(self, model, tokenizer, max_batch, window_shift=0, stop_token=None):
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = model.config.block_size
        self.window_shift = resolve_window_shift(window_shift, self.block_size)
        self.stop_token = stop_token  # a token that ends a completion, e.g. GPT-2's <|endoftext|>
        self.device = next(model.parameters()).device
        self.cache = SlotCache.for_model(model, max_batch)
        self.rows = []  # the decoding completions: rows[i] lives in cache row i
        self.arrived = []  # admitted, to be prefilled at the next step

    @property
    def free(self):
        return self.cache.max_batch - len(self.rows) - len(self.arrived)

    @property
    def running(self):
        return len(self.rows) + len(self.arrived)

    def add(self, c):
        """Admit a completion; it is prefilled at the next step. The caller checks `free` first."""
        assert self.free > 0, "no free slot"
        c.tokens = list(c.prompt)
        c.start = max(0, len(c.tokens) - self.block_size)
        c.stream = TextStream(self.tokenizer, c.stop)
        c.generator = torch.Generator(device=self.device)
        if c.seed is None:
            c.generator.seed()
        else:
            c.generator.manual_seed(c.seed)
        self.arrived.append(c)

    def remove(self, c):
        """Drop a completion (finished or abandoned), freeing its slot."""
        if c in self.arrived:
            self.arrived.remove(c)
            return
        last = self.rows.pop()
        if last is not c:
            self.cache.move(last.row, c.row)
            last.row = c.row
            self.rows[c.row] = last
        c.row = None

    def clear(self):
        """Drop every completion (after a failed step, whose state cannot be trusted)."""
        self.rows, self.arrived = [], []

    @torch.no_grad()
    def step(self):
        """Advance every running completion by one token; returns its events, (completion, text, finish_reason)
        with finish_reason 'stop', 'length' or None. Finished completions have left the batch already."""
        decoding = len(self.rows)
        events = [(c, c.stream.close(), "length") for c in self.arrived if c.max_tokens == 0]
        arrived = [c for c in self.arrived if c.max_tokens > 0]
        self.arrived = []
        # prefill together those of similar length, so that padding wastes at most about half of each forward
        arrived.sort(key=lambda c: len(c.tokens) - c.start)
        while arrived:
            shortest = len(arrived[0].tokens) - arrived[0].start
            group = [c for c in arrived if len(c.tokens) - c.start <= 2 * shortest + 8]
            arrived = arrived[len(group):]
            events += self._prefill(group)
        if decoding:
            last = torch.tensor([[c.tokens[-1]] for c in self.rows[:decoding]], device=self.device)
            logits, _ = self.model(last, kv_cache=self.cache.decode(decoding))
            logits = self._last_logits(logits)
            events += [self._take(c, logits[i]) for i, c in enumerate(self.rows[:decoding])]
        for c, _, reason in events:
            c.finish_reason = reason
            if reason is not None and c.row is not None:
                self.remove(c)
            elif reason is None and (start := window_start(len(c.tokens), c.start, self.block_size,
                                                           self.window_shift)) != c.start:
                # past the block size: every position moves, so the completion is prefilled again from its new start
                c.start = start
                self.remove(c)
                self.arrived.append(c)
        return events

    def _prefill(self, arrived):
        """Read the arrived completions' contexts into new rows in one forward (left-padded to the longest)."""
        contexts = [c.tokens[c.start:] for c in arrived]
        width = max(len(x) for x in contexts)
        pads = [width - len(x) for x in contexts]
        for c in arrived:
            c.row = len(self.rows)
            self.rows.append(c)
        idx = torch.tensor([[0] * pad + x for pad, x in zip(pads, contexts)], device=self.device)
        logits, _ = self.model(idx, kv_cache=self.cache.prefill([c.row for c in arrived], pads, self.device))
        logits = self._last_logits(logits)
        return [self._take(c, logits[i]) for i, c in enumerate(arrived)]

    def _last_logits(self, logits):
        """Each row's logits for its next token (B, vocab), padding ids ruled out once for the whole batch."""
        return mask_vocab(logits[:, -1].float(), self.tokenizer.vocab_size)

    def _take(self, c, logits):
        """Sample c's next token from its logits (vocab,), padding already ruled out, and turn it into an event."""
        token = pick_token(logits, c.temperature, c.top_k, c.top_p, None, c.generator)
        c.tokens.append(token)
        c.generated += 1
        if token == self.stop_token:
            return c, c.stream.close(), "stop"
        text = c.stream.add(token)
        if c.stream.finished:
            return c, text, "stop"
        if c.generated >= c.max_tokens:
            return c, text + c.stream.close(), "length"
        return c, text, None
