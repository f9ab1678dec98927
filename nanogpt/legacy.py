"""Upstream nanoGPT's meta.pkl: read without running it, and written for upstream's sample.py.

nanoGPT stores a character vocabulary as a pickle ({'vocab_size': int, 'itos': {int: str}, 'stoi': {str: int}}).
Unpickling can run arbitrary code, so this reader refuses every class lookup: plain dicts, strings and ints are
built by pickle's own opcodes without one, and anything else stops the read before it is constructed. Writing one
is safe (it is made of plain values only); nothing here reads it back when meta.json is there.
"""

import pickle
from pathlib import Path

from nanogpt.errors import UserError


class _PlainValuesUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _is_plain(value):
    if isinstance(value, dict):
        return all(_is_plain(k) and _is_plain(v) for k, v in value.items())
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def read_meta_pkl(path):
    """The tokenizer meta dict (our meta.json's form) for an upstream nanoGPT meta.pkl."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            meta = _PlainValuesUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"refused {path}: it is not a plain vocabulary pickle ({e})") from None
    if not (isinstance(meta, dict) and _is_plain(meta) and isinstance(meta.get("itos"), dict)):
        raise UserError(f"refused {path}: expected a dict of vocab_size, itos and stoi holding only strings and ints")
    itos = meta["itos"]
    vocab_size = meta.get("vocab_size", len(itos))
    try:
        chars = "".join(itos[i] for i in range(vocab_size))
    except KeyError:
        raise UserError(f"{path}: itos does not cover ids 0..{vocab_size - 1}") from None
    return {"tokenizer": "char", "vocab_size": vocab_size, "chars": chars, "dtype": "uint16"}


def meta_pkl_bytes(meta):
    """Upstream nanoGPT's meta.pkl for a character tokenizer meta dict (plain dicts of ints and strings only)."""
    chars = meta["chars"]
    return pickle.dumps({
        "vocab_size": len(chars),
        "itos": dict(enumerate(chars)),
        "stoi": {ch: i for i, ch in enumerate(chars)},
    })
