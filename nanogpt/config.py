"""Training settings: one typed dataclass, read from nanoGPT-style config files and `--key=value` overrides.

A config file is plain Python assignments (`batch_size = 12`). It is never executed: each right-hand side is
evaluated by a small reader that knows literals, bounded arithmetic, names assigned earlier in the same file,
str()/int()/float() and, after `import time`, time.time() (so upstream nanoGPT's presets read as they are), and a
config file from the internet cannot run code. Overrides are Python literals (a bare word is a string) and must
have the type of the setting's default; an int is accepted where a float is expected.

Each setting's meaning is the comment beside its field: field_help reads it for `--help` and the settings reference.
The validation helpers at the end are shared by every command that has the same kind of setting.
"""

import ast
import difflib
import inspect
import io
import operator
import re
import textwrap
import time
import tokenize
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nanogpt.errors import UserError


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"  # where checkpoints go (ckpt.pt, best.pt, optim-N.pt)
    eval_interval: int = 2000  # iterations between train/val loss estimates (and checkpoint saves)
    log_interval: int = 1  # iterations between log lines
    eval_iters: int = 200  # batches averaged per loss estimate
    eval_only: bool = False  # estimate the losses once and exit
    eval_train: bool = True  # estimate the train split's loss too (nanoGPT); False: val only, half the cost
    always_save_checkpoint: bool = True  # save at every eval, not only when val loss improves
    init_from: str = "scratch"  # 'scratch', 'resume' (out_dir), 'gpt2' … 'gpt2-xl', a hub name, an HF or a run folder
    seed: int = 1337  # seeds weights, batches and dropout; a run is reproducible from it
    reset_optimizer: bool = False  # resume with fresh optimizer moments (needed when the checkpoint holds none)
    # logging to Weights & Biases (optional; `pip install wandb`)
    wandb_log: bool = False  # send losses, learning rate and MFU to Weights & Biases at each evaluation
    wandb_project: str = "owt"  # the Weights & Biases project the run is logged under
    wandb_run_name: str = "gpt2"  # the run's name in Weights & Biases
    tensorboard_log: bool = False  # also write metrics.jsonl's values to out_dir/tensorboard (pip install tensorboard)
    eval_tasks: str = ""  # at every evaluation also run these `nanogpt eval` tasks (e.g. 'bpb,hellaswag'), logged
    # data
    dataset: str = "openwebtext"  # a folder under data_dir holding train.bin, val.bin (or shards) and meta.json
    data_dir: str = "data"  # the folder that holds the dataset folders
    document_aligned: bool = False  # start every training row at a document start (nanochat), not anywhere (nanoGPT)
    gradient_accumulation_steps: int = 5 * 8  # micro-steps per optimizer step, summed over all ranks
    batch_size: int = 12  # sequences per micro-step per rank
    batch_ramp_start: int = 0  # with batch_ramp_iters: sequences per micro-step at step 0, growing to batch_size
    batch_ramp_iters: int = 0  # steps over which the batch grows linearly from batch_ramp_start (0: no ramp)
    block_size: int = 1024  # tokens per sequence
    # model
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block; must divide n_embd
    n_embd: int = 768  # width of the residual stream (the embedding size)
    dropout: float = 0.0  # share of activations zeroed during training: 0 for pretraining, 0.1+ for finetuning
    bias: bool = False  # biases inside LayerNorm and Linear layers
    # the modern recipe's architecture switches (defaults: GPT-2; see docs/concepts/modern-recipe.md)
    position: str = "learned"  # 'learned' position embeddings (GPT-2) or 'rope' (rotary, applied to q and k)
    rope_base: float = 10000.0  # rotary's base: the longest wavelength is 2π·rope_base positions
    norm: str = "layernorm"  # 'layernorm' (GPT-2) or 'rmsnorm'
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    activation: str = "gelu"  # MLP activation: 'gelu' (GPT-2), 'relu2' (ReLU squared) or 'swiglu'
    tie_embeddings: bool = True  # share the token embedding with the LM head (GPT-2); False unties them
    zero_init_proj: bool = False  # initialise the blocks' output projections at zero
    logit_softcap: float = 0.0  # > 0: logits become cap·tanh(logits/cap); 0 is off (GPT-2)
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0 means n_head, as GPT-2
    value_embeddings: bool = False  # every other layer (the last included) adds a gated token embedding to its values
    x0_mix: bool = False  # each block's input gets a learned share (from 0) of the embedding output
    embed_norm: bool = False  # normalise the token embedding before the first block
    resid_scales: bool = False  # scale the residual stream by a learned number (from 1) before each block
    backout: bool = False  # subtract a learned share (from 0) of the middle layer's residual before the final norm
    # optimizer
    optimizer: str = "adamw"  # 'adamw' (nanoGPT) or 'muon': Muon for the blocks' matrices, AdamW for the rest
    muon_lr: float = 0.02  # optimizer='muon': Muon's peak learning rate (follows the same schedule)
    muon_momentum: float = 0.95  # optimizer='muon': Muon's (Nesterov) momentum
    muon_weight_decay: float = 0.0  # optimizer='muon': decoupled weight decay of the Muon matrices
    muon_momentum_warmup: int = 0  # optimizer='muon': steps over which Muon's momentum rises from 0.85 to muon_momentum
    muon_orthogonalizer: str = "newton_schulz"  # optimizer='muon': 'newton_schulz' (one quintic) or 'polar_express'
    muon_neuron_norm: bool = False  # optimizer='muon': NorMuon, each output row's step over its running RMS
    muon_cautious_weight_decay: bool = False  # optimizer='muon': decay only entries the update moves towards zero
    embedding_lr: float = 0.0  # optimizer='muon': AdamW's peak rate for the token and value embeddings (0: learning_rate)
    scalar_lr: float = 0.0  # optimizer='muon': AdamW's peak rate for the learned scalars (0: learning_rate)
    lr_rule: str = "off"  # 'off': the peaks as set; 'transfer': scale them from the lr_ref_* shape to this run's
    lr_ref_width: int = 0  # lr_rule: the n_embd the peak rates were tuned at (0: this run's)
    lr_ref_batch_tokens: int = 0  # lr_rule: the tokens per optimizer step they were tuned at (0: this run's)
    lr_ref_iters: int = 0  # lr_rule: the max_iters they were tuned at (0: this run's)
    # AdamW (with optimizer='muon': for embeddings, LM head, norms and biases)
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 600000  # total optimizer steps
    weight_decay: float = 1e-1  # AdamW's decoupled weight decay, applied to 2-D weights only (not biases, norms)
    beta1: float = 0.9  # AdamW's decay rate of the gradient average (momentum)
    beta2: float = 0.95  # AdamW's decay rate of the squared-gradient average
    grad_clip: float = 1.0  # clip gradients at this norm; 0 disables
    skip_nonfinite: bool = False  # on a nan/inf loss or gradient, skip that step and go on instead of stopping
    # learning-rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True  # follow the warmup + cosine schedule; False keeps learning_rate constant
    lr_schedule: str = "cosine"  # 'cosine' (nanoGPT) or 'wsd': hold the peak, then decay linearly to min_lr
    wsd_decay_frac: float = 0.2  # lr_schedule='wsd': the share of the iterations after warmup spent decaying
    warmup_iters: int = 2000  # steps of linear warmup from ~0 to learning_rate
    lr_decay_iters: int = 600000  # the step where the cosine decay reaches min_lr; ~max_iters (Chinchilla)
    min_lr: float = 6e-5  # the learning rate after lr_decay_iters; ~learning_rate/10 (Chinchilla)
    # distributed
    backend: str = "nccl"  # torch.distributed backend under torchrun: 'nccl' (GPUs) or 'gloo' (CPU)
    parallelism: str = "ddp"  # under torchrun: 'ddp' (a full copy per rank) or 'fsdp' (weights and optimizer sharded)
    # system
    device: str = "auto"  # 'auto' picks cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' picks bfloat16 where supported, else float16 on CUDA, else float32; 'native' is 'auto'
    # but bfloat16 on CPUs with bfloat16 instructions (AVX512-BF16, AMX)
    compile: object = "auto"  # True/False, or 'auto': torch.compile on CUDA where Triton is installed
    threads: int = 0  # CPU threads; 0: PyTorch's default, capped at the idle cores

    def to_dict(self):
        return asdict(self)


TYPE_NAMES = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
# settings whose default is 'auto' but which also take a bool
BOOL_OR_AUTO = {"compile"}
DEVICES = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "native", "float32", "bfloat16", "float16")
PARALLELISMS = ("ddp", "fsdp")


def load_config(args, config_class=TrainConfig):
    """Build a config from command-line words: config file paths first, then `--key=value` overrides,
    applied in order. Raises UserError for anything wrong, naming the file or key."""
    values = {}
    for arg in args:
        if not arg.startswith("--"):
            values.update(read_config_file(arg, config_class))
        else:
            key, value = parse_override(arg, config_class)
            values[key] = value
    cfg = config_class(**values)
    return cfg


def given_settings(args, config_class=TrainConfig):
    """The names of the settings that command-line words set, in config files or as --key=value."""
    names = set()
    for arg in args:
        if arg.startswith("--"):
            names.add(parse_override(arg, config_class)[0])
        else:
            names.update(read_config_file(arg, config_class))
    return names


def config_field_types(config_class):
    return {f.name: f.default for f in fields(config_class)}


def field_help(config_class):
    """Setting name -> the one-line comment beside its field in the class source: the text `--help` prints and
    docs/code-analysis/configuration-reference.md shows ("" for a field without one)."""
    source = textwrap.dedent(inspect.getsource(config_class))
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    lines = {node.target.id: node.end_lineno for node in ast.parse(source).body[0].body
             if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    return {f.name: comments.get(lines.get(f.name), "") for f in fields(config_class)}


def parse_override(arg, config_class):
    """`--key=value` -> (key, typed value)."""
    if "=" not in arg:
        raise UserError(f"override {arg!r} must look like --key=value")
    key, text = arg[2:].split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # the last two: thousands of nested brackets
        value = text  # a bare word such as --device=cpu is a string, as in nanoGPT
    return key, check_value(key, value, config_class, origin=_short(arg))


def check_value(key, value, config_class, origin):
    defaults = config_field_types(config_class)
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown config key '{key}' in {origin}{hint}")
    default = defaults[key]
    if key in BOOL_OR_AUTO:
        if isinstance(value, bool) or value == "auto":
            return value
        raise UserError(f"{key} must be True, False or 'auto', got {_short(repr(value))} in {origin}")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(
            f"{key} must be {TYPE_NAMES[type(default)]} (like {default!r}), got {_short(repr(value))} in {origin}"
        )
    return value


# A config file's arithmetic is bounded so that no file can hang the reader or fill memory (`9**9**9`,
# `'x' * 10**12`): no setting needs an integer past a float's range or a computed text of book length.
MAX_INT_BITS = 1024
MAX_TEXT = 100_000  # characters a computed string may reach; string literals are only bounded by the file
# the calls a config file may make: pure conversions of one value, and time.time() after `import time` (upstream
# nanoGPT's finetune_shakespeare.py stamps its W&B run name with it)
CONVERSIONS = {"str": str, "int": int, "float": float}
ALLOWED = "literals, arithmetic, names assigned earlier, str()/int()/float() and time.time()"
TOO_BIG = f"a number beyond {MAX_INT_BITS} bits is too large for any setting"
TOO_LONG = f"a computed text longer than {MAX_TEXT:,} characters is too long for any setting"


def _power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS:
            raise OverflowError(TOO_BIG)
    try:
        return base ** exponent
    except OverflowError:
        raise OverflowError("the result is beyond a float's range") from None


def _multiply(a, b):
    for text, times in ((a, b), (b, a)):
        if isinstance(text, str) and isinstance(times, int) and len(text) * times > MAX_TEXT:
            raise OverflowError(TOO_LONG)
    return a * b


def _modulo(a, b):
    if isinstance(a, str):
        raise TypeError("%-formatting of strings is not supported")  # '%999999999d' % 1 would be a gigabyte
    return a % b


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: _power,
    ast.Mod: _modulo,
}


def read_config_file(path, config_class=TrainConfig):
    """Read `name = value` assignments from a config file without executing it."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path} not found (give a path such as config/train_shakespeare_char.py)")
    try:
        tree = ast.parse(file.read_text(), filename=str(path))
    except SyntaxError as e:
        raise UserError(f"config file {path} line {e.lineno}: {e.msg}") from None
    except (RecursionError, MemoryError):  # the parser's own stack, on thousands of nested operators
        raise UserError(f"config file {path}: an expression is nested too deeply to read") from None
    names, imports = {}, set()
    for node in tree.body:
        where = f"{path} line {node.lineno}"
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring or bare string comment
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.add(_check_import(node, where))
            continue
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UserError(f"{where}: config files may only hold `name = value` assignments (and `import time`)")
        name = node.targets[0].id
        try:
            value = _evaluate(node.value, names, imports, where)
        except (ArithmeticError, TypeError, ValueError) as e:
            raise UserError(f"{where}: {e}; write the value itself") from None
        except RecursionError:
            raise UserError(f"{where}: the expression is nested too deeply; write the value itself") from None
        names[name] = check_value(name, value, config_class, origin=where)
    return names


def _check_import(node, where):
    if isinstance(node, ast.Import) and [(a.name, a.asname) for a in node.names] == [("time", None)]:
        return "time"
    raise UserError(f"{where}: `{_short(ast.unparse(node))}` is not allowed: a config file may only `import time` "
                    "(for time.time()); write the value itself")


def _evaluate(node, names, imports, where):
    """Evaluate a literal, a name assigned earlier, arithmetic on those, or one of the allowed calls."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, type(None))):  # not bytes, 1j
        return _bounded(node.value) if isinstance(node.value, int) else node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Name) and node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, names, imports, where)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, names, imports, where), _evaluate(node.right, names, imports, where)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and not node.keywords:
        if _is_time_call(node):
            if "time" not in imports:
                raise UserError(f"{where}: time.time() needs `import time` earlier in the file")
            return time.time()
        if isinstance(node.func, ast.Name) and node.func.id in CONVERSIONS and len(node.args) == 1:
            argument = _bounded(_evaluate(node.args[0], names, imports, where))
            return _bounded(CONVERSIONS[node.func.id](argument))
    if isinstance(node, ast.Name):
        raise UserError(f"{where}: '{node.id}' is not a name assigned earlier in this file; write the value itself")
    raise UserError(f"{where}: `{_short(ast.unparse(node))}` is not allowed: only {ALLOWED} may appear on the right "
                    "of `=`; write the value itself")


def _is_time_call(node):
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "time" and isinstance(func.value, ast.Name)
            and func.value.id == "time" and not node.args)


def _bounded(value):
    """value, if it is within the bounds: checked on every number and on every string the reader computes."""
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise OverflowError(TOO_BIG)
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise OverflowError(TOO_LONG)
    return value


def _short(text, limit=60):
    return text if len(text) <= limit else text[:limit - 1] + "…"


def validate(cfg):
    """Check training settings that have the right type but cannot work. Raises UserError."""
    check_device(cfg)
    if cfg.parallelism not in PARALLELISMS:
        raise UserError(f"unknown parallelism '{cfg.parallelism}': use {' or '.join(PARALLELISMS)}")
    check_model_shape(cfg)
    validate_recipe(cfg)
    check_at_least(cfg, 1, "gradient_accumulation_steps", "eval_iters", "eval_interval", "log_interval")
    check_at_least(cfg, 0, "learning_rate", "min_lr", "weight_decay", "grad_clip", "dropout", "max_iters", "threads")
    if cfg.dropout >= 1:
        raise UserError(f"dropout must be below 1, got {cfg.dropout}")
    # any other name is pretrained weights: a GPT-2 size, a hub name or a local folder, checked by hf.py
    if not cfg.init_from:
        raise UserError("init_from must be 'scratch', 'resume', a GPT-2 name such as 'gpt2', a hub name or a folder")
    return cfg


def check_device(cfg):
    """The names in `device` and `dtype` (whether that device exists here is runtime.resolve_device's check)."""
    if not DEVICES.match(cfg.device):
        raise UserError(f"unknown device '{cfg.device}': use auto, cpu, cuda, cuda:N or mps")
    if cfg.dtype not in DTYPES:
        raise UserError(f"unknown dtype '{cfg.dtype}': use one of {', '.join(DTYPES)}")


def check_model_shape(cfg):
    """The model and batch sizes of a config that builds a model (train, bench)."""
    check_at_least(cfg, 1, "batch_size", "block_size", "n_layer", "n_head", "n_embd")
    if cfg.n_embd % cfg.n_head != 0:
        raise UserError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")


def check_at_least(cfg, minimum, *names):
    for name in names:
        value = getattr(cfg, name)
        if value < minimum:
            rule = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise UserError(f"{name} {rule}, got {value}")


RECIPE_CHOICES = {
    "position": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "activation": ("gelu", "relu2", "swiglu"),
    "optimizer": ("adamw", "muon"),
    "lr_schedule": ("cosine", "wsd"),
    "lr_rule": ("off", "transfer"),
    "muon_orthogonalizer": ("newton_schulz", "polar_express"),
}


def validate_recipe(cfg):
    """Check the modern recipe's settings (architecture switches, optimizer, schedule). Raises UserError."""
    for name, allowed in RECIPE_CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"unknown {name} '{getattr(cfg, name)}': use {' or '.join(allowed)}")
    if cfg.n_kv_head < 0 or (cfg.n_kv_head and cfg.n_head % cfg.n_kv_head != 0):
        raise UserError(f"n_kv_head ({cfg.n_kv_head}) must divide n_head ({cfg.n_head}), or be 0 for n_head")
    if cfg.position == "rope" and (cfg.n_embd // cfg.n_head) % 2 != 0:
        raise UserError(f"position='rope' needs an even head size (n_embd/n_head), got {cfg.n_embd // cfg.n_head}")
    check_at_least(cfg, 0, "rope_base", "muon_momentum", "wsd_decay_frac", "logit_softcap", "muon_lr",
                   "muon_weight_decay", "muon_momentum_warmup", "embedding_lr", "scalar_lr",
                   "lr_ref_width", "lr_ref_batch_tokens", "lr_ref_iters", "batch_ramp_iters")
    if cfg.rope_base <= 1:
        raise UserError(f"rope_base must be above 1, got {cfg.rope_base}")
    if cfg.muon_momentum >= 1 or cfg.wsd_decay_frac > 1:
        raise UserError("muon_momentum must be below 1 and wsd_decay_frac at most 1")
    if cfg.batch_ramp_iters and not 1 <= cfg.batch_ramp_start <= cfg.batch_size:
        raise UserError(f"batch_ramp_start must be from 1 to batch_size ({cfg.batch_size}) when batch_ramp_iters is "
                        f"set, got {cfg.batch_ramp_start}")
