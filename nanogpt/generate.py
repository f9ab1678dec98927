"""The one generation engine: a batched sampler on the device, a slot cache whose memory follows use, and the
engine that drives the model, for `sample`, `serve`, `GPT.generate` and the run report.

Read it in this order: `sample_tokens` (the next token of every row from its logits, with per-row settings and
random numbers), `TextStream` (a completion's tokens as text, stop strings held back), `SlotCache` (keys and values
of the running completions), `BatchEngine` (completions join and leave a running batch; each step is one forward
and one sampler call), then the two drivers `complete` (one prompt, n samples) and `generate_ids` (token rows in,
token rows out, as nanoGPT's `generate`).

The engine takes the model as an argument and never imports model.py. The model reads and extends the cache
through three calls (model.py's docstring lists them): `positions`, `extend` and `advance`.

A completion's random numbers come from its own generator, seeded with its seed (choice i of a request seeded S
uses S + i, and so does sample i of `sample --seed=S`), one uniform number per token. Its tokens therefore do not
depend on what else runs beside it, and the same seed gives the same text from `sample` and from `serve`.
"""

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

MIN_CACHE_LEN = 64  # the cache's first allocation, in positions; it doubles from there up to the block size


# ---------------------------------------------------------------------------------------------------------------
# the next token from logits: one batched call per step, on the device


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
    least p. The most likely token always stays; p of None or 1 keeps all. p may be a number or one per row (B, 1)."""
    if p is None or (not torch.is_tensor(p) and p >= 1.0):
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    drop_sorted = nucleus_drop(sorted_logits, p)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def nucleus_drop(sorted_logits, p):
    """Which of the logits, sorted high to low, fall outside the nucleus: those whose predecessors reach p."""
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    return mass_before >= p


def sample_tokens(logits, temperature, top_k, top_p, uniforms):
    """The next token of every row: logits (B, V) -> ids (B,), on the logits' device, with no host sync.

    temperature, top_k and top_p are Python lists, one entry per row (temperature 0: greedy, the argmax; top_k 0 or
    None: all tokens; top_p 1 or None: all tokens); uniforms (B,) are the rows' random numbers in [0, 1). A row's
    token is the first whose cumulative probability passes its uniform number (inverse transform sampling): one
    random number per row where torch.multinomial draws one per vocabulary entry.
    """
    B, V = logits.shape
    device = logits.device
    ks = [k if k and k < V else V for k in top_k]
    ps = [1.0 if p is None else p for p in top_p]
    greedy = torch.tensor([t == 0 for t in temperature], device=device)
    scale = torch.tensor([t if t > 0 else 1.0 for t in temperature], device=device, dtype=logits.dtype)
    logits = logits / scale[:, None]
    if max(ks) < V or min(ps) < 1.0:
        # the candidates of each row, most likely first: top_k of them where every row has a top_k
        values, ids = torch.topk(logits, max(ks), dim=-1) if max(ks) < V else torch.sort(logits, -1, descending=True)
        if min(ks) < values.size(1):
            k = torch.tensor(ks, device=device).clamp(max=values.size(1))
            kth = values.gather(1, (k - 1)[:, None])
            values = values.masked_fill(values < kth, float("-inf"))  # ties with the k-th stay, as top_k_filter
        if min(ps) < 1.0:
            values = values.masked_fill(nucleus_drop(values, torch.tensor(ps, device=device)[:, None]), float("-inf"))
    else:
        values, ids = logits, None
    probs = F.softmax(values, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    pick = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0]
    # right=True: a token of probability 0 adds nothing to the cdf, so no uniform lands on it; rounding at the top
    # end is caught by the last token of positive probability
    positions = torch.arange(values.size(1), device=device)
    last = torch.where(probs > 0, positions, 0).amax(dim=-1)
    pick = torch.minimum(pick, last)
    pick = torch.where(greedy, values.argmax(dim=-1), pick)
    return pick if ids is None else ids.gather(1, pick[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------------------------
# a completion's text as it grows


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




# ---------------------------------------------------------------------------------------------------------------
# the keys and values of the running completions


class SlotCache:
    """Keys and values for up to max_batch sequences at once, each in its own row at its own length.

    The sequences being decoded fill rows 0..n-1 and nothing else, so a decode step reads the buffers' first n rows
    without gathering them; when one leaves, the last row moves into its place. Two views of it go to the model:
    `prefill(rows, pads)` for sequences read from position 0, `decode(n)` for one new token in each of rows 0..n-1.

    Memory follows use: the buffers hold as many rows as run (doubling as more arrive, halved when at most a quarter
    is used) and as many positions as the longest row needs (from MIN_CACHE_LEN, doubling up to the block size).
    They grow by copying when a forward needs more, and are released when nothing runs.
    """

    def __init__(self, n_layer, max_batch, max_len):
        self.max_batch = max_batch
        self.max_len = max_len
        self.k = [None] * n_layer  # each (rows, n_head, length, head_size) once allocated
        self.v = [None] * n_layer
        self.lengths = [0] * max_batch  # positions cached in each row
        self.rows = 0  # the rows and positions the buffers are to hold; each layer's buffer follows at its next
        self.length = 0  # `extend`, so the first forward after a change allocates, and none allocates twice

    @classmethod
    def for_model(cls, model, max_batch):
        return cls(model.config.n_layer, max_batch, model.config.block_size)

    def reserve(self, rows, length):
        """Make room for rows 0..rows-1 holding `length` positions each."""
        if rows > self.rows:
            self.rows = min(self.max_batch, max(rows, 2 * self.rows))
        if length > self.length:
            self.length = min(self.max_len, max(length, 2 * self.length, MIN_CACHE_LEN))

    def shrink(self, rows):
        """Only rows 0..rows-1 are in use now: give back row capacity, all of it when none is."""
        if rows == 0:
            self.k, self.v = [None] * len(self.k), [None] * len(self.v)
            self.rows = self.length = 0
        while self.rows > 1 and rows <= self.rows // 4:
            self.rows //= 2

    def buffers(self, layer_idx, k):
        """This layer's key and value buffers at the reserved size, allocated (or resized, keeping what they hold)
        with the dtype and device the keys really have (autocast's included)."""
        shape = (self.rows, k.size(1), self.length, k.size(3))
        old_k, old_v = self.k[layer_idx], self.v[layer_idx]
        if old_k is None or old_k.shape != shape:
            # zeros, not empty: masked-out keys get weight 0, and 0 times a NaN left in free memory would be NaN
            self.k[layer_idx] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.v[layer_idx] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            if old_k is not None:
                r, n = min(old_k.size(0), self.rows), min(old_k.size(2), self.length)
                self.k[layer_idx][:r, :, :n] = old_k[:r, :, :n]
                self.v[layer_idx][:r, :, :n] = old_v[:r, :, :n]
        return self.k[layer_idx], self.v[layer_idx]

    @torch.inference_mode()  # the buffers are made inside the engine's inference-mode step; a server may move
    def move(self, src, dst):  # a row when a client leaves, outside it
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
        self.cache.reserve(max(self.rows) + 1, t)
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

    def positions(self, t, device):
        assert t == 1, "decoding takes one token per row"
        lengths = self.cache.lengths[:self.n]
        if max(lengths) >= self.cache.max_len:
            raise ValueError(f"cannot decode past the block size {self.cache.max_len}")
        self.width = max(lengths) + 1
        self.cache.reserve(self.n, self.width)
        self.pos = torch.tensor(lengths, dtype=torch.long, device=device)
        self.slots = None  # where the new keys go in a layer's buffer, flattened; the same for every layer
        # row i sees its own keys 0..lengths[i] (the new one included), not the longer rows' keys beyond; rows all
        # of one length (the samples of one prompt) see every key, and attention without a mask is faster
        self.mask = None
        if min(lengths) != max(lengths):
            self.mask = (torch.arange(self.width, device=device)[None, :] <= self.pos[:, None])[:, None, None, :]
        return self.pos[:, None]

    def extend(self, layer_idx, k, v):
        k_buf, v_buf = self.cache.buffers(layer_idx, k)
        rows, heads, length, head_size = k_buf.shape
        if self.slots is None:
            # row r, head h, position p is row (r * heads + h) * length + p of the buffer seen as (-1, head_size):
            # one index_copy_ per buffer is far cheaper than indexing with (rows, :, positions) on every step
            first = torch.arange(self.n * heads, device=k.device) * length
            self.slots = first + self.pos.repeat_interleave(heads)
        k_buf.view(-1, head_size).index_copy_(0, self.slots, k[:, :, 0].reshape(-1, head_size))
        v_buf.view(-1, head_size).index_copy_(0, self.slots, v[:, :, 0].reshape(-1, head_size))
        return k_buf[:self.n, :, :self.width], v_buf[:self.n, :, :self.width], self.mask

    def advance(self, t):
        for i in range(self.n):
            self.cache.lengths[i] += t


# ---------------------------------------------------------------------------------------------------------------
# the engine: completions, each with its own settings, joining and leaving one running batch


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
    benchmarks/sample_speed.py) while every token still sees at least half a block of context."""
    if window_shift == 0:
        return max(1, block_size // 2)
    if not 1 <= window_shift <= block_size:
        raise ValueError(f"window_shift must be between 0 and the block size {block_size}, got {window_shift}")
    return window_shift


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
    stop_ids: tuple = ()  # tokens that end it, besides the engine's stop_token (a chat answer's <|end|>)
    tag: object = None  # whatever the caller needs to route events (e.g. request and choice index)
    tokens: list = field(default_factory=list)  # prompt and generated ids: the context the model reads from
    generated: int = 0
    finish_reason: str = None  # 'stop' or 'length' once it has finished
    start: int = 0  # where the model's window begins in tokens
    row: int = None  # its row of the SlotCache while it is decoding
    stream: TextStream = None  # its text so far, stop strings held back (None without a tokenizer)
    generator: torch.Generator = None  # its own random numbers, so other completions never change its samples


class BatchEngine:
    """Continuous batching: completions join a running batch at the next step and leave it when they finish.

    Each step first prefills the completions that arrived (or whose window moved past the block size) together,
    then advances every other running completion by one token in a single batched forward, and picks every
    completion's next token in one call of sample_tokens. Each completion samples with its own settings and
    seed, so its tokens are the ones it would get alone (tests/test_batching.py). kv_cache=False re-reads every
    completion's whole context at every step (to check the cache against, and to measure what it saves). Without a
    tokenizer the events carry no text (GPT.generate reads the tokens). Not thread-safe: one thread drives it.
    """

    def __init__(self, model, tokenizer, max_batch, window_shift=0, stop_token=None, kv_cache=True, vocab_size=None):
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size if tokenizer is not None else vocab_size
        self.block_size = model.config.block_size
        self.window_shift = resolve_window_shift(window_shift, self.block_size)
        self.stop_token = stop_token  # a token that ends a completion, e.g. GPT-2's <|endoftext|>
        self.kv_cache = kv_cache
        self.device = next(model.parameters()).device
        self.cache = SlotCache.for_model(model, max_batch)
        self.max_batch = max_batch
        self.rows = []  # the decoding completions: rows[i] lives in cache row i
        self.arrived = []  # admitted, to be prefilled at the next step

    @property
    def free(self):
        return self.max_batch - len(self.rows) - len(self.arrived)

    @property
    def running(self):
        return len(self.rows) + len(self.arrived)

    def add(self, c):
        """Admit a completion; it is prefilled at the next step. The caller checks `free` first."""
        assert self.free > 0, "no free slot"
        c.tokens = list(c.prompt)
        c.start = max(0, len(c.tokens) - self.block_size)
        c.stream = TextStream(self.tokenizer, c.stop) if self.tokenizer is not None else None
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
        else:
            self._leave_row(c)
        self.cache.shrink(self.running)

    def _leave_row(self, c):
        """Take c out of its cache row; the last row moves into its place, so rows 0..n-1 stay the running ones."""
        last = self.rows.pop()
        if last is not c:
            self.cache.move(last.row, c.row)
            last.row = c.row
            self.rows[c.row] = last
        c.row = None

    def clear(self):
        """Drop every completion (after a failed step, whose state cannot be trusted)."""
        self.rows, self.arrived = [], []
        self.cache.shrink(0)

    @torch.inference_mode()  # cheaper per operation than no_grad; the cache never meets autograd
    def step(self):
        """Advance every running completion by one token; returns its events, (completion, text, finish_reason)
        with finish_reason 'stop', 'length' or None. Finished completions have left the batch already."""
        decoding = self.rows[:]
        events = [(c, self._close(c), "length") for c in self.arrived if c.max_tokens == 0]
        arrived = [c for c in self.arrived if c.max_tokens > 0]
        self.arrived = []
        picked, logits = [], []
        # prefill together those of similar length, so that padding wastes at most about half of each forward
        arrived.sort(key=lambda c: len(c.tokens) - c.start)
        while arrived:
            shortest = len(arrived[0].tokens) - arrived[0].start
            group = [c for c in arrived if len(c.tokens) - c.start <= 2 * shortest + 8]
            arrived = arrived[len(group):]
            picked += group
            logits.append(self._prefill(group))
        if decoding:
            last = torch.tensor([[c.tokens[-1]] for c in decoding], device=self.device)
            out, _ = self.model(last, kv_cache=self.cache.decode(len(decoding)))
            picked += decoding
            logits.append(out[:, -1])
        if picked:
            tokens = self._sample(picked, torch.cat(logits))
            events += [self._take(c, token) for c, token in zip(picked, tokens)]
        for c, _, reason in events:
            c.finish_reason = reason
            if reason is not None:
                if c.row is not None:
                    self.remove(c)
                continue
            start = window_start(len(c.tokens), c.start, self.block_size, self.window_shift)
            if start != c.start or not self.kv_cache:
                # past the block size every position moves (or there is no cache): prefilled again from its start
                c.start = start
                self._leave_row(c)
                self.arrived.append(c)
        self.cache.shrink(self.running)
        return events

    def _prefill(self, arrived):
        """Read the arrived completions' contexts into new rows in one forward (left-padded to the longest);
        returns their logits for the next token (B, vocab)."""
        contexts = [c.tokens[c.start:] for c in arrived]
        width = max(len(x) for x in contexts)
        pads = [width - len(x) for x in contexts]
        for c in arrived:
            c.row = len(self.rows)
            self.rows.append(c)
        idx = torch.tensor([[0] * pad + x for pad, x in zip(pads, contexts)], device=self.device)
        logits, _ = self.model(idx, kv_cache=self.cache.prefill([c.row for c in arrived], pads, self.device))
        return logits[:, -1]

    def _sample(self, completions, logits):
        """Every completion's next token from its logits, with its settings and its own random number: one
        sampler call and one copy to the host for the whole batch."""
        logits = mask_vocab(logits.float(), self.vocab_size)
        uniforms = torch.cat([torch.rand(1, generator=c.generator, device=self.device) for c in completions])
        return sample_tokens(logits, [c.temperature for c in completions], [c.top_k for c in completions],
                             [c.top_p for c in completions], uniforms).tolist()

    def _take(self, c, token):
        """Record c's next token and turn it into an event."""
        c.tokens.append(token)
        c.generated += 1
        if token == self.stop_token or token in c.stop_ids:
            return c, self._close(c), "stop"
        text = ""
        if c.stream is not None:
            text = c.stream.add(token)
            if c.stream.finished:
                return c, text, "stop"
        if c.generated >= c.max_tokens:
            return c, text + self._close(c), "length"
        return c, text, None

    def _close(self, c):
        return c.stream.close() if c.stream is not None else ""


# ---------------------------------------------------------------------------------------------------------------
# the drivers: one prompt's samples as text (`sample`), token rows in and out (`GPT.generate`)


def complete(model, tokenizer, prompt_ids, max_new_tokens, num_samples=1, temperature=1.0, top_k=None, top_p=None,
             stop=(), seed=None, kv_cache=True, window_shift=0, on_step=None, stop_ids=()):
    """Generate num_samples continuations of one prompt as a batch, yielding (index, text, finish_reason).

    Sample i draws its random numbers from seed + i, as choice i of a server request with this seed does. Text
    comes in pieces as it is generated. Each sample's last event has finish_reason 'stop' (it produced a stop
    string, which is cut off) or 'length' (max_new_tokens reached); before that it is None. on_step, if given, is
    called after each generated token of the batch (a progress bar counts them). stop_ids: tokens that end a
    sample too (a chat answer's <|end|>), not shown.
    """
    engine = BatchEngine(model, tokenizer, num_samples, window_shift, kv_cache=kv_cache)
    for i in range(num_samples):
        engine.add(Completion(prompt_ids, max_new_tokens, temperature, top_k, top_p,
                              None if seed is None else seed + i, tuple(stop), tuple(stop_ids), tag=i))
    while engine.running:
        events = engine.step()
        if on_step is not None and any(c.generated for c, _, _ in events):
            on_step()
        for c, text, reason in events:
            if text or reason:
                yield c.tag, text, reason


@torch.no_grad()
def generate_ids(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seeds=None, kv_cache=True,
                 window_shift=1, vocab_size=None):
    """idx (B, T) followed by max_new_tokens generated tokens per row: (B, T + max_new_tokens), as nanoGPT's
    `GPT.generate` returns. Without seeds, each row's seed is drawn from torch's global generator, so
    torch.manual_seed makes the result reproducible. window_shift=1 slides the window as nanoGPT does."""
    rows = idx.tolist()
    if seeds is None:
        seeds = torch.randint(0, 2**62, (len(rows),)).tolist()
    engine = BatchEngine(model, None, len(rows), window_shift, kv_cache=kv_cache, vocab_size=vocab_size)
    completions = [Completion(row, max_new_tokens, temperature, top_k, top_p, seed) for row, seed in zip(rows, seeds)]
    for c in completions:
        engine.add(c)
    while engine.running:
        engine.step()
    return torch.tensor([c.tokens for c in completions], dtype=idx.dtype, device=idx.device)
