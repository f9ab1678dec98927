"""Judging a model: `nanogpt eval`, and the tasks a training run can evaluate at every eval_interval.

Tasks (TASKS below), each a function of an EvalContext that returns a dict of figures:
  loss       the mean loss (nats per token) over the whole val split, every token predicted once
  bpb        the same losses as bits per UTF-8 byte of the text, so runs with different tokenizers compare
  hellaswag  zero-shot multiple choice, completion style: each ending is scored by its token losses after the
             context; acc picks the lowest sum, acc_norm the lowest mean (OpenAI's GPT-2 124M: acc_norm 0.2955 on
             the 10,042 validation items, as measured by llm.c)

Everything is deterministic (no sampling, fixed windows) and batched. A new multiple-choice task (ARC, PIQA…) is
one function that loads its items as Choice(context, choices, label) and returns score_choices(ctx, items); a
cloze task (LAMBADA) can score its target words the same way with continuation_losses.
"""

import hashlib
import json
import math
import os
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanogpt import checkpoint, runtime
from nanogpt.config import check_device
from nanogpt.data import Dataset
from nanogpt.errors import UserError
from nanogpt.files import write_bytes_atomically
from nanogpt.runs import check_checkpoint_choice, load_model
from nanogpt.tokenizers import tokenizer_from_meta

EVAL_FILE = "eval.json"


@dataclass
class EvalConfig:
    init_from: str = "resume"  # 'resume' evaluates the run in out_dir; or gpt2 … gpt2-xl, a hub name or an HF folder
    out_dir: str = "out"  # the run to evaluate; the results are added to its eval.json
    checkpoint: str = "auto"  # 'best' (best.pt), 'last' (ckpt.pt) or 'auto': the one nanoGPT would have kept
    tasks: str = "loss,bpb"  # comma-separated: loss, bpb, hellaswag; chat (exact match), gsm8k, arc (network)
    dataset: str = ""  # loss/bpb: the dataset whose val split is read ('' = the run's own dataset)
    data_dir: str = ""  # the folder holding dataset folders ('' = the run's data_dir, else 'data')
    data: str = ""  # hellaswag: a local copy of hellaswag_val.jsonl; chat: a JSONL of conversations, or 'synthetic'
    limit: int = 0  # score only the first N val tokens (loss/bpb) or items (hellaswag); 0 = all
    batch_size: int = 16  # sequences per forward pass
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'
    dtype: str = "auto"  # 'auto', 'native', 'float32', 'bfloat16', 'float16'
    threads: int = 0  # CPU threads; 0: PyTorch's default, capped at the idle cores

    def to_dict(self):
        return asdict(self)


@dataclass
class EvalContext:
    """What a task needs: the model ready to run, its tokenizer, and where its data is."""

    model: torch.nn.Module
    tokenizer: object
    device: str
    autocast: object  # the context manager forward passes run in
    dataset: Dataset = None  # loss/bpb read its val split
    data: str = ""  # a local task file (hellaswag), else the cached download
    limit: int = 0
    batch_size: int = 16
    progress: bool = True  # show tqdm bars (nanogpt eval); off inside training, whose log lines are the record
    cache: dict = field(default_factory=dict)  # results shared by tasks within one evaluation (loss and bpb)


@dataclass
class Choice:
    """One multiple-choice item: the context, the candidate continuations, and the index of the right one."""

    context: str
    choices: list
    label: int


# ------------------------------------------------------------------------------------------ loss, bits per byte


def val_split_losses(ctx):
    """Summed loss (nats) and count of every val token predicted once, and the UTF-8 bytes of those tokens."""
    if "val" not in ctx.cache:
        if ctx.dataset is None:
            raise UserError("loss and bpb need a dataset: pass --dataset=NAME (a folder under --data_dir)")
        tokens = np.asarray(ctx.dataset.tokens("val"))
        if ctx.limit:
            tokens = tokens[:ctx.limit]
        nats, count = sequence_loss(ctx, tokens)
        byte_counts = token_byte_lengths(tokenizer_from_meta(ctx.dataset.meta), ctx.dataset.vocab_size)
        ctx.cache["val"] = nats, count, int(byte_counts[tokens[1:]].sum())
    return ctx.cache["val"]


def loss_task(ctx):
    nats, count, _ = val_split_losses(ctx)
    return {"loss": nats / count, "tokens": count}


def bpb_task(ctx):
    nats, count, n_bytes = val_split_losses(ctx)
    if n_bytes == 0:
        raise UserError("the val split holds no text bytes to measure bits per byte on")
    return {"bpb": nats / math.log(2) / n_bytes, "loss": nats / count, "tokens": count, "bytes": n_bytes}


@torch.no_grad()
def sequence_loss(ctx, tokens):
    """(summed loss, count) of predicting tokens[1:] from what precedes them. The tokens are cut into windows of
    block_size + 1 overlapping by one token, so each is predicted once, from the earlier tokens of its window
    (as in training); windows are batched and summed in float64, so the result does not depend on the batch."""
    block = ctx.model.config.block_size
    n_targets = len(tokens) - 1
    if n_targets < 1:
        raise UserError("the val split needs at least two tokens")
    starts = list(range(0, n_targets, block))
    full = [s for s in starts if s + block <= n_targets]
    groups = [full[i:i + ctx.batch_size] for i in range(0, len(full), ctx.batch_size)]
    if len(full) < len(starts):
        groups.append(starts[len(full):])  # the last, shorter window
    total = 0.0
    for group in tqdm(groups, desc="val loss", unit="batch", disable=not ctx.progress, leave=False):
        length = min(block, n_targets - group[0])
        rows = np.stack([tokens[s:s + length + 1] for s in group]).astype(np.int64)
        x = torch.from_numpy(rows[:, :-1]).to(ctx.device)
        y = torch.from_numpy(rows[:, 1:]).to(ctx.device)
        total += float(token_losses(ctx, x, y).double().sum())
    return total, n_targets


def token_losses(ctx, x, y):
    """The loss of each target token (B, T) in float32; targets of -1 get 0."""
    with ctx.autocast:
        logits, _ = ctx.model(x, y)
    flat = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                           reduction="none")
    return flat.view(y.shape)


def token_byte_lengths(tokenizer, vocab_size):
    """The number of UTF-8 bytes of each token id's text. The end-of-text token separates documents and is no
    text, so it counts 0 bytes (its loss still counts, as in the val loss)."""
    if tokenizer.name == "char":
        lengths = [len(c.encode("utf-8")) for c in tokenizer.chars]
    elif hasattr(tokenizer, "enc"):  # tiktoken's byte-level BPE (GPT-2's, or one trained here): exact bytes
        lengths = [token_bytes(tokenizer.enc, i) for i in range(tokenizer.enc.n_vocab)]
        if tokenizer.eot_token is not None:
            lengths[tokenizer.eot_token] = 0
    else:
        raise UserError(f"bits per byte needs each token's bytes, which the '{tokenizer.name}' tokenizer does not "
                        "give: use --tasks=loss")
    out = np.zeros(max(vocab_size, len(lengths)), dtype=np.int64)
    out[:len(lengths)] = lengths
    return out


def token_bytes(enc, token):
    try:
        return len(enc.decode_single_token_bytes(token))
    except KeyError:  # an id the vocabulary leaves unused
        return 0


# ------------------------------------------------------------------------------------------- multiple choice


@torch.no_grad()
def continuation_losses(ctx, pairs):
    """For each (context ids, continuation ids): the summed loss of the continuation's tokens after the context,
    and their count. Rows are batched, padded on the right (causal attention never looks at the padding); a
    context longer than the model's block loses its oldest tokens."""
    block = ctx.model.config.block_size
    rows = []
    for context, continuation in pairs:
        ids = (context + continuation)[-(block + 1):]
        rows.append((ids, min(len(continuation), len(ids) - 1)))
    results = []
    batches = range(0, len(rows), ctx.batch_size)
    for i in tqdm(batches, desc="choices", unit="batch", disable=not ctx.progress, leave=False):
        batch = rows[i:i + ctx.batch_size]
        width = max(len(ids) for ids, _ in batch) - 1
        x = torch.zeros((len(batch), width), dtype=torch.long)
        y = torch.full((len(batch), width), -1, dtype=torch.long)
        for r, (ids, n_scored) in enumerate(batch):
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            # only the continuation's tokens are targets; the context's are ignored
            y[r, len(ids) - 1 - n_scored:len(ids) - 1] = torch.tensor(ids[len(ids) - n_scored:])
        losses = token_losses(ctx, x.to(ctx.device), y.to(ctx.device)).double().sum(dim=1).tolist()
        results += [(loss, n_scored) for loss, (_, n_scored) in zip(losses, batch)]
    return results


def score_choices(ctx, items):
    """Zero-shot multiple choice: acc picks the choice with the lowest summed token loss, acc_norm the lowest
    mean token loss (so a longer right answer is not penalised for its length)."""
    if not items:
        raise UserError("no items to score")
    contexts = [ctx.tokenizer.encode(item.context) for item in items]  # once per item, not once per choice
    pairs = [(context, ctx.tokenizer.encode(choice)) for item, context in zip(items, contexts)
             for choice in item.choices]
    scored = iter(continuation_losses(ctx, pairs))
    right = right_norm = 0
    for item in items:
        losses = [next(scored) for _ in item.choices]
        right += int(np.argmin([total for total, _ in losses])) == item.label
        right_norm += int(np.argmin([total / max(count, 1) for total, count in losses])) == item.label
    return {"acc": right / len(items), "acc_norm": right_norm / len(items), "items": len(items)}


# ------------------------------------------------------------------------------------------------ HellaSwag

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_ITEMS = 10042  # the validation split's size


def hellaswag_task(ctx):
    path = Path(ctx.data) if ctx.data else hellaswag_download()
    items = read_hellaswag(path)
    return score_choices(ctx, items[:ctx.limit] if ctx.limit else items)


def read_hellaswag(path):
    """HellaSwag's items from its jsonl file: each ending follows the context after a space, as GPT-2 was
    scored (completion style)."""
    if not Path(path).is_file():
        raise UserError(f"HellaSwag file {path} not found: give the path of hellaswag_val.jsonl with --data")
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(Choice(row["ctx"], [" " + ending for ending in row["endings"]], int(row["label"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise UserError(f"{path} line {number} is not a HellaSwag item (ctx, endings, label)") from None
    return items


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanogpt"


def hellaswag_download():
    """The cached validation file, downloaded on first use. The download must hold all 10,042 items; its sha256
    is recorded beside it and checked on every later use, so a changed or damaged cache is never scored."""
    path = cache_dir() / "hellaswag_val.jsonl"
    recorded = path.with_name(path.name + ".sha256")
    if path.is_file() and recorded.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() != recorded.read_text().strip():
            raise UserError(f"{path} does not match its recorded sha256: delete it to download it again")
        return path
    try:
        with urllib.request.urlopen(HELLASWAG_URL, timeout=30) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"cannot download HellaSwag ({getattr(e, 'reason', e)}): fetch {HELLASWAG_URL} yourself and pass "
            f"--data=PATH, or save it as {path}"
        ) from None
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(lines) != HELLASWAG_ITEMS:
        raise UserError(f"the HellaSwag download has {len(lines)} items, not {HELLASWAG_ITEMS}; try again later")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, data, "HellaSwag file")
    write_bytes_atomically(recorded, hashlib.sha256(data).hexdigest().encode(), "HellaSwag checksum")
    return path


# ------------------------------------------------------------------------------------------ chat: exact match

CHAT_ITEMS = 500  # held-out conversations of the synthetic task scored when --limit does not say


def chat_task(ctx):
    """Exact match on held-out conversations: the share whose last (assistant) message the model gives word for
    word, answering greedily. --data=FILE.jsonl (OpenAI `messages`, the last one the assistant's), or
    --data=synthetic: the synthetic task's held-out questions (those `prepare --input=synthetic` did not write)."""
    from nanogpt.conversation import exact_match, problem, read_jsonl, synthetic_held_out

    if not ctx.data:
        raise UserError("the chat task needs conversations: --data=FILE.jsonl, or --data=synthetic")
    if ctx.data == "synthetic":
        conversations = synthetic_held_out(ctx.limit or CHAT_ITEMS)
    else:
        if not Path(ctx.data).is_file():
            raise UserError(f"{ctx.data} not found: give a JSONL file of conversations with --data")
        conversations = [c for c in read_jsonl(ctx.data) if not problem(c) and c[-1]["role"] == "assistant"]
        conversations = conversations[:ctx.limit] if ctx.limit else conversations
        if not conversations:
            raise UserError(f"{ctx.data} holds no conversation ending with an assistant message to score")
    with ctx.autocast:
        accuracy, _ = exact_match(ctx.model, ctx.tokenizer, conversations)
    return {"exact_match": accuracy, "items": len(conversations)}



def gsm8k_task(ctx):
    """Grade-school maths (GSM8K, Cobbe et al. 2021) asked as chat: right when the last number of the model's
    answer is the reference's final answer (after '####'). From the Hugging Face hub, or --data=a local copy."""
    rows = hub_rows(ctx, "openai/gsm8k", "main", "test")
    if isinstance(rows, str):
        return {"skipped": rows}
    conversations = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
                     for r in rows]
    return chat_accuracy(ctx, conversations, lambda answer, expected: last_number(answer) == last_number(
        expected.split("####")[-1]))


def arc_task(ctx):
    """ARC-Challenge (Clark et al. 2018) asked as chat: the question and its lettered choices; right when the
    answer is the right letter. From the Hugging Face hub, or --data=a local copy."""
    rows = hub_rows(ctx, "allenai/ai2_arc", "ARC-Challenge", "test")
    if isinstance(rows, str):
        return {"skipped": rows}
    conversations = []
    for r in rows:
        choices = "\n".join(f"{label}. {text}" for label, text in zip(r["choices"]["label"], r["choices"]["text"]))
        question = f"{r['question']}\n{choices}\nAnswer with the letter of the right choice."
        conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": r["answerKey"]}])
    return chat_accuracy(ctx, conversations)


def chat_accuracy(ctx, conversations, check=None):
    from nanogpt.conversation import exact_match

    with ctx.autocast:
        accuracy, _ = exact_match(ctx.model, ctx.tokenizer, conversations, check=check)
    return {"accuracy": accuracy, "items": len(conversations)}


def last_number(text):
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


def hub_rows(ctx, name, config, split):
    """A network task's rows (the first --limit): a local copy (--data, any file or folder `datasets` reads), else
    the hub; a reason string when neither can be read, so the task is skipped with one line and the others run."""
    try:
        import datasets
    except ImportError:
        return "needs the datasets package: pip install 'nanogpt[hf]'"
    try:
        if ctx.data and Path(ctx.data).exists():
            path = Path(ctx.data)
            kind = {".jsonl": "json"}.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
            ds = datasets.load_dataset(kind, data_files=str(path), split="train") if path.is_file() else \
                datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub client raises errors of many kinds offline
        return f"{name} could not be loaded ({type(e).__name__}): offline? pass --data=a local copy"
    return list(ds.select(range(min(ctx.limit, len(ds)))) if ctx.limit else ds)


# ------------------------------------------------------------------------------------------ tasks and command

# name -> task function; the figures each returns are reported as "<name>_<figure>" (or "<name>" for its own)
TASKS = {"loss": loss_task, "bpb": bpb_task, "hellaswag": hellaswag_task, "chat": chat_task, "gsm8k": gsm8k_task,
         "arc": arc_task}


def parse_tasks(text):
    """'bpb,hellaswag' -> ['bpb', 'hellaswag'], checking every name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in TASKS:
            raise UserError(f"unknown eval task '{name}': choose from {', '.join(TASKS)}")
    return names


def run_tasks(ctx, names):
    """{task: {figure: value}} for each named task, in order."""
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        return {name: TASKS[name](ctx) for name in names}
    finally:
        ctx.model.train(was_training)


def flatten(results):
    """{'bpb': {'bpb': 2.1, 'loss': 1.4}, 'hellaswag': {'acc': .3}} -> {'bpb': 2.1, 'hellaswag_acc': .3}: the
    headline figure of each task, for metrics.jsonl and log lines (counts left out)."""
    flat = {}
    for task, figures in results.items():
        for figure, value in figures.items():
            if figure in ("tokens", "bytes", "items") or (figure == "loss" and task != "loss") or isinstance(
                    value, str):
                continue
            flat[task if figure == task else f"{task}_{figure}"] = value
    return flat


def validate_eval_config(cfg):
    check_device(cfg)
    if cfg.batch_size < 1 or cfg.limit < 0:
        raise UserError("batch_size must be at least 1 and limit at least 0")
    check_checkpoint_choice(cfg.checkpoint)
    if not parse_tasks(cfg.tasks):
        raise UserError(f"say which tasks to run with --tasks=..., from: {', '.join(TASKS)}")


def evaluate_model(cfg: EvalConfig, log=print):
    """Run cfg.tasks on the model cfg names, print a table, and add the results to out_dir/eval.json.
    Returns {task: {figure: value}}."""
    validate_eval_config(cfg)
    names = parse_tasks(cfg.tasks)
    device, _, dtype = runtime.set_up(cfg.device, cfg.dtype, threads=cfg.threads)
    model, tokenizer = load_model(cfg.init_from, cfg.out_dir, device, cfg.checkpoint)
    model.eval().to(device)
    run = run_settings(cfg)
    ctx = EvalContext(model, tokenizer, device, runtime.autocast(runtime.device_type(device), dtype),
                      dataset=eval_dataset(cfg, run, tokenizer, model) if {"loss", "bpb"} & set(names) else None,
                      data=cfg.data, limit=cfg.limit, batch_size=cfg.batch_size)
    results = run_tasks(ctx, names)
    log(format_table(results))
    write_eval_json(cfg.out_dir, results, {"model": cfg.init_from, "checkpoint": cfg.checkpoint,
                                           "iter_num": run.get("iter_num"),
                                           "dataset": ctx.dataset.folder.name if ctx.dataset else None,
                                           "limit": cfg.limit})
    return results


def run_settings(cfg):
    """The training config and iteration of the run being evaluated ({} for pretrained weights)."""
    if cfg.init_from != "resume":
        return {}
    # mmap: only the small config is read here (load_model has read the weights)
    ckpt = checkpoint.load_file(checkpoint.checkpoint_path(cfg.out_dir, "latest" if cfg.checkpoint == "last"
                                                           else cfg.checkpoint), mmap=True)
    return {**(ckpt.get("config") or {}), "iter_num": ckpt.get("iter_num")}


def eval_dataset(cfg, run, tokenizer, model):
    """The dataset whose val split loss/bpb read, checked against the model's tokenizer."""
    name = cfg.dataset or run.get("dataset")
    if not name:
        raise UserError("loss and bpb need a dataset for pretrained weights: pass --dataset=NAME")
    dataset = Dataset(Path(cfg.data_dir or run.get("data_dir") or "data") / name)
    if dataset.meta.get("tokenizer") != tokenizer.name or dataset.vocab_size > model.config.vocab_size:
        raise UserError(
            f"dataset {dataset.folder} uses the '{dataset.meta.get('tokenizer')}' tokenizer, the model reads "
            f"'{tokenizer.name}' tokens: evaluate on a dataset prepared with the model's tokenizer"
        )
    return dataset


def format_table(results):
    lines = ["task       figure     value", "---------  ---------  ----------"]
    for task, figures in results.items():
        for figure, value in figures.items():
            shown = f"{value:.4f}" if isinstance(value, float) else value if isinstance(value, str) else f"{value:,}"
            lines.append(f"{task:<9}  {figure:<9}  {shown:>10}")
    return "\n".join(lines)


def write_eval_json(out_dir, results, about):
    """Add results to out_dir/eval.json, keeping other tasks' earlier results."""
    path = Path(out_dir) / EVAL_FILE
    previous = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text()).get("tasks", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    document = {**about, "tasks": {**previous, **{k: dict(v, **about) for k, v in results.items()}}}
    write_bytes_atomically(path, (json.dumps(document, indent=1) + "\n").encode(), "eval file")
