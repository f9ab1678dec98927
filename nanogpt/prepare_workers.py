"""The prepare's encoding workers: processes that turn tasks of text into token ids.

prepare_corpus (datasets.py) reads a corpus in order and cuts it into tasks of about a megabyte; each task goes to
one of `workers` processes, which returns its token ids as compact arrays (the dataset's uint16/uint32), and the
main process writes them in order. Processes, not threads: tiktoken releases the GIL while it encodes, yet two
threads in one interpreter fell well short of twice one thread's work (benchmarks/prepare_scale.py --workers_only),
and a JSON-lines corpus is parsed in the workers too, so the main process only reads bytes and writes shards.

Each worker is a fresh interpreter that imports this module, numpy and tiktoken (never torch or datasets), so it
costs ~55 MB and a few tenths of a second to start: a corpus smaller than LOCAL_BYTES is encoded in the main
process instead. A task is a tuple of plain values:
    ("pieces", split, [(text, ends_document), ...])   text of one split, cut by the main process
    ("jsonl", name, data, is_val)                     whole lines of a JSON-lines file, one document per non-blank
                                                      line ('text' field), is_val one bool per document
and its result is [(split, ids), ...] in the corpus's order, and whether any text was not whitespace. They cross
the pipes as messages of a JSON header and raw bytes (write_message): no pickle, so nothing that arrives can run
code, and the token ids travel as the arrays' own bytes.
"""

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from nanogpt.errors import UserError

LOCAL_BYTES = 4 << 20  # a corpus that fits in the first 4 MB is encoded in the main process: starting the workers
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


def write_message(stream, header, payloads=()):
    """One message: the JSON header's length (8 bytes, little-endian), the header (with the payloads' sizes), then
    each payload's bytes."""
    payloads = [memoryview(p).cast("B") for p in payloads]
    raw = json.dumps(dict(header, sizes=[p.nbytes for p in payloads])).encode()
    stream.write(len(raw).to_bytes(8, "little"))
    stream.write(raw)
    for payload in payloads:
        stream.write(payload)
    stream.flush()


def read_message(stream):
    """(header, [payload bytes]) of the next message; EOFError where the stream ends before one is whole."""

    def exactly(n):
        data = stream.read(n)  # a buffered pipe reads until n bytes or the end
        if len(data) < n:
            raise EOFError
        return data

    header = json.loads(exactly(int.from_bytes(exactly(8), "little")))
    return header, [exactly(n) for n in header.pop("sizes")]


def spec_message(spec):
    """A make_encoder spec as a message. A BPE's ranks go as the tokens' bytes, their lengths and their ranks."""
    if spec[0] == "char":
        _, chars, dtype = spec
        return {"kind": "char", "chars": chars, "dtype": np.dtype(dtype).name}, []
    _, enc, documents, dtype = spec
    # tiktoken has no public accessors for these; its own pickling reads the same three attributes
    tokens, ranks = zip(*enc._mergeable_ranks.items())
    header = {"kind": "bpe", "name": enc.name, "pat_str": enc._pat_str, "special_tokens": enc._special_tokens,
              "documents": documents, "dtype": np.dtype(dtype).name}
    lengths = np.array([len(t) for t in tokens], dtype=np.uint32)
    return header, [b"".join(tokens), lengths, np.array(ranks, dtype=np.uint32)]


def spec_from_message(header, payloads):
    if header["kind"] == "char":
        return "char", header["chars"], np.dtype(header["dtype"])
    import tiktoken

    joined, lengths, ranks = payloads
    lengths = np.frombuffer(lengths, dtype=np.uint32).tolist()
    tokens = [joined[end - n:end] for end, n in zip(itertools.accumulate(lengths), lengths)]
    enc = tiktoken.Encoding(header["name"], pat_str=header["pat_str"], special_tokens=header["special_tokens"],
                            mergeable_ranks=dict(zip(tokens, np.frombuffer(ranks, dtype=np.uint32).tolist())))
    return "bpe", enc, header["documents"], np.dtype(header["dtype"])


def job_message(job):
    if job[0] == "pieces":
        _, split, pieces = job
        # surrogatepass: text from JSON may hold lone surrogates, and must arrive as it left
        return ({"kind": "pieces", "split": split, "ends": [bool(end) for _, end in pieces]},
                [text.encode("utf-8", "surrogatepass") for text, _ in pieces])
    _, name, data, is_val = job
    return {"kind": "jsonl", "name": name, "is_val": [bool(v) for v in is_val]}, [data]


def job_from_message(header, payloads):
    if header["kind"] == "pieces":
        texts = [p.decode("utf-8", "surrogatepass") for p in payloads]
        return "pieces", header["split"], list(zip(texts, header["ends"]))
    return "jsonl", header["name"], payloads[0], header["is_val"]


class Workers:
    """Runs tasks on `count` worker processes. A corpus of known size (total_bytes) up to LOCAL_BYTES runs at once
    in this process, and one of unknown size until its tasks hold LOCAL_BYTES. Output never depends on where a task
    ran.

    Each worker is `python -c WORKER_PROGRAM` with messages through its stdin and stdout: unlike multiprocessing's
    spawned processes, it never imports the caller's script (an unguarded script that prepares data would run again
    in each one, and the prepare hung), and it ends when its stdin does, so with a main process that was killed."""

    def __init__(self, spec, count, total_bytes=None):
        self.spec, self.count, self.processes, self.encode = spec, count, None, None
        small = total_bytes is not None and total_bytes <= LOCAL_BYTES
        self.local_bytes = float("inf") if small else LOCAL_BYTES if total_bytes is None else -1
        self.nbytes = 0

    def start(self):
        root = str(Path(__file__).resolve().parents[1])  # where this nanogpt is, should the caller's path differ
        self.processes = [subprocess.Popen([sys.executable, "-c", WORKER_PROGRAM, root], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE) for _ in range(self.count)]
        self.in_flight = [0] * self.count
        for process in self.processes:
            self.send(process, spec_message(self.spec))

    def send(self, process, message):
        try:
            write_message(process.stdin, *message)
        except OSError:  # the worker is gone: result() says so
            pass

    def submit(self, job, nbytes):
        """Start run(job) on the least busy worker; result() gives its [(split, ids)] and whether it held text.
        Results are taken in the order of submission."""
        self.nbytes += nbytes
        if self.processes is None and self.nbytes > self.local_bytes:
            self.start()
        if self.processes is None:
            self.encode = self.encode or make_encoder(self.spec)
            return "here", run(self.encode, job)
        worker = min(range(self.count), key=self.in_flight.__getitem__)
        self.send(self.processes[worker], job_message(job))
        self.in_flight[worker] += 1
        return "worker", worker

    def result(self, submitted):
        where, value = submitted
        if where == "here":
            return value
        try:
            header, payloads = read_message(self.processes[value].stdout)
        except (EOFError, OSError, ValueError):
            raise UserError("an encoding worker process ended unexpectedly (killed, or out of memory?): run the same "
                            "command again, the prepare resumes") from None
        self.in_flight[value] -= 1
        if not header["ok"]:
            raise (UserError if header["user_error"] else RuntimeError)(header["message"])
        dtype = np.dtype(header["dtype"])
        return ([(split, np.frombuffer(ids, dtype=dtype)) for split, ids in zip(header["splits"], payloads)],
                header["saw_text"])

    def __enter__(self):
        return self

    def __exit__(self, *error):
        for process in self.processes or []:
            process.stdin.close()  # the worker's end of input: it leaves
        for process in self.processes or []:
            if error[0] is not None:
                process.kill()  # tasks still in flight are not wanted
            process.wait()
            process.stdout.close()


# sys.argv[1]: the folder that holds this nanogpt package, tried after the worker's own path
WORKER_PROGRAM = ("import sys; sys.path.append(sys.argv[1]); from nanogpt.prepare_workers import serve; serve()")


def serve():
    """A worker's life: the encoder spec, then tasks, each answered with (True, result) or (False, error), until
    its input ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it keeps the shards)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the replies
    tasks = queue.Queue()

    def read():  # on its own thread, so the main process never waits to send while this one sends a reply
        try:
            while True:
                tasks.put(job_from_message(*read_message(sys.stdin.buffer)))
        except (EOFError, OSError):
            tasks.put(None)

    try:
        spec = spec_from_message(*read_message(sys.stdin.buffer))
    except (EOFError, OSError):
        return
    threading.Thread(target=read, daemon=True).start()
    encode = make_encoder(spec)
    dtype = np.dtype(spec[-1]).name
    while (job := tasks.get()) is not None:
        try:
            results, saw_text = run(encode, job)
            reply = ({"ok": True, "saw_text": saw_text, "dtype": dtype, "splits": [split for split, _ in results]},
                     [np.ascontiguousarray(ids, dtype=dtype) for _, ids in results])
        except Exception as e:  # noqa: BLE001 (any error goes back to the main process, which raises it)
            user_error = isinstance(e, UserError)
            reply = {"ok": False, "user_error": user_error, "message": str(e) if user_error
                     else f"encoding worker: {e!r}"}, []
        try:
            write_message(replies, *reply)
        except OSError:  # the main process is gone
            return
