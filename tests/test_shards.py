"""Sharded datasets: the loader reads every shard, windows run across shard boundaries as one stream, document-aligned
rows start at documents, batches are the same on 1 and 2 ranks and after a resume, a broken shard is refused in one
line; the prepare resumes after SIGKILL with the very same bytes; folders by pattern and a seeded val split."""

import glob
import os
import signal
import time

import numpy as np
import pytest

from nanogpt import cli
from nanogpt import datasets as datasets_module
from nanogpt import prepare_workers
from nanogpt.bpe import ENDOFTEXT
from nanogpt.data import Batches, Dataset, DatasetWriter, batch_offsets, write_dataset
from nanogpt.datasets import prepare_text
from nanogpt.errors import UserError
from nanogpt.tokenizers import tokenizer_from_meta
from tests.conftest import CORPUS
from tests.test_datasets import assert_one_line_error

quiet = dict(log=lambda *_: None)
DOCS = [f"Document {i}. " + CORPUS[i * 53:i * 53 + 40 + 7 * (i % 9)] for i in range(60)]
BLOCK = 16


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A GPT-2 dataset of 60 documents in shards of 200 tokens."""
    root = tmp_path_factory.mktemp("shards")
    (root / "docs").mkdir()
    for i, doc in enumerate(DOCS):
        (root / "docs" / f"{i:02d}.txt").write_text(doc)
    prepare_text(root / "docs", "mine", data_dir=root / "data", shard_tokens=200, **quiet)
    return root / "data" / "mine"


def test_windows_reach_every_shard_and_cross_shard_boundaries_as_one_stream(sharded):
    ds = Dataset(sharded)
    stream = np.concatenate([np.fromfile(path, dtype=ds.dtype) for path, _ in ds.shards["train"]])
    assert len(ds.shards["train"]) >= 5 and ds.lengths["train"] == stream.size
    offsets = np.concatenate([batch_offsets(7, 0, step, 8, ds.lengths["train"], BLOCK) for step in range(40)])
    shard_of = np.searchsorted(ds.starts["train"], offsets, side="right") - 1
    assert set(shard_of) == set(range(len(ds.shards["train"])))
    crossing = [o for o, k in zip(offsets, shard_of) if o + BLOCK + 1 > ds.starts["train"][k + 1]]
    assert crossing, "some window should run across a shard boundary"
    x, y = ds.batch("train", np.array(crossing), BLOCK)
    for row_x, row_y, o in zip(x.numpy(), y.numpy(), crossing):
        assert row_x.tolist() == stream[o:o + BLOCK].tolist() and row_y.tolist() == stream[o + 1:o + BLOCK + 1].tolist()


def test_document_aligned_rows_start_at_documents(sharded):
    ds = Dataset(sharded)
    stream = np.concatenate([np.fromfile(path, dtype=ds.dtype) for path, _ in ds.shards["train"]])
    eot = tokenizer_from_meta(ds.meta).eot_token
    truth = np.concatenate([[0], np.flatnonzero(stream == eot) + 1])
    assert ds.document_starts("train", BLOCK).tolist() == truth[truth <= stream.size - BLOCK - 1].tolist()
    batches = Batches(ds, 3, 4, 2, 0, 1, BLOCK, "cpu", document_aligned=True)
    starts = set()
    for step in range(30):
        for micro in range(2):
            x, _ = batches.get(step, micro)
            for row in x.numpy():
                i = int(np.flatnonzero([stream[s:s + BLOCK].tolist() == row.tolist() for s in truth])[0])
                starts.add(i)
    batches.close()
    assert len(starts) > 20  # rows start at many different documents, each at its first token


def test_global_batches_are_the_same_on_1_and_2_ranks_and_after_a_resume(sharded):
    ds = Dataset(sharded)
    one = Batches(ds, 5, 3, 4, 0, 1, BLOCK, "cpu")
    ranks = [Batches(ds, 5, 3, 4, r, 2, BLOCK, "cpu") for r in range(2)]
    resumed = Batches(ds, 5, 3, 4, 0, 1, BLOCK, "cpu")
    for step in range(6):
        whole = [one.get(step, m)[0] for m in range(4)]
        split = [ranks[r].get(step, m)[0] for r in range(2) for m in range(2)]
        assert all((a == b).all() for a, b in zip(whole, split))
        if step >= 3:  # a run resumed at step 3 reads the same rows as the one that went on
            assert all((resumed.get(step, m)[0] == whole[m]).all() for m in range(4))
    for b in [one, resumed, *ranks]:
        b.close()


def test_a_batch_ramp_grows_the_batch_the_same_on_1_and_2_ranks(sharded):
    from nanogpt.data import ramped_batch_size
    assert [ramped_batch_size(6, 2, 4, step) for step in range(6)] == [2, 3, 4, 5, 6, 6]
    ds = Dataset(sharded)
    one = Batches(ds, 5, 6, 2, 0, 1, BLOCK, "cpu", ramp=(2, 4))
    ranks = [Batches(ds, 5, 6, 2, r, 2, BLOCK, "cpu", ramp=(2, 4)) for r in range(2)]
    for step in range(6):
        whole = [one.get(step, m)[0] for m in range(2)]
        assert [len(x) for x in whole] == [ramped_batch_size(6, 2, 4, step)] * 2
        assert all((ranks[r].get(step, 0)[0] == whole[r]).all() for r in range(2))
    for b in [one, *ranks]:
        b.close()


def test_single_file_batches_are_todays(tmp_path):
    ids = np.random.default_rng(0).integers(0, 65, 5000)
    write_dataset(tmp_path / "d", ids, ids[:100], {"tokenizer": "char", "vocab_size": 65, "chars": "x" * 65})
    ds = Dataset(tmp_path / "d")
    x, y = Batches(ds, 11, 4, 1, 0, 1, BLOCK, "cpu").get(9, 0)
    offsets = np.random.Generator(np.random.PCG64([11, 0, 9])).integers(0, 5000 - BLOCK, size=4)  # nanogpt's draw
    assert x.tolist() == [ids[o:o + BLOCK].tolist() for o in offsets]
    assert y.tolist() == [ids[o + 1:o + BLOCK + 1].tolist() for o in offsets]


def copy_dataset(src, dst):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_a_truncated_or_corrupt_shard_is_refused_in_one_line(sharded, tmp_path):
    truncated = copy_dataset(sharded, tmp_path / "data" / "truncated")
    shard = truncated / "train-000002.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match="train-000002.bin has 398 bytes, not 200 uint16 tokens") as e:
        Dataset(truncated)
    assert "\n" not in str(e.value)
    corrupt = copy_dataset(sharded, tmp_path / "data" / "corrupt")
    (corrupt / "train-000001.bin").write_bytes(b"\xff" * 400)
    ds = Dataset(corrupt)
    with pytest.raises(UserError, match="train-000001.bin holds token id 65535, outside the vocabulary"):
        ds.batch("train", np.array([int(ds.starts["train"][1]) + 3]), BLOCK)
    batches = Batches(ds, 1, 64, 1, 0, 1, BLOCK, "cpu")  # the read-ahead thread's error reaches the training step
    with pytest.raises(UserError, match="train-000001.bin holds token id 65535"):
        for step in range(20):
            batches.get(step, 0)
    batches.close()


def slow_progress(update):
    """PrepareProgress.update, 10 ms slower per task: a prepare long enough to be killed half-way."""
    return lambda self, *args: (time.sleep(0.01), update(self, *args))[1]


def children(pid):
    """The ids of a process's child processes (Linux's /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_a_killed_prepare_resumes_with_the_very_same_shards(tmp_path):
    docs = [f"Page {i}: " + CORPUS[(i * 31) % 2000:(i * 31) % 2000 + 150] for i in range(300)]
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "docs" / f"{i:03d}.txt").write_text(doc)
    prepare_text(tmp_path / "docs", "mine", data_dir=tmp_path / "whole", shard_tokens=500, piece_bytes=300, **quiet)
    pid = os.fork()  # a child with this process's modules already imported: a second or two, not ten
    if pid == 0:
        try:
            datasets_module.PrepareProgress.update = slow_progress(datasets_module.PrepareProgress.update)
            prepare_workers.LOCAL_BYTES = 0  # worker processes even for this small corpus, killed with it
            prepare_text(tmp_path / "docs", "mine", data_dir=tmp_path / "data", shard_tokens=500, piece_bytes=300,
                         threads=2, **quiet)
        finally:
            os._exit(0)
    state = tmp_path / "data" / "mine" / ".partial" / "state.json"
    deadline = time.time() + 60
    while time.time() < deadline and not (state.is_file() and state.read_text().count('"file"') >= 3):
        time.sleep(0.01)
    workers = children(pid)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert state.is_file() and not (tmp_path / "data" / "mine" / "meta.json").exists(), "killed half-way"
    assert workers, "the prepare ran on worker processes"
    deadline = time.time() + 10
    while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in workers):
        time.sleep(0.01)
    assert not any(os.path.exists(f"/proc/{p}") for p in workers), "its workers left with it"
    logs = []
    prepare_text(tmp_path / "docs", "mine", data_dir=tmp_path / "data", shard_tokens=500, piece_bytes=300,
                 log=logs.append)
    assert any("resuming" in line for line in logs)
    whole, resumed = tmp_path / "whole" / "mine", tmp_path / "data" / "mine"
    assert sorted(p.name for p in whole.iterdir()) == sorted(p.name for p in resumed.iterdir())
    assert all((whole / p.name).read_bytes() == p.read_bytes() for p in resumed.iterdir())
    ds = Dataset(resumed)
    tok = tokenizer_from_meta(ds.meta)
    text = tok.decode(np.concatenate([ds.tokens("train"), ds.tokens("val")]).tolist())
    assert sorted(text.split(ENDOFTEXT)[:-1]) == sorted(docs)  # every document once


def test_a_folder_by_pattern(tmp_path, capsys):
    (tmp_path / "code" / "pkg").mkdir(parents=True)
    sources = {f"pkg/m{i}.py": f"def f{i}(x):\n    return x * {i}\n" for i in range(20)}
    for name, text in sources.items():
        (tmp_path / "code" / name).write_text(text)
    assert cli.main(["prepare", f"--input={tmp_path / 'code'}", "--name=code", f"--data_dir={tmp_path}"]) == 1
    assert_one_line_error(capsys.readouterr().err, "--pattern")
    prepare_text(tmp_path / "code", "code", data_dir=tmp_path, pattern="*.py", **quiet)
    ds = Dataset(tmp_path / "code")
    text = tokenizer_from_meta(ds.meta).decode(np.concatenate([ds.tokens("train"), ds.tokens("val")]).tolist())
    assert sorted(text.split(ENDOFTEXT)[:-1]) == sorted(sources.values())


def test_val_documents_are_drawn_across_the_corpus_with_a_seed(tmp_path):
    # a file of two kinds of text: the tail split validates on the second kind only, the seeded one on both
    (tmp_path / "two.txt").write_text("".join(f"prose line {i}\n" for i in range(400)) +
                                      "".join(f"def code_{i}(): pass\n" for i in range(400)))
    val = {}
    for split, seed in (("tail", 1), ("random", 1), ("random", 2)):
        name = f"{split}{seed}"
        prepare_text(tmp_path / "two.txt", name, data_dir=tmp_path, val_split=split, seed=seed, **quiet)
        ds = Dataset(tmp_path / name)
        val[name] = tokenizer_from_meta(ds.meta).decode(ds.tokens("val").tolist())
        train = tokenizer_from_meta(ds.meta).decode(ds.tokens("train").tolist())
        assert sorted((train + val[name]).splitlines()) == sorted((tmp_path / "two.txt").read_text().splitlines())
    assert "prose" not in val["tail1"]
    assert "prose" in val["random1"] and "code" in val["random1"] and val["random1"] != val["random2"]


def test_a_kill_between_a_finished_shard_and_its_checkpoint_resumes_from_the_checkpoint(tmp_path):
    ids = np.random.default_rng(1).integers(0, 1000, 1000)
    meta, identity = {"tokenizer": "fake", "vocab_size": 1000}, {"corpus": "ids"}

    def write(folder, tasks, kill_after=None):
        """Append ids in tasks of 70 tokens (train) and 30 (val), checkpointing after each task; a 'kill' leaves
        without cleaning up, as SIGKILL does."""
        writer = DatasetWriter(folder, meta, shard_tokens=100, identity=identity, eot=999, log=lambda *_: None)
        start = writer.next_task
        for task in range(start, tasks):
            writer.append("train", ids[task * 100:task * 100 + 70])
            writer.append("val", ids[task * 100 + 70:task * 100 + 100])
            if task == kill_after:  # the shard it finished is on disk, its checkpoint is not
                for w in writer.splits.values():
                    w.close()
                return start
            writer.task_done(task)
        writer.commit()
        return start

    write(tmp_path / "whole", 10)
    write(tmp_path / "killed", 10, kill_after=4)
    assert (tmp_path / "killed" / ".partial" / "train-000002.bin").is_file()  # finished after the checkpoint
    assert write(tmp_path / "killed", 10) == 4  # resumed after the last checkpointed task, not from the start
    assert file_bytes(tmp_path / "whole") == file_bytes(tmp_path / "killed")


def file_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}
