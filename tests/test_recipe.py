"""The modern recipe: every architecture switch trains and generates the same with and without the KV cache, rotary
positions are relative, Muon+AdamW resumes exactly, and a modern run samples, serves and refuses GPT-2 export."""

import dataclasses
import itertools

import pytest
import torch

from nanogpt import optim, runtime
from nanogpt.checkpoint import load_checkpoint
from nanogpt.config import load_config
from nanogpt.errors import UserError
from nanogpt.generate import SlotCache
from nanogpt.model import GPT, GPTConfig, Rotary, rotate
from nanogpt.train import train
from tests.conftest import tiny_config

SWITCHES = dict(
    position=("learned", "rope"),
    norm=("layernorm", "rmsnorm"),
    qk_norm=(False, True),
    activation=("gelu", "relu2", "swiglu"),
    tie_embeddings=(True, False),
    zero_init_proj=(False, True),
    logit_softcap=(0.0, 5.0),
    n_kv_head=(0, 1),
)
COMBINATIONS = [dict(zip(SWITCHES, values)) for values in itertools.product(*SWITCHES.values())]
MODERN = dict(position="rope", norm="rmsnorm", qk_norm=True, activation="relu2", tie_embeddings=False,
              zero_init_proj=True, logit_softcap=15.0)
# the switches that add parameters to the modern model, each on top of it (not in the product above: 4x the tests)
COMBINATIONS += [dict(MODERN, value_embeddings=True), dict(MODERN, x0_mix=True), dict(MODERN, value_embeddings=True,
                                                                                      x0_mix=True, n_kv_head=1)]
COMBINATIONS += [dict(MODERN, embed_norm=True, resid_scales=True, backout=True, x0_mix=True)]


def quiet(*_):
    pass


def test_defaults_are_gpt2():
    """The switches' defaults build exactly the GPT-2 module tree (nanoGPT checkpoints and HF imports load)."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=10))
    assert "transformer.wpe.weight" in model.state_dict() and model.rotary is None
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sorted(n for n, _ in model.named_parameters()) == sorted([
        "transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
        *[f"transformer.h.0.{n}" for n in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                                          "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                                          "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                                          "mlp.c_proj.bias")]])


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_every_combination_trains_and_caches(combo):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=12, vocab_size=11, bias=False, **combo))
    opt = optim.build_optimizer(model, dataclasses.replace(tiny_config(".", "."), optimizer="muon"), "cpu")
    x = torch.randint(0, 11, (2, 12))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    _, after = model(x[:, :-1], x[:, 1:])
    assert after.item() < loss.item(), "one step on a batch lowers the loss on that batch"

    # the KV cache: a prefill of 5 tokens, then one token at a time, against the full forward of each prefix
    model.eval()
    cache = SlotCache.for_model(model, max_batch=2)
    with torch.no_grad():
        logits, _ = model(x[:, :5], kv_cache=cache.prefill([0, 1], [0, 0], "cpu"))
        torch.testing.assert_close(logits, model(x[:, :5])[0], atol=1e-5, rtol=1e-5)
        for t in range(5, 12):
            logits, _ = model(x[:, t:t + 1], kv_cache=cache.decode(2))
            torch.testing.assert_close(logits, model(x[:, :t + 1])[0], atol=1e-5, rtol=1e-5)


def test_rotary_is_relative():
    """Attention under rotary positions sees only how far apart tokens are: shifting every position changes
    nothing, a single row's positions can be given per sequence, and the positions do matter."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=11, **dict(MODERN, zero_init_proj=False))
    model = GPT(config)
    attn, rotary = model.transformer.h[0].attn, model.rotary
    x = torch.randn(2, 6, 16)
    pos = torch.arange(6)
    at_zero = attn(x, rotary(pos))
    torch.testing.assert_close(attn(x, rotary(pos + 37)), at_zero, atol=1e-5, rtol=1e-5)
    per_row = torch.stack([pos + 3, pos + 50])  # (B, T): each sequence at its own offset
    torch.testing.assert_close(attn(x, rotary(per_row)), at_zero, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(attn(x, rotary(pos * 2)), at_zero, atol=1e-3), "spacing the tokens out matters"

    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)  # (B, T, heads, head_size)
    angles = Rotary(16, 10000.0)

    def score(m, n):  # q at position m against k at position n
        return (rotate(q, angles(torch.tensor([m]))) * rotate(k, angles(torch.tensor([n])))).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-4, rtol=1e-4)


def recipe_config(data_dir, out_dir, **overrides):
    # dropout on, so per-step reseeding is covered too
    settings = dict(MODERN, optimizer="muon", muon_lr=0.02, max_iters=40, lr_decay_iters=40, warmup_iters=5,
                    dropout=0.1, eval_interval=15, always_save_checkpoint=False, gradient_accumulation_steps=2,
                    lr_schedule="wsd")
    settings.update(overrides)
    return tiny_config(data_dir, out_dir, **settings)


MUON_VARIANTS = dict(muon_orthogonalizer="polar_express", muon_neuron_norm=True, muon_cautious_weight_decay=True,
                     muon_weight_decay=0.1, batch_ramp_start=1, batch_ramp_iters=30)  # resumed inside the ramp


@pytest.mark.parametrize("variants", [{}, MUON_VARIANTS], ids=["muon", "polar-normuon-cautious-ramp"])
def test_muon_resume_is_exact(char_dataset, tmp_path, variants):
    data_dir, _ = char_dataset
    straight = train(recipe_config(data_dir, tmp_path / "straight", **variants), log=quiet)
    cfg = recipe_config(data_dir, tmp_path / "halves", max_iters=20, **variants)
    first = train(cfg, log=quiet)
    second = train(dataclasses.replace(cfg, init_from="resume", max_iters=40), log=quiet)
    assert sorted(straight.train_losses) == list(range(40))
    assert {**first.train_losses, **second.train_losses} == straight.train_losses  # bit for bit
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "halves")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert straight.train_losses[39] < straight.train_losses[0] - 0.5, "Muon+AdamW trains"


def test_muon_state_is_saved_for_both_optimizers(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    train(recipe_config(data_dir, tmp_path / "run", max_iters=3), log=quiet)
    from nanogpt.checkpoint import load_optimizer_state

    state = load_optimizer_state(tmp_path / "run", load_checkpoint(tmp_path / "run"))["optimizer"]
    assert set(state) == {"adamw", "muon"}
    assert all("momentum_buffer" in s for s in state["muon"]["state"].values()) and state["muon"]["state"]
    assert all("exp_avg" in s for s in state["adamw"]["state"].values()) and state["adamw"]["state"]
    # a resumed run keeps its optimizer (and architecture) unless the command asks for another, which is refused
    plain = tiny_config(data_dir, tmp_path / "run", init_from="resume", max_iters=5, lr_schedule="wsd")
    assert train(plain, log=quiet).iter_num == 5
    with pytest.raises(UserError, match="trained with optimizer='muon', and a resumed run keeps its optimizer"):
        train(dataclasses.replace(plain, max_iters=6), log=quiet, given={"optimizer"})


def test_float32_muon_matches_torch_muon():
    """Our CPU step is torch.optim.Muon's algorithm: it agrees with torch's own step up to its bfloat16 rounding."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(24, 8)), torch.nn.Parameter(torch.randn(8, 8))]
    ours = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    theirs = torch.optim.Muon(weights, lr=0.05, weight_decay=0.1)
    mine = optim.Muon(ours, lr=0.05, weight_decay=0.1)
    for _ in range(3):
        grads = [torch.randn_like(w) for w in weights]
        for params, opt in ((weights, theirs), (ours, mine)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(weights, ours):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=0)


def test_tokens_seen_counts_the_batch_ramp():
    from nanogpt.train import tokens_seen
    cfg = tiny_config(".", ".", batch_size=6, batch_ramp_start=2, batch_ramp_iters=4, gradient_accumulation_steps=2)
    assert tokens_seen(cfg, 6) == (2 + 3 + 4 + 5 + 6 + 6) * 2 * 16
    assert tokens_seen(dataclasses.replace(cfg, batch_ramp_iters=0), 6) == 6 * 6 * 2 * 16


def test_polar_express_quintics_are_minimax_and_orthogonalise_closer_than_the_fixed_one():
    a, b, c = optim.minimax_odd_quintic(0.1, 1.0)
    x = torch.linspace(0.1, 1.0, 100_001, dtype=torch.float64)
    error = (a * x + b * x ** 3 + c * x ** 5 - 1).abs()
    # equioscillation: the error peaks equally at both ends, and no point is worse
    assert abs(error[0] - error[-1]) < 1e-9 and error.max() <= error[0] + 1e-9
    coefficients = optim.polar_express_coefficients(5)
    assert len(coefficients) == 5 and coefficients[0][0] > coefficients[-1][0] > 1  # boldest first
    y = torch.linspace(1e-3, 1.0, 10_001, dtype=torch.float64)
    for a, b, c in coefficients:
        y = a * y + b * y ** 3 + c * y ** 5
    assert (y - 1).abs().max() < 0.13  # every singular value from 1e-3 up lands within 13% of 1
    torch.manual_seed(0)
    g = torch.randn(2, 48, 24) * torch.logspace(-2, 0, 24)  # singular values over two decades
    spread = {}
    for name, steps in (("polar", coefficients), ("fixed", [optim.Muon([torch.nn.Parameter(torch.ones(2, 2))],
                                                                   lr=0.1).param_groups[0]["ns_coefficients"]] * 5)):
        sv = torch.linalg.svdvals(optim.orthogonalize(g, steps, 1e-7))
        spread[name] = (sv - 1).abs().max().item()
    assert spread["polar"] < 0.13 < spread["fixed"], spread


def test_normuon_evens_out_rows_and_keeps_the_step_norm():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(16, 16))
    opt = optim.Muon([weight], lr=0.1, neuron_norm=True)
    ortho = torch.linalg.qr(torch.randn(16, 16)).Q * torch.linspace(0.2, 2.0, 16).unsqueeze(1)  # uneven rows
    out = opt.normalize_neurons(ortho.unsqueeze(0), [weight], 1e-8)[0]
    rows = out.norm(dim=1)
    assert rows.max() / rows.min() < 1.01 < ortho.norm(dim=1).max() / ortho.norm(dim=1).min()
    torch.testing.assert_close(out.norm(), ortho.norm())
    assert opt.state[weight]["neuron_second_moment"].shape == (16,)  # kept in the state, so checkpoints hold it


def test_cautious_weight_decay_decays_only_where_the_update_agrees():
    weight = torch.nn.Parameter(torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    opt = optim.Muon([weight], lr=0.1, weight_decay=0.5, cautious_weight_decay=True, momentum=0.0, nesterov=False)
    weight.grad = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # steps: down, down / up, up
    before = weight.detach().clone()
    opt.step()
    ortho = optim.orthogonalize(weight.grad.unsqueeze(0), [opt.param_groups[0]["ns_coefficients"]] * 5, 1e-7)[0]
    decayed = (before * ortho > 0).float()  # [[1, 0], [0, 1]]: where the step also shrinks the weight
    assert decayed.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    torch.testing.assert_close(weight.detach(), before - 0.1 * 0.5 * before * decayed - 0.1 * ortho)


def test_modern_run_samples_serves_and_refuses_gpt2_export(char_dataset, tmp_path):
    from nanogpt.export import ExportConfig, export_run
    from nanogpt.sample import SampleConfig, sample
    pytest.importorskip("aiohttp")
    from tests.test_serve import post, serving

    data_dir, tokenizer = char_dataset
    out_dir = tmp_path / "run"
    train(recipe_config(data_dir, out_dir, max_iters=10, n_kv_head=1), log=quiet)
    assert load_checkpoint(out_dir)["model_extra"]["position"] == "rope"

    samples = sample(SampleConfig(out_dir=str(out_dir), device="cpu", num_samples=2, max_new_tokens=20,
                                  start="All:\n"), write=quiet)
    assert [len(s) for s in samples] == [len("All:\n") + 20] * 2 and set("".join(samples)) <= set(tokenizer.chars)

    with serving(out_dir) as server:  # serve's own loading path and batching engine, over HTTP
        status, body, _ = post(server, {"prompt": "All:\n", "max_tokens": 12, "n": 2})
    assert status == 200 and [len(c["text"]) for c in body["choices"]] == [12, 12]

    with pytest.raises(UserError) as refused:
        export_run(ExportConfig(out_dir=str(out_dir), to=str(tmp_path / "hf")))
    message = str(refused.value)
    # rotary, RMSNorm, QK-norm, ReLU² and an untied head are Qwen3's; the soft-cap is not (see hf.ARCHITECTURES)
    assert "\n" not in message and "the nearest, Qwen3, cannot hold logit_softcap=15.0" in message
    assert not (tmp_path / "hf").exists()


def test_fsdp_with_muon_refuses_in_one_line():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=10))
    cfg = dataclasses.replace(tiny_config(".", "."), optimizer="muon")
    with pytest.raises(UserError, match="optimizer='muon' does not work with parallelism='fsdp'"):
        optim.build_optimizer(model, cfg, "cpu", sharded=True)


@pytest.mark.parametrize("arg, message", [
    ("--position=alibi", "unknown position 'alibi': use learned or rope"),
    ("--optimizer=sgd", "unknown optimizer 'sgd': use adamw or muon"),
    ("--lr_schedule=linear", "unknown lr_schedule 'linear'"),
    ("--n_kv_head=5", "n_kv_head \\(5\\) must divide n_head"),
    ("--muon_momentum=1.5", "muon_momentum must be below 1"),
    ("--muon_orthogonalizer=svd", "unknown muon_orthogonalizer 'svd': use newton_schulz or polar_express"),
    ("--batch_ramp_iters=10", "batch_ramp_start must be from 1 to batch_size \\(12\\) when batch_ramp_iters is set"),
])
def test_bad_recipe_settings_are_user_errors(arg, message):
    with pytest.raises(UserError, match=message):
        train(load_config(["--device=cpu", arg]), log=quiet)


def test_schedules():
    cfg = tiny_config(".", ".", learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, muon_lr=0.02)
    assert optim.get_lr(110, cfg) == pytest.approx(0.1) and optim.get_lr(110, cfg, cfg.muon_lr) == pytest.approx(2e-3)
    assert optim.get_lr(60, cfg) == pytest.approx(0.55)  # cosine: halfway down at the middle
    wsd = dataclasses.replace(cfg, lr_schedule="wsd", wsd_decay_frac=0.2)
    assert optim.get_lr(89, wsd) == 1.0 and optim.get_lr(100, wsd) == pytest.approx(0.55)
    assert optim.get_lr(5, wsd) == optim.get_lr(5, cfg) < 1.0  # the same warmup


def dense_peak(sms, fma_per_clock_per_sm, boost_mhz):
    """A GPU's dense peak from its hardware: SMs x fused multiply-adds per clock per SM x 2 flops x clock."""
    return sms * fma_per_clock_per_sm * 2 * boost_mhz * 1e6


def test_mfu_peak_is_the_devices_own_for_the_number_format(monkeypatch):
    """Expected peaks worked out from each GPU's SM count, per-SM throughput and boost clock (NVIDIA's architecture
    white papers), not copied from the table: TF32 runs at half the 16-bit tensor rate on A100 and H100; V100 has
    no TF32, so float32 is its CUDA cores' 64 FMA per SM per clock."""
    a100_bf16 = dense_peak(108, 1024, 1410)  # 3rd-generation tensor cores: 4 per SM x 256 FMA
    h100_bf16 = dense_peak(132, 2048, 1830)  # SXM5; 4th-generation tensor cores: 4 per SM x 512 FMA
    h100_pcie_bf16 = dense_peak(114, 2048, 1620)
    v100_fp16 = dense_peak(80, 512, 1530)  # 8 tensor cores per SM x 64 FMA
    assert runtime.peak_flops("cpu", "float32") is None
    for name, dtype, label, peak in (
        ("NVIDIA H100 80GB HBM3", "bfloat16", "bfloat16", h100_bf16),
        ("NVIDIA H100 80GB HBM3", "float32", "TF32", h100_bf16 / 2),
        ("NVIDIA H100 PCIe", "bfloat16", "bfloat16", h100_pcie_bf16),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", "bfloat16", a100_bf16),
        ("NVIDIA A100-SXM4-80GB", "float32", "TF32", a100_bf16 / 2),
        ("Tesla V100-SXM2-16GB", "float16", "float16", v100_fp16),
        ("Tesla V100-SXM2-16GB", "float32", "float32", dense_peak(80, 64, 1530)),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        what, flops = runtime.peak_flops("cuda:0", dtype)
        assert what == f"{name} ({label})"
        assert flops == pytest.approx(peak, rel=0.01), (name, dtype)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1080")
    assert runtime.peak_flops("cuda:0", "float16") is None  # no tensor cores: no honest peak


def test_cpu_log_says_mfu_is_not_measured(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    logs = []
    train(tiny_config(data_dir, tmp_path / "run", max_iters=8), log=logs.append)
    iters = [line for line in logs if line.startswith("iter ")]
    assert iters and all(", mfu n/a," in line for line in iters) and not any("mfu -" in line for line in logs)


def test_embeddings_and_x0_shares_get_their_own_rates_and_muon_momentum_warms_up():
    cfg = tiny_config(".", ".", optimizer="muon", learning_rate=1e-3, embedding_lr=0.05, scalar_lr=0.2, min_lr=1e-4,
                      warmup_iters=0, decay_lr=False, muon_momentum=0.95, muon_momentum_warmup=100)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=11, tie_embeddings=False,
                          value_embeddings=True, x0_mix=True))
    opt = optim.build_optimizer(model, cfg, "cpu")
    optim.set_lr(opt, 0, cfg)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rate[id(model.transformer.wte.weight)] == rate[id(model.value_embeds["1"].weight)] == 0.05
    assert rate[id(model.x0_scales)] == 0.2 and rate[id(model.lm_head.weight)] == 1e-3
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert opt.muon.param_groups[0]["momentum"] == pytest.approx(0.85)
    optim.set_lr(opt, 50, cfg)
    assert opt.muon.param_groups[0]["momentum"] == pytest.approx(0.90)
    optim.set_lr(opt, 100, cfg)
    assert opt.muon.param_groups[0]["momentum"] == 0.95


def test_value_embeddings_and_x0_mix_start_neutral_and_refuse_export():
    from nanogpt.hf import architecture_for

    torch.manual_seed(0)
    config = GPTConfig(n_layer=3, n_head=2, n_embd=8, block_size=8, vocab_size=11, value_embeddings=True, x0_mix=True)
    model = GPT(config)
    assert sorted(model.value_embeds) == ["0", "2"]  # every other layer, the last included
    assert not model.x0_scales.any() and all(not b.attn.value_gate.weight.any()
                                             for b in model.transformer.h if b.attn.value_gate is not None)
    with pytest.raises(UserError, match="no transformers architecture has value_embeddings=True or x0_mix=True"):
        architecture_for(config)


def test_residual_scales_and_backout_start_neutral_embed_norm_ignores_the_embedding_scale():
    """resid_scales and backout change nothing at initialisation (the same weights give the same logits); with
    embed_norm the blocks see the embedding normalised, so scaling it changes nothing, as it does without. Their
    scalars train at scalar_lr, and export refuses them by name."""
    from nanogpt.hf import architecture_for

    base = dict(n_layer=3, n_head=2, n_embd=8, block_size=8, vocab_size=11, position="rope", bias=False, x0_mix=True,
                tie_embeddings=False)
    x = torch.randint(0, 11, (2, 8))
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**base))
    with torch.no_grad():
        plain.x0_scales.fill_(0.5)  # so that x0 matters
    scaled = GPT(GPTConfig(**base, resid_scales=True, backout=True))
    scaled.load_state_dict({**plain.state_dict(), "resid_scales": scaled.resid_scales,
                            "backout_scale": scaled.backout_scale})
    torch.testing.assert_close(scaled(x, x)[0], plain(x, x)[0])
    with torch.no_grad():
        scaled.backout_scale.fill_(0.5)
    assert not torch.allclose(scaled(x, x)[0], plain(x, x)[0]), "backout_scale is used"

    for embed_norm in (True, False):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**base, embed_norm=embed_norm))
        before = model(x, x)[0]
        with torch.no_grad():
            model.transformer.wte.weight.mul_(10)
        assert torch.allclose(model(x, x)[0], before, atol=1e-4) == embed_norm

    cfg = tiny_config(".", ".", optimizer="muon", learning_rate=1e-3, scalar_lr=0.2, decay_lr=False)
    model = GPT(GPTConfig(**base, resid_scales=True, backout=True, embed_norm=True))
    opt = optim.build_optimizer(model, cfg, "cpu")
    optim.set_lr(opt, 0, cfg)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rate[id(model.resid_scales)] == rate[id(model.backout_scale)] == rate[id(model.x0_scales)] == 0.2
    assert rate[id(model.embed_norm.weight)] == 1e-3
    with pytest.raises(UserError, match="x0_mix=True or embed_norm=True or resid_scales=True or backout=True"):
        architecture_for(model.config)
