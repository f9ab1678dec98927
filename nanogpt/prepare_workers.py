"""The prepare's encoding workers: processes that turn tasks of text into token ids.

prepare_corpus (datasets.py) reads a corpus in order and cuts it into tasks of about a megabyte; each task goes to
one of `workers` processes, which returns its token ids as compact arrays (the dataset's uint16/uint32), and the
main process writes them in order. Processes, not threads: tiktoken releases the GIL while it encodes, yet two
threads in one interpreter fell well short of twice one thread's work (benchmarks/prepare_scale.py --workers_only),
and a JSON-lines corpus is parsed in the workers too, so the main process only reads bytes and writes shards.

Workers are spawned (a fresh interpreter that imports this module, numpy and tiktoken, never torch or datasets),
so each costs ~60 MB and a few tenths of a second to start: a corpus smaller than LOCAL_BYTES is encoded in the main
process instead. A task is a tuple, so it crosses to a worker as plain bytes:
    ("pieces", split, [(text, ends_document), ...])   text of one split, cut by the main process
    ("jsonl", name, data, is_val)                     whole lines of a JSON-lines file, one document per non-blank
                                                      line ('text' field), is_val one bool per document
and its result is [(split, ids), ...] in the corpus's order, and whether any text was not whitespace.
"""

import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from nanogpt.errors import UserError

LOCAL_BYTES = 4 << 20  # a corpus that fits in the first 4 MB is encoded in the main process: spawning the workers
#                        (their imports and tokenizer) would take longer than encoding it


def bpe_encoder(enc, documents, dtype):
    """A function from [(text, ends_document)] to BPE token ids (a tiktoken Encoding's), with <|endoftext|> after
    each document."""
    eot = np.array([enc.eot_token], dtype=np.uint32)

    def encode(pieces):
        arrays = []
        for text, ends_document in pieces:
            # straight into a numpy buffer: no Python int per token.
            # No special tokens: a literal "<|endoftext|>" in the text is just text.
            arrays.append(enc.encode_to_numpy(text, disallowed_special=()))
            if ends_document and documents:
                arrays.append(eot)
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)

    return encode


def char_encoder(chars, dtype):
    """A function from [(text, ends_document)] to character ids; documents are simply concatenated."""
    points = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted, as CharTokenizer.from_text sorts them

    def encode(pieces):
        text = "".join(text for text, _ in pieces)
        return np.searchsorted(points, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)).astype(dtype)

    return encode


def make_encoder(spec):
    """The encode function a spec names: ("bpe", tiktoken Encoding, documents, dtype) or ("char", chars, dtype)."""
    if spec[0] == "bpe":
        return bpe_encoder(*spec[1:])
    return char_encoder(*spec[1:])


def jsonl_texts(name, data):
    """The 'text' of each non-blank line of JSON-lines data (a missing or null one is empty), as the Hugging Face
    json loader reads them."""
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{name} has a line that is not JSON ({e}): {line[:60]!r}") from None
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, (str, type(None))):
            raise UserError(f"{name} has a 'text' that is not a string: {line[:60]!r}")
        yield text or ""


def count_documents(data):
    """How many documents (non-blank lines) JSON-lines data holds."""
    return sum(1 for line in data.split(b"\n") if line.strip())


def run(encode, job):
    """A task's [(split, ids)] in order, and whether any of its text is not whitespace."""
    if job[0] == "pieces":
        _, split, pieces = job
        return [(split, encode(pieces))], any(text and not text.isspace() for text, _ in pieces)
    _, name, data, is_val = job
    runs, saw_text = [], False
    for text, val in zip(jsonl_texts(name, data), is_val):
        saw_text = saw_text or (bool(text) and not text.isspace())
        split = "val" if val else "train"
        if not runs or runs[-1][0] != split:
            runs.append((split, []))
        runs[-1][1].append((text, True))
    return [(split, encode(pieces)) for split, pieces in runs], saw_text


def has_text(job):
    """Whether a task holds text that is not whitespace, without encoding it (a resumed prepare skips its tasks)."""
    if job[0] == "pieces":
        return any(text and not text.isspace() for text, _ in job[2])
    return any(text and not text.isspace() for text in jsonl_texts(job[1], job[2]))


_encode = None  # a worker process's encode function, made once by start_worker


def start_worker(spec):
    global _encode
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it keeps the shards)
    # a worker outlives a killed main process (it holds its own task queue open): it leaves when the main one goes
    threading.Thread(target=leave_with, args=(multiprocessing.parent_process().sentinel,), daemon=True).start()
    _encode = make_encoder(spec)


def leave_with(parent):
    multiprocessing.connection.wait([parent])
    os._exit(1)


def run_in_worker(job):
    return run(_encode, job)


class Workers:
    """Runs tasks on `count` worker processes. A corpus of known size (total_bytes) up to LOCAL_BYTES runs at once
    in this process, and one of unknown size until its tasks hold LOCAL_BYTES. Output never depends on where a task
    ran."""

    def __init__(self, spec, count, total_bytes=None):
        self.spec, self.count, self.pool, self.encode = spec, count, None, None
        small = total_bytes is not None and total_bytes <= LOCAL_BYTES
        self.local_bytes = float("inf") if small else LOCAL_BYTES if total_bytes is None else -1
        self.nbytes = 0

    def submit(self, job, nbytes):
        """A future of run(job): its [(split, ids)] and whether it held text."""
        self.nbytes += nbytes
        if self.pool is None and self.nbytes > self.local_bytes:
            self.pool = ProcessPoolExecutor(self.count, multiprocessing.get_context("spawn"), start_worker,
                                            (self.spec,))
        if self.pool is not None:
            return self.pool.submit(run_in_worker, job)
        self.encode = self.encode or make_encoder(self.spec)
        done = Future()
        done.set_result(run(self.encode, job))
        return done

    def __enter__(self):
        return self

    def __exit__(self, *error):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
