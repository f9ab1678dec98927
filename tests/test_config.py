"""Config files and --key=value overrides: parsing, typing, and every error path."""

import pytest

from nanogpt.config import TrainConfig, load_config, validate
from nanogpt.errors import UserError


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
        ("import os\n", "only hold `name = value`"),
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
