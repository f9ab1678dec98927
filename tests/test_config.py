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


def test_repository_presets_load():
    for preset in ("train_shakespeare_char", "train_shakespeare_char_cpu", "train_gpt2", "finetune_shakespeare",
                   "eval_gpt2", "eval_gpt2_medium", "eval_gpt2_large", "eval_gpt2_xl"):
        load_config([f"config/{preset}.py"])


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
