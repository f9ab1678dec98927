"""Regenerate the settings tables in docs/code-analysis/configuration-reference.md from the config dataclasses.

Names and defaults come from the dataclasses, the "meaning" column from the comment beside each field in the source,
read by nanogpt.config.field_help, the function `--help` prints it with (so both show the same text); only the
"when to change it" advice is written here. Run from the repository root:

    python docs/tools/gen_config_reference.py          # rewrite the tables
    python docs/tools/gen_config_reference.py --check  # exit 1 if the page is stale or a setting lacks a meaning or advice
"""

import importlib
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
    ("nanogpt.datasets", "PrepareConfig"),
    ("nanogpt.evaluate", "EvalConfig"),
    ("nanogpt.plot", "PlotConfig"),
    ("nanogpt.report", "ReportConfig"),
    ("nanogpt.chat", "ChatConfig"),
]

# class -> field -> when to change it (the meaning is the comment beside the field in the source)
NOTES = {
    "TrainConfig": {
        "out_dir": "One folder per run; a fresh run refuses a folder that already holds ckpt.pt.",
        "eval_interval": "Lower on small data that overfits fast (the Shakespeare presets use 250); each evaluation "
                         "costs 2 × eval_iters forward passes.",
        "log_interval": "Raise it (10) on fast GPUs: printing forces a device sync every logged step.",
        "eval_iters": "Fewer for quick CPU runs (20), more for a precise number (500 in the eval presets).",
        "eval_only": "True to measure a checkpoint's (or a fresh model's) losses without training.",
        "always_save_checkpoint": "False on small data that overfits, so ckpt.pt stays the best model.",
        "init_from": "'resume' to continue a run in out_dir; 'gpt2' … 'gpt2-xl' or a local HF folder to finetune "
                     "(needs pip install -e '.[hf]'); another run's folder to finetune it, e.g. on conversations.",
        "seed": "Change to get a different but equally reproducible run (weights, batches, dropout).",
        "wandb_log": "True to follow a long run in a browser; needs `pip install wandb`.",
        "wandb_project": "Per experiment family.",
        "wandb_run_name": "Per run.",
        "tensorboard_log": "True to follow runs in TensorBoard (`tensorboard --logdir RUN/tensorboard`); metrics.jsonl "
                           "is written either way.",
        "eval_tasks": "'bpb' to compare runs with different tokenizers as they train; 'hellaswag' scores 10,042 items "
                      "at every evaluation (slow on a CPU).",
        "dataset": "Always, unless you train on OpenWebText: the name of a prepared folder, e.g. shakespeare_char.",
        "data_dir": "When your prepared data lives elsewhere.",
        "document_aligned": "True to train on rows that each begin a document (needs a BPE dataset, whose documents "
                            "end in <|endoftext|>); evaluation keeps random windows.",
        "gradient_accumulation_steps": "To reach a target tokens-per-step on fewer GPUs or less memory; must be "
                                       "divisible by the number of processes.",
        "batch_size": "Lower when out of memory (raise gradient_accumulation_steps to compensate); raise to fill a big "
                      "GPU.",
        "batch_ramp_start": "With batch_ramp_iters: a half or a quarter of batch_size.",
        "batch_ramp_iters": "0 (off) unless measured: 12 -> 24 over 300 of 650 steps reached 1.88 4% sooner but ended higher.",
        "block_size": "The context length: shorter for small data and CPUs (64–256), 1024 for GPT-2.",
        "n_layer": "Model depth; with n_head and n_embd sets the model size.",
        "n_head": "More, narrower heads or fewer, wider ones; head size n_embd/n_head is usually 64.",
        "n_embd": "Model width; keep it a multiple of n_head (and of 64 on GPUs).",
        "dropout": "0.1–0.2 when a small model overfits small data (the char preset uses 0.2).",
        "bias": "True only to match pretrained GPT-2 weights, which have biases.",
        "position": "'rope' for new models: better loss, and positions are relative (see modern-recipe.md).",
        "rope_base": "Leave at 10000 for contexts up to a few thousand tokens; larger for much longer ones.",
        "norm": "'rmsnorm' for new models on GPUs; on CPUs F.rms_norm is slower than LayerNorm.",
        "qk_norm": "True with Muon or high learning rates: keeps attention logits from growing unchecked.",
        "activation": "'relu2' for new models (modded-nanogpt's choice); 'swiglu' as LLaMA does.",
        "tie_embeddings": "False in the modern recipe: the head and the embedding learn different things.",
        "zero_init_proj": "True in the modern recipe: every block starts as the identity.",
        "logit_softcap": "15 in the fast CPU preset; 30 at GPT-2 scale (modded-nanogpt); 0 to match GPT-2.",
        "n_kv_head": "Fewer than n_head (e.g. n_head/4) to shrink the KV cache for long generations.",
        "value_embeddings": "True in the code/BPE preset; adds a vocab x width table per layer that has one.",
        "x0_mix": "True in the code/BPE preset: one scalar per layer, trained at scalar_lr.",
        "embed_norm": "True in the code/BPE preset: the blocks see the embedding at unit scale, whatever its rate.",
        "resid_scales": "One scalar per layer, trained at scalar_lr; starts at 1 (no change).",
        "backout": "One scalar, trained at scalar_lr; starts at 0 (no change).",
        "optimizer": "'muon' reaches a given loss in fewer steps; each step costs a little more. FSDP needs 'adamw'.",
        "muon_lr": "0.02 is Muon's usual value across model sizes; the schedule scales it like learning_rate.",
        "muon_momentum": "Leave at 0.95.",
        "muon_weight_decay": "0 for short runs; small values (0.01-0.1) for long ones.",
        "muon_momentum_warmup": "A few hundred steps for long runs; 0 (off) in short ones.",
        "muon_orthogonalizer": "'polar_express' in the tiny-Shakespeare presets (same cost, closer to orthogonal).",
        "muon_neuron_norm": "True in the tiny-Shakespeare presets (-0.017 val loss at 650 steps, ~3% more time a step).",
        "muon_cautious_weight_decay": "With muon_weight_decay > 0 in long runs; no gain measured in short ones.",
        "embedding_lr": "10x learning_rate in the code/BPE preset (0.03): an embedding row moves only when its token appears.",
        "scalar_lr": "0.02 in the code/BPE preset: single numbers need a large rate to move within a short run.",
        "lr_rule": "'transfer' with the lr_ref_* shape of the rates you start from, then change width, batch or length freely.",
        "lr_ref_width": "128 in the CPU fast preset; a wider model then gets a smaller head rate.",
        "lr_ref_batch_tokens": "batch_size x block_size x gradient_accumulation_steps of the tuned run (24 x 64).",
        "lr_ref_iters": "650 in the CPU fast preset; a longer run then gets lower peaks.",
        "lr_schedule": "'wsd' when the run's length is not known in advance or for checkpoints to continue.",
        "wsd_decay_frac": "0.2-0.5: longer decays help short runs.",
        "learning_rate": "Larger for small models (1e-3), smaller for big ones and for finetuning (3e-5).",
        "max_iters": "The length of the run; keep lr_decay_iters equal to it.",
        "weight_decay": "Rarely; 0.1 is GPT-2's value.",
        "beta1": "Rarely.",
        "beta2": "0.99 when each step sees few tokens (the char presets).",
        "grad_clip": "Lower (0.5) if the loss spikes; 0 to measure unclipped behaviour.",
        "skip_nonfinite": "True for long runs where a rare bad batch should not stop the job; a run that skips every "
                          "step is diverging: lower learning_rate instead.",
        "decay_lr": "False for short finetunes at a small constant rate.",
        "warmup_iters": "About 1–5 % of max_iters; more if the loss spikes early.",
        "lr_decay_iters": "Set to max_iters whenever you change max_iters.",
        "min_lr": "Keep at about learning_rate / 10.",
        "backend": "'gloo' to run several processes on CPUs under torchrun.",
        "parallelism": "'fsdp' when the model, gradients and AdamW state (~16 bytes per parameter) do not fit on one "
                       "GPU; needs bfloat16 or float32. Ignored without torchrun.",
        "device": "'cpu' to force the CPU, 'cuda:N' for a specific GPU in a single-process run.",
        "dtype": "'float32' to rule out precision problems; 'float16' only on GPUs without bfloat16; 'native' for "
                 "bfloat16 on CPUs that compute it (~20% faster a step there).",
        "compile": "False while debugging or for short runs; True to try it on CPU/MPS. 'auto' falls back to "
                   "uncompiled, with one line, if compiling fails at the first step; True makes that an error.",
        "eval_train": "False to halve each evaluation's cost: the log line then reads 'train loss n/a'.",
        "reset_optimizer": "True to resume from a checkpoint without optimizer state (best.pt copied to ckpt.pt, "
                           "another tool's file): the moments restart; the weights and iteration are kept.",
        "threads": "A number to pin the CPU threads (e.g. 1 for tiny models on a shared machine); 0 takes PyTorch's default, but no more threads than idle cores (cores less the one-minute load average, rounded; at least one).",
    },
    "SampleConfig": {
        "init_from": "'gpt2' … 'gpt2-xl' or an HF folder to sample pretrained GPT-2 (out_dir is then not read).",
        "out_dir": "Always: the out_dir of the run you trained.",
        "start": "Your prompt; FILE:prompt.txt for long or multi-line prompts.",
        "num_samples": "1 for a quick look.",
        "max_new_tokens": "Length of each sample; a char model makes one character per token.",
        "temperature": "Lower (0.5) for safer text, 1.0 for the raw distribution; 0 for greedy decoding.",
        "top_k": "Smaller (e.g. 40) to cut off unlikely tokens; 0 disables the cut.",
        "top_p": "0.9–0.95 to drop the long tail of unlikely tokens while keeping variety; 1.0 disables it.",
        "stop": "To end each sample at a delimiter, e.g. a blank line between speeches: --stop=\"'\\n\\n'\".",
        "kv_cache": "False only to measure what the cache saves; it is slower and, past block_size, still follows "
                    "window_shift.",
        "checkpoint": "'last' to use the final iteration of a run trained with always_save_checkpoint=False (auto "
                      "picks its best.pt, as nanoGPT would have kept).",
        "window_shift": "1 to match nanoGPT's exact sliding window past block_size (slow: a full pass per token); "
                        "larger for speed with shorter context after each shift.",
        "seed": "Change for different samples.",
        "device": "'cpu' to sample on the CPU although a GPU is present.",
        "dtype": "'float32' for bit-stable output across devices.",
        "compile": "True only for long sampling runs on CUDA.",
        "threads": "A number to pin the CPU threads (e.g. 1 for tiny models on a shared machine); 0 takes PyTorch's default, but no more threads than idle cores (cores less the one-minute load average, rounded; at least one).",
    },
    "ServeConfig": {
        "out_dir": "Always (unless init_from names pretrained weights): the run to serve.",
        "init_from": "'gpt2' … 'gpt2-xl', a hub name or an HF folder to serve pretrained weights.",
        "host": "0.0.0.0 to accept other machines; then set NANOGPT_API_KEY (it warns without one).",
        "port": "When 8000 is taken; 0 and read the printed URL.",
        "device": "'cuda' on a GPU machine ('auto' already picks it); 'cpu' to leave the GPU free.",
        "dtype": "'float32' on a GPU to rule out precision effects ('auto' is bfloat16 there, float32 on CPU).",
        "max_tokens_limit": "Lower to bound how long one request can hold a place in the batch.",
        "max_n": "Lower to keep one request from taking most of the batch; 0 (default) allows max_batch.",
        "max_batch": "Higher on a GPU (64+) while memory lasts: the cache grows with the running completions and "
                     "their length, up to max_batch x block_size positions per layer, and is freed when idle. 1 to "
                     "serve one completion at a time.",
        "threads": "A number to pin the CPU threads (e.g. 1 for tiny models on a shared machine); 0 takes PyTorch's default, but no more threads than idle cores (cores less the one-minute load average, rounded; at least one).",
        "max_queue": "Lower to fail fast (429) rather than make clients wait; higher behind a patient proxy.",
        "timeout": "Lower for interactive use; 0 for no limit (long batch jobs).",
        "max_body_kb": "Higher only for very long prompts of a large-block model.",
        "api_key": "Whenever host is not 127.0.0.1; prefer the NANOGPT_API_KEY variable (ps shows arguments).",
        "cors_origin": "The origin of a web page on another host that calls the server from a browser.",
        "shutdown_timeout": "To match your process manager's grace period (e.g. 10 s before Docker kills).",
        "kv_cache": "Must stay True: the batch engine is built on the cache.",
        "window_shift": "As for sample: 1 for nanoGPT's exact window past block_size (slow).",
        "checkpoint": "'last' to use the final iteration of a run trained with always_save_checkpoint=False (auto "
                      "picks its best.pt, as nanoGPT would have kept).",
    },
    "ExportConfig": {
        "init_from": "A GPT-2 name or folder to re-export pretrained weights (e.g. to test a round trip).",
        "out_dir": "Always: the run to export (its ckpt.pt; the optimizer file is not needed).",
        "to": "Always: a new folder name, e.g. hf-myrun.",
        "checkpoint": "'last' to use the final iteration of a run trained with always_save_checkpoint=False (auto "
                      "picks its best.pt, as nanoGPT would have kept).",
    },
    "BenchConfig": {
        "batch_size": "To match the training run you want to time.",
        "block_size": "As above.",
        "n_layer": "As above.",
        "n_head": "As above.",
        "n_embd": "As above.",
        "bias": "As above.",
        "vocab_size": "Only with random tokens.",
        "dataset": "To time a real run: its dataset (e.g. shakespeare_char) gives real batches, memmap reads "
                   "included, and the vocabulary train would use.",
        "data_dir": "When your prepared data lives elsewhere.",
        "seed": "Rarely.",
        "warmup_steps": "More when compiling (the first steps are slow).",
        "steps": "More for a steadier median.",
        "device": "To time a specific device.",
        "dtype": "To compare precisions.",
        "compile": "To measure what torch.compile gains.",
        "threads": "A number to pin the CPU threads (e.g. 1 for tiny models on a shared machine); 0 takes PyTorch's default, but no more threads than idle cores (cores less the one-minute load average, rounded; at least one).",
        "profile": "True to see where the time goes.",
        "profile_dir": "Where to write the trace.",
    },
    "PrepareConfig": {
        "recipe": "shakespeare_char for the quick start, shakespeare to finetune GPT-2, openwebtext (~17 GB) or "
                  "fineweb_edu with --max_tokens (needs pip install -e '.[hf]') to pretrain GPT-2.",
        "input": "To train on your own text (then give --name too).",
        "name": "Always with --input: the name you then give train as --dataset.",
        "tokenizer": "'char' for a small corpus and model (the vocabulary is the characters seen); 'gpt2' to "
                     "finetune GPT-2; 'bpe' (pip install -e '.[bpe]') for code, another language or a domain.",
        "vocab_size": "With --tokenizer=bpe: a few thousand for a few MB of text (2,048–8,192 on tiny Shakespeare, "
                      "see docs/concepts/data-pipeline.md); more text affords more.",
        "turn_tokens": "True when the model pretrained on this text is to be chat-finetuned later (docs/guides/chat.md).",
        "format": "'chat' for conversations to finetune on (JSONL or a dataset with a messages column, or 'synthetic').",
        "tokenizer_from": "With --format=chat: the dataset the model to finetune was trained on (or its run folder).",
        "val_fraction": "Smaller (0.01–0.05) on a big corpus, where 10 % is more validation text than needed.",
        "pattern": "When your folder's text is not *.txt/*.md, e.g. '*.py' for code.",
        "val_split": "tail only to reproduce nanoGPT's split (the end of the text); random keeps train and val alike.",
        "seed": "To draw another set of val documents.",
        "source": "When you have a local copy of the corpus (parquet or jsonl files, a saved dataset).",
        "sample": "sample-100BT or sample-350BT for longer runs than sample-10BT's ~10B tokens.",
        "max_tokens": "To prepare only as much as a run will read (e.g. 2e9 tokens for a 124M model).",
        "workers": "Lower on a shared machine; more than the cores gains nothing.",
        "shard_tokens": "Smaller for a small corpus you want split across files; the default suits web corpora.",
        "data_dir": "When your datasets live elsewhere; give train the same --data_dir.",
        "overwrite": "True to replace a dataset made from other text or with another tokenizer (runs trained on it "
                     "then no longer match their data); preparing the same dataset again needs no flag.",
    },
    "ChatConfig": {
        "out_dir": "Always: a run finetuned on a chat dataset (a base run is refused).",
        "init_from": "A Hugging Face folder exported from a chat run, to talk to it without its checkpoint.",
        "checkpoint": "'last' for the final iteration of a run trained with always_save_checkpoint=False.",
        "system": "To set the assistant's behaviour for the whole conversation.",
        "max_new_tokens": "Lower for short answers; the context may end an answer sooner.",
        "temperature": "0 for the same answer every time (what the API gives at temperature 0).",
        "top_k": "Rarely needed beside top_p.",
        "top_p": "1.0 to sample from the whole distribution.",
        "seed": "To get other answers at a temperature above 0.",
        "device": "'cpu' to leave the GPU to training.",
        "dtype": "'float32' for answers identical to a float32 server's.",
        "threads": "1 on a machine busy with other work.",
    },
    "EvalConfig": {
        "init_from": "'gpt2' to measure OpenAI's weights (needs `pip install -e '.[hf]'` and --dataset for loss/bpb).",
        "out_dir": "Always: the run to evaluate.",
        "checkpoint": "'last' for the final iteration of a run trained with always_save_checkpoint=False.",
        "tasks": "'hellaswag' for the zero-shot benchmark; 'bpb' to compare tokenizers.",
        "dataset": "To measure a model on another dataset prepared with the same tokenizer.",
        "data_dir": "When your prepared data lives elsewhere.",
        "data": "Without network: the path of a copy of hellaswag_val.jsonl.",
        "limit": "A quick look on a CPU (e.g. 500 HellaSwag items); 0 for figures to publish.",
        "batch_size": "Larger on a GPU; smaller when out of memory. Results do not depend on it.",
        "device": "'cpu' to leave the GPU free.",
        "dtype": "'float32' for figures that match across devices.",
        "threads": "A number to pin the CPU threads (e.g. 1 for tiny models on a shared machine); 0 takes PyTorch's default, but no more threads than idle cores (cores less the one-minute load average, rounded; at least one).",
    },
    "PlotConfig": {
        "out_dir": "Always: one run, or several to compare (`--out_dir=RUN1 RUN2`).",
        "to": "Another name or format (.svg, .pdf).",
        "x": "'tokens' to compare runs of different batch sizes, 'time' to compare speed.",
    },
    "ReportConfig": {
        "out_dir": "Always: the run to report on.",
    },
}


def cell(text):
    return text.replace("|", "\\|")


def table(cls, missing):
    from nanogpt.config import field_help  # imported after sys.path names the checkout to document

    meanings = field_help(cls)
    notes = NOTES.get(cls.__name__, {})
    rows = ["| setting | default | meaning | when to change it |", "|---|---|---|---|"]
    for f in fields(cls):
        for what, text in (("a meaning (a comment beside the field)", meanings[f.name]),
                           ("advice in NOTES", notes.get(f.name))):
            if not text:
                missing.append(f"{cls.__name__}.{f.name} lacks {what}")
        rows.append(f"| `{f.name}` | `{f.default!r}` | {cell(meanings[f.name] or '—')} | "
                    f"{cell(notes.get(f.name) or '—')} |")
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
            print("; ".join(missing))
        return 1 if stale or missing else 0
    PAGE.write_text(new)
    if missing:
        print("; ".join(missing) + " (shown as —)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
