"""Every read and write of a dataset's files: train.bin / val.bin (raw token arrays, nanoGPT's format) and the
meta.json sidecar that says which tokenizer and integer type they hold. Character datasets also get upstream
nanoGPT's meta.pkl (a plain dict), so its sample.py decodes runs trained here; we only ever read meta.json.

Batches are a pure function of (seed, split, iteration): the global batch of step N is the same whether the run
was interrupted and resumed, and however many ranks share it, each rank taking its own slice.
"""

import filecmp
import json
import os
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import UserError
from nanogpt.files import fsync_path, write_bytes_atomically

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"  # a trained BPE's Hugging Face tokenizer.json, beside meta.json
SPLITS = ("train", "val")


def token_dtype(vocab_size):
    """The integer type of a dataset's .bin files: uint16 while every id fits (nanoGPT's format), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_dataset(folder, train_ids, val_ids, tokenizer_meta, overwrite=False):
    """Write train.bin, val.bin and meta.json from in-memory token ids."""
    with DatasetWriter(folder, tokenizer_meta, overwrite) as writer:
        writer.append("train", train_ids)
        writer.append("val", val_ids)
        writer.commit()


class DatasetWriter:
    """Streams token ids into a dataset folder so that no failure leaves a folder that looks prepared but is not.

    Tokens go to train.bin.tmp / val.bin.tmp; commit() renames them and writes meta.json last, so the folder holds
    either its previous dataset or the complete new one. Leaving the `with` block without commit() (an error, an
    interrupt) deletes the .tmp files. A folder that already holds a different dataset is replaced only with
    overwrite=True: runs trained on it read its files (preparing the very same dataset again changes nothing).
    """

    def __init__(self, folder, tokenizer_meta, overwrite=False):
        self.folder = Path(folder)
        self.overwrite = overwrite
        self.dtype = token_dtype(tokenizer_meta["vocab_size"])
        self.meta = dict(tokenizer_meta, dtype=self.dtype.name)
        self.tokenizer_json = self.meta.pop("tokenizer_json", None)  # its own file, not a string inside meta.json
        self.lengths = dict.fromkeys(SPLITS, 0)
        self.files = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for split in SPLITS:
                self.files[split] = open(self.tmp_path(split), "wb")
        except OSError as e:
            self.abort()
            raise UserError(f"cannot write to dataset folder {self.folder}: {e.strerror}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.abort()

    def tmp_path(self, split):
        return self.folder / f"{split}.bin.tmp"

    def append(self, split, ids):
        """Add token ids to the end of a split."""
        ids = np.asarray(ids)
        assert ids.size == 0 or int(ids.max()) < self.meta["vocab_size"], "token id outside the vocabulary"
        try:
            ids.astype(self.dtype, copy=False).tofile(self.files[split])
        except OSError as e:
            raise UserError(f"cannot write {self.tmp_path(split)}: {e.strerror}") from None
        self.lengths[split] += ids.size

    def memmap(self, split, length):
        """The whole split as a writable memmap of `length` tokens, for writers that fill it out of order."""
        self.files.pop(split).close()
        self.lengths[split] = length
        return np.memmap(self.tmp_path(split), dtype=self.dtype, mode="w+", shape=(length,))

    def commit(self):
        """Make the new dataset the folder's dataset: .bin files first, meta.json last."""
        try:
            for f in self.files.values():
                f.close()
            for split in SPLITS:
                with open(self.tmp_path(split), "rb+") as f:
                    os.fsync(f.fileno())
            already_there = self.holds_it_already()
            if not already_there:
                for split in SPLITS:
                    os.replace(self.tmp_path(split), self.folder / f"{split}.bin")
                fsync_path(self.folder)
        except OSError as e:
            raise UserError(f"cannot write the dataset in {self.folder}: {e.strerror}") from None
        # written for the very same dataset too: one prepared by an older version has no meta.pkl yet
        self.write_upstream_meta()
        if not already_there:
            if self.tokenizer_json is not None:
                write_bytes_atomically(self.folder / TOKENIZER_FILE, self.tokenizer_json.encode())
            else:
                (self.folder / TOKENIZER_FILE).unlink(missing_ok=True)
            write_bytes_atomically(self.folder / META_FILE, json.dumps(self.meta, indent=1).encode())
        self.files = {}

    def write_upstream_meta(self):
        if self.meta["tokenizer"] == "char":
            from nanogpt.legacy import meta_pkl_bytes

            write_bytes_atomically(self.folder / "meta.pkl", meta_pkl_bytes(self.meta))
        else:
            (self.folder / "meta.pkl").unlink(missing_ok=True)  # a stale one would decode the new ids wrongly

    def holds_it_already(self):
        """True when the folder holds this very dataset already; a different one there is refused unless
        overwrite."""
        existing = [self.folder / f"{split}.bin" for split in SPLITS] + [self.folder / META_FILE]
        if not any(path.exists() for path in existing):
            return False
        same = all(path.is_file() for path in existing) and self.same_meta() and all(
            filecmp.cmp(self.tmp_path(split), self.folder / f"{split}.bin", shallow=False) for split in SPLITS)
        if same:
            return True
        if not self.overwrite:
            raise UserError(
                f"{self.folder} already holds a different dataset, and runs trained on it read its files: pass "
                "--overwrite=True to replace it, or choose another name for the new one"
            )
        return False

    def same_meta(self):
        """Whether the folder's meta (and trained tokenizer) are this dataset's; a folder missing its tokenizer.json
        is simply a different one."""
        ours = self.meta if self.tokenizer_json is None else dict(self.meta, tokenizer_json=self.tokenizer_json)
        try:
            return read_meta(self.folder) == ours
        except UserError:
            return False

    def abort(self):
        """Delete whatever the writer has not committed."""
        for f in self.files.values():
            f.close()
        self.files = {}
        for split in SPLITS:
            if self.folder.is_dir():
                self.tmp_path(split).unlink(missing_ok=True)


def read_meta(folder):
    """The dataset's meta dict: tokenizer description, vocab_size and dtype (and a trained tokenizer's
    tokenizer.json text)."""
    folder = Path(folder)
    path = folder / META_FILE
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is not valid JSON; prepare the dataset again") from None
        if meta.get("tokenizer") == "bpe":
            tokenizer_path = folder / TOKENIZER_FILE
            if not tokenizer_path.is_file():
                raise UserError(f"{tokenizer_path} is missing: the dataset's token ids cannot be read without it; "
                                "prepare the dataset again")
            meta["tokenizer_json"] = tokenizer_path.read_text(encoding="utf-8")
        return meta
    if (folder / "meta.pkl").is_file():
        from nanogpt.legacy import read_meta_pkl  # upstream nanoGPT's pickle, read without running it

        return read_meta_pkl(folder / "meta.pkl")
    # upstream nanoGPT's BPE datasets have no meta file: their .bin files are GPT-2 tokens in uint16
    from nanogpt.bpe import gpt2_meta

    return dict(gpt2_meta(), dtype="uint16")


class Dataset:
    """The token arrays of one prepared dataset, read through numpy memmaps."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(
                f"dataset folder {self.folder} not found: prepare it first, e.g. `python data/shakespeare_char/prepare.py`"
            )
        self.meta = read_meta(self.folder)
        self.dtype = np.dtype(self.meta.get("dtype", "uint16"))
        self.vocab_size = self.meta["vocab_size"]
        self.lengths = {}
        for split in SPLITS:
            path = self.folder / f"{split}.bin"
            if not path.is_file():
                raise UserError(f"{path} not found: prepare the dataset first (see data/*/prepare.py)")
            size = path.stat().st_size
            if size % self.dtype.itemsize != 0:
                raise UserError(
                    f"{path} has {size} bytes, not a whole number of {self.dtype.name} tokens; it is truncated or "
                    "not a token file: prepare the dataset again"
                )
            self.lengths[split] = size // self.dtype.itemsize

    def check_block_size(self, block_size):
        for split, n in self.lengths.items():
            if n <= block_size:
                raise UserError(
                    f"{split}.bin in {self.folder} has only {n} tokens, not more than block_size={block_size}: "
                    "use a smaller --block_size or more data"
                )

    def tokens(self, split):
        # a fresh memmap per call: numpy memmaps kept open grow the resident set on long runs
        return np.memmap(self.folder / f"{split}.bin", dtype=self.dtype, mode="r")

    def batch(self, split, offsets, block_size):
        """Inputs and targets (int64 tensors of shape (len(offsets), block_size)) starting at the offsets."""
        data = self.tokens(split)
        rows = torch.from_numpy(data[offsets[:, None] + np.arange(block_size + 1)].astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


# independent random streams, so evaluation never shifts the training batches
TRAIN_STREAM, EVAL_TRAIN_STREAM, EVAL_VAL_STREAM = 0, 1, 2


def batch_offsets(seed, stream, step, count, n_tokens, block_size):
    """Start positions of the `count` sequences of a global batch: a pure function of seed, stream and step."""
    rng = np.random.Generator(np.random.PCG64([seed, stream, step]))
    return rng.integers(0, n_tokens - block_size, size=count)


def move_batch(x, y, device):
    """Copy a batch to the device; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
