"""Our recipe against nanochat's, at equal wall time, on text neither was tuned on: val bits per byte.

    python benchmarks/peer.py [--corpus=/usr/lib/python3.11] [--minutes=6] [--seeds=3] [--rounds=2]
                              [--systems=ours,nanochat,nanochat_default] [--png=peer.png]
                              [--nanochat=../shared/reference/nanochat] [--nanochat_deps=DIR] [--ours=--key=value ...]

1. The corpus: every file under --corpus matching --pattern (default: the Python standard library's *.py), without
   tests (a folder named test/tests/idle_test, a file test_*.py or *_test.py), each file one document; --val_fraction
   of the documents, drawn with --split_seed, are held out. Both systems see the same train and val documents.
2. A BPE of --vocab_size tokens for each system, trained by each on the train documents only: ours with
   `nanogpt prepare --tokenizer=bpe`, nanochat's with its scripts/tok_train.py (the documents written as its parquet
   shards, the last shard val, as its loader expects).
3. Runs, each a fresh process timed from its start (start-up and compilation included), at the same shape: --n_layer
   layers of --n_embd, sequence --block_size, --tokens_per_step tokens per step, float32, 2 threads.
   - ours: config/train_code_bpe_cpu.py's recipe at that shape (--ours adds overrides);
   - nanochat: scripts/base_train.py from a scratch copy of --nanochat, run as it is, with its reference learning
     rates: its batch rule multiplies every learning rate by sqrt(tokens_per_step / 2**19) (0.088 at 4096 tokens),
     which is undone by passing each default rate divided by that factor;
   - nanochat_default: the same with its default rates (the batch rule applied).
   nanochat compiles its model (torch.compile); each of its runs gets an inductor cache of its own, so each compiles
   from cold, as a first run does.
   Each system's number of steps is set so that its run ends within the budget: a short calibration run of each
   measures its start-up, step and evaluation times first. Runs alternate: in each round, every seed runs each
   system in turn, the order reversed every other round. --clock=cpu is for a machine busy with other work: each
   run gets 1 thread, the systems of a round start together, and every time (budget, calibration, curves) is the
   CPU time of the run's processes (compile workers included) instead of wall time.
4. One evaluator scores both: after each run (outside its time), its last checkpoint is loaded with its own system's
   code in a fresh process and scored on every held-out document, each tokenised by that system's tokenizer and read
   after that system's document-start token (ours <|endoftext|>, nanochat's BOS), in windows of --block_size tokens
   (consecutive, the last one slid back to a full context), every token scored once: summed nats / (ln 2 x the
   documents' UTF-8 bytes). That is the val bpb at equal time; a run whose process ended after --minutes is flagged.
   It also scores every window starting with the document-start token (block_size - 1 tokens of context at most),
   the rows a system that trains only on document-aligned rows (nanochat) has seen: printed beside it.
   --score_fraction < 1 scores only the first of the held-out documents by path (faster on a busy machine).
5. Prints each run and, per system, the median and spread (max - min) over seeds and rounds of that val bpb; writes
   the curves as a PNG (lines: each system's own periodic evaluation, which is not comparable across systems; stars:
   the common evaluator at each run's end) and the figures with benchmarks/results.py.

nanochat's requirements beyond ours (rustbpe, wandb, psutil, tiktoken, pyarrow) must import in this Python, or from
a folder given as --nanochat_deps (e.g. made with `pip install --target=DIR rustbpe wandb psutil
opentelemetry-api --no-deps`); where they do not, or the checkout is missing, the benchmark says so and exits 0.
During training each system also evaluates with its own code (nanochat over rows that start at a document start,
ours over windows drawn anywhere in the val split); those figures disagree by ~14% for the same untrained model, so
they only draw the curves.
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import run_jobs  # noqa: E402 (one after the other, or all at once under the CPU clock)
from results import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NANOCHAT = REPO.parent / "shared" / "reference" / "nanochat"  # the default --nanochat
NANOCHAT_NEEDS = ("rustbpe", "wandb", "psutil", "tiktoken", "pyarrow", "filelock", "jinja2", "yaml", "requests")
# nanochat's reference batch (tokens per step) and its default learning rates (scripts/base_train.py's --*-lr)
NANOCHAT_B_REF = 2**19
NANOCHAT_LRS = {"embedding-lr": 0.3, "unembedding-lr": 0.008, "matrix-lr": 0.02, "scalar-lr": 0.5}
TEST_PATH = re.compile(r"(^|/)(tests?|idle_test)/|(^|/)test_[^/]*$|_test\.py$")
OURS_EVAL = re.compile(r"^step (\d+): train loss \S+, val loss ([\d.]+)")
OURS_STEP = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")
NANOCHAT_EVAL = re.compile(r"^Step (\d+) \| Validation bpb: ([\d.]+)")
NANOCHAT_STEP = re.compile(r"^step (\d+)/\d+ .*\| dt: ([\d.]+)ms")
SYSTEMS = ("ours", "nanochat", "nanochat_default")


def corpus_files(root, pattern):
    """The corpus's documents: files under root matching one of the comma-separated globs, tests left out."""
    root = Path(root)
    globs = pattern.split(",")
    files = sorted(p for p in root.rglob("*") if p.is_file() and any(p.match(g) for g in globs)
                   and not TEST_PATH.search(p.relative_to(root).as_posix()) and "__pycache__" not in p.parts)
    texts = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and "\0" not in text:
            texts.append((path.relative_to(root).as_posix(), text))
    return texts


def split_documents(docs, val_fraction, seed):
    """(train, val) documents: val_fraction of them drawn with seed."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(docs) * val_fraction))
    val = set(order[:n_val])
    return [d for i, d in enumerate(docs) if i not in val], [d for i, d in enumerate(docs) if i in val]


def env_for(threads, extra_path=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), NANOCHAT_DTYPE="float32")
    path = [str(REPO)] + ([extra_path] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(path + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def prepare_ours(work, train, val, vocab_size, log):
    """Our dataset: the documents as files (val ones last, so `--val_split=tail` holds out exactly them), BPE-encoded
    by `nanogpt prepare`. Returns (data_dir, dataset name, val tokens per UTF-8 byte)."""
    done = work / "ours-prepared.json"
    if done.is_file():  # a kept --work folder: the same corpus and tokenizer as last time
        data, val_tokens, val_bytes = json.loads(done.read_text())
        log(f"ours: reusing the dataset in {data}, {val_bytes / val_tokens:.3f} bytes/token (val)")
        return Path(data), "peer", val_tokens / val_bytes
    folder = work / "corpus"
    for split, docs in (("a-train", train), ("b-val", val)):
        for i, (_, text) in enumerate(docs):
            path = folder / split / f"{i:05d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    # prepare holds out n - int(n·(1 - f)) documents: half a document below len(val)/n makes that exactly len(val)
    fraction = (len(val) - 0.5) / (len(train) + len(val))
    data = work / "data"
    out = subprocess.run([sys.executable, "-m", "nanogpt.cli", "prepare", f"--input={folder}", "--name=peer",
                          "--pattern=*.txt", "--tokenizer=bpe", f"--vocab_size={vocab_size}", "--val_split=tail",
                          f"--val_fraction={fraction}", f"--data_dir={data}"],
                         cwd=REPO, env=env_for(2), capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"nanogpt prepare failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    m = re.search(r"train has ([\d,]+) tokens, val has ([\d,]+)", out.stdout + out.stderr)
    val_tokens = int(m.group(2).replace(",", ""))
    val_bytes = sum(len(text.encode()) for _, text in val)
    log(f"ours: BPE of {vocab_size}, train {m.group(1)} tokens, val {val_tokens:,} tokens, "
        f"{val_bytes / val_tokens:.3f} bytes/token (val, <|endoftext|> counted)")
    done.write_text(json.dumps([str(data), val_tokens, val_bytes]))
    return data, "peer", val_tokens / val_bytes


def nanochat_missing(checkout, deps):
    """Why nanochat cannot run here, or None."""
    if not (checkout / "scripts" / "base_train.py").is_file():
        return f"no nanochat checkout at {checkout} (pass --nanochat=DIR)"
    probe = subprocess.run([sys.executable, "-c", f"import {', '.join(NANOCHAT_NEEDS)}"], env=env_for(2, deps),
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (f"nanochat's requirements do not import here ({last}): pip install rustbpe wandb psutil tiktoken, "
                "or pass --nanochat_deps=DIR holding them")
    return None


def prepare_nanochat(work, checkout, train, val, vocab_size, deps, log):
    """A scratch copy of nanochat, the documents as its parquet shards (train, then val last) and its tokenizer
    trained by its own script. Returns (copy, its base dir)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy, base = work / "nanochat", work / "nanochat-base"
    if (base / "tokenizer").is_dir() and (copy / "scripts" / "base_train.py").is_file():
        log(f"nanochat: reusing its copy and tokenizer in {work}")
        return copy, base
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    shards = base / "base_data_climbmix"
    shards.mkdir(parents=True)
    for i, docs in enumerate((train, val)):
        pq.write_table(pa.table({"text": [text for _, text in docs]}), shards / f"shard_{i:05d}.parquet",
                       row_group_size=64)
    env = dict(env_for(2, deps), NANOCHAT_BASE_DIR=str(base))
    out = subprocess.run([sys.executable, "-m", "scripts.tok_train", f"--vocab-size={vocab_size}"], cwd=copy, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"nanochat's tok_train failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    log(f"nanochat: BPE of {vocab_size} trained by its scripts/tok_train.py")
    return copy, base


def ours_command(args, data, dataset, steps, seed, out, evals):
    evals = max(1, steps // evals)
    batch = args.tokens_per_step // args.block_size
    return [sys.executable, "train.py", "config/train_code_bpe_cpu.py", f"--data_dir={data}", f"--dataset={dataset}",
            f"--n_layer={args.n_layer}", f"--n_embd={args.n_embd}", f"--block_size={args.block_size}",
            f"--batch_size={batch}", "--gradient_accumulation_steps=1", f"--max_iters={steps}",
            f"--lr_decay_iters={steps}", f"--eval_interval={evals}", f"--eval_iters={args.eval_tokens // args.tokens_per_step}",
            f"--seed={seed}", "--log_interval=1", f"--threads={args.threads}", "--dtype=float32", f"--out_dir={out}",
            *args.ours]


def nanochat_command(args, steps, reference_lrs, evals, tag):
    batch = args.tokens_per_step // args.block_size
    cmd = [sys.executable, "-m", "scripts.base_train", "--device-type=cpu", f"--model-tag={tag}",
           f"--depth={args.n_layer}",
           f"--aspect-ratio={args.n_embd // args.n_layer}", f"--max-seq-len={args.block_size}",
           f"--device-batch-size={batch}", f"--total-batch-size={args.tokens_per_step}", f"--num-iterations={steps}",
           f"--eval-every={max(1, steps // evals)}", f"--eval-tokens={args.eval_tokens}",
           "--core-metric-every=-1", "--sample-every=-1"]
    if reference_lrs:
        scale = math.sqrt(args.tokens_per_step / NANOCHAT_B_REF)
        cmd += [f"--{name}={lr / scale:.6g}" for name, lr in NANOCHAT_LRS.items()]
    return cmd


def windows(n, block):
    """The windows that score each of a document's n tokens once, the document read as [separator] + its tokens:
    (start, end, skip), the input being that sequence's [start:end) (at most block tokens) and the first skip of
    its predictions already scored. Consecutive windows; the last slides back to a full context where the
    document is long enough."""
    out, done = [], 0
    while done < n:
        end = min(done + block, n)
        start = max(0, end - block)
        out.append((start, end, done - start))
        done = end
    return out


def summed_nats(loss_sum, documents, separator, block, batch=8, restart=False):
    """Nats of every token of every document (token id lists), each document after `separator` (its system's
    document-start token), in windows of at most block tokens (windows()); loss_sum(x, y) is the model's summed
    cross-entropy over the targets y that are not -1. restart: every window, not only a document's first, starts
    with the separator (then block - 1 tokens of the document at most), the rows a model trained only on rows that
    start at a document start has seen. Returns (nats, tokens)."""
    import torch

    by_length = {}
    for tokens in documents:
        seq = [separator] + list(tokens)
        for start, end, skip in windows(len(tokens), block - 1 if restart else block):
            inputs, targets = seq[start:end], [-1] * skip + seq[start + 1 + skip:end + 1]
            if restart and start > 0:
                inputs, targets = [separator] + inputs, [-1] + targets
            if len(inputs) == 1:  # a one-token document: nanochat's forward needs two positions, so the separator twice
                inputs, targets = [separator] + inputs, [-1] + targets
            by_length.setdefault(len(inputs), []).append((inputs, targets))
    nats, scored = 0.0, 0
    with torch.no_grad():
        for rows in by_length.values():
            for i in range(0, len(rows), batch):
                x = torch.tensor([r[0] for r in rows[i:i + batch]])
                y = torch.tensor([r[1] for r in rows[i:i + batch]])
                nats += float(loss_sum(x, y))
                scored += int((y != -1).sum())
    return nats, scored


def score_checkpoint(system, checkpoint, docs_file, block):
    """One evaluator for both systems (run in a process of its own, with the system's code importable): the val
    bits per byte of a checkpoint over every held-out document, each tokenised by the system's own tokenizer and
    every token scored; summed nats / (ln 2 x the documents' UTF-8 bytes)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    texts = json.loads(Path(docs_file).read_text(encoding="utf-8"))
    if system == "ours":
        from nanogpt import checkpoint as ours_checkpoint
        from nanogpt.tokenizers import tokenizer_from_meta

        ckpt = ours_checkpoint.load_checkpoint(checkpoint)
        model = ours_checkpoint.load_model(ckpt, checkpoint).eval()
        tokenizer = tokenizer_from_meta(ckpt["tokenizer"])
        separator = tokenizer.eot_token  # our prepare writes <|endoftext|> between documents

        def loss_sum(x, y):
            logits, _ = model(x, y)
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum")
    else:
        from nanochat.checkpoint_manager import build_model, find_last_step

        model, tokenizer, _ = build_model(checkpoint, find_last_step(checkpoint), torch.device("cpu"), "eval")
        separator = tokenizer.get_bos_token_id()  # nanochat's loader starts every document with BOS

        def loss_sum(x, y):
            return model(x, y, loss_reduction="sum")
    documents = [tokenizer.encode(text) for text in texts]
    nats, tokens = summed_nats(loss_sum, documents, separator, block)
    restarted, _ = summed_nats(loss_sum, documents, separator, block, restart=True)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return {"bpb": nats / (math.log(2) * n_bytes), "nats": nats, "tokens": tokens, "bytes": n_bytes,
            "bpb_restart": restarted / (math.log(2) * n_bytes)}


def common_score(system, checkpoint, docs_file, block, env, cwd):
    """score_checkpoint in a fresh process, with the system's code on the path; its result dict, or None where the
    run left no checkpoint (it was stopped before its end)."""
    if not (Path(checkpoint) / "ckpt.pt").is_file() and not list(Path(checkpoint).glob("model_*.pt")):
        return None
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--score={system}", f"--checkpoint={checkpoint}",
           f"--score_docs={docs_file}", f"--block_size={block}"]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"scoring {checkpoint} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_cpu_seconds(pid):
    """User + system CPU seconds of a running process and its live descendants (compile workers), each with the
    children it has already waited for (Linux /proc)."""
    stats = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(d.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0))[1]
        todo += [c for c, (parent, _) in stats.items() if parent == p]
    return total / os.sysconf("SC_CLK_TCK")


def timed_run(cmd, cwd, env, limit_s, bpb_of, clock="wall"):
    """Run a training command, killed at limit_s; returns {curve [(s, val bpb, step)], step_ms [...], wall_s,
    last_step_s}, times from the process start: wall seconds, or under clock='cpu' the CPU seconds its process tree
    has used (on a machine shared with other work, close to what its wall time alone would be)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    curve, step_ms, tail, last_step_s, killed = [], [], [], None, False
    try:
        for line in proc.stdout:
            now = tree_cpu_seconds(proc.pid) if clock == "cpu" else time.perf_counter() - t0
            tail = (tail + [line])[-30:]
            if (m := OURS_EVAL.match(line)) or (m := NANOCHAT_EVAL.match(line)):
                curve.append((now, bpb_of(float(m.group(2))), int(m.group(1))))
            elif (m := OURS_STEP.match(line)) or (m := NANOCHAT_STEP.match(line)):
                # the step's time on this clock: since the previous step line (the log's own figure is wall time)
                step_ms.append(float(m.group(2)) if clock == "wall" else 1000 * (now - (last_step_s or 0.0)))
                last_step_s = now
            if now > limit_s and not killed:
                proc.kill()
                killed = True
    except BaseException:  # the benchmark itself was interrupted: its run goes with it
        proc.kill()
        raise
    # wait4: the exit status and the CPU time of the whole run (its waited-for children included)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    total = usage.ru_utime + usage.ru_stime if clock == "cpu" else time.perf_counter() - t0
    if proc.returncode != 0 and not killed:
        sys.exit(f"a run failed ({' '.join(map(str, cmd))}):\n{''.join(tail)}")
    if not curve:
        sys.exit(f"a run printed no evaluation within its time ({' '.join(map(str, cmd))}):\n{''.join(tail)}")
    return {"curve": curve, "step_ms": step_ms, "wall_s": total, "last_step_s": last_step_s,
            "elapsed_s": time.perf_counter() - t0}


def plan_steps(cal, cal_steps, budget_s, evals):
    """Steps that fit a run in budget_s, from a calibration run of cal_steps steps with 2 evaluations (first and
    last): its fixed cost (start-up, compilation) and one evaluation's, then as many steps as the rest allows."""
    step_s = statistics.median(cal["step_ms"][2:] or cal["step_ms"]) / 1000
    eval_s = max(0.0, cal["curve"][-1][0] - cal["last_step_s"] - step_s)
    fixed_s = cal["wall_s"] - cal_steps * step_s - 2 * eval_s
    # evaluations at step 0, every steps // evals steps and at the end: about evals + 1; 3% spare for noise
    steps = int((0.97 * budget_s - fixed_s - (evals + 1) * eval_s) / step_s) // evals * evals  # ends on an evaluation
    return max(evals, steps), step_s, eval_s, fixed_s


def within(curve, seconds):
    """The last val bpb printed within `seconds` of the start (nan if none)."""
    return next((v for t, v, _ in reversed(curve) if t <= seconds), float("nan"))


def plot(results, path, minutes, clock):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"ours": "tab:red", "nanochat": "tab:blue", "nanochat_default": "tab:gray"}
    for name, runs in results.items():
        for i, run in enumerate(runs):
            if run["curve"]:
                t, v, _ = zip(*run["curve"])
                ax.plot(t, v, color=colors[name], alpha=0.7, marker=".", label=name if i == 0 else None)
                ax.plot(run["wall_s"], run["at_budget"], color=colors[name], marker="*", markersize=12,
                        label=f"{name}, common evaluator" if i == 0 else None)
    ax.axvline(minutes * 60, color="black", lw=0.5, ls="--")
    ax.set_xlabel(f"{clock} time from process start (s)")
    ax.set_ylabel("val bits per byte")
    ax.set_ylim(top=4.0)
    ax.set_title(f"held-out documents: val bpb over {clock} time (lines: each system's own evaluator)")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"curves written to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="/usr/lib/python3.11", help="a folder of text or code")
    parser.add_argument("--pattern", default="*.py", help="which files are documents, comma-separated globs")
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--split_seed", type=int, default=0, help="draws the held-out documents")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-time budget of each run")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of ours (1, 2, ...); nanochat has no "
                                                             "seed setting, so its runs repeat with its fixed one")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, from {', '.join(SYSTEMS)}")
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--tokens_per_step", type=int, default=4096)
    parser.add_argument("--eval_tokens", type=int, default=65536, help="val tokens per evaluation")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per run after the first")
    parser.add_argument("--score_fraction", type=float, default=1.0,
                        help="the common evaluator scores this share of the held-out documents (the first by "
                             "path; 1: all)")
    parser.add_argument("--calibration_steps", type=int, default=12)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: 2 threads a run, one run at a time; cpu: 1 thread a run, the systems of a round "
                             "started together, each timed in the CPU seconds its processes use (a busy machine)")
    parser.add_argument("--nanochat", default=str(NANOCHAT), help="a nanochat checkout")
    parser.add_argument("--nanochat_deps", default=None, help="a folder holding nanochat's extra requirements")
    parser.add_argument("--ours", action="append", default=[], help="an extra --key=value for our runs")
    parser.add_argument("--png", default="peer.png")
    parser.add_argument("--results", default=None, help="the results file (default benchmarks/results/peer.json)")
    parser.add_argument("--work", default=None, help="scratch folder, kept: a second run with the same one reuses its "
                                                     "corpus and tokenizers (default: a temporary one, removed after)")
    parser.add_argument("--prepare_only", action="store_true", help="build the corpus and tokenizers, then stop")
    # the common evaluator's own process (what common_score runs): not for users
    parser.add_argument("--score", choices=("ours", "nanochat"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--score_docs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        print(json.dumps(score_checkpoint(args.score, args.checkpoint, args.score_docs, args.block_size)))
        return
    systems = args.systems.split(",")
    args.threads = 1 if args.clock == "cpu" else 2
    if unknown := set(systems) - set(SYSTEMS):
        sys.exit(f"unknown system(s) {', '.join(sorted(unknown))}: choose from {', '.join(SYSTEMS)}")
    if not Path(args.corpus).is_dir():
        sys.exit(f"--corpus={args.corpus} is not a folder")
    checkout = Path(args.nanochat).resolve()
    if any(s.startswith("nanochat") for s in systems) and (why := nanochat_missing(checkout, args.nanochat_deps)):
        print(f"skipped: {why}")
        return
    log = print
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="nanogpt-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        docs = corpus_files(args.corpus, args.pattern)
        train, val = split_documents(docs, args.val_fraction, args.split_seed)
        log(f"corpus: {len(docs)} documents under {args.corpus} ({args.pattern}, no tests), {len(val)} held out; "
            f"{sum(len(t.encode()) for _, t in train) / 1e6:.1f} MB train, {sum(len(t.encode()) for _, t in val) / 1e6:.2f} MB val")
        data, dataset, tokens_per_byte = prepare_ours(work, train, val, args.vocab_size, log)
        ours_bpb = lambda loss: loss * tokens_per_byte / math.log(2)  # noqa: E731  nats/token -> bits/byte
        if any(s.startswith("nanochat") for s in systems):
            copy, base = prepare_nanochat(work, checkout, train, val, args.vocab_size, args.nanochat_deps, log)
            nc_env = dict(env_for(args.threads, args.nanochat_deps), NANOCHAT_BASE_DIR=str(base))
        if args.prepare_only:
            return
        budget = args.minutes * 60
        docs_file = work / "val-docs.json"
        scored = val[:max(1, round(len(val) * args.score_fraction))]
        docs_file.write_text(json.dumps([text for _, text in scored]), encoding="utf-8")
        log(f"common evaluator: {len(scored)} held-out documents, "
            f"{sum(len(t.encode()) for _, t in scored) / 1e6:.2f} MB")

        def command(system, steps, seed, out, evals=args.evals):
            """(command, cwd, env, own bpb from a logged figure, its checkpoint folder, scoring env and cwd)"""
            if system == "ours":
                cmd = ours_command(args, data, dataset, steps, seed, out, evals)
                return cmd, REPO, env_for(args.threads), ours_bpb, out, env_for(args.threads), REPO
            cmd = nanochat_command(args, steps, system == "nanochat", evals, out.name)
            score_env = dict(env_for(args.threads, args.nanochat_deps), NANOCHAT_BASE_DIR=str(base))
            score_env["PYTHONPATH"] = f"{copy}{os.pathsep}{score_env['PYTHONPATH']}"
            # a cache of its own: every run compiles from cold, as its calibration did (a warm cache from an earlier
            # run would end it early, its steps planned for a cold start)
            env = dict(nc_env, TORCHINDUCTOR_CACHE_DIR=str(work / f"inductor-{out.name}"))
            return cmd, copy, env, float, base / "base_checkpoints" / out.name, score_env, copy

        steps = {}
        load_at_start = os.getloadavg()[0]  # what else the machine was doing before this benchmark loaded it

        def calibrate(system):
            cmd, cwd, env, bpb_of, *_ = command(system, args.calibration_steps, 1, work / f"cal-{system}", evals=1)
            cal = timed_run(cmd, cwd, env, max(budget, 900), bpb_of, args.clock)
            if len(cal["step_ms"]) < args.calibration_steps or not cal["curve"]:
                sys.exit(f"{system}'s calibration run printed {len(cal['step_ms'])} steps and "
                         f"{len(cal['curve'])} evaluations in {cal['wall_s']:.0f} s: cannot plan its steps")
            steps[system], step_s, eval_s, fixed_s = plan_steps(cal, args.calibration_steps, budget, args.evals)
            log(f"{system}: calibration {step_s * 1000:.0f} ms/step, {eval_s:.1f} s/evaluation, {fixed_s:.1f} s "
                f"start-up ({args.clock} time) -> {steps[system]} steps in {args.minutes:g} min")

        # nanochat_default is the same model and step as nanochat: only the rates differ
        run_jobs(calibrate, [s for s in systems if s != "nanochat_default" or "nanochat" not in systems],
                 args.clock)
        if "nanochat_default" in systems and "nanochat" in systems:
            steps["nanochat_default"] = steps["nanochat"]
        results = {s: [] for s in systems}

        def one_run(job):
            r, seed, system = job
            cmd, cwd, env, bpb_of, ckpt, score_env, score_cwd = command(
                system, steps[system], seed, work / f"out-{system}-{r}-{seed}")
            run = timed_run(cmd, cwd, env, budget + 30, bpb_of, args.clock)
            # the common evaluator scores the run's last checkpoint, after the timed run (outside its time)
            score = common_score(system, ckpt, docs_file, args.block_size, score_env, score_cwd)
            run.update(round=r + 1, seed=seed, system=system, at_budget=score["bpb"] if score else float("nan"),
                       score=score, own_at_budget=within(run["curve"], budget), in_budget=run["wall_s"] <= budget)
            results[system].append(run)
            log(f"round {r + 1} seed {seed} {system:<16} val bpb {run['at_budget']:.4f} (common evaluator, "
                f"step {run['curve'][-1][2]}; every window from a document start "
                f"{(score or {}).get('bpb_restart', math.nan):.4f}; its own evaluator {run['own_at_budget']:.4f}), run "
                f"{run['wall_s']:.0f} s of {args.clock} time ({run['elapsed_s']:.0f} s wall)"
                f"{'' if run['in_budget'] else ' OVER THE BUDGET'}, median "
                f"{statistics.median(run['step_ms'] or [0]):.0f} ms/step")

        for r in range(args.rounds):
            for seed in range(1, args.seeds + 1):
                run_jobs(one_run, [(r, seed, s) for s in (systems if r % 2 == 0 else systems[::-1])], args.clock)
        figures = report(results, args, steps)
        notes = (f"{args.rounds} round(s) x {args.seeds} seed(s), alternating; {args.minutes:g} min per run from "
                 "process start; float32; " + ("2 threads, one run at a time, wall time" if args.clock == "wall" else
                                               "1 thread a run, the systems of a round started together, each timed "
                                               "in the CPU time of its processes")
                 + f"; 1-minute load average {load_at_start:.2f} before the first run (other work on the machine)")
        print(f"results written to {write_results('peer', figures, notes=notes, path=args.results)}")
        plot(results, args.png, args.minutes, args.clock)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def report(results, args, steps):
    print(f"\nval bpb at {args.minutes:g} min of {args.clock} time (the common evaluator), over {args.rounds} "
          f"round(s) x {args.seeds} seed(s)")
    print(f"{'system':<18}{'median':>9}{'min':>9}{'max':>9}{'spread':>9}{'steps':>7}{'ms/step':>9}"
          f"{args.clock + ' s (min-max)':>18}")
    table = {}
    for system, runs in results.items():
        each = [run["at_budget"] for run in runs]
        values = [v for v in each if v == v] or [float("nan")]  # a run stopped before its end left no checkpoint
        ms = statistics.median([statistics.median(run["step_ms"]) for run in runs if run["step_ms"]] or [0])
        walls = [run["wall_s"] for run in runs]
        table[system] = {"median_bpb": statistics.median(values), "min_bpb": min(values), "max_bpb": max(values),
                         "spread_bpb": max(values) - min(values), "steps": steps[system], "ms_per_step": ms,
                         "run_s_min": min(walls), "run_s_max": max(walls),  # on args.clock
                         "elapsed_s_min": min(run["elapsed_s"] for run in runs),
                         "elapsed_s_max": max(run["elapsed_s"] for run in runs),
                         "runs_over_budget": sum(not run["in_budget"] for run in runs),
                         "own_evaluator_median_bpb": statistics.median(run["own_at_budget"] for run in runs),
                         # the same evaluator with every window starting at the document-start token
                         "restart_median_bpb": statistics.median((run["score"] or {}).get("bpb_restart", math.nan)
                                                                 for run in runs),
                         "runs_without_checkpoint": sum(v != v for v in each),
                         "bpb_each": [round(v, 4) if v == v else None for v in each]}
        row = table[system]
        print(f"{system:<18}{row['median_bpb']:>9.4f}{row['min_bpb']:>9.4f}{row['max_bpb']:>9.4f}"
              f"{row['spread_bpb']:>9.4f}{row['steps']:>7}{ms:>9.0f}{row['run_s_min']:>9.0f}-{row['run_s_max']:<8.0f}"
              + (f"  {row['runs_over_budget']} run(s) over the budget" if row["runs_over_budget"] else ""))
    if "ours" in table and "nanochat" in table:
        ours, ref = table["ours"], table["nanochat"]
        gap = ref["min_bpb"] - ours["max_bpb"]
        print(f"with every window starting at the document-start token: ours {ours['restart_median_bpb']:.4f}, "
              f"nanochat {ref['restart_median_bpb']:.4f} (medians)")
        print(f"ours vs nanochat (reference rates): median {ours['median_bpb'] / ref['median_bpb'] - 1:+.2%}; "
              f"ours' worst is {'below' if gap > 0 else 'not below'} nanochat's best by {gap:+.4f} bpb "
              f"(acceptance: lower by more than the spread; goal 5% lower)")
    shown = ("corpus", "pattern", "minutes", "seeds", "rounds", "vocab_size", "n_layer", "n_embd", "block_size",
             "tokens_per_step", "eval_tokens", "evals", "score_fraction", "clock", "ours")
    figures = {"settings": {k: str(getattr(args, k)) for k in shown}, "systems": table}
    if "ours" in table and "nanochat" in table:
        figures["ours vs nanochat (median bpb)"] = f"{table['ours']['median_bpb'] / table['nanochat']['median_bpb'] - 1:+.2%}"
    return figures


if __name__ == "__main__":
    main()
