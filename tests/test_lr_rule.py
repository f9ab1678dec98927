"""The learning-rate rule (lr_rule='transfer'): off or at the reference shape it changes no rate; doubling the
width, the batch or the length changes each kind of parameter's peak as optim.lr_rule_factors documents; a run
logs the rates it chose."""

import math

import pytest

from nanogpt import optim
from nanogpt.config import load_config
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import train
from tests.conftest import tiny_config

REFERENCE = dict(lr_ref_width=16, lr_ref_batch_tokens=4 * 8, lr_ref_iters=100)
# the rule at twice the tokens a step (equal steps): sqrt(2) for the batch, 2^(-1/3) for twice the run's tokens
TWICE_BATCH = math.sqrt(2) * 2 ** (-1 / 3)


def peaks(optimizer=None, width=16, batch_size=4, max_iters=100, **settings):
    """{kind: peak rate} of a tiny modern model's optimizer at this shape (one rate per kind, asserted)."""
    cfg = tiny_config(".", ".", n_embd=width, n_head=2, block_size=8, batch_size=batch_size, max_iters=max_iters,
                      optimizer=optimizer or "muon", learning_rate=1e-3, muon_lr=0.02, embedding_lr=0.01,
                      decay_lr=False, **settings)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=width, block_size=8, vocab_size=11, tie_embeddings=False,
                          position="rope", value_embeddings=True, x0_mix=True))  # rope: no wpe, one embedding rate
    opt = optim.build_optimizer(model, cfg, "cpu")
    optim.set_lr(opt, 0, cfg)
    kinds = optim.parameter_kinds(model)
    rates = {}
    for group in opt.param_groups:
        for p in group["params"]:
            rates.setdefault(kinds[id(p)], set()).add(group["lr"])
    assert all(len(r) == 1 for r in rates.values()), rates
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    return {kind: r.pop() for kind, r in rates.items()}


def test_off_and_at_the_reference_shape_the_rates_are_the_settings():
    tuned = {"matrices": 0.02, "head": 1e-3, "embeddings": 0.01, "gains": 1e-3}
    assert peaks() == tuned  # no rule
    assert peaks(**REFERENCE) == tuned  # reference settings alone do nothing
    assert peaks(lr_rule="transfer", **REFERENCE) == pytest.approx(tuned)  # the rule at its own shape
    assert peaks(lr_rule="transfer") == pytest.approx(tuned)  # no reference given: this run's shape


def test_twice_the_width_and_batch_scale_each_kind_as_documented():
    base = peaks(lr_rule="transfer", **REFERENCE)
    wide = peaks(lr_rule="transfer", width=32, batch_size=8, **REFERENCE)
    # Muon's matrices and AdamW's embeddings and gains: the batch and length factors only; the head also 1/width
    assert wide["matrices"] == pytest.approx(base["matrices"] * TWICE_BATCH)
    assert wide["embeddings"] == pytest.approx(base["embeddings"] * TWICE_BATCH)
    assert wide["gains"] == pytest.approx(base["gains"] * TWICE_BATCH)
    assert wide["head"] == pytest.approx(base["head"] * TWICE_BATCH / 2)
    # twice as many steps at the same batch: twice the tokens, every peak x 2^(-1/3)
    longer = peaks(lr_rule="transfer", max_iters=200, **REFERENCE)
    assert longer == pytest.approx({kind: rate * 2 ** (-1 / 3) for kind, rate in base.items()})


def test_the_logged_rate_is_the_one_the_gains_train_at():
    cfg = tiny_config(".", ".", n_embd=32, n_head=2, block_size=8, batch_size=8, max_iters=100, optimizer="muon",
                      learning_rate=1e-3, decay_lr=False, lr_rule="transfer", **REFERENCE)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=11, tie_embeddings=False))
    opt = optim.build_optimizer(model, cfg, "cpu")
    logged = optim.set_lr(opt, 0, cfg)
    assert logged == pytest.approx(1e-3 * TWICE_BATCH)
    ln_gain = model.transformer.ln_f.weight
    assert any(any(p is ln_gain for p in g["params"]) and g["lr"] == pytest.approx(logged) for g in opt.param_groups)


def test_under_adamw_the_blocks_matrices_scale_with_one_over_width():
    base = peaks("adamw", lr_rule="transfer", **REFERENCE)
    wide = peaks("adamw", lr_rule="transfer", width=32, **REFERENCE)
    assert wide["matrices"] == pytest.approx(base["matrices"] / 2) and base["matrices"] == pytest.approx(1e-3)
    assert wide["head"] == pytest.approx(base["head"] / 2)
    assert wide["embeddings"] == pytest.approx(base["embeddings"])  # adamw: embedding_lr is Muon's setting only


def test_a_run_logs_the_rates_the_rule_chose(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    settings = dict(optimizer="muon", tie_embeddings=False, max_iters=2, eval_interval=2, lr_rule="transfer",
                    lr_ref_width=16, lr_ref_batch_tokens=4 * 16, lr_ref_iters=2, muon_lr=0.02, learning_rate=1e-3)
    logs = []
    train(tiny_config(data_dir, tmp_path / "run", **settings), log=logs.append)
    chosen = [line for line in logs if line.startswith("learning-rate rule 'transfer'")]
    assert len(chosen) == 1
    assert "width 32 from 16" in chosen[0] and "matrices (Muon) 0.02," in chosen[0] and "head 0.0005," in chosen[0]
    logs.clear()
    train(tiny_config(data_dir, tmp_path / "off", **dict(settings, lr_rule="off")), log=logs.append)
    assert not any("learning-rate rule" in line for line in logs)


def test_bad_rule_settings_are_user_errors():
    with pytest.raises(UserError, match="unknown lr_rule 'mup'"):
        train(load_config(["--device=cpu", "--lr_rule=mup"]), log=lambda *_: None)
    with pytest.raises(UserError, match="lr_ref_width must not be negative"):
        train(load_config(["--device=cpu", "--lr_ref_width=-1"]), log=lambda *_: None)
