"""Every read and write of a dataset's files: token arrays (nanoGPT's raw .bin format) and the meta.json index that
says which tokenizer and integer type they hold. In reading order: the writer (DatasetWriter, resumable), the
reader (Dataset), how a global batch is drawn (batch_offsets), and the loader that reads batches ahead (Batches).

A split is either one file (train.bin / val.bin, nanoGPT's layout, which the Shakespeare recipes write and
nanoGPT's own datasets have) or shards (train-000000.bin, ...) listed in meta.json with their token counts,
document counts and CRC-32s; each shard may have a .idx beside it, the positions where its documents start, and a
chat dataset's a .mask: one uint8 per token, 1 where the loss counts the token as a target (see chat.py).
Either way a split reads as one stream of tokens: a window may run across a shard boundary as it would across a
document boundary. Character datasets also get upstream nanoGPT's meta.pkl (a plain dict), so its sample.py decodes
runs trained here; we only ever read meta.json.

Batches are a pure function of (seed, split, iteration): the global batch of step N is the same whether the run
was interrupted and resumed, and however many ranks share it, each rank reading only its own rows.
"""

import filecmp
import json
import os
import queue
import shutil
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import UserError
from nanogpt.files import fsync_path, write_bytes_atomically

META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"  # a trained BPE's Hugging Face tokenizer.json, beside meta.json
SPLITS = ("train", "val")
STAGE_DIR = ".partial"  # where a prepare builds its shards; it survives a kill, so the next prepare resumes
STATE_FILE = "state.json"  # in STAGE_DIR: what the shards there hold and where in the corpus they end
CHECKPOINT_SECONDS = 30.0  # how much work a kill may cost at most (besides the shards finished since)
MAX_SHARD_TOKENS = 2**32  # a shard's .idx holds uint32 positions


def token_dtype(vocab_size):
    """The integer type of a dataset's .bin files: uint16 while every id fits (nanoGPT's format), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_name(split, index):
    return f"{split}-{index:06d}.bin"


def index_name(shard):
    return shard[:-len(".bin")] + ".idx"


def mask_name(shard):
    return shard[:-len(".bin")] + ".mask"


def write_dataset(folder, train_ids, val_ids, tokenizer_meta, overwrite=False):
    """Write train.bin, val.bin and meta.json from in-memory token ids."""
    with DatasetWriter(folder, tokenizer_meta, overwrite) as writer:
        writer.append("train", train_ids)
        writer.append("val", val_ids)
        writer.commit()


class DatasetWriter:
    """Streams token ids into a dataset folder so that no failure leaves a folder that looks prepared but is not.

    Tokens go to files under folder/.partial; commit() moves them into the folder and writes meta.json last, so the
    folder holds either its previous dataset or the complete new one. With shard_tokens each split is cut into
    shards of that many tokens; else it is one file (train.bin, val.bin). A folder that already holds a different
    dataset is replaced only with overwrite=True: runs trained on it read its files (preparing the very same
    dataset again changes nothing).

    Resuming: with an `identity` (a dict naming the corpus and every setting that shapes the tokens), the writer
    checkpoints after whole tasks (every finished shard, and every CHECKPOINT_SECONDS): the shards, the bytes of
    the unfinished ones and the index of the next task, all fsynced. A prepare killed at any moment and run again
    with the same identity checks the finished shards' CRCs, cuts the unfinished ones back to the checkpoint and
    goes on from `next_task`, so its files are byte for byte those of an uninterrupted run. Any other failure
    (an error, Ctrl-C excepted) deletes .partial.
    """

    def __init__(self, folder, tokenizer_meta, overwrite=False, shard_tokens=None, identity=None, eot=None,
                 log=print, masked=False):
        self.folder = Path(folder)
        self.stage = self.folder / STAGE_DIR
        self.overwrite, self.identity, self.log = overwrite, identity, log
        self.dtype = token_dtype(tokenizer_meta["vocab_size"])
        self.meta = dict(tokenizer_meta, dtype=self.dtype.name)
        self.tokenizer_json = self.meta.pop("tokenizer_json", None)  # its own file, not a string inside meta.json
        if shard_tokens is not None and not 0 < shard_tokens <= MAX_SHARD_TOKENS:
            raise UserError(f"shard_tokens must be between 1 and {MAX_SHARD_TOKENS:,}, not {shard_tokens}")
        self.sharded = shard_tokens is not None
        self.next_task = 0  # the first task of the corpus whose tokens are not in the files yet
        self.last_checkpoint = time.monotonic()
        # masked: every token comes with a loss-mask byte, written to a .mask beside its shard
        self.new_splits = lambda: {split: SplitWriter(self.stage, split, self.dtype, shard_tokens, eot, masked)
                                   for split in SPLITS}
        self.splits = self.new_splits()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self.resume():
                self.abort()
                self.splits, self.next_task = self.new_splits(), 0
                self.stage.mkdir()
        except OSError as e:
            raise UserError(f"cannot write to dataset folder {self.folder}: {e.strerror}") from None

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is KeyboardInterrupt and self.identity is not None and self.stage.is_dir():
            for writer in self.splits.values():
                writer.close()
            self.log(f"interrupted: the finished shards are kept in {self.stage}; the same command resumes")
            return
        self.abort()

    @property
    def lengths(self):
        return {split: w.tokens for split, w in self.splits.items()}

    def resume(self):
        """Take up a killed prepare of the same corpus and settings; whether there was one."""
        if self.identity is None:
            return False
        try:
            state = json.loads((self.stage / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if state.get("identity") != self.identity or state.get("dtype") != self.dtype.name:
            return False
        for split, writer in self.splits.items():
            if not writer.restore(state["splits"][split]):
                return False
        self.next_task = state["next_task"]
        finished = sum(len(w.shards) for w in self.splits.values())
        self.log(f"resuming the prepare in {self.stage}: {finished} finished shards checked, going on from task "
                 f"{self.next_task:,}")
        return True

    def append(self, split, ids, mask=None):
        """Add token ids to the end of a split (with their loss-mask bytes, for a masked dataset)."""
        ids = np.asarray(ids)
        assert ids.size == 0 or int(ids.max()) < self.meta["vocab_size"], "token id outside the vocabulary"
        try:
            self.splits[split].append(ids.astype(self.dtype, copy=False),
                                      None if mask is None else np.asarray(mask, dtype=np.uint8))
        except OSError as e:
            raise UserError(f"cannot write the dataset in {self.stage}: {e.strerror}") from None

    def task_done(self, task):
        """Every token of the corpus's tasks up to `task` is appended: checkpoint when a shard was finished since
        the last checkpoint, or it is CHECKPOINT_SECONDS old."""
        self.next_task = task + 1
        if self.identity is None:
            return
        finished = any(w.finished_since_checkpoint for w in self.splits.values())
        if finished or time.monotonic() - self.last_checkpoint > CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self):
        state = {"identity": self.identity, "dtype": self.dtype.name, "next_task": self.next_task,
                 "splits": {split: w.checkpoint() for split, w in self.splits.items()}}
        write_bytes_atomically(self.stage / STATE_FILE, json.dumps(state).encode(), "prepare state")
        self.last_checkpoint = time.monotonic()

    def commit(self):
        """Make the new dataset the folder's dataset: token files first, meta.json last."""
        try:
            for writer in self.splits.values():
                writer.finish(name=None if self.sharded else f"{writer.split}.bin")
            meta = dict(self.meta)
            if self.sharded:
                meta["shards"] = {split: w.shards for split, w in self.splits.items()}
            already_there = self.holds_it_already(meta)
            if not already_there:
                (self.folder / META_FILE).unlink(missing_ok=True)  # from here the folder is not a dataset
                for path in self.old_token_files():
                    path.unlink()
                for writer in self.splits.values():
                    for name in writer.files():
                        os.replace(self.stage / name, self.folder / name)
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
            write_bytes_atomically(self.folder / META_FILE, json.dumps(meta, indent=1).encode())
        shutil.rmtree(self.stage, ignore_errors=True)

    def old_token_files(self):
        """The token files of whatever dataset the folder held: nanoGPT's .bin files and shards with their .idx."""
        return [p for p in self.folder.iterdir() if p.is_file() and (
            p.name in ("train.bin", "val.bin") or any(p.name.startswith(f"{s}-") and p.suffix in (".bin", ".idx", ".mask")
                                                       for s in SPLITS))]

    def write_upstream_meta(self):
        if self.meta["tokenizer"] == "char":  # upstream's sample.py reads only its vocabulary, whatever the layout
            from nanogpt.legacy import meta_pkl_bytes

            write_bytes_atomically(self.folder / "meta.pkl", meta_pkl_bytes(self.meta))
        else:
            (self.folder / "meta.pkl").unlink(missing_ok=True)  # a stale one would decode the new ids wrongly

    def holds_it_already(self, meta):
        """True when the folder holds this very dataset already; a different one there is refused unless
        overwrite."""
        if not self.old_token_files() and not (self.folder / META_FILE).exists():
            return False
        if self.same_meta(meta):
            names = [name for w in self.splits.values() for name in w.files()]
            if all((self.folder / name).is_file() and filecmp.cmp(self.stage / name, self.folder / name,
                                                                   shallow=False) for name in names):
                return True
        if not self.overwrite:
            raise UserError(
                f"{self.folder} already holds a different dataset, and runs trained on it read its files: pass "
                "--overwrite=True to replace it, or choose another name for the new one"
            )
        return False

    def same_meta(self, meta):
        """Whether the folder's meta (and trained tokenizer) are this dataset's; a folder missing its tokenizer.json
        is simply a different one."""
        ours = meta if self.tokenizer_json is None else dict(meta, tokenizer_json=self.tokenizer_json)
        try:
            return read_meta(self.folder) == ours
        except UserError:
            return False

    def abort(self):
        """Delete whatever the writer has not committed."""
        for writer in self.splits.values():
            writer.close()
        shutil.rmtree(self.stage, ignore_errors=True)


class SplitWriter:
    """One split's token files under the stage folder: finished shards and the one being written (.tmp)."""

    def __init__(self, stage, split, dtype, shard_tokens, eot, masked=False):
        self.stage, self.split, self.dtype = stage, split, dtype
        self.shard_tokens, self.eot, self.masked = shard_tokens, eot, masked
        self.mask_file = None  # the open shard's mask bytes, for a masked dataset
        self.shards = []  # finished: {"file", "tokens", "documents", "crc32"}
        self.file, self.open_tokens, self.crc = None, 0, 0
        self.at_document_start = True  # whether the next token begins a document (the last one written is EOT)
        self.starts_document = True  # whether the open shard's first token begins a document
        self.finished_since_checkpoint = False

    @property
    def tokens(self):
        return sum(s["tokens"] for s in self.shards) + self.open_tokens

    def tmp_path(self):
        return self.stage / f"{self.split}.open.tmp"

    def mask_tmp_path(self):
        return self.stage / f"{self.split}.open.mask.tmp"

    def append(self, ids, mask=None):
        assert (mask is not None) == self.masked and (mask is None or mask.size == ids.size)
        while ids.size:
            room = ids.size if self.shard_tokens is None else self.shard_tokens - self.open_tokens
            piece, ids = ids[:room], ids[room:]
            if self.file is None:
                self.open()
            if mask is not None:
                self.mask_file.write(mask[:room].tobytes())
                mask = mask[room:]
            data = piece.tobytes()
            self.file.write(data)
            self.crc = zlib.crc32(data, self.crc)
            self.open_tokens += piece.size
            if piece.size:
                self.at_document_start = self.eot is not None and int(piece[-1]) == self.eot
            if self.open_tokens == self.shard_tokens:
                self.finish()

    def finish(self, name=None):
        """Close the open shard as a finished one: an empty one when the split has no tokens yet; nothing when it
        has finished shards and no open one."""
        if self.file is None and self.shards:
            return
        if self.file is None:
            self.open()
        for f in (self.file, self.mask_file):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self.file = self.mask_file = None
        name = name or shard_name(self.split, len(self.shards))
        documents = self.write_index(name) if self.eot is not None and self.shard_tokens is not None else None
        os.replace(self.tmp_path(), self.stage / name)
        shard = {"file": name, "tokens": self.open_tokens, "documents": documents, "crc32": self.crc}
        if self.masked:
            os.replace(self.mask_tmp_path(), self.stage / mask_name(name))
            shard["mask"] = mask_name(name)
        self.shards.append(shard)
        self.open_tokens, self.crc = 0, 0
        self.finished_since_checkpoint = True

    def open(self):
        self.file = open(self.tmp_path(), "ab")
        if self.masked:
            self.mask_file = open(self.mask_tmp_path(), "ab")
        self.starts_document = self.at_document_start

    def write_index(self, name):
        """Write the shard's document starts (uint32 positions) beside it for document-aligned batches; returns
        how many documents end in it. Single-file splits get none (nanoGPT's layout): readers find their EOTs."""
        tokens = np.fromfile(self.tmp_path(), dtype=self.dtype)  # at most shard_tokens
        ends = np.flatnonzero(tokens == self.eot) + 1
        starts = ends[ends < tokens.size]
        if self.starts_document:
            starts = np.concatenate([[0], starts])
        starts.astype(np.uint32).tofile(self.stage / index_name(name))
        return int(ends.size)

    def files(self):
        names = [s["file"] for s in self.shards]
        shards = names
        if self.shard_tokens is not None and self.eot is not None:
            names = names + [index_name(n) for n in shards]
        if self.masked:
            names = names + [mask_name(n) for n in shards]
        return names

    def checkpoint(self):
        """The state of the split's files for a resumed prepare, the open shard flushed to disk first."""
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
        self.finished_since_checkpoint = False
        return {"shards": self.shards, "open_tokens": self.open_tokens, "crc32": self.crc,
                "starts_document": self.starts_document, "at_document_start": self.at_document_start}

    def restore(self, state):
        """Take up the split's files as a checkpoint left them; False when they are not what it says."""
        for shard in state["shards"]:
            if crc_of(self.stage / shard["file"], shard["tokens"] * self.dtype.itemsize) != shard["crc32"]:
                return False
        nbytes = state["open_tokens"] * self.dtype.itemsize
        tmp = self.tmp_path()
        # shards finished after the checkpoint (a kill before the next one): the first began as the open shard
        later = sorted(self.stage.glob(f"{self.split}-*"))
        later = [p for p in later if int(p.stem.split("-")[1]) >= len(state["shards"])]
        for path in later:
            if path.name == shard_name(self.split, len(state["shards"])):
                os.replace(path, tmp)
            else:
                path.unlink()
        if nbytes and crc_of(tmp, nbytes, exact=False) != state["crc32"]:
            return False
        with open(tmp, "ab") as f:
            f.truncate(nbytes)  # what was written after the checkpoint is written again, the same
        self.shards, self.open_tokens, self.crc = state["shards"], state["open_tokens"], state["crc32"]
        self.at_document_start = state["at_document_start"]
        if self.open_tokens:
            self.file = open(tmp, "ab")
            self.starts_document = state["starts_document"]
        return True

    def close(self):
        for f in (self.file, self.mask_file):
            if f is not None:
                f.close()
        self.file = self.mask_file = None


def crc_of(path, nbytes, exact=True):
    """CRC-32 of the first nbytes of a file; None when it is missing or has other than nbytes (fewer, if not
    exact)."""
    try:
        size = os.path.getsize(path)
        if size < nbytes or (exact and size != nbytes):
            return None
        crc = 0
        with open(path, "rb") as f:
            while nbytes > 0:
                block = f.read(min(nbytes, 1 << 24))
                crc = zlib.crc32(block, crc)
                nbytes -= len(block)
        return crc
    except OSError:
        return None


def read_meta(folder):
    """The dataset's meta dict: tokenizer description, vocab_size and dtype, shards when it has them (and a
    trained tokenizer's tokenizer.json text)."""
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
    """The token files of one prepared dataset, each split read as one stream of tokens across its shards."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(
                f"dataset folder {self.folder} not found: prepare it first, e.g. `python data/shakespeare_char/prepare.py`"
            )
        self.meta = read_meta(self.folder)
        self.dtype = np.dtype(self.meta.get("dtype", "uint16"))
        self.vocab_size = self.meta["vocab_size"]
        self.shards, self.starts, self.lengths, self.masks = {}, {}, {}, {}
        self.document_starts_cache = {}
        for split in SPLITS:
            listed = (self.meta.get("shards") or {}).get(split)
            self.shards[split] = [self.check_shard(s["file"], s["tokens"]) for s in listed] if listed else [
                self.check_shard(f"{split}.bin", None)]
            if listed and all("mask" in s for s in listed):  # a chat dataset: its loss masks, checked the same way
                self.masks[split] = [self.check_shard(s["mask"], s["tokens"], np.dtype(np.uint8)) for s in listed]
            counts = np.array([n for _, n in self.shards[split]], dtype=np.int64)
            self.starts[split] = np.concatenate([[0], np.cumsum(counts)])  # where each shard begins in the split
            self.lengths[split] = int(self.starts[split][-1])

    @property
    def masked(self):
        """Whether the loss counts only some targets (a chat dataset's assistant tokens)."""
        return bool(self.masks)

    def check_shard(self, name, tokens, dtype=None):
        """(path, token count) of a token (or mask) file, refused in one line when missing or not the size meta.json
        says."""
        path, dtype = self.folder / name, dtype or self.dtype
        if not path.is_file():
            raise UserError(f"{path} not found: prepare the dataset first (see data/*/prepare.py)")
        size = path.stat().st_size
        if tokens is None and size % dtype.itemsize == 0:
            return path, size // dtype.itemsize
        if tokens is not None and size == tokens * dtype.itemsize:
            return path, tokens
        expected = "a whole number of" if tokens is None else f"{tokens:,}"
        raise UserError(f"{path} has {size:,} bytes, not {expected} {dtype.name} tokens: it is truncated or "
                        "not a token file; prepare the dataset again")

    def check_block_size(self, block_size):
        for split, n in self.lengths.items():
            if n <= block_size:
                raise UserError(
                    f"the {split} split in {self.folder} has only {n} tokens, not more than block_size={block_size}: "
                    "use a smaller --block_size or more data"
                )

    def tokens(self, split):
        """The whole split: a memmap of its one file, or its shards concatenated in memory."""
        # a fresh memmap per call: numpy memmaps kept open grow the resident set on long runs
        arrays = [np.memmap(path, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype)
                  for path, n in self.shards[split]]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def read(self, split, start, count, mask=False):
        """count tokens of the split from position start, across shard boundaries (mask=True: their loss-mask
        bytes); an id outside the vocabulary means a corrupt shard, refused in one line naming it."""
        files, dtype = (self.masks[split], np.dtype(np.uint8)) if mask else (self.shards[split], self.dtype)
        starts, out, filled = self.starts[split], np.empty(count, dtype=dtype), 0
        shard = int(np.searchsorted(starts, start, side="right")) - 1
        while filled < count:
            path, n = files[shard]
            offset = start + filled - int(starts[shard])
            piece = np.fromfile(path, dtype=dtype, count=min(n - offset, count - filled),
                                offset=offset * dtype.itemsize)
            if not mask and piece.size and int(piece.max()) >= self.vocab_size:
                raise UserError(f"{path} holds token id {int(piece.max())}, outside the vocabulary of "
                                f"{self.vocab_size:,}: the file is corrupt; prepare the dataset again")
            out[filled:filled + piece.size] = piece
            filled += piece.size
            shard += 1
        return out

    def batch(self, split, offsets, block_size):
        """Inputs and targets (int64 tensors of shape (len(offsets), block_size)) starting at the offsets."""
        rows = np.stack([self.read(split, int(start), block_size + 1) for start in offsets]).astype(np.int64)
        if self.masked:
            # a target the mask rules out (a user or system token) is -1, which the loss ignores: only the
            # assistant's tokens are learned, while the model still reads the whole conversation
            masks = np.stack([self.read(split, int(start), block_size + 1, mask=True) for start in offsets])
            targets = np.where(masks[:, 1:] == 1, rows[:, 1:], -1)
            return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(targets)
        rows = torch.from_numpy(rows)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def document_starts(self, split, block_size):
        """The positions in the split where a document starts and a whole row (block_size + 1 tokens) fits."""
        key = (split, block_size)
        if key not in self.document_starts_cache:
            found = [self.shard_document_starts(path) + int(begin)
                     for (path, _), begin in zip(self.shards[split], self.starts[split])]
            starts = np.concatenate(found)
            starts = starts[starts <= self.lengths[split] - block_size - 1]
            if starts.size == 0:
                raise UserError(f"the {split} split in {self.folder} has no document start with a whole row of "
                                f"block_size={block_size} after it: document-aligned batches need documents "
                                "separated by <|endoftext|> (a BPE dataset)")
            self.document_starts_cache[key] = starts
        return self.document_starts_cache[key]

    def shard_document_starts(self, path):
        """A shard's document starts: from its .idx, else (nanoGPT's single files) just after each EOT."""
        idx = path.with_suffix(".idx")
        if idx.is_file():
            return np.fromfile(idx, dtype=np.uint32).astype(np.int64)
        eot = self.meta.get("eot_token", 50256 if self.meta.get("tokenizer") == "gpt2" else None)
        if eot is None:
            return np.zeros(0, dtype=np.int64)
        tokens = np.memmap(path, dtype=self.dtype, mode="r")
        ends = np.flatnonzero(tokens == eot) + 1
        return np.concatenate([[0], ends[ends < tokens.size]]).astype(np.int64)


# independent random streams, so evaluation never shifts the training batches
TRAIN_STREAM, EVAL_TRAIN_STREAM, EVAL_VAL_STREAM = 0, 1, 2


def batch_offsets(seed, stream, step, count, n_tokens, block_size, document_starts=None):
    """Start positions of the `count` sequences of a global batch: a pure function of seed, stream and step.
    With document_starts, each is one of them (a row that starts a document)."""
    rng = np.random.Generator(np.random.PCG64([seed, stream, step]))
    if document_starts is not None:
        return document_starts[rng.integers(0, len(document_starts), size=count)]
    return rng.integers(0, n_tokens - block_size, size=count)


def ramped_batch_size(batch_size, ramp_start, ramp_iters, step):
    """Sequences per micro-step at step: batch_size, or during a batch ramp (ramp_iters > 0) ramp_start growing
    linearly to it over the first ramp_iters steps. Small batches early spend fewer tokens where the gradient is
    clear from few of them (the gradient noise scale starts small and grows as the loss falls: McCandlish et al.
    2018, *An Empirical Model of Large-Batch Training*; GPT-3 ramps its batch the same way)."""
    if step >= ramp_iters:
        return batch_size
    return ramp_start + (batch_size - ramp_start) * step // ramp_iters


def move_batch(x, y, device):
    """Copy a batch to the device; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type == "cuda":
        if not x.is_pinned():
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x.to(device), y.to(device)


class Batches:
    """One rank's training batches, read by a background thread ahead of the step that takes them.

    The global batch of step N (gradient_accumulation_steps x batch_size rows) is drawn by batch_offsets from
    (seed, N) alone; rank r takes micro-batches r*micro_steps ... (r+1)*micro_steps - 1 of it and reads only those
    rows. So 1 rank or 8, a fresh run or a resumed one, step N trains on the same rows. The thread reads the steps
    in order from start_step, as soon as it is built (while the model is built and compiled); a request out of that
    order (a test, a run that changed its mind) is read at once and the thread starts over from it.
    """

    def __init__(self, dataset, seed, batch_size, accumulation, rank, world_size, block_size, device,
                 document_aligned=False, start_step=0, ahead=8, split="train", stream=TRAIN_STREAM, ramp=(0, 0)):
        self.dataset, self.seed, self.split, self.stream = dataset, seed, split, stream
        self.batch_size, self.accumulation, self.block_size = batch_size, accumulation, block_size
        self.ramp = ramp  # (batch_ramp_start, batch_ramp_iters)
        self.micro_steps = accumulation // world_size
        self.rank = rank
        self.device = torch.device(device)
        self.starts = dataset.document_starts(split, block_size) if document_aligned else None
        self.ahead = ahead
        self.thread, self.queue, self.stop = None, None, None
        self.start((start_step, 0))

    def size_at(self, step):
        """Sequences per micro-step at step (batch_size, less during a batch ramp)."""
        return ramped_batch_size(self.batch_size, *self.ramp, step)

    def rows(self, step):
        """This rank's row offsets for all its micro-steps of a step."""
        size = self.size_at(step)
        offsets = batch_offsets(self.seed, self.stream, step, self.accumulation * size,
                                self.dataset.lengths[self.split], self.block_size, self.starts)
        first = self.rank * self.micro_steps * size
        return offsets[first:first + self.micro_steps * size]

    def read(self, step, micro_step):
        """A micro-batch on the host (pinned for a CUDA device, so its copy does not block)."""
        size = self.size_at(step)
        rows = self.rows(step)[micro_step * size:(micro_step + 1) * size]
        x, y = self.dataset.batch(self.split, rows, self.block_size)
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def get(self, step, micro_step):
        """(inputs, targets) of one micro-step, on the device."""
        key = (step, micro_step)
        batch = None
        if self.thread is not None:
            got_key, batch = self.queue.get()
            if isinstance(batch, BaseException):
                self.close()
                raise batch
            if got_key != key:
                batch = None
        if batch is None:
            self.close()
            batch = self.read(step, micro_step)
            self.start(self.next_key(key))
        return move_batch(*batch, self.device)

    def next_key(self, key):
        step, micro_step = key
        return (step + 1, 0) if micro_step + 1 == self.micro_steps else (step, micro_step + 1)

    def start(self, key):
        self.queue, self.stop = queue.Queue(self.ahead), threading.Event()
        self.thread = threading.Thread(target=self.read_ahead, args=(key, self.queue, self.stop), daemon=True,
                                       name="nanogpt-read-ahead")
        self.thread.start()

    def read_ahead(self, key, out, stop):
        try:
            while not stop.is_set():
                batch = self.read(*key)
                while not stop.is_set():
                    try:
                        out.put((key, batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                key = self.next_key(key)
        except BaseException as e:  # handed to the training thread, which raises it
            out.put((key, e))

    def close(self):
        """Stop the read-ahead thread (it holds no resources beyond its queue)."""
        if self.thread is not None:
            self.stop.set()
            while self.thread.is_alive():
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    self.thread.join(0.01)
            self.thread = None
