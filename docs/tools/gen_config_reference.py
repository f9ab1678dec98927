"""Regenerate the settings tables in docs/code-analysis/configuration-reference.md from the config dataclasses.

Names and defaults come from the dataclasses, the "meaning" column from the comment beside each field in the source
(the same text `--help` prints); only the "when to change it" advice is written here. Run from the repository root:

    python docs/tools/gen_config_reference.py          # rewrite the tables
    python docs/tools/gen_config_reference.py --check  # exit 1 if the page is out of date or a setting lacks advice
"""

import importlib
import inspect
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "code-analysis" / "configuration-reference.md"
# NANOGPT_SRC: document another checkout of the code, e.g. a `git archive HEAD` export
sys.path.insert(0, os.environ.get("NANOGPT_SRC", str(ROOT)))

# (module, class): the dataclasses documented, in page order
CLASSES = [
    ("nanogpt.config", "TrainConfig"),
    ("nanogpt.sample", "SampleConfig"),
    ("nanogpt.serve", "ServeConfig"),
    ("nanogpt.export", "ExportConfig"),
    ("nanogpt.bench", "BenchConfig"),
]

# class -> field -> (meaning where the source has no comment, or None; when to change it)
NOTES = {
    "TrainConfig": {
        "out_dir": (None, "One folder per run; a fresh run refuses a folder that already holds ckpt.pt."),
        "eval_interval": (None, "Lower on small data that overfits fast (the Shakespeare presets use 250); each "
                                "evaluation costs 2 × eval_iters forward passes."),
        "log_interval": (None, "Raise it (10) on fast GPUs: printing forces a device sync every logged step."),
        "eval_iters": (None, "Fewer for quick CPU runs (20), more for a precise number (500 in the eval presets)."),
        "eval_only": (None, "True to measure a checkpoint's (or a fresh model's) losses without training."),
        "always_save_checkpoint": (None, "False on small data that overfits, so ckpt.pt stays the best model."),
        "init_from": (None, "'resume' to continue a run in out_dir; 'gpt2' … 'gpt2-xl' or a local HF folder to "
                            "finetune (needs pip install -e '.[hf]')."),
        "seed": (None, "Change to get a different but equally reproducible run (weights, batches, dropout)."),
        "wandb_log": ("send losses, lr and MFU to Weights & Biases at each evaluation",
                      "True to follow a long run in a browser; needs `pip install wandb`."),
        "wandb_project": ("Weights & Biases project name", "Per experiment family."),
        "wandb_run_name": ("Weights & Biases run name", "Per run."),
        "dataset": (None, "Always, unless you train on OpenWebText: the name of a prepared folder, e.g. "
                          "shakespeare_char."),
        "data_dir": ("the folder that holds dataset folders", "When your prepared data lives elsewhere."),
        "gradient_accumulation_steps": (None, "To reach a target tokens-per-step on fewer GPUs or less memory; "
                                              "must be divisible by the number of processes."),
        "batch_size": (None, "Lower when out of memory (raise gradient_accumulation_steps to compensate); "
                             "raise to fill a big GPU."),
        "block_size": (None, "The context length: shorter for small data and CPUs (64–256), 1024 for GPT-2."),
        "n_layer": ("transformer blocks", "Model depth; with n_head and n_embd sets the model size."),
        "n_head": ("attention heads per block", "Must divide n_embd; head size n_embd/n_head is usually 64."),
        "n_embd": ("width of the residual stream", "Model width; keep it a multiple of n_head (and of 64 on GPUs)."),
        "dropout": (None, "0.1–0.2 when a small model overfits small data (the char preset uses 0.2)."),
        "bias": (None, "True only to match pretrained GPT-2 weights, which have biases."),
        "learning_rate": (None, "Larger for small models (1e-3), smaller for big ones and for finetuning (3e-5)."),
        "max_iters": (None, "The length of the run; keep lr_decay_iters equal to it."),
        "weight_decay": ("AdamW decoupled weight decay on 2-D tensors", "Rarely; 0.1 is GPT-2's value."),
        "beta1": ("AdamW first-moment (momentum) decay", "Rarely."),
        "beta2": ("AdamW second-moment decay", "0.99 when each step sees few tokens (the char presets)."),
        "grad_clip": (None, "Lower (0.5) if the loss spikes; 0 to measure unclipped behaviour."),
        "skip_nonfinite": (None, "True for long runs where a rare bad batch should not stop the job; a run that skips "
                                 "every step is diverging: lower learning_rate instead."),
        "decay_lr": ("apply the warmup + cosine schedule; False keeps learning_rate constant",
                     "False for short finetunes at a small constant rate."),
        "warmup_iters": ("steps of linear warmup from ~0 to learning_rate",
                         "About 1–5 % of max_iters; more if the loss spikes early."),
        "lr_decay_iters": (None, "Set to max_iters whenever you change max_iters."),
        "min_lr": (None, "Keep at about learning_rate / 10."),
        "backend": (None, "'gloo' to run several processes on CPUs under torchrun."),
        "parallelism": (None, "'fsdp' when the model, gradients and AdamW state (~16 bytes per parameter) do not fit on "
                              "one GPU; needs bfloat16 or float32. Ignored without torchrun."),
        "device": (None, "'cpu' to force the CPU, 'cuda:N' for a specific GPU in a single-process run."),
        "dtype": (None, "'float32' to rule out precision problems; 'float16' only on GPUs without bfloat16."),
        "compile": (None, "False while debugging or for short runs; True to try it on CPU/MPS."),
    },
    "SampleConfig": {
        "init_from": (None, "'gpt2' … 'gpt2-xl' or an HF folder to sample pretrained GPT-2 (out_dir is then not "
                            "read)."),
        "out_dir": (None, "Always: the out_dir of the run you trained."),
        "start": (None, "Your prompt; FILE:prompt.txt for long or multi-line prompts."),
        "num_samples": (None, "1 for a quick look."),
        "max_new_tokens": (None, "Length of each sample; a char model makes one character per token."),
        "temperature": (None, "Lower (0.5) for safer text, 1.0 for the raw distribution; 0 for greedy decoding."),
        "top_k": (None, "Smaller (e.g. 40) to cut off unlikely tokens; 0 disables the cut."),
        "top_p": (None, "0.9–0.95 to drop the long tail of unlikely tokens while keeping variety; 1.0 disables it."),
        "stop": (None, "To end each sample at a delimiter, e.g. a blank line between speeches: --stop=\"'\\n\\n'\"."),
        "kv_cache": (None, "False only to measure what the cache saves; it is slower and, past block_size, still "
                           "follows window_shift."),
        "checkpoint": (None, "'last' to use the final iteration of a run trained with always_save_checkpoint=False "
                             "(auto picks its best.pt, as nanoGPT would have kept)."),
        "window_shift": (None, "1 to match nanoGPT's exact sliding window past block_size (slow: a full pass per "
                               "token); larger for speed with shorter context after each shift."),
        "seed": ("seeds the sampling; the same seed and prompt give the same samples",
                 "Change for different samples."),
        "device": (None, "'cpu' to sample on the CPU although a GPU is present."),
        "dtype": (None, "'float32' for bit-stable output across devices."),
        "compile": (None, "True only for long sampling runs on CUDA."),
    },
    "ServeConfig": {
        "out_dir": (None, "Always (unless init_from names pretrained weights): the run to serve."),
        "init_from": (None, "'gpt2' … 'gpt2-xl', a hub name or an HF folder to serve pretrained weights."),
        "host": (None, "0.0.0.0 to accept other machines (there is no authentication: trusted networks only)."),
        "port": (None, "When 8000 is taken; 0 and read the printed URL."),
        "device": (None, "'cuda' on a GPU machine ('auto' already picks it); 'cpu' to leave the GPU free."),
        "dtype": (None, "'float32' on a GPU to rule out precision effects ('auto' is bfloat16 there, float32 on CPU)."),
        "max_tokens_limit": (None, "Lower to bound how long one request can hold the server (requests run one at a "
                                   "time)."),
        "max_n": (None, "Lower on small GPUs: n completions are one batch in memory."),
        "kv_cache": (None, "False only to measure what the cache saves."),
        "window_shift": (None, "As for sample: 1 for nanoGPT's exact window past block_size (slow)."),
        "checkpoint": (None, "'last' to use the final iteration of a run trained with always_save_checkpoint=False "
                             "(auto picks its best.pt, as nanoGPT would have kept)."),
    },
    "ExportConfig": {
        "init_from": (None, "A GPT-2 name or folder to re-export pretrained weights (e.g. to test a round trip)."),
        "out_dir": (None, "Always: the run to export (its ckpt.pt; the optimizer file is not needed)."),
        "to": (None, "Always: a new folder name, e.g. hf-myrun."),
        "checkpoint": (None, "'last' to use the final iteration of a run trained with always_save_checkpoint=False "
                             "(auto picks its best.pt, as nanoGPT would have kept)."),
    },
    "BenchConfig": {
        "batch_size": ("sequences per step", "To match the training run you want to time."),
        "block_size": ("tokens per sequence", "As above."),
        "n_layer": ("transformer blocks", "As above."),
        "n_head": ("attention heads per block", "As above."),
        "n_embd": ("width of the residual stream", "As above."),
        "bias": ("biases in Linear and LayerNorm layers", "As above."),
        "vocab_size": (None, "Only with random tokens."),
        "dataset": (None, "A prepared dataset name to time with real batches (memmap reads included)."),
        "data_dir": ("the folder that holds dataset folders", "When your prepared data lives elsewhere."),
        "seed": ("seeds weights and batches", "Rarely."),
        "warmup_steps": (None, "More when compiling (the first steps are slow)."),
        "steps": (None, "More for a steadier median."),
        "device": ("'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", "To time a specific device."),
        "dtype": ("'auto', 'float32', 'bfloat16' or 'float16'", "To compare precisions."),
        "compile": ("True/False, or 'auto' (on CUDA only)", "To measure what torch.compile gains."),
        "profile": (None, "True to see where the time goes."),
        "profile_dir": (None, "Where to write the trace."),
    },
}


def source_comments(cls):
    """field -> the comment beside it in the class source (what --help prints)."""
    return dict(re.findall(r"^\s+(\w+): [^=]+=[^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M))


def cell(text):
    return text.replace("|", "\\|")


def table(cls, missing):
    comments = source_comments(cls)
    notes = NOTES.get(cls.__name__, {})
    rows = ["| setting | default | meaning | when to change it |", "|---|---|---|---|"]
    for f in fields(cls):
        meaning, when = notes.get(f.name, (None, None))
        if when is None:
            missing.append(f"{cls.__name__}.{f.name}")
        meaning = comments.get(f.name) or meaning or "—"
        rows.append(f"| `{f.name}` | `{f.default!r}` | {cell(meaning)} | {cell(when or '—')} |")
    return "\n".join(rows)


def render(text, missing):
    for module, name in CLASSES:
        begin, end = f"<!-- BEGIN GENERATED {name} -->", f"<!-- END GENERATED {name} -->"
        if begin not in text:
            continue
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue  # a class missing from the code leaves its section's markers as they are
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: f"{begin}\n{table(cls, missing)}\n{end}", text)
    return text


def main(argv):
    old = PAGE.read_text()
    missing = []
    new = render(old, missing)
    if "--check" in argv:
        stale = new != old
        if stale:
            print(f"{PAGE} is out of date: run python docs/tools/gen_config_reference.py")
        if missing:
            print("settings without advice in NOTES: " + ", ".join(missing))
        return 1 if stale or missing else 0
    PAGE.write_text(new)
    if missing:
        print("settings without advice in NOTES (shown as —): " + ", ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
