"""Hugging Face GPT-2 import and export: logits equal transformers' own both ways, and every user-facing error."""

import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from nanogpt import cli, hf  # noqa: E402
from nanogpt.errors import UserError  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.train import train  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

TOL = 1e-4
CONFIGS = Path(__file__).resolve().parents[1] / "config"


def tiny_hf_model(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=100)
    settings.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).eval()
    with torch.no_grad():  # fresh biases and LayerNorms are 0 and 1: randomise them so a missed one would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def max_diff_to_hf(ours, theirs, vocab_size, length=40):
    """The largest difference between our logits and transformers' on the same random tokens, at every position."""
    idx = torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    ours.eval()
    with torch.no_grad():
        our_logits, _ = ours(idx, targets=idx)  # with targets, every position's logits are computed
        their_logits = theirs(idx).logits
    assert our_logits.shape == their_logits.shape
    return (our_logits - their_logits).abs().max().item()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_import_matches_transformers(tmp_path, safe):
    theirs = tiny_hf_model()
    theirs.save_pretrained(tmp_path / "hf")
    if not safe:
        # transformers 5 always writes safetensors; a pickled pytorch_model.bin is what 4.x wrote without it
        (tmp_path / "hf" / "model.safetensors").unlink()
        torch.save(theirs.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    ours = GPT.from_pretrained(tmp_path / "hf")
    assert ours.config.vocab_size == 100 and ours.config.block_size == 64 and ours.config.gelu_approximate == "tanh"
    assert max_diff_to_hf(ours, theirs, 100) < TOL


def test_import_hub_layout_with_mask_buffers(tmp_path):
    """GPT-2 on the hub names tensors without 'transformer.' and stores the causal-mask buffers."""
    from safetensors.torch import save_file

    theirs = tiny_hf_model()
    theirs.save_pretrained(tmp_path / "hf")
    state = {k.removeprefix("transformer."): v.clone() for k, v in theirs.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    assert max_diff_to_hf(GPT.from_pretrained(tmp_path / "hf"), theirs, 100) < TOL


def test_dropout_is_the_only_override(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path / "hf")
    assert GPT.from_pretrained(tmp_path / "hf", {"dropout": 0.1}).config.dropout == 0.1
    with pytest.raises(UserError, match="only dropout"):
        GPT.from_pretrained(tmp_path / "hf", {"n_layer": 3})


def test_round_trip_import_export(tmp_path):
    theirs = tiny_hf_model()
    theirs.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(tmp_path / "hf")
    hf.export(ours, tmp_path / "out", None, log=lambda *a: None)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert max_diff_to_hf(ours, again, 100) < TOL
    assert json.loads((tmp_path / "out" / "config.json").read_text())["activation_function"] == "gelu_new"


@pytest.mark.parametrize("bias", [True, False])
def test_export_our_model_matches_transformers(tmp_path, bias):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=72, bias=bias))
    hf.export(ours, tmp_path / "out", {"tokenizer": "char", "vocab_size": 72, "chars": "x" * 72}, log=lambda *a: None)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["activation_function"] == "gelu"
    assert max_diff_to_hf(ours, theirs, 72) < TOL
    assert GPT.from_pretrained(tmp_path / "out").config.gelu_approximate == "none"


def test_export_trained_run_through_cli(tmp_path, char_dataset):
    data_dir, _ = char_dataset
    train(tiny_config(data_dir, tmp_path / "run", max_iters=5, lr_decay_iters=5), log=lambda *a: None)
    assert cli.main(["export", f"--out_dir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}"]) == 0
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "generation_config.json", "model.safetensors",
                                                   "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]

    from nanogpt.runs import load_run

    ours, tokenizer = load_run(tmp_path / "run", "cpu")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert max_diff_to_hf(ours, theirs, tokenizer.vocab_size, length=16) < TOL


def prepare_run(tmp_path, kind, **overrides):
    """A tiny run trained on the shared corpus with a character or a trained BPE tokenizer; returns its out_dir."""
    from nanogpt.datasets import prepare_text
    from tests.conftest import CORPUS

    (tmp_path / "corpus.txt").write_text(CORPUS)
    prepare_text(tmp_path / "corpus.txt", "tiny", tokenizer=kind, data_dir=tmp_path / "data",
                 vocab_size=300 if kind == "bpe" else None, log=lambda *a: None)
    # a context longer than prompt and continuation: transformers has no sliding window to match ours past it
    train(tiny_config(tmp_path / "data", tmp_path / "run", block_size=64, max_iters=30, lr_decay_iters=30,
                      **overrides), log=lambda *a: None)
    return tmp_path / "run"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_exported_run_continues_as_sample_does(tmp_path, kind, monkeypatch):
    """Export, then transformers alone and offline (AutoTokenizer, AutoModelForCausalLM, the text-generation
    pipeline) continue a prompt greedily as `nanogpt sample --temperature=0` does; AutoTokenizer gives our ids."""
    from nanogpt.runs import load_run
    from nanogpt.sample import SampleConfig, sample

    run = prepare_run(tmp_path, kind)
    assert cli.main(["export", f"--out_dir={run}", f"--to={tmp_path / 'hf'}"]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt, n = "First Citizen:\nYou", 24
    (ours,) = sample(SampleConfig(out_dir=str(run), start=prompt, num_samples=1, max_new_tokens=n, temperature=0,
                                  device="cpu", dtype="float32"), write=lambda *a: None)
    _, tokenizer = load_run(run, "cpu")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = hf_tokenizer(prompt)["input_ids"]
    assert ids == tokenizer.encode(prompt) and hf_tokenizer.decode(ids) == prompt
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    assert hf_tokenizer.decode(out[0]) == ours
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    assert generate(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"] == ours
    # `nanogpt sample --init_from=FOLDER` reads the exported folder with its own tokenizer, not GPT-2's
    (again,) = sample(SampleConfig(init_from=str(tmp_path / "hf"), start=prompt, num_samples=1, max_new_tokens=n,
                                   temperature=0, device="cpu", dtype="float32"), write=lambda *a: None)
    assert again == ours


# one model of each switch combination a standard architecture holds, and the class transformers must load it as
EXPORTABLE = {
    "gpt2-relu2-untied": (dict(activation="relu2", tie_embeddings=False), "GPT2LMHeadModel"),
    "llama-swiglu-gqa-bias": (dict(position="rope", norm="rmsnorm", activation="swiglu", n_kv_head=2, bias=True,
                                   tie_embeddings=False, rope_base=500.0), "LlamaForCausalLM"),
    "llama-relu2-tied": (dict(position="rope", norm="rmsnorm", activation="relu2"), "LlamaForCausalLM"),
    "qwen3-qk-norm": (dict(position="rope", norm="rmsnorm", qk_norm=True, activation="relu2", n_kv_head=2,
                           tie_embeddings=False, zero_init_proj=True, bias=False), "Qwen3ForCausalLM"),
    "nemotron-layernorm": (dict(position="rope", activation="gelu", bias=True, tie_embeddings=False),
                           "NemotronForCausalLM"),
    "olmo-layernorm-swiglu-tied": (dict(position="rope", activation="swiglu", n_kv_head=2, bias=False),
                                   "OlmoForCausalLM"),
    "vaultgemma-softcap": (dict(position="rope", norm="rmsnorm", activation="swiglu", n_kv_head=2,
                                logit_softcap=5.0, tie_embeddings=False, bias=False), "VaultGemmaForCausalLM"),
}
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,\n"  # 40 characters: a character tokenizer for random models


def random_model(**switches):
    """A tiny model with every weight random (gains and biases too, so one exported wrongly would show), large
    enough that its logits spread over several units."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=len(CHARS), **switches)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p + torch.randn_like(p) * 0.3 if p.dim() == 1 else torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("switches, architecture", EXPORTABLE.values(), ids=EXPORTABLE.keys())
def test_export_each_architecture_matches_ours(tmp_path, monkeypatch, switches, architecture):
    """Each exportable switch combination loads offline as its standard architecture, without remote code, with
    our logits at every position and our greedy continuation."""
    from nanogpt.generate import generate_ids

    ours = random_model(**switches)
    hf.export(ours, tmp_path / "hf", {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS},
              log=lambda *a: None)
    assert "auto_map" not in json.loads((tmp_path / "hf" / "config.json").read_text())  # no code of ours needed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == architecture
    assert max_diff_to_hf(ours, theirs, len(CHARS), length=32) < TOL
    prompt = torch.tensor([[7, 4, 11, 11, 14]])
    greedy = generate_ids(ours, prompt, 20, temperature=0)[0, prompt.shape[1]:].tolist()
    assert theirs.generate(prompt, max_new_tokens=20, do_sample=False)[0, 5:].tolist() == greedy
    assert len(set(greedy)) > 1  # a model stuck on one token would make the comparison weak
    again = GPT.from_pretrained(tmp_path / "hf")  # and the folder loads back here, as the same model
    architecture_switches = {k: v for k, v in switches.items() if k != "zero_init_proj"}  # only initialisation
    if architecture == "OlmoForCausalLM":  # its final norm's gain went into the head, which is no longer tied
        architecture_switches["tie_embeddings"] = False
    assert {k: getattr(again.config, k) for k in architecture_switches} == architecture_switches
    assert max_diff_to_hf(again, theirs, len(CHARS), length=32) < TOL


def test_export_refuses_what_no_architecture_holds(tmp_path):
    """The switches no standard architecture holds together are named in a one-line error, and nothing is
    written."""
    # the CPU fast preset's switches: Qwen3 holds all but the bias-free LayerNorm and the soft-cap
    fast = dict(position="rope", qk_norm=True, activation="relu2", tie_embeddings=False, zero_init_proj=True,
                logit_softcap=15.0, bias=False)
    with pytest.raises(UserError, match=r"the nearest, Qwen3, cannot hold norm='layernorm', logit_softcap=15\.0") as e:
        hf.export(random_model(**fast), tmp_path / "hf", None)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"the nearest, GPT-2, cannot hold activation='swiglu' \("):
        hf.export(random_model(activation="swiglu"), tmp_path / "hf", None)
    with pytest.raises(UserError, match=r"the nearest, Llama, cannot hold qk_norm=True"):  # Qwen3: bias=True
        hf.export(random_model(position="rope", norm="rmsnorm", qk_norm=True, activation="swiglu", bias=True),
                  tmp_path / "hf", None)
    assert not (tmp_path / "hf").exists()


def preset_switches(name):
    """The architecture switches a preset in config/ sets (its sizes left to the test)."""
    from nanogpt.config import load_config
    from nanogpt.train import ARCHITECTURE

    cfg = load_config([str(CONFIGS / f"{name}.py")])
    sizes = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd"}
    return {k: getattr(cfg, k) for k in ARCHITECTURE if k not in sizes}


def test_export_preset_is_the_fast_preset_with_exportable_switches():
    """config/train_shakespeare_char_cpu_export.py differs from the fast preset only in architecture switches, and
    only it exports."""
    from nanogpt.config import load_config
    from nanogpt.train import ARCHITECTURE

    fast, export = (load_config([str(CONFIGS / f"train_shakespeare_char_cpu_{name}.py")]).to_dict()
                    for name in ("fast", "export"))
    assert {k for k in fast if fast[k] != export[k]} - {"out_dir"} <= set(ARCHITECTURE)
    assert hf.architecture_for(random_model(**preset_switches("train_shakespeare_char_cpu_export")).config)
    with pytest.raises(UserError, match="cpu_export.py is the fast preset with only exportable switches"):
        hf.architecture_for(random_model(**preset_switches("train_shakespeare_char_cpu_fast")).config)


def test_exportable_preset_run_exports_and_generates_past_its_context(tmp_path, monkeypatch):
    """A run of the exportable preset's architecture exports to a standard architecture that transformers loads
    offline without remote code; the text-generation pipeline continues greedily as `nanogpt sample` does, and
    asked for more tokens than the context holds, it carries on (rotary positions have no table to run out of)."""
    from nanogpt.sample import SampleConfig, sample

    run = prepare_run(tmp_path, "char", **preset_switches("train_shakespeare_char_cpu_export"))
    assert cli.main(["export", f"--out_dir={run}", f"--to={tmp_path / 'hf'}"]) == 0
    assert "auto_map" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt, n = "First Citizen:\nYou", 24
    (ours,) = sample(SampleConfig(out_dir=str(run), start=prompt, num_samples=1, max_new_tokens=n, temperature=0,
                                  device="cpu", dtype="float32"), write=lambda *a: None)
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu",
                                     trust_remote_code=False)
    assert type(generate.model).__name__ in hf.CLASSES.values()
    assert generate(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"] == ours
    past = generate(prompt, max_new_tokens=60, do_sample=False)[0]["generated_text"]  # 18 + 60 > 64
    assert past.startswith(ours) and len(past) == len(prompt) + 60
    (again,) = sample(SampleConfig(init_from=str(tmp_path / "hf"), start=prompt, num_samples=1, max_new_tokens=n,
                                   temperature=0, device="cpu", dtype="float32"), write=lambda *a: None)
    assert again == ours  # `nanogpt sample --init_from=FOLDER` reads the exported folder back


def test_import_refuses_decoders_it_cannot_compute(tmp_path):
    """A Llama-family folder loads only where our model computes exactly what it does: the settings and weights
    export never writes are named in one line."""
    from safetensors.torch import load_file, save_file

    hf.export(random_model(position="rope", norm="rmsnorm", qk_norm=True, activation="relu2", bias=False),
              tmp_path / "hf", None, log=lambda *a: None)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    for setting, value, message in [("rms_norm_eps", 1e-6, r"rms_norm_eps=1e-06 \(must be"),
                                    ("hidden_act", "gelu", "activation 'gelu'"),
                                    ("layer_types", ["sliding_attention"] * 2, "sliding-window attention")]:
        (tmp_path / "hf" / "config.json").write_text(json.dumps(config | {setting: value}))
        with pytest.raises(UserError, match=message):
            GPT.from_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    weights["model.layers.0.mlp.up_proj.weight"] = weights["model.layers.0.mlp.up_proj.weight"] * 2
    save_file(weights, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(UserError, match="gate and up matrices differ"):
        GPT.from_pretrained(tmp_path / "hf")


def test_learned_position_export_stops_at_its_context(tmp_path, monkeypatch):
    """GPT-2's position table ends at the block size: a pipeline call that names no length stops there (rather
    than adding the pipeline's default 256 tokens and indexing past the table), and handle_long_generation="hole"
    keeps a longer request within it."""
    ours, logged = random_model(), []
    hf.export(ours, tmp_path / "hf", {"tokenizer": "char", "vocab_size": len(CHARS), "chars": CHARS},
              log=logged.append)
    # nothing in a standard config stops an explicit max_new_tokens past the table: the export says so
    assert logged[1].startswith("learned positions end at 32 tokens") and "handle_long_generation='hole'" in logged[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    prompt = "hello world"
    assert len(generate(prompt, do_sample=False)[0]["generated_text"]) == ours.config.block_size
    hole = generate(prompt, max_new_tokens=30, do_sample=False, handle_long_generation="hole")
    assert len(hole[0]["generated_text"]) == len(prompt) + 30


def test_export_never_generates_padding_ids(tmp_path, char_dataset):
    """A vocabulary padded past the tokenizer's (for speed): transformers must not pick the padding ids either."""
    _, tokenizer = char_dataset
    torch.manual_seed(0)
    ours = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size + 7))
    ids = torch.tensor([tokenizer.encode("All:")])
    with torch.no_grad():  # bait: padding rows that outscore the best real token wherever it scores above zero
        best = ours(ids)[0][0, -1].argmax()
        ours.transformer.wte.weight[tokenizer.vocab_size:] = ours.transformer.wte.weight[best] * 3
    hf.export(ours, tmp_path / "hf", tokenizer.describe(), log=lambda *a: None)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert theirs(ids).logits[0, -1].argmax() >= tokenizer.vocab_size  # the bait works on the raw logits
    out = theirs.generate(ids, max_new_tokens=10, do_sample=False)[0, 4:]
    assert len(out) == 10 and out.max() < tokenizer.vocab_size


def test_old_character_exports_still_decode(tmp_path, char_dataset):
    """Exports of character runs made before tokenizer.json kept the characters in nanogpt_tokenizer.json."""
    from nanogpt.runs import load_model

    data_dir, tokenizer = char_dataset
    torch.manual_seed(0)
    hf.export(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size)),
              tmp_path / "hf", None, log=lambda *a: None)
    (tmp_path / "hf" / "nanogpt_tokenizer.json").write_text(json.dumps(tokenizer.describe()))
    _, theirs = load_model(str(tmp_path / "hf"), "unused")
    assert theirs.name == "char" and theirs.encode("First") == tokenizer.encode("First")


def test_foreign_characters_are_a_one_line_error_in_hf_tokenizers(tmp_path, char_dataset):
    from nanogpt.tokenizers import tokenizer_from_meta

    _, tokenizer = char_dataset
    torch.manual_seed(0)
    hf.export(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size)),
              tmp_path / "hf", tokenizer.describe(), log=lambda *a: None)
    theirs = tokenizer_from_meta(hf.read_tokenizer(tmp_path / "hf"))
    assert theirs.eot_token is None and theirs.decode(theirs.encode("All:\n")) == "All:\n"
    with pytest.raises(UserError, match="cannot encode this text"):
        theirs.encode("Ωmega")


def test_export_bpe_tokenizer_loads_offline(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50304))
    hf.export(ours, tmp_path / "out", {"tokenizer": "gpt2", "vocab_size": 50257}, log=lambda *a: None)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == 50256
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 50304


def test_shape_mismatch_names_the_tensor(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["n_positions"] = 32
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"tensor 'transformer\.wpe\.weight' has shape \(64, 32\)") as e:
        GPT.from_pretrained(tmp_path / "hf")
    assert "\n" not in str(e.value)


def test_refuses_other_model_types(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["model_type"] = "mistral"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="'mistral' model, not GPT-2"):
        GPT.from_pretrained(tmp_path / "hf")


def test_hub_name_without_network_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    with pytest.raises(UserError) as e:
        GPT.from_pretrained("gpt2-nonexistent-size-for-tests")
    message = str(e.value)
    assert message.startswith("cannot reach the Hugging Face hub to download 'gpt2-nonexistent-size-for-tests'")
    assert "pass its local directory" in message and "\n" not in message


def test_unknown_hub_name_says_so(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    class NotFound(RepositoryNotFoundError):
        def __init__(self):  # the real one wants the HTTP response it came from
            Exception.__init__(self, "404 Client Error: Repository Not Found")

    def not_found(*args, **kwargs):
        raise NotFound()

    with pytest.raises(UserError, match="neither a local folder nor a valid Hugging Face model name"):
        GPT.from_pretrained("no such model!")  # refused before any network access
    monkeypatch.setattr("huggingface_hub.snapshot_download", not_found)
    with pytest.raises(UserError, match="not a local folder, and there is no model 'someone/no-such-model' on the Hugging Face hub"):
        GPT.from_pretrained("someone/no-such-model")


def test_export_refuses_non_empty_destination(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        hf.export(model, tmp_path / "taken", None)
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]
    hf.export(model, tmp_path / "empty", None, log=lambda *a: None)  # an empty folder is fine
    (tmp_path / "empty2").mkdir()
    hf.export(model, tmp_path / "empty2", None, log=lambda *a: None)
    assert (tmp_path / "empty2" / "model.safetensors").is_file()


def test_export_to_unwritable_destination_leaves_nothing(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="cannot write") as e:
        hf.export(model, tmp_path / "file" / "out", None)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_export_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=10))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf, "write_gpt2_tokenizer", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        hf.export(model, tmp_path / "out", {"tokenizer": "gpt2", "vocab_size": 50257})
    assert os.listdir(tmp_path) == []


def test_cli_export_error_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert cli.main(["export", f"--out_dir={tmp_path / 'norun'}", f"--to={tmp_path / 'out'}"]) == 1
    assert cli.main(["export", "--to=" + str(tmp_path / "out")]) == 1
    assert cli.main(["export", f"--init_from={tmp_path / 'taken'}", f"--to={tmp_path / 'o'}"]) == 1
    assert cli.main(["export", f"--out_dir={tmp_path / 'norun'}"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors)
    assert "--to=DIR" in errors[3]


def test_finetune_from_local_hf_folder(tmp_path, char_dataset):
    """init_from a Hugging Face folder: weights loaded, block size cropped, then trained and saved as a run."""
    data_dir, tokenizer = char_dataset
    theirs = tiny_hf_model(vocab_size=tokenizer.vocab_size)
    theirs.save_pretrained(tmp_path / "hf")
    cfg = tiny_config(data_dir, tmp_path / "run", init_from=str(tmp_path / "hf"), max_iters=2, lr_decay_iters=2)
    logs = []
    train(cfg, log=logs.append)
    assert any("pretrained weights" in line for line in logs)
    from nanogpt.runs import load_run

    model, _ = load_run(tmp_path / "run", "cpu")
    assert model.config.block_size == 16 and model.config.gelu_approximate == "tanh" and model.config.bias


def test_finetune_refuses_larger_dataset_vocabulary(tmp_path, char_dataset):
    data_dir, tokenizer = char_dataset
    tiny_hf_model(vocab_size=tokenizer.vocab_size - 1).save_pretrained(tmp_path / "hf")
    cfg = tiny_config(data_dir, tmp_path / "run", init_from=str(tmp_path / "hf"))
    with pytest.raises(UserError, match=rf"token ids up to {tokenizer.vocab_size - 1}.*only {tokenizer.vocab_size - 1}"):
        train(cfg, log=lambda *a: None)
    with pytest.raises(UserError, match="longer than"):
        tiny_hf_model(vocab_size=tokenizer.vocab_size, n_positions=8).save_pretrained(tmp_path / "hf8")
        train(tiny_config(data_dir, tmp_path / "run", init_from=str(tmp_path / "hf8")), log=lambda *a: None)


def test_finetune_refuses_gpt2_weights_on_a_character_dataset(tmp_path, char_dataset):
    data_dir, _ = char_dataset
    tiny_hf_model(vocab_size=50257, n_embd=16).save_pretrained(tmp_path / "hf")
    cfg = tiny_config(data_dir, tmp_path / "run", init_from=str(tmp_path / "hf"))
    with pytest.raises(UserError, match="uses the 'char' tokenizer.*GPT-2 BPE"):
        train(cfg, log=lambda *a: None)


def test_sample_from_hf_folder_with_gpt2_tokenizer(tmp_path):
    from nanogpt.sample import SampleConfig, sample

    tiny_hf_model(vocab_size=50257, n_embd=16).save_pretrained(tmp_path / "hf")
    cfg = SampleConfig(init_from=str(tmp_path / "hf"), start="Hello", num_samples=1, max_new_tokens=3,
                       device="cpu", dtype="float32")
    (text,) = sample(cfg, write=lambda *a: None)
    assert text.startswith("Hello")
    tiny_hf_model().save_pretrained(tmp_path / "small")  # 100 tokens: "Hello" is token 15496
    with pytest.raises(UserError, match="token id 15496, beyond the model's vocabulary of 100"):
        sample(SampleConfig(init_from=str(tmp_path / "small"), start="Hello", device="cpu", dtype="float32"))
