"""Tokenizers, described by a small JSON-able dict (the dataset's meta.json and every checkpoint carry one),
so a run always decodes with the tokenizer it was trained with.

Kinds: 'char' (one token per character), 'gpt2' (GPT-2's BPE) and 'bpe' (a BPE trained on the user's text), both
in bpe.py, and 'hf': the tokenizer.json of a Hugging Face model folder, read through the tokenizers library.
Every tokenizer has encode, decode, vocab_size, describe(), eot_token: the id of the end-of-document token
(<|endoftext|>), where generation may stop, or None when it has none, and special_ids: its special tokens' ids by
their text (the chat template's turn tokens among them where it has them).
"""

from nanogpt.errors import UserError


class CharTokenizer:
    """One token per character, for the vocabulary of characters seen in the training text."""

    name = "char"
    eot_token = None  # documents are simply concatenated
    special_ids = {}  # no special tokens: a character vocabulary cannot hold the chat template's turn tokens

    def __init__(self, chars):
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        return cls("".join(sorted(set(text))))

    def encode(self, text):
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(
                f"character {e.args[0]!r} is not in this model's vocabulary of {self.vocab_size} characters; "
                "remove it from the prompt"
            ) from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def describe(self):
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "chars": self.chars}


class HFTokenizer:
    """A Hugging Face tokenizer.json, as a model folder carries it, with its end-of-text token (eos_token)."""

    name = "hf"

    def __init__(self, tokenizer_json, eos_token=None):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError("this model's tokenizer.json needs Hugging Face's tokenizers: pip install 'nanogpt[hf]'") \
                from None
        try:
            self.tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the Rust side raises a bare Exception for any malformed file
            raise UserError(f"cannot read the model's tokenizer.json ({str(e).splitlines()[0]})") from None
        self.tokenizer_json, self.eos_token = tokenizer_json, eos_token
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        from nanogpt.bpe import ENDOFTEXT  # bpe.py (and tiktoken) is loaded only where a tokenizer needs it

        self.eot_token = self.tokenizer.token_to_id(eos_token or ENDOFTEXT)

    @property
    def special_ids(self):
        return {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}

    def encode(self, text):
        try:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        except Exception as e:  # e.g. a character vocabulary meeting a character it lacks
            raise UserError(f"the model's tokenizer cannot encode this text ({str(e).splitlines()[0]})") from None

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def describe(self):
        return {"tokenizer": "hf", "vocab_size": self.vocab_size, "eot_token": self.eot_token,
                "eos_token": self.eos_token, "tokenizer_json": self.tokenizer_json}


def tokenizer_from_meta(meta):
    """The tokenizer a meta dict describes; its `chat` is the chat template a chat dataset or a chat-finetuned
    run names (None: not for chat, see conversation.py)."""
    tokenizer = tokenizer_of_kind(meta)
    tokenizer.chat = meta.get("chat")
    return tokenizer


def tokenizer_of_kind(meta):
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind in ("gpt2", "bpe"):
        from nanogpt.bpe import BPETokenizer, GPT2Tokenizer  # tiktoken is loaded only for BPE runs

        if kind == "gpt2":
            return GPT2Tokenizer(tuple(meta.get("special_tokens", ())))
        if "tokenizer_json" not in meta:
            raise UserError("this dataset or run names a trained BPE tokenizer but does not carry its tokenizer.json")
        return BPETokenizer(meta["tokenizer_json"])
    if kind == "hf":
        return HFTokenizer(meta["tokenizer_json"], meta.get("eos_token"))
    raise UserError(f"unknown tokenizer {kind!r} in dataset or checkpoint metadata")
