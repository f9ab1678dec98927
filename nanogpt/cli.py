"""The command line: `nanogpt <command> [config files] [--key=value ...]`, and the root scripts' entry points.

Every command turns a UserError into one line on stderr and exit status 1; anything else is a bug and keeps its
traceback.
"""

import inspect
import re
import sys
from dataclasses import fields

from nanogpt.errors import UserError

USAGE = """usage: nanogpt <command> [config files] [--key=value ...]

commands:
  prepare NAME      prepare a dataset under data/NAME (shakespeare_char, shakespeare)
  train             train or finetune a model (python train.py)
  sample            sample from a trained model (python sample.py)
  bench             time the training step alone (python bench.py)

`nanogpt <command> --help` lists a command's settings and their defaults."""


def settings_help(config_class, title):
    """A help text listing every setting of a config dataclass with its default and the comment beside it."""
    comments = dict(re.findall(r"^\s+(\w+): [^=]+=[^#\n]*#\s*(.*)$", inspect.getsource(config_class), re.M))
    lines = [title, "", "settings (config files and --key=value override them, in order):"]
    for f in fields(config_class):
        lines.append(f"  --{f.name}={f.default!r}".ljust(40) + comments.get(f.name, ""))
    return "\n".join(lines)


def run(command, args):
    """Run one command; returns the process exit status."""
    try:
        if command == "prepare":
            return prepare_command(args)
        if command == "train":
            return train_command(args)
        if command == "sample":
            return sample_command(args)
        if command == "bench":
            return bench_command(args)
        raise UserError(f"unknown command '{command}'; run `nanogpt --help` for the list")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def wants_help(args):
    return any(a in ("-h", "--help") for a in args)


def prepare_command(args, data_dir=None):
    from nanogpt.datasets import RECIPES, prepare

    if wants_help(args) or not args:
        print("usage: nanogpt prepare NAME [--data_dir=data]\n\nrecipes: " + ", ".join(sorted(RECIPES)))
        return 0 if args else 1
    name, rest = args[0], args[1:]
    for arg in rest:
        if arg.startswith("--data_dir="):
            data_dir = arg.split("=", 1)[1]
        else:
            raise UserError(f"unknown option {arg} for prepare (it takes NAME and --data_dir=DIR)")
    prepare(name, data_dir or "data")
    return 0


def train_command(args):
    from nanogpt.config import TrainConfig, load_config
    from nanogpt.train import train

    if wants_help(args):
        print(settings_help(TrainConfig, "usage: python train.py [config/file.py ...] [--key=value ...]"))
        return 0
    train(load_config(args, TrainConfig))
    return 0


def sample_command(args):
    from nanogpt.config import load_config
    from nanogpt.sample import SampleConfig, sample

    if wants_help(args):
        print(settings_help(SampleConfig, "usage: python sample.py [config/file.py ...] [--key=value ...]"))
        return 0
    sample(load_config(args, SampleConfig))
    return 0


def bench_command(args):
    from nanogpt.bench import BenchConfig, bench
    from nanogpt.config import load_config

    if wants_help(args):
        print(settings_help(BenchConfig, "usage: python bench.py [--key=value ...]"))
        return 0
    bench(load_config(args, BenchConfig))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 1
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
