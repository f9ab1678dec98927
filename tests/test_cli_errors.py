"""Every bad input a user can give gets one line on stderr, a non-zero exit, no traceback, and leaves an existing
checkpoint byte-for-byte intact; every command's --help names the command typed and explains every setting."""

import hashlib
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from nanogpt.cli import COMMANDS, main, run
from nanogpt.config import field_help
from nanogpt.train import train
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny trained run, plus a dataset whose train.bin has an odd number of bytes."""
    from nanogpt.data import write_dataset
    from nanogpt.tokenizers import CharTokenizer
    from tests.conftest import CORPUS

    root = tmp_path_factory.mktemp("cli")
    tokenizer = CharTokenizer.from_text(CORPUS)
    ids = tokenizer.encode(CORPUS)
    write_dataset(root / "data" / "tiny", ids[:6000], ids[6000:], tokenizer.describe())
    write_dataset(root / "data" / "odd", ids[:6000], ids[6000:], tokenizer.describe())
    with open(root / "data" / "odd" / "train.bin", "ab") as f:
        f.write(b"\x00")
    train(tiny_config(root / "data", root / "run", max_iters=4), log=lambda *_: None)
    (root / "corrupt").mkdir()
    (root / "corrupt" / "ckpt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (root / "empty").mkdir()
    return root


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def train_args(root, *extra):
    return ["--device=cpu", "--compile=False", f"--data_dir={root / 'data'}", "--dataset=tiny",
            f"--out_dir={root / 'run'}", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
            "--batch_size=4", "--max_iters=2", "--eval_iters=1", *extra]


CASES = {
    "unknown config key": ("train", ["--foo=1"], "unknown config key 'foo'"),
    "wrong type": ("train", ["--batch_size=abc"], "batch_size must be an integer"),
    "missing config file": ("train", ["config/does_not_exist.py"], "config file config/does_not_exist.py not found"),
    "missing dataset": ("train", ["--dataset=nowhere", "--out_dir=new"], "nanogpt prepare --input=PATH --name=nowhere"),
    "missing recipe dataset": ("train", ["--dataset=shakespeare_char", "--out_dir=new"], "nanogpt prepare shakespeare_char"),
    "block_size larger than data": ("train", ["--block_size=100000", "--out_dir=new"], "use a smaller --block_size"),
    "n_embd not divisible": ("train", ["--n_embd=30", "--n_head=4"], "divisible by n_head"),
    "unknown device": ("train", ["--device=tpu"], "unknown device 'tpu'"),
    "unknown dtype": ("train", ["--dtype=float8"], "unknown dtype 'float8'"),
    "negative learning rate": ("train", ["--learning_rate=-0.1"], "learning_rate must not be negative"),
    "fresh run over a checkpoint": ("train", [], "already holds a checkpoint"),
    "resume with a longer block_size": ("train", ["--block_size=32", "--init_from=resume"], "keeps its architecture"),
    "resume with another n_layer": ("train", ["--n_layer=3", "--init_from=resume"], "n_layer=2, and a resumed run"),
    "resume on another dataset": ("train", ["--dataset=odd", "--init_from=resume"], "dataset='tiny', and a resumed run"),
    "odd-length bin": ("train", ["--dataset=odd", "--out_dir=new"], "not a whole number of uint16 tokens"),
    "resume with nothing left to do": ("train", ["--init_from=resume", "--max_iters=4"], "--max_iters=8"),
    "eval_only without weights": ("train", ["--eval_only=True", "--out_dir=new"], "eval_only needs trained weights"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_errors(case, trained_run, capsys):
    command, extra, message = CASES[case]
    before = digest(trained_run / "run")
    status = run(command, train_args(trained_run) + extra)
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert digest(trained_run / "run") == before


def sample_args(root, out="run", *extra):
    return ["--device=cpu", f"--out_dir={root / out}", "--num_samples=1", "--max_new_tokens=5", *extra]


SAMPLE_CASES = {
    "resume with no checkpoint": ("empty", [], "no checkpoint at"),
    "missing checkpoint folder": ("nowhere", [], "no checkpoint at"),
    "corrupt checkpoint": ("corrupt", [], "not a valid checkpoint"),
    "prompt outside vocabulary": ("run", ["--start=Zebra~"], "is not in this model's vocabulary"),
    "missing prompt file": ("run", ["--start=FILE:no_such_prompt.txt"], "prompt file no_such_prompt.txt not found"),
    "negative temperature": ("run", ["--temperature=-1"], "temperature must not be negative"),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sample_errors(case, trained_run, capsys):
    out, extra, message = SAMPLE_CASES[case]
    before = digest(trained_run / "run")
    status = run("sample", sample_args(trained_run, out, *extra))
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert digest(trained_run / "run") == before


def test_resume_with_no_checkpoint(trained_run, capsys):
    args = train_args(trained_run, "--init_from=resume")
    args = [a for a in args if not a.startswith("--out_dir")] + [f"--out_dir={trained_run / 'empty'}"]
    assert run("train", args) == 1
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train.py", ["config/train_shakespeare_char.py", "--n_embd=100", "--n_head=3"], "divisible by n_head"),
        ("sample.py", ["--out_dir=/nonexistent/run"], "no checkpoint at"),
    ],
)
def test_root_scripts_exit_nonzero_with_one_line(script, args, message):
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1


def config_classes():
    """command -> the dataclass that holds its settings."""
    from nanogpt.bench import BenchConfig
    from nanogpt.chat import ChatConfig
    from nanogpt.config import TrainConfig
    from nanogpt.datasets import PrepareConfig
    from nanogpt.evaluate import EvalConfig
    from nanogpt.export import ExportConfig
    from nanogpt.plot import PlotConfig
    from nanogpt.report import ReportConfig
    from nanogpt.sample import SampleConfig
    from nanogpt.serve import ServeConfig

    return {"train": TrainConfig, "sample": SampleConfig, "serve": ServeConfig, "export": ExportConfig,
            "bench": BenchConfig, "prepare": PrepareConfig, "eval": EvalConfig, "plot": PlotConfig,
            "report": ReportConfig, "chat": ChatConfig}


def test_every_command_has_a_settings_class():
    assert set(config_classes()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_names_the_command_typed_and_explains_every_setting(command, capsys):
    cls = config_classes()[command]
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nanogpt {command} ") and "python " not in out.splitlines()[0]
    meanings = field_help(cls)
    for f in fields(cls):
        assert meanings[f.name].strip(), f"{cls.__name__}.{f.name} has no comment beside it"
        line = next(line for line in out.splitlines() if line.startswith(f"  --{f.name}="))
        assert line.endswith(" " + meanings[f.name])


@pytest.mark.parametrize("script", ["train.py", "data/shakespeare_char/prepare.py"])  # sample.py, bench.py: as train.py
def test_root_scripts_usage_names_the_script(script):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python {script} ")
