"""Config files and --key=value overrides: parsing, typing, and every error path."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanogpt.config import TrainConfig, load_config, validate
from nanogpt.errors import UserError


REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="conf.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_file_then_overrides_in_order(tmp_path):
    conf = write(tmp_path, "batch_size = 4\nn_layer = 2\ngradient_accumulation_steps = 5 * 8\nout_dir = 'x'\n")
    cfg = load_config([conf, "--n_layer=3", "--device=cpu", "--learning_rate=1", "--compile=False"])
    assert (cfg.batch_size, cfg.n_layer, cfg.gradient_accumulation_steps, cfg.out_dir) == (4, 3, 40, "x")
    assert cfg.device == "cpu" and cfg.compile is False
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)  # an int is accepted for a float


# What each preset in config/ sets: nanoGPT's values for its presets of the same name (the CPU one is nanoGPT's
# README command for a laptop), written out here rather than read from the files under test.
SHAKESPEARE_CHAR = dict(
    out_dir="out-shakespeare-char", eval_interval=250, eval_iters=200, log_interval=10, always_save_checkpoint=False,
    wandb_log=False, wandb_project="shakespeare-char", wandb_run_name="mini-gpt", dataset="shakespeare_char",
    gradient_accumulation_steps=1, batch_size=64, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2,
    learning_rate=1e-3, max_iters=5000, lr_decay_iters=5000, min_lr=1e-4, beta2=0.99, warmup_iters=100,
)
PRESETS = {
    "train_shakespeare_char": SHAKESPEARE_CHAR,
    "train_shakespeare_char_cpu": dict(
        out_dir="out-shakespeare-char", eval_interval=250, eval_iters=20, log_interval=10,
        always_save_checkpoint=False, dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=12,
        block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, learning_rate=1e-3, max_iters=2000,
        lr_decay_iters=2000, min_lr=1e-4, beta2=0.99, warmup_iters=100, device="cpu", compile=False,
    ),
    "train_gpt2": dict(
        wandb_project="owt", wandb_run_name="gpt2-124M", batch_size=12, block_size=1024,
        gradient_accumulation_steps=40, max_iters=600000, lr_decay_iters=600000, eval_interval=1000,
        eval_iters=200, log_interval=10, weight_decay=0.1,
    ),
    "finetune_shakespeare": dict(
        out_dir="out-shakespeare", eval_interval=5, eval_iters=40, wandb_project="shakespeare",
        dataset="shakespeare", init_from="gpt2-xl",
        always_save_checkpoint=False, batch_size=1, gradient_accumulation_steps=32, max_iters=20,
        learning_rate=3e-5, decay_lr=False,
    ),
    **{f"eval_{size}": dict(batch_size=8, eval_iters=500, eval_only=True, wandb_log=False, init_from=size)
       for size in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")},
}
# nanoGPT names the finetuning run 'ft-' plus the time it started; only its prefix is fixed
RUN_NAME_PREFIX = {"finetune_shakespeare": "ft"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_repository_presets_set_their_values(preset):
    file = f"config/{preset.replace('-', '_')}.py"
    cfg = load_config([file])
    expected = PRESETS[preset]
    assert {k: getattr(cfg, k) for k in expected} == expected
    if preset in RUN_NAME_PREFIX:
        assert cfg.wandb_run_name.startswith(RUN_NAME_PREFIX[preset])
        expected = dict(expected, wandb_run_name=cfg.wandb_run_name)
    # everything else keeps its default
    defaults = TrainConfig()
    changed = {k for k, v in cfg.to_dict().items() if v != getattr(defaults, k) and k not in expected}
    assert not changed, f"{file} also sets {sorted(changed)}"


def test_config_file_names_refer_to_earlier_assignments(tmp_path):
    conf = write(tmp_path, "max_iters = 100\nlr_decay_iters = max_iters\nmin_lr = 1e-3 / 10\n")
    cfg = load_config([conf])
    assert cfg.lr_decay_iters == 100 and cfg.min_lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--foo=1"], "unknown config key 'foo'"),
        (["--n_layr=2"], "did you mean 'n_layer'"),
        (["--batch_size=1.5"], "batch_size must be an integer"),
        (["--batch_size=True"], "batch_size must be an integer"),
        (["--eval_only=1"], "eval_only must be True or False"),
        (["--learning_rate=fast"], "learning_rate must be a number"),
        (["--compile=maybe"], "compile must be True, False or 'auto'"),
        (["--batch_size"], "must look like --key=value"),
        (["missing_config.py"], "config file missing_config.py not found"),
    ],
)
def test_override_and_file_errors(args, message):
    with pytest.raises(UserError, match=message):
        load_config(args)


@pytest.mark.parametrize(
    "text, message",
    [
        ("import os\n", "a config file may only `import time`"),
        ("batch_size = __import__('os').getpid()\n", "only literals"),
        ("batch_size = \n", "line 1"),
        ("bogus = 3\n", "unknown config key 'bogus'"),
        ("batch_size = 'twelve'\n", "batch_size must be an integer"),
    ],
)
def test_config_file_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_config([write(tmp_path, text)])


def test_config_file_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    conf = write(tmp_path, f"batch_size = open({str(marker)!r}, 'w')\n")
    with pytest.raises(UserError):
        load_config([conf])
    assert not marker.exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(device="tpu"), "unknown device 'tpu'"),
        (dict(dtype="float8"), "unknown dtype 'float8'"),
        (dict(n_embd=30, n_head=4), "divisible by n_head"),
        (dict(learning_rate=-1.0), "learning_rate must not be negative"),
        (dict(dropout=1.0), "dropout must be below 1"),
        (dict(batch_size=0), "batch_size must be at least 1"),
        (dict(max_iters=-5), "max_iters must not be negative"),
    ],
)
def test_validation_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        validate(TrainConfig(**overrides))


# Upstream nanoGPT's config files, statement for statement (its comments left out): each must load as it is.
UPSTREAM_FINETUNE_SHAKESPEARE = """import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False # a trailing comment
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'

always_save_checkpoint = False

batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

learning_rate = 3e-5
decay_lr = False
"""

UPSTREAM_TRAIN_GPT2 = """wandb_log = True
wandb_project = 'owt'
wandb_run_name='gpt2-124M'

batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
"""

UPSTREAM_EVAL_GPT2 = """batch_size = 8
eval_iters = 500 # a trailing comment
eval_only = True
wandb_log = False
init_from = 'gpt2'
"""

UPSTREAM_TRAIN_SHAKESPEARE_CHAR = """out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
# device = 'cpu'  # a commented-out setting
# compile = False
"""


def test_upstream_finetune_preset_loads_with_its_time_stamped_run_name(tmp_path):
    before = time.time()
    cfg = load_config([write(tmp_path, UPSTREAM_FINETUNE_SHAKESPEARE)])
    after = time.time()
    assert cfg.wandb_run_name.startswith("ft-") and before <= float(cfg.wandb_run_name[3:]) <= after
    assert (cfg.init_from, cfg.dataset, cfg.out_dir, cfg.batch_size, cfg.gradient_accumulation_steps) == (
        "gpt2-xl", "shakespeare", "out-shakespeare", 1, 32)
    assert (cfg.max_iters, cfg.learning_rate, cfg.decay_lr, cfg.always_save_checkpoint) == (20, 3e-5, False, False)


@pytest.mark.parametrize("text, expected", [
    (UPSTREAM_TRAIN_GPT2, dict(wandb_log=True, wandb_run_name="gpt2-124M", gradient_accumulation_steps=40,
                               eval_interval=1000, log_interval=10, weight_decay=0.1)),
    (UPSTREAM_EVAL_GPT2, dict(batch_size=8, eval_iters=500, eval_only=True, init_from="gpt2")),
    (UPSTREAM_TRAIN_SHAKESPEARE_CHAR, dict(n_layer=6, n_embd=384, dropout=0.2, beta2=0.99, warmup_iters=100,
                                           min_lr=1e-4, device="auto", compile="auto")),
])
def test_upstream_presets_load_as_they_are(tmp_path, text, expected):
    cfg = load_config([write(tmp_path, text)])
    assert {key: getattr(cfg, key) for key in expected} == expected


def test_this_repositorys_finetune_preset_matches_upstream(tmp_path):
    ours = load_config(["config/finetune_shakespeare.py"]).to_dict()
    theirs = load_config([write(tmp_path, UPSTREAM_FINETUNE_SHAKESPEARE)]).to_dict()
    assert ours.pop("wandb_run_name").startswith("ft-") and theirs.pop("wandb_run_name").startswith("ft-")
    assert ours == theirs


UPSTREAM_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "nanoGPT" / "config"


@pytest.mark.skipif(not UPSTREAM_CONFIGS.is_dir(), reason=f"no upstream nanoGPT checkout at {UPSTREAM_CONFIGS}")
def test_every_upstream_config_file_loads():
    files = sorted(UPSTREAM_CONFIGS.glob("*.py"))
    assert files
    for path in files:
        load_config([str(path)])


@pytest.mark.parametrize("text, message", [
    ("import os\n", "`import os` is not allowed: a config file may only `import time`"),
    ("from time import time\n", "`from time import time` is not allowed"),
    ("import time as t\n", "`import time as t` is not allowed"),
    ("wandb_run_name = str(time.time())\n", "time.time() needs `import time` earlier in the file"),
    ("import time\nmax_iters = time.sleep(100)\n", "`time.sleep(100)` is not allowed: only literals, arithmetic"),
    ("max_iters = len('abc')\n", "`len('abc')` is not allowed"),
    ("max_iters = int(x='3')\n", "is not allowed"),
    ("max_iters = [1, 2]\n", "`[1, 2]` is not allowed"),
    ("out_dir = b'x' * 10 ** 12\n", "`b'x'` is not allowed"),
    ("max_iters = steps * 2\n", "'steps' is not a name assigned earlier in this file"),
    ("max_iters = 1 // 0\n", "line 1: integer division or modulo by zero; write the value itself"),
    ("out_dir = 'out' - 1\n", "unsupported operand"),
    ("if True:\n    max_iters = 1\n", "may only hold `name = value` assignments (and `import time`)"),
])
def test_config_file_refusals_say_what_to_write(tmp_path, text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config([write(tmp_path, text)])


def test_allowed_conversions(tmp_path):
    conf = write(tmp_path, "max_iters = int(2.0 ** 10)\nlearning_rate = float('3e-4')\nout_dir = 'run-' + str(7)\n")
    cfg = load_config([conf])
    assert (cfg.max_iters, cfg.learning_rate, cfg.out_dir) == (1024, 3e-4, "run-7")


@pytest.mark.parametrize("text, message", [
    ("max_iters = 2 ** 1025\n", "a number beyond 1024 bits"),
    ("max_iters = 3 ** 1000\n", "a number beyond 1024 bits"),
    ("max_iters = 2 ** 1000 * 2 ** 1000\n", "a number beyond 1024 bits"),
    ("max_iters = 0x" + "f" * 300 + "\n", "a number beyond 1024 bits"),
    ("learning_rate = 10.0 ** 400\n", "beyond a float's range"),
    ("out_dir = 'x' * 100_001\n", "longer than 100,000 characters"),
    ("out_dir = 100_001 * 'x'\n", "longer than 100,000 characters"),
    ("out_dir = 'x' * 60_000\nwandb_project = out_dir + out_dir\n", "line 2: a computed text longer"),
    ("out_dir = '%9d' % 1\n", "%-formatting of strings is not supported"),
])
def test_config_arithmetic_is_bounded(tmp_path, text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config([write(tmp_path, text)])


def test_config_arithmetic_within_bounds(tmp_path):
    conf = write(tmp_path, "max_iters = 2 ** 1000 // 2 ** 990\nout_dir = 'x' * 100_000\nwandb_project = 'y' * 3\n")
    cfg = load_config([conf])
    assert (cfg.max_iters, len(cfg.out_dir), cfg.wandb_project) == (1024, 100_000, "yyy")


# each of these would hang the reader or exhaust memory without the bounds: read them in a child process with a
# time and memory limit, so a regression fails instead of hanging the test run
EXPLOSIVE = {
    "9**9**9": "max_iters = 9**9**9\n",
    "huge string": "out_dir = 'x' * 10**12\n",
    "doubling": "out_dir = 'x' * 1000\n" + "out_dir = out_dir + out_dir\n" * 64,
    "huge format": "out_dir = '%999999999d' % 1\n",
    "deep unary": "max_iters = " + "-" * 100_000 + "1\n",
    "long sum": "max_iters = " + "+".join(["1"] * 20_000) + "\n",
    "deep override": None,
}


@pytest.mark.parametrize("case", sorted(EXPLOSIVE))
def test_pathological_config_is_one_line_error_fast(tmp_path, case):
    text = EXPLOSIVE[case]
    args = ["--max_iters=" + "-" * 100_000 + "1"] if text is None else [write(tmp_path, text)]
    program = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from nanogpt.config import load_config\n"
        "from nanogpt.errors import UserError\n"
        "try:\n"
        "    load_config(sys.argv[1:])\n"
        "except UserError as e:\n"
        "    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-500:]
    assert proc.stdout.count("\n") == 1 and len(proc.stdout) < 300, proc.stdout[:300]


def test_validation_checks_sizes_before_dividing():
    with pytest.raises(UserError, match="n_head must be at least 1, got 0"):
        validate(TrainConfig(n_head=0))
