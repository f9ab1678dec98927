"""Training settings: one typed dataclass, read from nanoGPT-style config files and `--key=value` overrides.

A config file is plain Python assignments (`batch_size = 12`). It is never executed: each right-hand side is
evaluated by a small reader that knows literals, arithmetic and names assigned earlier in the same file, so a
config file from the internet cannot run code. Overrides are Python literals (a bare word is a string) and must
have the type of the setting's default; an int is accepted where a float is expected.
"""

import ast
import difflib
import operator
import re
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
    always_save_checkpoint: bool = True  # save at every eval, not only when val loss improves
    init_from: str = "scratch"  # 'scratch', 'resume' (from out_dir), 'gpt2' … 'gpt2-xl', a hub name or an HF folder
    seed: int = 1337  # seeds weights, batches and dropout; a run is reproducible from it
    # logging to Weights & Biases (optional; `pip install wandb`)
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"  # a folder under data_dir holding train.bin, val.bin and meta.json
    data_dir: str = "data"
    gradient_accumulation_steps: int = 5 * 8  # micro-steps per optimizer step, summed over all ranks
    batch_size: int = 12  # sequences per micro-step per rank
    block_size: int = 1024  # tokens per sequence
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # 0 for pretraining, 0.1+ for finetuning
    bias: bool = False  # biases inside LayerNorm and Linear layers
    # AdamW
    learning_rate: float = 6e-4  # peak learning rate
    max_iters: int = 600000  # total optimizer steps
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip gradients at this norm; 0 disables
    skip_nonfinite: bool = False  # on a nan/inf loss or gradient, skip that step and go on instead of stopping
    # learning-rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000  # should be ~max_iters (Chinchilla)
    min_lr: float = 6e-5  # ~learning_rate/10 (Chinchilla)
    # distributed
    backend: str = "nccl"  # torch.distributed backend under torchrun: 'nccl' (GPUs) or 'gloo' (CPU)
    parallelism: str = "ddp"  # under torchrun: 'ddp' (a full copy per rank) or 'fsdp' (weights and optimizer sharded)
    # system
    device: str = "auto"  # 'auto' picks cuda > mps > cpu; or 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' picks bfloat16 where supported, else float16 on CUDA, else float32
    compile: object = "auto"  # True/False, or 'auto': torch.compile on CUDA where it pays off

    def to_dict(self):
        return asdict(self)


TYPE_NAMES = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
# settings whose default is 'auto' but which also take a bool
BOOL_OR_AUTO = {"compile"}
DEVICES = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")
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


def parse_override(arg, config_class):
    """`--key=value` -> (key, typed value)."""
    if "=" not in arg:
        raise UserError(f"override {arg!r} must look like --key=value")
    key, text = arg[2:].split("=", 1)
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        value = text  # a bare word such as --device=cpu is a string, as in nanoGPT
    return key, check_value(key, value, config_class, origin=arg)


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
        raise UserError(f"{key} must be True, False or 'auto', got {value!r} in {origin}")
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
            f"{key} must be {TYPE_NAMES[type(default)]} (like {default!r}), got {value!r} in {origin}"
        )
    return value


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
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
    names = {}
    for node in tree.body:
        where = f"{path} line {node.lineno}"
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring or bare string comment
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UserError(f"{where}: config files may only hold `name = value` assignments")
        name = node.targets[0].id
        value = _evaluate(node.value, names, where)
        names[name] = check_value(name, value, config_class, origin=where)
    return names


def _evaluate(node, names, where):
    """Evaluate a literal, a name assigned earlier, or arithmetic on those."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Name) and node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, names, where)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left, names, where), _evaluate(node.right, names, where))
    if isinstance(node, (ast.Tuple, ast.List)):
        return type(node.elts)(_evaluate(e, names, where) for e in node.elts)
    raise UserError(f"{where}: only literals, arithmetic and earlier names are allowed on the right of `=`")


def validate(cfg):
    """Check values that have the right type but cannot work. Raises UserError."""
    if not DEVICES.match(cfg.device):
        raise UserError(f"unknown device '{cfg.device}': use auto, cpu, cuda, cuda:N or mps")
    if cfg.dtype not in DTYPES:
        raise UserError(f"unknown dtype '{cfg.dtype}': use one of {', '.join(DTYPES)}")
    if cfg.parallelism not in PARALLELISMS:
        raise UserError(f"unknown parallelism '{cfg.parallelism}': use {' or '.join(PARALLELISMS)}")
    if cfg.n_embd % cfg.n_head != 0:
        raise UserError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "dropout"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if cfg.dropout >= 1:
        raise UserError(f"dropout must be below 1, got {cfg.dropout}")
    for name in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "gradient_accumulation_steps",
                 "eval_iters", "eval_interval", "log_interval"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_iters < 0:
        raise UserError(f"max_iters must not be negative, got {cfg.max_iters}")
    # any other name is pretrained weights: a GPT-2 size, a hub name or a local folder, checked by hf.py
    if not cfg.init_from:
        raise UserError("init_from must be 'scratch', 'resume', a GPT-2 name such as 'gpt2', a hub name or a folder")
    return cfg
