"""Preparing a multi-GB corpus, and reading it back: `nanogpt prepare` (streamed, shards) against upstream nanoGPT's
approach (datasets.map over a local dataset into int64 lists, then the write pass), and the new loader against
today's on a cold page cache.

    flock /tmp/nanogpt-bench.lock python benchmarks/prepare_scale.py [--gb=3.05] [--workers=2] [--work=/tmp/...]

1. corpus: --gb of jsonl documents assembled, with a fixed seed, from the text files on this machine (Python
   sources, docs, headers; the same machine gives the same corpus), ~100 MB per file.
2. ours: `nanogpt prepare --input=CORPUS` with GPT-2 BPE and --workers; peak resident memory of the whole process tree
   (the sum of every process's RSS, sampled every 0.05 s, new processes found every 0.5 s), CPU time, wall time,
   disk used.
3. loader: a stand-in consumer takes rows of 1024 tokens (batches of 16) at 0.5M tokens/s for --loader_seconds;
   every token file is evicted from the page cache first (posix_fadvise DONTNEED). The new loader (data.Batches,
   read ahead on a thread) reads our ≥100 shards; today's (a memmap of train.bin indexed on the main thread, as
   nanoGPT's get_batch) reads the same tokens copied into one train.bin. The figure is the time spent waiting.
4. workers: the first --subset_mb of the corpus prepared with 1 and with 2 worker processes: wall time (the whole
   command, and the tokenizing it reports) and, since the machine is shared, CPU time: the busiest process's (see
   workers_stage), beside this machine's ceiling, tiktoken alone in 2 processes against 1. `--workers_only` runs
   this stage alone (3 rounds; best on an idle machine) and makes only the corpus's first file for it.
5. SIGKILL: the subset prepared again, killed once half its shards are written, then run again: every file must be
   byte-identical to the uninterrupted run's, with as many documents as the subset has lines.
6. upstream's approach on the same corpus (last: the longest): load_dataset('json') (an Arrow copy in the cache), train_test_split,
   .map(num_proc=--workers) into int64 id lists (cached on disk), then nanoGPT's write pass into train.bin/val.bin.
Figures go to benchmarks/results/prepare_scale.json after every stage; the corpus and datasets are deleted at the end
(--keep keeps them). `--corpus_only` makes the corpus and stops, so it can be made before taking the bench lock.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a clone without `pip install`

from results import write_results  # noqa: E402 (this file's folder is on sys.path)

TEXT_ROOTS = ["/usr/share/doc", "/usr/include", "/usr/lib/python3", "/usr/lib/python3.11",
              str(Path(np.__file__).parents[1])]  # site-packages of this Python: numpy, torch, datasets sources
TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".h", ".c", ".html", ".pyi", ".cfg", ".toml"}
POOL_BYTES = 300_000_000  # text read from the machine; documents are slices of it
FILE_BYTES = 100_000_000
CONSUMER_TOKENS_PER_S = 500_000  # what one H100 takes training GPT-2 124M
ROW, ROWS = 1024, 16


def make_corpus(folder, nbytes):
    """Documents of 1-30 KB cut at line starts from the machine's text files, with seed 0, as jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    pool, size = [], 0
    for root in TEXT_ROOTS:
        for path in sorted(Path(root).rglob("*")) if Path(root).is_dir() else []:
            if path.suffix in TEXT_SUFFIXES and path.is_file() and not path.is_symlink() and size < POOL_BYTES:
                try:
                    text = path.read_bytes().decode("utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                if len(text) > 1000:
                    pool.append(text)
                    size += len(text)
    rng = np.random.default_rng(0)
    written, index, lines = 0, 0, 0
    while written < nbytes:
        with open(folder / f"part-{index:04d}.jsonl", "w") as f:
            part = 0
            while part < FILE_BYTES and written + part < nbytes:
                text = pool[rng.integers(len(pool))]
                start = text.find("\n", int(rng.integers(len(text)))) + 1
                doc = text[start:start + int(rng.integers(1000, 30000))]
                if not doc.strip():
                    continue
                line = json.dumps({"text": doc}) + "\n"
                f.write(line)
                part += len(line.encode())
                lines += 1
        written += part
        index += 1
    return {"corpus_bytes": written, "corpus_files": index, "documents": lines,
            "pool_mb_from_this_machine": round(size / 1e6)}


def descendants(pid):
    """The ids of a process's descendants."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def tree_rss(pid, others):
    """Resident bytes of a process and the given descendants."""
    total = 0
    for p in [pid] + others:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError):
            pass
    return total


def process_cpu(pid):
    """CPU seconds a process has used so far (all its threads), or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


def thread_cpu(pid):
    """{thread id: CPU seconds} of a process's threads."""
    out = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            continue
    return out


def measured(command, kill_when=None):
    """Run a command; its wall time, CPU time (descendants included), peak tree RSS, per-thread CPU of its main
    process, CPU of each child process (sampled every 0.05 s) and its output."""
    before = os.times()
    start = time.time()
    # output to files, not pipes: a child's progress bars fill an unread pipe and block it
    out_file, err_file = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    child = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=out_file,
                             stderr=err_file, text=True)
    peak, threads, processes, tick = 0, {}, {}, 0
    while child.poll() is None:
        # a scan of /proc costs ~10 ms of a core the measured command could use: every 0.5 s, new processes
        others = sorted(set(descendants(child.pid)) | set(processes)) if tick % 10 == 0 else list(processes)
        tick += 1
        peak = max(peak, tree_rss(child.pid, others))
        threads.update(thread_cpu(child.pid))
        for p in others:
            cpu = process_cpu(p)
            if cpu is not None:
                processes[p] = cpu
        if kill_when is not None and kill_when():
            child.send_signal(signal.SIGKILL)
        time.sleep(0.05)
    after = os.times()
    err_file.seek(0)
    err = err_file.read()
    out_file.seek(0)
    if child.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{err[-3000:]}")
    main_cpu = threads.pop(child.pid, 0.0)
    cpu_s = after.children_user + after.children_system - before.children_user - before.children_system
    return {"wall_s": round(time.time() - start, 1), "peak_rss_mb": round(peak / 2**20), "cpu_s": round(cpu_s, 1),
            "main_thread_cpu_s": round(main_cpu, 1), "other_threads_cpu_s": round(sum(threads.values()), 1),
            "main_process_cpu_s": round(main_cpu + sum(threads.values()), 2),
            "child_processes_cpu_s": sorted((round(c, 2) for c in processes.values()), reverse=True),
            "returncode": child.returncode, "stdout": out_file.read()}


def du(*paths):
    return sum(p.stat().st_size for path in paths if path.exists() for p in Path(path).rglob("*") if p.is_file())


def ours(corpus, data_dir, name, workers, shard_tokens, kill_when=None):
    """`nanogpt prepare` measured, with what it says of its tokenizing (from its start to its last task written: no
    interpreter start, imports or commit): the time, its main process's CPU time and the workers'."""
    command = [sys.executable, "-m", "nanogpt.cli", "prepare", f"--input={corpus}", f"--name={name}",
               f"--data_dir={data_dir}", f"--workers={workers}", f"--shard_tokens={shard_tokens}"]
    run = measured(command, kill_when)
    said = re.search(r"tokenized ([\d,.]+) MB in ([\d.]+) s .*CPU time: ([\d.]+) s in this process, ([\d.]+) s in "
                     r"the workers", run.pop("stdout"))
    if said:
        run["tokenized_mb"], run["tokenizing_s"] = float(said[1].replace(",", "")), float(said[2])
        run["tokenizing_main_cpu_s"], run["workers_cpu_s"] = float(said[3]), float(said[4])
    return run


def upstream_prepare(corpus, out, num_proc):
    """nanoGPT's data/openwebtext/prepare.py, on local jsonl files (run in a child process by stage 3)."""
    import datasets

    from nanogpt.bpe import gpt2_encoding

    enc = gpt2_encoding()
    ds = datasets.load_dataset("json", data_files=sorted(str(p) for p in Path(corpus).glob("*.jsonl")),
                               num_proc=num_proc)
    split = ds["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    split["val"] = split.pop("test")

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    tokenized = split.map(process, remove_columns=["text"], desc="tokenizing the splits", num_proc=num_proc)
    for name, dset in tokenized.items():
        arr_len = np.sum(dset["len"], dtype=np.uint64)
        arr = np.memmap(Path(out) / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(arr_len,))
        total_batches = min(1024, len(dset))  # nanoGPT: 1024 (its val split has ~4,000 documents)
        idx = 0
        for batch_idx in range(total_batches):
            batch = dset.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
            arr_batch = np.concatenate(batch["ids"])
            arr[idx:idx + len(arr_batch)] = arr_batch
            idx += len(arr_batch)
        arr.flush()


SMALL_SHARDS = 1_000_000  # tokens per shard for the subset stages: enough shards to kill a prepare half-way


def make_subset(corpus, subset, mb):
    """The first ~mb MB of the corpus's first file, for the stages that run the prepare several times."""
    shutil.rmtree(subset, ignore_errors=True)
    subset.mkdir(parents=True)
    lines = 0
    with open(sorted(corpus.glob("*.jsonl"))[0]) as src, open(subset / "part.jsonl", "w") as dst:
        for line in src:
            if dst.tell() > mb * 1e6:
                break
            dst.write(line)
            lines += 1
    return subset, lines


def workers_stage(subset, data, rounds=2):
    """The same prepare with 1 and with 2 encoding workers, alternating (so a busy moment on a shared machine hits
    both): wall times, and every process's CPU time.

    In wall time: the whole command, and the tokenizing alone (the time the prepare reports from its start to its
    last task written: no interpreter start, imports or commit). Only an idle machine's are meaningful.
    In CPU time, while tokenizing: the wall time it would take with a core per process and no waiting, i.e. the
    CPU time of its busiest process (the main one, which reads and writes, or a worker, which parses and encodes,
    its start included), 1 worker's against 2's. The prepare reports its main process's and its workers' CPU time
    (exact: the workers are reaped); the workers' is shared between them as /proc sampled it. Every process's CPU
    counts: an uneven split or a main process too slow for the workers would show. CPU time also grows when both
    cores are busy (caches, memory bandwidth, a hypervisor's sibling threads): `ceiling` is what tiktoken alone in
    two processes reaches here against one, on the same documents, with no reading, parsing or writing."""
    scaling = {}
    for workers in (1, 2) * rounds:
        shutil.rmtree(data, ignore_errors=True)
        r = ours(subset, data, "sub", workers, SMALL_SHARDS)
        sampled = r["child_processes_cpu_s"][:workers]  # the workers, the busiest first (a resource tracker: ~0)
        r["each_worker_cpu_s"] = [round(r["workers_cpu_s"] * c / max(sum(sampled), 1e-9), 2) for c in sampled]
        r["busiest_process_cpu_s"] = max([r["tokenizing_main_cpu_s"]] + r["each_worker_cpu_s"])
        scaling.setdefault(workers, []).append(r)
    mb = (subset / "part.jsonl").stat().st_size / 1e6
    summary = {}
    for workers, runs in scaling.items():
        median = lambda key: round(float(np.median([r[key] for r in runs])), 2)  # noqa: E731
        summary[f"{workers}_workers"] = {
            "wall_s": median("wall_s"), "runs_wall_s": [r["wall_s"] for r in runs],
            "tokenizing_s": median("tokenizing_s"), "runs_tokenizing_s": [r["tokenizing_s"] for r in runs],
            "tokenizing_mb_per_s": round(mb / median("tokenizing_s"), 1),
            "main_process_cpu_s": median("tokenizing_main_cpu_s"), "workers_cpu_s": median("workers_cpu_s"),
            "each_worker_cpu_s": [float(np.median([r["each_worker_cpu_s"][i] for r in runs]))
                                  for i in range(workers)],
            "busiest_process_cpu_s": median("busiest_process_cpu_s"),
            "runs_busiest_process_cpu_s": [r["busiest_process_cpu_s"] for r in runs],
            "whole_command_cpu_s": median("cpu_s"), "peak_rss_mb": median("peak_rss_mb")}
    one, two = summary["1_workers"], summary["2_workers"]
    summary["speedup_wall"] = round(one["wall_s"] / two["wall_s"], 2)
    summary["speedup_tokenizing_wall"] = round(one["tokenizing_s"] / two["tokenizing_s"], 2)
    summary["speedup_in_cpu_time"] = round(one["busiest_process_cpu_s"] / two["busiest_process_cpu_s"], 2)
    summary["ceiling"] = encode_ceiling(subset / "part.jsonl", rounds)
    summary["subset_mb"] = round(mb)
    summary["load_average_at_end"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(data, ignore_errors=True)
    return summary


def print_workers(summary):
    for workers in (1, 2):
        r = summary[f"{workers}_workers"]
        each = ", ".join(f"{c:.1f}" for c in r["each_worker_cpu_s"])
        print(f"{workers} worker{'s' * (workers > 1)}: {r['wall_s']:.1f} s wall, tokenizing {r['tokenizing_s']:.1f} s "
              f"({r['tokenizing_mb_per_s']} MB/s); CPU while tokenizing: busiest process "
              f"{r['busiest_process_cpu_s']:.1f} s (main {r['main_process_cpu_s']:.1f} s, workers {each} s); peak "
              f"memory {r['peak_rss_mb']} MB")
    c = summary["ceiling"]
    print(f"2 workers against 1 ({summary['subset_mb']} MB): {summary['speedup_tokenizing_wall']}x tokenizing wall "
          f"time ({summary['speedup_wall']}x the whole command's), {summary['speedup_in_cpu_time']}x in CPU time; "
          f"this machine's ceiling (tiktoken alone in 1 and 2 processes): {c['speedup_wall']}x wall, "
          f"{c['speedup_in_cpu_time']}x CPU time; load average {summary['load_average_at_end']}")


def ceiling_worker(path, k, n, barrier, results):
    """Encode every n-th document of a jsonl file from the k-th, parsed beforehand; its wall and CPU seconds."""
    from nanogpt.bpe import gpt2_encoding

    enc = gpt2_encoding()
    with open(path) as f:
        texts = [json.loads(line)["text"] for i, line in enumerate(f) if i % n == k]
    barrier.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        enc.encode_to_numpy(text, disallowed_special=())
    results.put((time.perf_counter() - wall, time.process_time() - cpu))


def encode_ceiling(path, rounds):
    """This machine's ceiling for 2 workers against 1: tiktoken alone in 1 and 2 processes on the same documents
    (split by turns), started together; speedups in wall time and in CPU time (the busiest process's), medians."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    runs = {1: [], 2: []}
    for n in (1, 2) * rounds:
        barrier, results = context.Barrier(n), context.Queue()
        processes = [context.Process(target=ceiling_worker, args=(str(path), k, n, barrier, results))
                     for k in range(n)]
        for p in processes:
            p.start()
        done = [results.get() for _ in processes]
        for p in processes:
            p.join()
        runs[n].append((max(w for w, _ in done), max(c for _, c in done)))
    wall = {n: float(np.median([w for w, _ in r])) for n, r in runs.items()}
    cpu = {n: float(np.median([c for _, c in r])) for n, r in runs.items()}
    return {"speedup_wall": round(wall[1] / wall[2], 2), "speedup_in_cpu_time": round(cpu[1] / cpu[2], 2),
            "wall_s": {f"{n}_processes": round(w, 2) for n, w in wall.items()},
            "busiest_process_cpu_s": {f"{n}_processes": round(c, 2) for n, c in cpu.items()}}


def evict(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def consume(next_batch, seconds):
    """A consumer of ROWS x ROW tokens per batch at CONSUMER_TOKENS_PER_S: the share of its time spent waiting."""
    step_s = ROWS * ROW / CONSUMER_TOKENS_PER_S
    waits, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        next_batch(len(waits))
        waits.append(time.perf_counter() - t)
        time.sleep(step_s)  # the device's work on the batch
    total = time.perf_counter() - start
    return {"batches": len(waits), "waited_s": round(sum(waits), 3),
            "waiting_share_pct": round(100 * sum(waits) / total, 2),
            "first_batch_wait_s": round(waits[0], 3), "longest_wait_s": round(max(waits), 3),
            "note": "sleep stands in for compute; waiting share = time in next_batch / consumer wall time"}


def loader_stage(shards_folder, train_bin, seconds):
    import torch

    from nanogpt.data import Batches, Dataset, batch_offsets

    torch.set_num_threads(1)
    ds = Dataset(shards_folder)
    evict([p for p, _ in ds.shards["train"]])
    batches = Batches(ds, 1337, ROWS, 1, 0, 1, ROW, "cpu")  # reads ahead from here, as while a model is built
    new = consume(lambda step: batches.get(step, 0), seconds)
    batches.close()
    new["shards"] = len(ds.shards["train"])
    evict([train_bin])
    n = train_bin.stat().st_size // 2

    def today(step):  # nanoGPT's get_batch: a fresh memmap, rows gathered on the training thread
        data = np.memmap(train_bin, dtype=np.uint16, mode="r")
        ix = batch_offsets(1337, 0, step, ROWS, n, ROW)
        x = torch.from_numpy(np.stack([data[i:i + ROW].astype(np.int64) for i in ix]))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + ROW].astype(np.int64) for i in ix]))
        return x, y

    old = consume(today, seconds)
    old["files"] = 1
    return {"new_loader": new, "todays_loader": old}


def file_digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())
            if p.is_file()}


# the full corpora, for the extrapolated costs: GPT-2 train tokens (nanoGPT's train.bin for OpenWebText; the
# sample's name for FineWeb-Edu) and their text in GB (as the datasets' cards give it)
FULL_CORPORA = {"openwebtext": (9.0e9, 40.0), "fineweb_edu sample-10BT": (10.0e9, 45.0)}


def cost_table(figures):
    """The docs' table of what each web recipe costs: measured on the proxy corpus, extrapolated by bytes of text
    (time) and tokens (disk); memory is bounded, so the proxy's peak is the recipe's."""
    ours, up = figures["ours"], figures.get("upstream")
    up = up if up and up.get("finished", True) else None  # an unfinished run has only lower bounds
    gb = figures["corpus"]["corpus_bytes"] / 1e9
    lines = ["| | proxy (measured) | openwebtext (extrapolated) | fineweb_edu sample-10BT (extrapolated) |",
             "|---|---|---|---|",
             f"| text | {gb:.2f} GB ({ours['tokens'] / 1e9:.2f}B tokens) | "
             + " | ".join(f"~{text:.0f} GB (~{tokens / 1e9:.0f}B tokens)" for tokens, text in FULL_CORPORA.values())
             + " |"]
    for label, run in (("nanogpt prepare", ours), ("upstream's approach", up)):
        if run is None:
            continue
        cpu_h = [run["cpu_s"] / gb * text / 3600 for _, text in FULL_CORPORA.values()]
        disk = [run["disk_mb"] / 1e3 / run["tokens"] * tokens for tokens, _ in FULL_CORPORA.values()]
        lines.append(f"| {label}: CPU time | {run['cpu_s'] / 60:.0f} min | "
                     + " | ".join(f"~{h:.0f} CPU-hours" for h in cpu_h) + " |")
        lines.append(f"| {label}: peak memory | {run['peak_rss_mb'] / 1e3:.2f} GB | "
                     + " | ".join("the same (bounded)" if run is ours else "not extrapolated" for _ in cpu_h)
                     + " |")
        lines.append(f"| {label}: disk | {run['disk_mb'] / 1e3:.1f} GB | "
                     + " | ".join(f"~{d:.0f} GB" for d in disk) + " |")
    return "\n".join(lines)


def loader_only(corpus, work, seconds):
    """The loader stage alone on a smaller corpus cut into ≥100 shards (prepared first, not measured)."""
    shutil.rmtree(work, ignore_errors=True)
    try:
        ours(corpus, work, "shards", 2, 200_000)
        meta = json.loads((work / "shards" / "meta.json").read_text())
        single = work / "train.bin"
        with open(single, "wb") as f:
            for shard in meta["shards"]["train"]:
                f.write((work / "shards" / shard["file"]).read_bytes())
        result = dict(loader_stage(work / "shards", single, seconds), corpus_mb=round(du(corpus) / 1e6))
        print(json.dumps(result))
        write_results("prepare_scale_loader", result, notes="machine shared with other jobs on 2 cores")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=3.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard_tokens", type=int, default=10_000_000)
    parser.add_argument("--subset_mb", type=int, default=50)
    parser.add_argument("--loader_seconds", type=float, default=15.0)
    parser.add_argument("--work", default="/tmp/nanogpt-prepare-scale")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--notes", default="machine shared with other jobs on 2 cores: wall times are not an idle "
                        "machine's", help="how the machine was loaded, stored with the results")
    parser.add_argument("--corpus_only", action="store_true", help="make the corpus and stop (no measurement)")
    parser.add_argument("--doc_table", action="store_true", help="print the docs' cost table from the results")
    parser.add_argument("--workers_only", action="store_true",
                        help="only the 1-vs-2-workers stage, on the corpus's first --subset_mb MB (best on an idle "
                             "machine); results in prepare_scale_workers")
    parser.add_argument("--loader_only", help="a folder of jsonl: prepare it into ≥100 shards, run the loader stage")
    parser.add_argument("--upstream_child", nargs=3, help=argparse.SUPPRESS)  # corpus, out, num_proc
    args = parser.parse_args()
    if args.doc_table:
        from results import read_results

        return print(cost_table(read_results("prepare_scale")["figures"]))
    if args.loader_only:
        return loader_only(Path(args.loader_only), Path(args.work) / "loader", args.loader_seconds)
    if args.workers_only:
        work = Path(args.work)
        corpus = work / "corpus"
        if not corpus.is_dir():  # the full corpus's first file starts with the same bytes (the same seed)
            corpus = work / "workers-corpus"
            shutil.rmtree(corpus, ignore_errors=True)
            make_corpus(corpus, int((args.subset_mb + 1) * 1e6))
        subset, _ = make_subset(corpus, work / "workers-subset", args.subset_mb)
        summary = workers_stage(subset, work / "workers-data", rounds=3)
        print_workers(summary)
        print(json.dumps(summary))
        if not args.keep:
            shutil.rmtree(subset, ignore_errors=True)
            shutil.rmtree(work / "workers-corpus", ignore_errors=True)
        return write_results("prepare_scale_workers", summary, notes=args.notes)
    if args.upstream_child:
        corpus, out, num_proc = args.upstream_child
        return upstream_prepare(corpus, out, int(num_proc))
    work = Path(args.work)
    corpus, data = work / "corpus", work / "data"
    figures = {"load_average_at_start": os.getloadavg()[0]}
    notes = (f"{args.notes}; memory is the whole process tree's summed RSS; throughput compared in CPU time and "
             "in wall time")

    def save(stage, result):
        figures[stage] = result
        print(f"{stage}: {json.dumps(result)}", flush=True)
        write_results("prepare_scale", figures, notes=notes)

    made = work / "corpus.json"  # a corpus made by an earlier --corpus_only run with the same --gb is reused
    if not (made.is_file() and json.loads(made.read_text())["gb"] == args.gb):
        shutil.rmtree(work, ignore_errors=True)
        t = time.time()
        made_now = dict(make_corpus(corpus, int(args.gb * 1e9)), seconds=round(time.time() - t), gb=args.gb)
        made.write_text(json.dumps(made_now))
    if args.corpus_only:
        return
    shutil.rmtree(data, ignore_errors=True)
    try:
        save("corpus", json.loads(made.read_text()))
        run = ours(corpus, data, "ours", args.workers, args.shard_tokens)
        meta = json.loads((data / "ours" / "meta.json").read_text())
        save("ours", dict(run, disk_mb=round(du(data / "ours") / 1e6), workers=args.workers,
                          shards=len(meta["shards"]["train"]),
                          tokens=sum(s["tokens"] for split in meta["shards"].values() for s in split),
                          documents=sum(s["documents"] for split in meta["shards"].values() for s in split)))
        single = work / "train.bin"  # today's layout: the same tokens in one file
        with open(single, "wb") as f:
            for shard in meta["shards"]["train"]:
                f.write((data / "ours" / shard["file"]).read_bytes())
        save("loader", loader_stage(data / "ours", single, args.loader_seconds))
        single.unlink()
        shutil.rmtree(data / "ours", ignore_errors=True)

        subset, lines = make_subset(corpus, work / "subset", args.subset_mb)
        save("workers", workers_stage(subset, data))

        ours(subset, data, "sub", 2, SMALL_SHARDS)  # the uninterrupted run the killed one must match
        reference = file_digests(data / "sub")
        shutil.rmtree(data, ignore_errors=True)
        n_shards = len([name for name in reference if name.endswith(".bin")])
        state = data / "killed" / ".partial" / "state.json"

        def half_way():
            try:
                return state.read_text().count('"file"') >= n_shards // 2
            except OSError:
                return False

        killed = ours(subset, data, "killed", 2, SMALL_SHARDS, kill_when=half_way)
        finished_before_kill = json.loads(state.read_text())
        resumed = ours(subset, data, "killed", 2, SMALL_SHARDS)
        again = file_digests(data / "killed")
        meta = json.loads((data / "killed" / "meta.json").read_text())
        documents = sum(s["documents"] for split in meta["shards"].values() for s in split)
        save("sigkill", {"killed_returncode": killed["returncode"],
                         "shards_finished_at_kill": sum(len(s["shards"]) for s in
                                                        finished_before_kill["splits"].values()),
                         "shards_total": n_shards, "byte_identical": again == reference,
                         "files_compared": len(reference), "documents": documents, "subset_lines": lines,
                         "no_missing_or_duplicate_document": documents == lines,
                         "resumed_wall_s": resumed["wall_s"]})
        shutil.rmtree(data, ignore_errors=True)

        cache, up = work / "hf_cache", work / "upstream"
        up.mkdir()
        os.environ["HF_DATASETS_CACHE"] = str(cache)
        run = measured([sys.executable, __file__, "--upstream_child", str(corpus), str(up), str(args.workers)])
        run.pop("stdout")
        save("upstream", dict(run, disk_mb=round(du(cache, up) / 1e6), cache_mb=round(du(cache) / 1e6),
                              tokens=du(up) // 2, num_proc=args.workers))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
