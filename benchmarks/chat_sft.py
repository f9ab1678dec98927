"""Chat finetuning, offline, on a CPU: held-out exact match of the synthetic task before and after SFT.

    python benchmarks/chat_sft.py [--quick] [--items=200]

The whole offline demo of docs/guides/chat.md, through the commands a user types (each is printed as it runs):
a corpus of Shakespeare (canonical tiny-shakespeare from ../shared when it is there, else what the recipe finds
offline) plus lists of the task's words, a 512-token BPE that reserves the chat turn tokens, a small model
pretrained briefly on it (config/chat_demo_pretrain.py), the synthetic conversations prepared as a chat dataset
with that tokenizer, and SFT from the pretrained run (config/sft_chat_demo.py). `nanogpt eval --tasks=chat
--data=synthetic` scores exact match on questions the training set does not hold, before SFT (the pretrained
run, which has never seen the template) and after. Prints the figures and the wall time of the two trainings;
saves them in benchmarks/results/chat_sft.json (not with --quick, a short run to check the pipeline).
"""

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CANONICAL = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
WORD_LINES = 5000  # lines of the task's words added to the pretraining text, so its BPE and model know them
SHAKESPEARE_CHARS = 1_000_000  # of the pretraining text: enough for a brief pretraining, quick to tokenize


def cpu_seconds():
    """CPU time (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd, label):
    """Run a command from the repository root, printing it; returns (stdout, wall seconds, CPU seconds)."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    started, cpu = time.perf_counter(), cpu_seconds()
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{label} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout, elapsed, cpu_seconds() - cpu


def corpus_text(work):
    """Shakespeare and the task's words, as the pretraining text."""
    sys.path.insert(0, str(REPO))
    from nanogpt.conversation import synthetic_text
    from nanogpt.datasets import shakespeare_text

    folder = work / "shakespeare"
    folder.mkdir()
    if CANONICAL.is_file():
        shutil.copy(CANONICAL, folder / "input.txt")
    text = shakespeare_text(folder, log=lambda *_: None)
    return text[:SHAKESPEARE_CHARS] + "\n" + synthetic_text(WORD_LINES, seed=0) + "\n"


def exact_match(out_dir, items):
    """Held-out exact match of a run, through `nanogpt eval --tasks=chat`."""
    run([sys.executable, "-m", "nanogpt.cli", "eval", f"--out_dir={out_dir}", "--tasks=chat", "--data=synthetic",
         f"--limit={items}", "--device=cpu"], "eval")
    return json.loads((Path(out_dir) / "eval.json").read_text())["tasks"]["chat"]["exact_match"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run to check the pipeline (not saved)")
    parser.add_argument("--items", type=int, default=200, help="held-out conversations scored")
    parser.add_argument("--results", default=None, help="where to write the figures (default: benchmarks/results)")
    args = parser.parse_args()
    pretrain_iters, sft_iters = (30, 40) if args.quick else (None, None)

    work = Path(tempfile.mkdtemp(prefix="nanogpt-chat-sft-"))
    try:
        data = work / "data"
        (work / "corpus.txt").write_text(corpus_text(work), encoding="utf-8")
        nanogpt = [sys.executable, "-m", "nanogpt.cli"]
        run([*nanogpt, "prepare", f"--input={work / 'corpus.txt'}", "--name=chat_demo_base", "--tokenizer=bpe",
             "--vocab_size=512", "--turn_tokens=True", f"--data_dir={data}"], "prepare the pretraining text")
        run([*nanogpt, "prepare", "--input=synthetic", "--format=chat", f"--tokenizer_from={data / 'chat_demo_base'}",
             "--name=chat_demo", f"--data_dir={data}"], "prepare the conversations")
        short = lambda n: [f"--max_iters={n}", f"--lr_decay_iters={n}", f"--eval_interval={n}"] if n else []
        base, sft = work / "base", work / "sft"
        _, pretrain_s, pretrain_cpu = run([sys.executable, "train.py", "config/chat_demo_pretrain.py",
                                           f"--data_dir={data}", f"--out_dir={base}", *short(pretrain_iters)],
                                          "pretraining")
        before = exact_match(base, args.items)
        log, sft_s, sft_cpu = run([sys.executable, "train.py", "config/sft_chat_demo.py", f"--init_from={base}",
                                   f"--data_dir={data}", f"--out_dir={sft}", *short(sft_iters)], "SFT")
        val = [float(v) for v in re.findall(r"val loss (\d+\.\d+)", log)]
        after = exact_match(sft, args.items)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {"exact_match_before": before, "exact_match_after": after, "items": args.items,
               "pretrain_s": round(pretrain_s, 1), "sft_s": round(sft_s, 1),
               "training_s": round(pretrain_s + sft_s, 1), "training_cpu_s": round(pretrain_cpu + sft_cpu, 1),
               "sft_val_loss_assistant_tokens": val[-1] if val else None}
    print(f"held-out exact match ({args.items} questions not in the training set): before SFT {before:.1%}, "
          f"after SFT {after:.1%}")
    print(f"training wall time: pretraining {pretrain_s:.0f} s + SFT {sft_s:.0f} s = {pretrain_s + sft_s:.0f} s "
          f"(process start and evaluations included); CPU time {pretrain_cpu + sft_cpu:.0f} s on 2 threads")
    if not args.quick:
        path = write_results("chat_sft", figures, path=args.results, notes="2-core CPU shared with other jobs; wall times include "
                             "process start-up and the runs' own evaluations")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
