"""Tokenizers, described by a small JSON-able dict (the dataset's meta.json and every checkpoint carry one),
so a run always decodes with the tokenizer it was trained with."""

from nanogpt.errors import UserError


class CharTokenizer:
    """One token per character, for the vocabulary of characters seen in the training text."""

    name = "char"

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


def tokenizer_from_meta(meta):
    """The tokenizer a meta dict describes."""
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "gpt2":
        from nanogpt.bpe import GPT2Tokenizer  # tiktoken is loaded only for BPE runs

        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer {kind!r} in dataset or checkpoint metadata")
