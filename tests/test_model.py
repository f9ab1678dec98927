"""The model's behaviour: causality, flash vs plain attention, learning, sizes."""

import pytest
import torch

from nanogpt.model import GPT, GPTConfig


def tiny_model(**overrides):
    torch.manual_seed(0)
    cfg = dict(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    cfg.update(overrides)
    return GPT(GPTConfig(**cfg)).eval()


def all_logits(model, idx):
    """Logits at every position (forward with targets computes them all)."""
    logits, _ = model(idx, targets=torch.zeros_like(idx))
    return logits


def test_changing_a_future_token_never_changes_earlier_logits():
    model = tiny_model()
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 7) % 50
    for flash in (True, False):
        model.set_flash(flash)
        a, b = all_logits(model, idx), all_logits(model, changed)
        assert torch.equal(a[:, :12], b[:, :12])
        assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_flash_and_plain_attention_agree():
    model = tiny_model()
    idx = torch.randint(0, 50, (3, 32))
    model.set_flash(True)
    flash = all_logits(model, idx)
    model.set_flash(False)
    plain = all_logits(model, idx)
    assert torch.allclose(flash, plain, atol=1e-5)


def test_without_targets_only_last_position_logits():
    model = tiny_model()
    idx = torch.randint(0, 50, (2, 10))
    logits, loss = model(idx)
    assert loss is None and logits.shape == (2, 1, 50)
    assert torch.allclose(logits[:, 0], all_logits(model, idx)[:, -1], atol=1e-6)


def test_tiny_model_overfits_one_batch():
    model = tiny_model().train()
    x = torch.randint(0, 50, (4, 32))
    y = torch.roll(x, -1, dims=1)
    optimizer = model.configure_optimizers(0.0, 3e-3, (0.9, 0.95), "cpu")
    for _ in range(150):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_gpt2_small_parameter_count():
    model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True))
    assert model.get_num_params() == 124_439_808 - 1024 * 768  # 124M minus position embeddings
    assert model.lm_head.weight is model.transformer.wte.weight


def test_residual_projections_are_scaled_down():
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=100, block_size=32))
    proj_std = model.transformer.h[0].attn.c_proj.weight.std().item()
    fc_std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc_std - 0.02) < 0.002
    assert abs(proj_std - 0.02 / 4) < 0.001  # 1/sqrt(2 * 8 layers)


def test_crop_block_size():
    model = tiny_model()
    model.crop_block_size(8)
    assert model.transformer.wpe.weight.shape[0] == 8
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])


def test_n_embd_must_divide_by_n_head():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
