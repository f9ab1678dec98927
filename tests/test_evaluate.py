"""`nanogpt eval`: loss and bits per byte over the whole val split, HellaSwag-style multiple choice, task data."""

import hashlib
import json
import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanogpt import evaluate
from nanogpt.bpe import GPT2Tokenizer, gpt2_meta
from nanogpt.checkpoint import load_checkpoint, load_model
from nanogpt.cli import main
from nanogpt.data import write_dataset
from nanogpt.errors import UserError
from nanogpt.evaluate import Choice, EvalConfig, EvalContext, evaluate_model, score_choices
from nanogpt.tokenizers import CharTokenizer
from nanogpt.train import train
from tests.conftest import tiny_config

quiet = lambda *_: None  # noqa: E731

# non-ASCII characters make bytes and characters differ, so bits per byte is not bits per character
TEXT = ("Café crème, s'il vous plaît. — Où est la gare ? Très bien, merci.\n" * 30
        + "Naïve façade; déjà vu.\n" * 20)


def train_tiny(data_dir, out_dir, **overrides):
    train(tiny_config(data_dir, out_dir, **overrides), log=quiet)
    ckpt = load_checkpoint(out_dir)
    return load_model(ckpt, out_dir).eval()


def reference_bpb(model, val_ids, val_text_bytes):
    """The val split's mean loss and bits per byte computed the plain way: each window on its own."""
    block = model.config.block_size
    nats = 0.0
    ids = torch.tensor(val_ids)
    with torch.no_grad():
        for start in range(0, len(ids) - 1, block):
            chunk = ids[start:start + block + 1]
            logits, _ = model(chunk[None, :-1], chunk[None, 1:])
            nats += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
    mean_loss = nats / (len(ids) - 1)
    return mean_loss, mean_loss * (len(ids) - 1) / val_text_bytes / math.log(2)


def test_bpb_of_a_char_run_is_its_val_loss_in_bits_per_byte(tmp_path):
    tokenizer = CharTokenizer.from_text(TEXT)
    split = len(TEXT) - 700
    write_dataset(tmp_path / "data" / "tiny", tokenizer.encode(TEXT[:split]), tokenizer.encode(TEXT[split:]),
                  tokenizer.describe())
    model = train_tiny(tmp_path / "data", tmp_path / "run", max_iters=10)
    results = evaluate_model(EvalConfig(out_dir=str(tmp_path / "run"), tasks="loss,bpb", device="cpu",
                                        batch_size=5), log=quiet)

    val_bytes = len(TEXT[split + 1:].encode("utf-8"))  # the first character is never predicted
    assert val_bytes > len(TEXT[split + 1:])
    loss, bpb = reference_bpb(model, tokenizer.encode(TEXT[split:]), val_bytes)
    assert results["loss"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert results["bpb"]["bpb"] == pytest.approx(bpb, rel=1e-5)
    assert results["bpb"]["tokens"] == 699 and results["bpb"]["bytes"] == val_bytes
    # deterministic, and the batching does not change the figure
    again = evaluate_model(EvalConfig(out_dir=str(tmp_path / "run"), tasks="bpb", device="cpu", batch_size=1),
                           log=quiet)
    assert again["bpb"]["bpb"] == pytest.approx(results["bpb"]["bpb"], rel=1e-6)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["tasks"]["loss"]["loss"] == results["loss"]["loss"]  # kept when bpb ran alone later
    assert saved["tasks"]["bpb"]["iter_num"] == 10


def test_bpb_of_a_gpt2_bpe_run_counts_the_bytes_of_each_token(tmp_path):
    tokenizer = GPT2Tokenizer()
    train_text, val_docs = TEXT, ["Où est la gare ? Très bien.\n" * 6, "Naïve façade; déjà vu.\n" * 5]
    val_ids = tokenizer.encode(val_docs[0]) + [tokenizer.eot_token] + tokenizer.encode(val_docs[1])
    write_dataset(tmp_path / "data" / "tiny", tokenizer.encode(train_text), val_ids, gpt2_meta())
    model = train_tiny(tmp_path / "data", tmp_path / "run", max_iters=4)
    assert model.config.vocab_size == 50304
    results = evaluate_model(EvalConfig(out_dir=str(tmp_path / "run"), tasks="bpb", device="cpu"), log=quiet)

    # every token after the first is predicted; <|endoftext|> is no text and counts no bytes
    first = tokenizer.decode(val_ids[:1])
    val_bytes = len((val_docs[0] + val_docs[1]).encode("utf-8")) - len(first.encode("utf-8"))
    loss, bpb = reference_bpb(model, val_ids, val_bytes)
    assert results["bpb"]["bytes"] == val_bytes and results["bpb"]["tokens"] == len(val_ids) - 1
    assert results["bpb"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert results["bpb"]["bpb"] == pytest.approx(bpb, rel=1e-5)


# -------------------------------------------------------------------------------------------------- HellaSwag

SENTENCES = [("the cat sat on", " the mat."), ("a dog ran in", " the park."), ("my bird can", " sing well."),
             ("four fish swim", " in a bowl.")]


def write_hellaswag(path, items):
    with open(path, "w") as f:
        for ctx, endings, label in items:
            f.write(json.dumps({"ctx": ctx, "endings": endings, "label": label, "split": "val"}) + "\n")


def test_hellaswag_picks_the_endings_a_tiny_model_learned(tmp_path):
    text = "".join(ctx + ending + "\n" for ctx, ending in SENTENCES) * 60
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    write_dataset(tmp_path / "data" / "tiny", ids, ids[:400], tokenizer.describe())
    train_tiny(tmp_path / "data", tmp_path / "run", max_iters=150, lr_decay_iters=150, eval_interval=150)
    # each item: a sentence's start; its own ending is right, the other sentences' endings are wrong
    items = []
    for k, (ctx, ending) in enumerate(SENTENCES):
        endings = [e.strip() for _, e in SENTENCES]
        label = (k + 1) % 4
        endings[label], endings[k] = endings[k], endings[label]
        items.append((ctx, endings, label))
    write_hellaswag(tmp_path / "hellaswag.jsonl", items)
    results = evaluate_model(EvalConfig(out_dir=str(tmp_path / "run"), tasks="hellaswag", device="cpu",
                                        data=str(tmp_path / "hellaswag.jsonl")), log=quiet)
    assert results["hellaswag"] == {"acc": 1.0, "acc_norm": 1.0, "items": 4}


class Bigram(torch.nn.Module):
    """A stand-in model whose next-token probabilities are a fixed table: p(next | current)."""

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.log(torch.tensor(probs))
        self.config = type("Config", (), {"block_size": 32})()

    def forward(self, idx, targets=None):
        return self.logits[idx], None


def test_acc_norm_divides_by_the_ending_length():
    # tokens: a=0, b=1, c=2. After "a": b with 0.5, c with 0.3. After "b": b with 0.5.
    model = Bigram([[0.1, 0.5, 0.3, 0.1], [0.25, 0.5, 0.15, 0.1], [0.4, 0.2, 0.2, 0.2], [0.25] * 4])
    tokenizer = CharTokenizer("abcd")
    ctx = EvalContext(model, tokenizer, "cpu", torch.autocast("cpu", enabled=False), batch_size=3, progress=False)
    # "bb" costs ln 2 + ln 2 = 1.39 in all (0.69 a token), "c" costs ln(1/0.3) = 1.20 in all (1.20 a token):
    # the summed loss prefers the short "c", the mean loss the longer "bb"
    items = [Choice("a", ["bb", "c"], 0), Choice("a", ["c", "bb"], 1), Choice("a", ["c", "d"], 0)]
    assert score_choices(ctx, items) == {"acc": pytest.approx(1 / 3), "acc_norm": 1.0, "items": 3}
    losses = evaluate.continuation_losses(ctx, [([0], [1, 1]), ([0], [2])])
    assert losses[0][0] == pytest.approx(2 * math.log(2)) and losses[0][1] == 2
    assert losses[1][0] == pytest.approx(-math.log(0.3)) and losses[1][1] == 1


def test_hellaswag_without_network_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(evaluate.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"cannot download HellaSwag \(no network\).*--data=PATH") as e:
        evaluate.hellaswag_download()
    assert "\n" not in str(e.value)


def test_hellaswag_download_is_cached_with_its_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    body = "".join(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n"
                   for _ in range(evaluate.HELLASWAG_ITEMS)).encode()
    calls = []

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def read(self):
            calls.append(1)
            return body

    monkeypatch.setattr(evaluate.urllib.request, "urlopen", lambda *a, **k: Response())
    path = evaluate.hellaswag_download()
    assert path.read_bytes() == body and evaluate.hellaswag_download() == path and len(calls) == 1
    assert path.with_name(path.name + ".sha256").read_text() == hashlib.sha256(body).hexdigest()
    path.write_bytes(body[:-10])  # damaged
    with pytest.raises(UserError, match="does not match its recorded sha256"):
        evaluate.hellaswag_download()


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--tasks=lambada", "--device=cpu"]) == 1
    assert "unknown eval task 'lambada': choose from loss, bpb, hellaswag" in capsys.readouterr().err
    write_hellaswag(tmp_path / "bad.jsonl", [])
    (tmp_path / "bad.jsonl").write_text('{"ctx": "x"}\n')
    with pytest.raises(UserError, match="line 1 is not a HellaSwag item"):
        evaluate.read_hellaswag(tmp_path / "bad.jsonl")


def test_training_can_run_eval_tasks_at_each_evaluation(char_dataset, tmp_path):
    from nanogpt.metrics import read_metrics, split_kinds

    data_dir, _ = char_dataset
    lines = []
    train(tiny_config(data_dir, tmp_path / "run", max_iters=10, eval_interval=5, eval_tasks="bpb"),
          log=lines.append)
    _, evals = split_kinds(read_metrics(tmp_path / "run"))
    assert [r["iter"] for r in evals] == [0, 5, 10] and all(r["bpb"] > 0 for r in evals)
    assert any(line.startswith("step 10: bpb ") for line in lines)
    final = evaluate_model(EvalConfig(out_dir=str(tmp_path / "run"), tasks="bpb", device="cpu"), log=quiet)
    assert final["bpb"]["bpb"] == pytest.approx(evals[-1]["bpb"], rel=1e-6)
    with pytest.raises(UserError, match="unknown eval task"):
        train(tiny_config(data_dir, tmp_path / "other", eval_tasks="bpb,nope"), log=quiet)


def test_token_byte_lengths_of_gpt2():
    lengths = evaluate.token_byte_lengths(GPT2Tokenizer(), 50304)
    tokenizer = GPT2Tokenizer()
    ids = tokenizer.encode("héllo wörld")
    assert lengths[ids].sum() == len("héllo wörld".encode("utf-8"))
    assert lengths[tokenizer.eot_token] == 0 and len(lengths) == 50304 and not np.any(lengths[50257:])
