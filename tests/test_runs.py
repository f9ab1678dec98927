"""Loading a run to use it: the checkpoint nanoGPT would have kept by default, or the one asked for; and nanoGPT's
`from model import GPT, GPTConfig` from the repository root."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.checkpoint import load_checkpoint
from nanogpt.errors import UserError
from nanogpt.runs import load_run
from nanogpt.sample import SampleConfig, sample
from nanogpt.train import train
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def same_weights(model, ckpt):
    return all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


@pytest.fixture
def run_with_an_older_best(char_dataset, tmp_path):
    """A run (always_save_checkpoint=False, as the Shakespeare presets) whose best.pt is iteration 10 and whose
    ckpt.pt is iteration 20."""
    data_dir, _ = char_dataset
    out_dir = tmp_path / "run"
    cfg = tiny_config(data_dir, out_dir, max_iters=10, lr_decay_iters=20, always_save_checkpoint=False)
    train(cfg, log=lambda *_: None)
    shutil.copy(out_dir / "best.pt", tmp_path / "best-at-10.pt")
    train(dataclasses.replace(cfg, init_from="resume", max_iters=20), log=lambda *_: None)
    shutil.copy(tmp_path / "best-at-10.pt", out_dir / "best.pt")  # as if the val loss got worse after 10
    return out_dir


def test_default_is_the_checkpoint_nanogpt_would_have_kept(run_with_an_older_best):
    out_dir = run_with_an_older_best
    best, last = load_checkpoint(out_dir, "best"), load_checkpoint(out_dir)
    assert (best["iter_num"], last["iter_num"]) == (10, 20)
    assert same_weights(load_run(out_dir)[0], best)  # auto: best.pt for always_save_checkpoint=False
    assert same_weights(load_run(out_dir, which="best")[0], best)
    assert same_weights(load_run(out_dir, which="last")[0], last)


def test_a_run_that_always_saved_samples_its_last_checkpoint(run_with_an_older_best):
    out_dir = run_with_an_older_best
    last = load_checkpoint(out_dir)
    last["config"]["always_save_checkpoint"] = True
    torch.save(last, out_dir / "ckpt.pt")
    assert same_weights(load_run(out_dir)[0], load_checkpoint(out_dir))


def test_sample_takes_the_checkpoint_setting(run_with_an_older_best):
    out_dir = run_with_an_older_best
    settings = dict(out_dir=str(out_dir), device="cpu", num_samples=1, max_new_tokens=60, temperature=1.0, seed=7,
                    start="All:\n")
    default, best, last = (sample(SampleConfig(**settings, checkpoint=c), write=lambda *_: None)[0]
                           for c in ("auto", "best", "last"))
    assert default == best and last != best
    with pytest.raises(UserError, match="unknown checkpoint 'newest': use best, last or auto"):
        sample(SampleConfig(**settings, checkpoint="newest"), write=lambda *_: None)


def test_nanogpts_root_import_is_the_package_model():
    code = ("from model import GPT, GPTConfig; import nanogpt.model as m; "
            "assert GPT is m.GPT and GPTConfig is m.GPTConfig and callable(GPT.from_pretrained); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    assert "class GPT" not in (ROOT / "model.py").read_text()  # no second copy of the model
