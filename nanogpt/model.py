"""The GPT-2 model, read top to bottom: config, layers, the GPT module, then its helpers.

With its default settings this is GPT-2 exactly. A few switches in GPTConfig give the modern recipe instead
(rotary positions, RMSNorm, QK-norm, ReLU² or SwiGLU, an untied head, logit soft-capping, grouped-query attention,
value embeddings, the embedding mixed into every block, an embedding norm, per-layer residual scales, backout; see
docs/concepts/modern-recipe.md). Each switch picks a layer once, in `__init__`; the forward passes read the
same for every choice.

Nothing here knows about training loops, data, devices or ranks. Inference state (the KV cache) is an object
passed in from outside (see generate.py, which GPT.generate calls); the model only knows how to read and extend it, through three calls:

  kv_cache.positions(t, device)  -> LongTensor (B, t), or (1, t) when all rows agree: the absolute position of each
                                    row's t new tokens (rows of a batch may sit at different positions)
  kv_cache.extend(layer, k, v)   -> (k, v, mask): the new keys and values (B, n_head, t, head_size) stored after
                                    each row's cached ones, all of them returned (B, n_head, S, head_size), and the
                                    boolean mask (broadcastable to (B, n_head, t, S), True where a query may see a
                                    key), or None where plain causal attention is right (t == S, or t == 1 seeing all)
  kv_cache.advance(t)            once every layer has seen the new tokens
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the position embedding covers
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, like GPT-2; False is a little better and faster
    gelu_approximate: str = "none"  # nn.GELU's exact 'none', or 'tanh' as GPT-2 was trained (set by hf.py imports)
    # the modern recipe's switches; the defaults are GPT-2's
    position: str = "learned"  # 'learned': GPT-2's position embeddings; 'rope': rotary (Su et al. 2021) on q and k
    rope_base: float = 10000.0  # rotary's longest wavelength is 2π·rope_base positions
    norm: str = "layernorm"  # 'layernorm' (GPT-2) or 'rmsnorm' (Zhang & Sennrich 2019: no mean, no bias)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention (Dehghani et al. 2023)
    activation: str = "gelu"  # MLP activation: 'gelu' (GPT-2), 'relu2' (ReLU squared, So et al. 2021), 'swiglu'
    tie_embeddings: bool = True  # the LM head shares the token embedding's weights (GPT-2); False gives it its own
    zero_init_proj: bool = False  # start each block's output projections at zero, so every block begins as identity
    logit_softcap: float = 0.0  # > 0: logits become cap·tanh(logits/cap) (Gemma 2); 0 leaves them as they are
    n_kv_head: int = 0  # key/value heads for grouped-query attention (Ainslie et al. 2023); 0 means n_head
    value_embeddings: bool = False  # every other layer (the last included) adds a token embedding to its values
    x0_mix: bool = False  # each block's input gets a learned share of the embedding output (starting at 0)
    embed_norm: bool = False  # normalise the token embedding before the first block (its scale stops mattering)
    resid_scales: bool = False  # each block's input is the residual stream times a learned number (starting at 1)
    backout: bool = False  # subtract a learned share (from 0) of the middle layer's residual before the final norm

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        choices = {"position": POSITIONS, "norm": NORMS, "activation": ACTIVATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.n_kv_head and self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"rotary positions need an even head size, got {self.n_embd // self.n_head}")

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head


POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "relu2", "swiglu")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own has no bias=False before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class RMSNorm(nn.Module):
    """Scale x to unit root-mean-square, then by a learned gain: LayerNorm without the mean and the bias, a little
    cheaper and as good (Zhang & Sennrich 2019)."""

    def __init__(self, ndim, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight)


class QKNorm(nn.Module):
    """Each head's query and key scaled to unit RMS (no gain): their dot products, the attention logits, stay
    bounded however large the weights grow (Dehghani et al. 2023; modded-nanogpt)."""

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),))


def norm_layer(config):
    """The normalisation class config.norm names."""
    return LayerNorm if config.norm == "layernorm" else RMSNorm


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021): each pair of channels of a query or key, read as a complex
    number, is turned by an angle proportional to its absolute position, so q·k depends only on how far apart the
    two tokens are.

    Called with absolute positions, (T,) or one row per sequence (B, T), it returns the angles that `rotate` turns
    by, computed once per forward and shared by every layer: as unit complex numbers, or, under torch.compile, as
    their (cos, sin), since inductor generates no code for complex tensors (it falls back to eager kernels)."""

    def __init__(self, head_size, base):
        super().__init__()
        self.head_size, self.base = head_size, base
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self):
        # channel pair i turns at base^(-2i/head_size) radians per position: from 1 down to about 1/base
        return self.base ** (-torch.arange(0, self.head_size, 2, dtype=torch.float32) / self.head_size)

    def forward(self, pos):
        angles = pos.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # (..., T, head_size/2)
        angles = angles.unsqueeze(-2)  # a heads dimension: (T, 1, hs/2) or (B, T, 1, hs/2)
        if torch.compiler.is_compiling():
            return angles.cos(), angles.sin()
        return torch.polar(torch.ones_like(angles), angles)


def rotate(x, rotation):
    """Turn each channel pair (a, b) of x (B, T, heads, head_size) by Rotary's angles, in float32 (complex
    bfloat16 does not exist): the complex product (a + ib)(cos + i·sin). Eager runs it as one complex
    multiplication, several times faster on a CPU than the real form; compiled, it is written out in real
    arithmetic, for which inductor generates code."""
    if isinstance(rotation, tuple):
        cos, sin = rotation
        a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def no_rotation(x, rotation):
    """Learned position embeddings are added to the input instead: queries and keys stay as they are."""
    return x


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.n_embd = config.n_embd
        self.head_size = config.n_embd // config.n_head
        self.dropout = config.dropout
        kv_size = self.n_kv_head * self.head_size
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_size, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.qk_size = config.n_embd + kv_size
        self.qk_norm = QKNorm() if config.qk_norm else nn.Identity()
        self.rotate = rotate if config.position == "rope" else no_rotation
        self.value_gate = ValueGate(config) if has_value_embedding(config, layer_idx) else None
        # grouped-query attention: each key/value head serves n_head / n_kv_head query heads
        self.gqa = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        # scaled_dot_product_attention picks flash/memory-efficient kernels where the device has them;
        # the plain path exists to check it against, and for readers who want to see the math.
        self.flash = True

    def forward(self, x, rotation=None, kv_cache=None, ve=None):
        B, T, C = x.size()
        qk, v = self.c_attn(x).split((self.qk_size, self.qk_size - self.n_embd), dim=2)
        if ve is not None:  # this layer's value embedding of the tokens, gated per head
            v = v + self.value_gate(x, ve)
        # queries and keys side by side, one head per row: (B, T, n_head + n_kv_head, head_size), normalised and
        # rotated together (each is a no-op for GPT-2)
        qk = self.rotate(self.qk_norm(qk.view(B, T, -1, self.head_size)), rotation)
        q, k = qk.split((self.n_head, self.n_kv_head), dim=2)
        # (B, T, heads, head_size) -> (B, heads, T, head_size)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)
        mask = None  # training and a cache-less forward: plain causal attention
        if kv_cache is not None:
            k, v, mask = kv_cache.extend(self.layer_idx, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if self.flash:
            if mask is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=T > 1, **self.gqa)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **self.gqa)
        else:
            groups = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            full_mask = mask if mask is not None else causal_mask_full(T, k.size(2), x.device)
            att = att.masked_fill(~full_mask, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


def has_value_embedding(config, layer_idx):
    """Whether layer layer_idx adds a value embedding: every other layer counting back from the last."""
    return config.value_embeddings and (config.n_layer - 1 - layer_idx) % 2 == 0


class ValueGate(nn.Module):
    """How much of a token's value embedding each key/value head adds to its values: 2·sigmoid of a linear map of
    the block's (normalised) input, so 1 for every head at the start (a zero map) and learned from there, between 0
    and 2. The value embedding gives every layer that has one direct access to the token's identity, however far
    the residual stream has moved from it (ResFormer's value residual, Zhou et al. 2024; modded-nanogpt's and
    nanochat's value embeddings)."""

    def __init__(self, config):
        super().__init__()
        self.n_kv_head, self.head_size = config.kv_heads, config.n_embd // config.n_head
        self.weight = nn.Parameter(torch.zeros(self.n_kv_head, config.n_embd))

    def forward(self, x, ve):
        gate = 2 * torch.sigmoid(F.linear(x, self.weight))  # (B, T, n_kv_head)
        return (gate.unsqueeze(-1) * ve.unflatten(-1, (self.n_kv_head, self.head_size))).flatten(-2)


def causal_mask_full(q_len, k_len, device):
    # query i sits at absolute position k_len - q_len + i and may see keys up to and including it
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


class ReLU2(nn.Module):
    """relu(x)²: as good as GELU or better for transformers, and cheaper (So et al. 2021, "Primer")."""

    def forward(self, x):
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """silu(a)·b for the two halves a, b of the input: a gated unit (Shazeer 2020, used by LLaMA)."""

    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = 4 * config.n_embd
        fc_out = hidden
        if config.activation == "swiglu":
            # two input matrices instead of one: 2/3 of the width keeps the parameter count (rounded up to 32)
            hidden = 32 * math.ceil(hidden * 2 / 3 / 32)
            fc_out = 2 * hidden
        self.c_fc = nn.Linear(config.n_embd, fc_out, bias=config.bias)
        activations = {"gelu": lambda: nn.GELU(approximate=config.gelu_approximate), "relu2": ReLU2, "swiglu": SwiGLU}
        self.gelu = activations[config.activation]()  # named for GPT-2's, whichever it is
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One transformer block: pre-norm attention then pre-norm MLP, each added to the residual stream."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = norm_layer(config)(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = norm_layer(config)(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, rotation=None, kv_cache=None, ve=None):
        x = x + self.attn(self.ln_1(x), rotation, kv_cache, ve)
        x = x + self.mlp(self.ln_2(x))
        return x


class SoftCap(nn.Module):
    """cap·tanh(logits/cap): logits stay within ±cap, near-unchanged while small (Gemma 2, modded-nanogpt)."""

    def __init__(self, cap):
        super().__init__()
        self.cap = cap

    def forward(self, logits):
        return self.cap * torch.tanh(logits / self.cap)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        # GPT-2 adds a learned vector per position to the input; rotary positions turn q and k inside attention
        positions = {"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.position == "learned" else {}
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                **positions,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=norm_layer(config)(config.n_embd, bias=config.bias),
            )
        )
        self.rotary = Rotary(config.n_embd // config.n_head, config.rope_base) if not positions else None
        # value embeddings: one token embedding table per layer that has one, of the width of its values
        kv_size = config.kv_heads * (config.n_embd // config.n_head)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, kv_size)
                                           for i in range(config.n_layer) if has_value_embedding(config, i)})
        # x0 mixing: block i's input is x + x0_scales[i]·x0, x0 the embedding output; each scale starts at 0
        self.x0_scales = nn.Parameter(torch.zeros(config.n_layer)) if config.x0_mix else None
        # the embedding normalised: its rows then keep unit scale whatever rate trains them
        self.embed_norm = norm_layer(config)(config.n_embd, bias=config.bias) if config.embed_norm else nn.Identity()
        # residual scales: block i reads resid_scales[i]·x, so a layer can shrink (or grow) what earlier ones wrote
        self.resid_scales = nn.Parameter(torch.ones(config.n_layer)) if config.resid_scales else None
        # backout: the head reads x - backout_scale·x_mid, x_mid the residual after block n_layer // 2, so it can
        # remove features only the early layers need (starts at 0: no change)
        self.backout_scale = nn.Parameter(torch.zeros(1)) if config.backout else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        # soft-capping keeps logits within ±cap, smoothly: no single logit can run away early in training
        self.softcap = SoftCap(config.logit_softcap) if config.logit_softcap > 0 else nn.Identity()
        if not self.lm_head.weight.is_meta:  # built on the meta device, the weights are drawn by init_weights later
            self.init_weights()

    def tie_weights(self):
        if self.config.tie_embeddings and self.transformer.wte.weight is not self.lm_head.weight:
            # Weight tying (Press & Wolf 2016, used by GPT-2): the output projection is the token embedding.
            self.transformer.wte.weight = self.lm_head.weight

    @torch.no_grad()
    def initial_values(self):
        """(parameter, its initial value) for each parameter in turn, the value whole, float32, on the CPU, drawn
        from torch's default generator in a fixed order. One at a time, so that a caller holding only a shard of
        each parameter (FSDP) never holds the whole model, and draws what a single process draws. The draws are
        nanoGPT's, in its order: N(0, 0.02) for every Linear and Embedding weight, module by module (GPT-2's, from
        its released TensorFlow code; a tied weight is drawn twice and keeps the head's draw), then the residual
        projections again, scaled by 1/sqrt(2·n_layer) (GPT-2 paper: 2 residual additions per layer) or zero
        (zero_init_proj: every block starts as the identity, and the gradient still reaches it; modded-nanogpt).
        Biases are zero, norm gains one."""
        projections = [p for name, p in self.named_parameters() if name.endswith("c_proj.weight")]
        layers = [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
        last_draw = {id(m.weight): i for i, m in enumerate(layers)}
        done = set()
        for i, m in enumerate(layers):
            value = torch.empty(m.weight.shape).normal_(0.0, 0.02)
            if last_draw[id(m.weight)] == i and not any(m.weight is p for p in projections):
                done.add(id(m.weight))
                yield m.weight, value
        for p in projections:
            value = torch.empty(p.shape)
            std = 0.02 / math.sqrt(2 * self.config.n_layer)
            done.add(id(p))
            yield p, value.zero_() if self.config.zero_init_proj else value.normal_(0.0, std)
        for name, p in self.named_parameters():
            if id(p) not in done:
                # biases, x0 shares, value gates and backout start at zero (no shift, no mixing, gates of 1, no
                # backout), norm gains and residual scales at one
                starts_at_zero = name.endswith((".bias", "value_gate.weight")) or name in ("x0_scales",
                                                                                           "backout_scale")
                yield p, torch.zeros(p.shape) if starts_at_zero else torch.ones(p.shape)

    @torch.no_grad()
    def init_weights(self):
        """Draw the initial weights (initial_values) and compute the buffers, e.g. after to_empty."""
        for p, value in self.initial_values():
            p.copy_(value)
        self.init_buffers()

    def init_buffers(self):
        if self.rotary is not None:
            self.rotary.inv_freq.copy_(self.rotary.frequencies())

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2 weights from Hugging Face, as nanoGPT's GPT.from_pretrained: 'gpt2', 'gpt2-medium', 'gpt2-large',
        'gpt2-xl', a hub name or a local folder with config.json and model.safetensors. Only dropout may be
        overridden. Reading and renaming Hugging Face's tensors is hf.py's work, imported only when asked for."""
        from nanogpt import hf

        settings, hf_state, source = hf.read_pretrained(model_type, override_args)
        model = cls(GPTConfig(**settings))
        model.load_state_dict(hf.hf_to_ours(hf_state, model.state_dict(), source))
        return model

    def get_num_params(self, non_embedding=True):
        """Parameter count; by default without the embeddings (lookups, not matmuls). Tied token embeddings
        count, because they are the output layer's weights too."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0
            n_params -= 0 if self.config.tie_embeddings else self.transformer.wte.weight.numel()
            n_params -= sum(p.numel() for p in self.value_embeds.parameters())
        return n_params

    def set_flash(self, enabled):
        """Switch every attention layer between scaled_dot_product_attention and the plain math."""
        for block in self.transformer.h:
            block.attn.flash = enabled

    def forward(self, idx, targets=None, kv_cache=None):
        """Logits and loss for token ids idx (B, T). Without targets only the last position's logits are
        computed (all generation needs). With a kv_cache, each row of idx continues the sequence the cache holds
        for it, at the positions the cache gives (the cache refuses positions past its length, the block size)."""
        device = idx.device
        b, t = idx.size()
        if kv_cache is None:
            if t > self.config.block_size:
                raise ValueError(f"cannot forward {t} tokens, block size is only {self.config.block_size}")
            pos = torch.arange(0, t, dtype=torch.long, device=device)  # (t,): every row starts at position 0
        else:
            pos = kv_cache.positions(t, device)  # (b or 1, t)
        x = self.transformer.wte(idx)
        rotation = None
        if self.rotary is None:
            x = x + self.transformer.wpe(pos)
        else:
            rotation = self.rotary(pos)
        x0 = x = self.embed_norm(self.transformer.drop(x))
        middle = None
        for i, block in enumerate(self.transformer.h):
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            if self.resid_scales is not None:
                x = self.resid_scales[i] * x
            if self.x0_scales is not None:
                x = x + self.x0_scales[i] * x0
            x = block(x, rotation, kv_cache, ve)
            if i == self.config.n_layer // 2:
                middle = x
        if kv_cache is not None:
            kv_cache.advance(t)
        if self.backout_scale is not None:
            x = x - self.backout_scale * middle
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.softcap(self.lm_head(x))
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits = self.softcap(self.lm_head(x[:, [-1], :]))  # a list index keeps the time dimension
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to finetune pretrained GPT-2 (1024) on shorter blocks."""
        if block_size > self.config.block_size:
            raise ValueError(f"can only crop the block size down: {block_size} > {self.config.block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @torch.no_grad()
    def grow_vocab(self, vocab_size):
        """Add rows to the token embedding (and the head) up to vocab_size, for new tokens such as a chat
        template's turn tokens. Each new row starts as the mean of the old ones: an "average token", whose logit
        starts near the others' rather than at random (Hewitt 2021, "Initializing new word embeddings")."""
        old = self.config.vocab_size
        if vocab_size <= old:
            return
        # tied, the head's weight is the embedding's: growing it and tying again grows both
        for module in (self.lm_head,) if self.config.tie_embeddings else (self.transformer.wte, self.lm_head):
            weight = module.weight
            module.weight = nn.Parameter(torch.cat([weight, weight.mean(dim=0, keepdim=True).expand(
                vocab_size - old, -1)]))
        self.config.vocab_size = self.transformer.wte.num_embeddings = self.lm_head.out_features = vocab_size
        self.tie_weights()

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW over every trainable parameter, weight decay on matrices and embeddings only (see adamw)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return adamw(params, weight_decay, learning_rate, betas, device_type)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model flops utilization: achieved flop/s over a peak (default: A100 bf16, 312 TFLOPS; runtime.peak_flops
        knows other devices). Flops per token from the PaLM paper, appendix B: 6N + 12·L·H·Q·T."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after idx (B, T) and return idx with them appended, as nanoGPT's generate: the
        window slides one token at a time, and torch.manual_seed makes the draws reproducible. A thin call of the
        one generation engine (generate.py), which keeps a KV cache and samples on the device."""
        from nanogpt.generate import generate_ids

        return generate_ids(self, idx, max_new_tokens, temperature, top_k, window_shift=1)


def adamw(params, weight_decay, learning_rate, betas, device_type):
    """AdamW with weight decay on matrices and embeddings (tensors of 2 or more dimensions) only: decaying biases
    and LayerNorm gains only hurts. Also the AdamW half of optim.py's Muon+AdamW."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # the fused kernel updates all parameters in one pass instead of several ops per tensor (CUDA, and CPU
    # since PyTorch 2.4: ~2 ms of a 35 ms step for the quick-start model)
    fused_devices = ("cuda", "cpu") if torch.torch_version.TorchVersion(torch.__version__) >= "2.4" else ("cuda",)
    use_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in fused_devices
    extra = {"fused": True} if use_fused else {}
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)
