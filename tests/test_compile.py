"""torch.compile takes the whole model in one graph (fullgraph=True: no graph breaks, so no Python between kernels)
for GPT-2 and for every switch of the modern recipe, forward and backward, and computes what eager computes.

aot_eager traces exactly what inductor is given (dynamo and AOTAutograd) but runs the traced graph with eager
kernels, so it checks the graph in about a second per model; inductor's own code generation takes tens of seconds
per model on a small CPU, so its run (the fast preset's model) is opt-in: NANOGPT_TEST_INDUCTOR=1. Recompiling is
checked on a real run in tests/test_step_sync.py (one graph for training, one for evaluation, none after)."""

import os
from pathlib import Path

import pytest
import torch

from nanogpt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=65, bias=False, dropout=0.0)
# each switch of the modern recipe on its own (zero_init_proj changes only the initial values, not the graph)
SWITCHES = {
    "gpt2": {},
    "rope": dict(position="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"),
    "swiglu": dict(activation="swiglu"),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=15.0),
    "gqa": dict(n_kv_head=1),
    "value_embeddings": dict(value_embeddings=True),
    "x0_mix": dict(x0_mix=True),
    "embed_norm": dict(embed_norm=True),
    "resid_scales": dict(resid_scales=True),
    "backout": dict(backout=True),
}


def compiled_matches_eager(settings, backend):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**settings))
    x = torch.randint(0, settings["vocab_size"], (2, settings["block_size"]))
    _, loss = model(x, x)
    loss.backward()
    eager = loss.detach(), [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    _, loss = torch.compile(model, backend=backend, fullgraph=True)(x, x)
    loss.backward()
    assert torch.allclose(loss.detach(), eager[0], atol=1e-5)
    for p, g in zip(model.parameters(), eager[1]):
        assert torch.allclose(p.grad, g, atol=1e-5)


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_compiles_in_one_graph_forward_and_backward(switch):
    compiled_matches_eager(dict(TINY, **SWITCHES[switch]), "aot_eager")


@pytest.mark.skipif(os.environ.get("NANOGPT_TEST_INDUCTOR") != "1", reason="opt-in: NANOGPT_TEST_INDUCTOR=1")
def test_inductor_compiles_the_fast_presets_model():
    from nanogpt.config import load_config

    cfg = load_config([str(ROOT / "config" / "train_gpt2_fast.py")])
    switches = {k: getattr(cfg, k) for k in ("position", "norm", "qk_norm", "activation", "tie_embeddings",
                                              "logit_softcap", "n_kv_head") if hasattr(cfg, k)}
    compiled_matches_eager(dict(TINY, **switches), "inductor")
