"""A BPE tokenizer trained on the user's text: exact round trips for any Unicode, the same tokenizer and ids from a
file, a folder or a Hugging Face dataset, training on the train split alone, the same ids from tiktoken (ours) and
Hugging Face's tokenizers (what an export carries), runs that decode without their dataset, and every bad input as
a one-line error that writes nothing."""

import json
import random
import shutil

import numpy as np
import pytest

from nanogpt import cli
from nanogpt.bpe import ENDOFTEXT, MIN_VOCAB_SIZE, BPETokenizer, byte_alphabet, train_bpe
from nanogpt.data import Dataset
from nanogpt.datasets import prepare_text
from nanogpt.errors import UserError
from nanogpt.tokenizers import tokenizer_from_meta
from tests.conftest import CORPUS, tiny_config

tokenizers = pytest.importorskip("tokenizers")

quiet = dict(log=lambda *_: None)
LINES = sorted({line for line in CORPUS.splitlines() if line.strip()})


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.from_ranks(train_bpe([CORPUS], 300))


def random_text(rng, length):
    """Text from every corner of Unicode: ASCII and controls, Latin-1, CJK, emoji, combining marks, right-to-left
    scripts, the planes above, whitespace runs, and the literal end-of-text marker."""
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x300, 0x36F), (0x590, 0x6FF), (0x4E00, 0x9FFF), (0xE000, 0xFFFD),
              (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    pieces = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.05:
            pieces.append(rng.choice([ENDOFTEXT, "\r\n", "   ", "\t\n\n", " 's", "'ll"]))
        elif roll < 0.3:
            pieces.append(rng.choice(LINES))
        else:
            lo, hi = rng.choice(ranges)
            c = rng.randint(lo, hi)
            pieces.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "x")  # lone surrogates are not text
    return "".join(pieces)


def test_round_trip_for_any_unicode(bpe):
    rng = random.Random(0)
    for _ in range(300):
        text = random_text(rng, rng.randint(0, 60))
        assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode("")) == ""
    assert bpe.encode(ENDOFTEXT) == [bpe.eot_token] == [bpe.vocab_size - 1]


def test_trained_tokens_are_used(bpe):
    """The vocabulary is the size asked, and it learned the corpus: far fewer tokens than bytes."""
    assert bpe.vocab_size == 300
    assert len(bpe.encode(CORPUS)) < len(CORPUS.encode()) / 2
    assert bpe.encode(" speak") == [bpe.enc.encode_single_token(b" speak")]


def test_hugging_face_tokenizer_gives_the_same_ids(bpe):
    """The tokenizer.json an export carries encodes as tiktoken does with our ranks, on seen and unseen text."""
    theirs = tokenizers.Tokenizer.from_str(bpe.tokenizer_json)
    rng = random.Random(1)
    texts = [CORPUS, CORPUS.upper(), CORPUS.replace("e", "é")] + [random_text(rng, 80) for _ in range(200)]
    words = CORPUS.split()
    texts += [" ".join(rng.choice(words)[::rng.choice([1, -1])] for _ in range(40)) for _ in range(200)]
    for text in texts:
        ids = bpe.encode(text)
        assert theirs.encode(text).ids == ids
        assert theirs.decode(ids, skip_special_tokens=False) == text


def test_byte_alphabet_is_hugging_faces():
    from tokenizers.pre_tokenizers import ByteLevel

    assert len(set(byte_alphabet())) == 256 and set(byte_alphabet()) == set(ByteLevel.alphabet())
    assert byte_alphabet()[ord(" ")] == "Ġ" and byte_alphabet()[ord("\n")] == "Ċ"  # GPT-2's well-known stand-ins


def scenes():
    """Ten documents, each ending in one newline after a word, so joined in one file they split into the same
    words; the tenth is a little shorter, so the last tenth of the file is exactly the tenth document."""
    docs = []
    for i in range(10):
        rng = random.Random(i)
        docs.append("\n".join([f"Scene {i}:"] + [rng.choice(LINES) for _ in range(12 if i < 9 else 11)]) + "\n")
    return docs


def test_same_tokenizer_and_ids_from_file_folder_and_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = scenes()
    (tmp_path / "one.txt").write_text("".join(docs))
    (tmp_path / "folder").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "folder" / f"{i}.txt").write_text(doc)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "hf"))
    results = {}
    for source in ("one.txt", "folder", "hf"):
        prepare_text(tmp_path / source, source, tokenizer="bpe", vocab_size=300, data_dir=tmp_path / "data",
                     val_split="tail", **quiet)
        ds = Dataset(tmp_path / "data" / source)
        results[source] = ds.meta["tokenizer_json"], [ds.tokens(s).tolist() for s in ("train", "val")]
    tok = BPETokenizer(results["folder"][0])
    assert tok.decode(results["one.txt"][1][0]) == "".join(docs[:9])  # the file's train split is the nine scenes
    assert results["one.txt"][0] == results["folder"][0] == results["hf"][0]
    assert results["folder"][1] == results["hf"][1]
    # a single file is a single document: the same ids without the <|endoftext|> after each scene
    assert [[i for i in split if i != tok.eot_token] for split in results["folder"][1]] == results["one.txt"][1]
    assert results["folder"][1][1] == tok.encode(docs[9]) + [tok.eot_token]


def test_trained_on_the_train_split_only(tmp_path):
    """A word that only the validation text holds, however often, never becomes a token."""
    (tmp_path / "corpus.txt").write_text(CORPUS * 9 + "Zyzzyva quoth Xanthippe.\n" * 250)  # all in the last tenth
    prepare_text(tmp_path / "corpus.txt", "mine", tokenizer="bpe", vocab_size=330, data_dir=tmp_path / "data",
                 val_split="tail", **quiet)
    tok = tokenizer_from_meta(Dataset(tmp_path / "data" / "mine").meta)
    assert len(tok.encode(" Xanthippe")) >= 5 and len(tok.encode(" resolved")) == 1
    (tmp_path / "all.txt").write_text("Zyzzyva quoth Xanthippe.\n" * 250 + CORPUS * 2)  # now in train
    prepare_text(tmp_path / "all.txt", "all", tokenizer="bpe", vocab_size=330, data_dir=tmp_path / "data", **quiet)
    assert len(tokenizer_from_meta(Dataset(tmp_path / "data" / "all").meta).encode(" Xanthippe")) == 1


def test_run_decodes_without_its_dataset(tmp_path):
    """A checkpoint carries the tokenizer: the run, copied elsewhere with its dataset gone, still samples."""
    from nanogpt.checkpoint import load_checkpoint
    from nanogpt.sample import SampleConfig, sample
    from nanogpt.train import train

    (tmp_path / "corpus.txt").write_text(CORPUS)
    prepare_text(tmp_path / "corpus.txt", "tiny", tokenizer="bpe", vocab_size=300, data_dir=tmp_path / "data",
                 **quiet)
    meta = json.loads((tmp_path / "data" / "tiny" / "meta.json").read_text())
    assert dict(meta, shards=None) == {"tokenizer": "bpe", "vocab_size": 300, "eot_token": 299, "dtype": "uint16",
                                       "shards": None}
    expected = (tmp_path / "data" / "tiny" / "tokenizer.json").read_text()
    train(tiny_config(tmp_path / "data", tmp_path / "run", max_iters=4, lr_decay_iters=4), **quiet)
    shutil.rmtree(tmp_path / "data")
    shutil.move(tmp_path / "run", tmp_path / "elsewhere")
    ckpt = load_checkpoint(tmp_path / "elsewhere")
    assert ckpt["model_args"]["vocab_size"] == 300  # the tokenizer's, unpadded below 1024
    assert ckpt["tokenizer"]["tokenizer"] == "bpe" and ckpt["tokenizer"]["tokenizer_json"] == expected
    (text,) = sample(SampleConfig(out_dir=str(tmp_path / "elsewhere"), start="All:", num_samples=1,
                                  max_new_tokens=10, device="cpu", dtype="float32"), write=lambda *a: None)
    assert text.startswith("All:") and len(text) > len("All:")


def assert_one_line_error(stderr, message):
    last = stderr.splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in stderr, stderr


def write_corpus(tmp_path, text):
    (tmp_path / "corpus.txt").write_text(text)
    return tmp_path / "corpus.txt"


@pytest.mark.parametrize("text, options, message", [
    (CORPUS, ["--vocab_size=256"], f"vocab_size must be a whole number of at least {MIN_VOCAB_SIZE}"),
    (CORPUS, ["--vocab_size=-3"], "vocab_size must be a whole number"),
    (CORPUS, ["--vocab_size=1e4"], "vocab_size must be an integer"),
    (CORPUS, [], "a trained BPE needs its size: give --vocab_size=N, at least 257"),
    ("", ["--vocab_size=300"], "too small to give both a train and a val split"),
    (" \n\t\n" * 400 + "words at the end\n" * 50, ["--vocab_size=300"], "train split of"),
    (CORPUS, ["--vocab_size=5000"], "too small for vocab_size=5,000"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, text, options, message):
    path = write_corpus(tmp_path, text)
    args = ["prepare", f"--input={path}", "--name=mine", "--tokenizer=bpe", *options, f"--data_dir={tmp_path / 'data'}"]
    assert cli.main(args) == 1
    assert_one_line_error(capsys.readouterr().err, message)
    assert not (tmp_path / "data").exists()


def test_vocab_size_is_only_for_bpe(tmp_path):
    with pytest.raises(UserError, match="vocab_size is for --tokenizer=bpe"):
        prepare_text(write_corpus(tmp_path, CORPUS), "mine", tokenizer="char", vocab_size=300,
                     data_dir=tmp_path / "data", **quiet)


def test_blank_train_split_says_no_text(tmp_path):
    with pytest.raises(UserError, match="holds no text"):
        prepare_text(write_corpus(tmp_path, " \n" * 500 + "x\n" * 40), "mine", tokenizer="bpe", vocab_size=300,
                     data_dir=tmp_path / "data", val_split="tail", **quiet)
    assert not (tmp_path / "data").exists()


def test_dataset_without_its_tokenizer_file_is_one_line(tmp_path):
    prepare_text(write_corpus(tmp_path, CORPUS), "mine", tokenizer="bpe", vocab_size=300,
                 data_dir=tmp_path / "data", **quiet)
    (tmp_path / "data" / "mine" / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json is missing"):
        Dataset(tmp_path / "data" / "mine")


def test_preparing_again_and_switching_tokenizer(tmp_path):
    """The same BPE dataset prepared twice is the same dataset; another one (even only another vocabulary) needs
    overwrite, and a tokenizer without a tokenizer.json removes the stale one."""
    path = write_corpus(tmp_path, CORPUS)
    prepare_text(path, "mine", tokenizer="bpe", vocab_size=300, data_dir=tmp_path / "data", **quiet)
    prepare_text(path, "mine", tokenizer="bpe", vocab_size=300, data_dir=tmp_path / "data", **quiet)  # no change
    with pytest.raises(UserError, match="already holds a different dataset"):
        prepare_text(path, "mine", tokenizer="bpe", vocab_size=290, data_dir=tmp_path / "data", **quiet)
    prepare_text(path, "mine", tokenizer="char", data_dir=tmp_path / "data", overwrite=True, val_split="tail", **quiet)
    assert not (tmp_path / "data" / "mine" / "tokenizer.json").exists()
    ds = Dataset(tmp_path / "data" / "mine")
    ids = np.concatenate([ds.tokens("train"), ds.tokens("val")]).tolist()
    assert tokenizer_from_meta(ds.meta).decode(ids) == CORPUS


def test_literal_end_of_text_in_a_document_is_text(tmp_path):
    """Only the separator the recipe adds is <|endoftext|>; the same characters inside a document stay characters."""
    root = tmp_path / "docs"
    root.mkdir()
    docs = scenes()
    docs[3] = docs[3].replace("All:", f"All {ENDOFTEXT}:")
    for i, doc in enumerate(docs):
        (root / f"{i}.txt").write_text(doc)
    prepare_text(root, "mine", tokenizer="bpe", vocab_size=300, data_dir=tmp_path / "data", val_split="tail", **quiet)
    ds = Dataset(tmp_path / "data" / "mine")
    tok = tokenizer_from_meta(ds.meta)
    train_ids = ds.tokens("train").tolist()
    assert train_ids.count(tok.eot_token) == 9  # one after each of the nine training documents
    assert tok.decode(train_ids) == "".join(doc + ENDOFTEXT for doc in docs[:9])
