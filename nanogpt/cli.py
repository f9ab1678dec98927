"""The command line: `nanogpt <command> [config files] [--key=value ...]`, and the root scripts' entry points.

Every command turns a UserError into one line on stderr and exit status 1; anything else is a bug and keeps its
traceback.
"""

import inspect
import os
import re
import sys
from dataclasses import fields

from nanogpt.errors import UserError

USAGE = """usage: nanogpt <command> [config files] [--key=value ...]

commands:
  prepare NAME      prepare a dataset under data/NAME (shakespeare_char, shakespeare, openwebtext)
  prepare --input=PATH --name=NAME   prepare your own text (a file, a folder, a Hugging Face dataset)
  train             train or finetune a model (python train.py)
  sample            sample from a trained model (python sample.py)
  bench             time the training step alone (python bench.py)
  export            write a run (or GPT-2 weights) as a Hugging Face folder: --out_dir=RUN --to=DIR
  serve             serve a run over HTTP: OpenAI-style /v1/completions and a playground page at /

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
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # logs appear as they are written, through pipes and tee too
    try:
        if command not in COMMANDS:
            raise UserError(f"unknown command '{command}'; run `nanogpt --help` for the list")
        return COMMANDS[command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`nanogpt sample | head`): stop quietly, as Unix tools do
        sys.stdout = None
        return 141


def wants_help(args):
    return any(a in ("-h", "--help") for a in args)


def prepare_command(args, data_dir=None):
    from nanogpt.datasets import RECIPES, prepare, prepare_text

    usage = f"""usage: nanogpt prepare NAME [--data_dir=data]
       nanogpt prepare --input=PATH_OR_NAME --name=NAME [--tokenizer=gpt2|char] [--val_fraction=0.1] [--data_dir=data]
       either form takes --overwrite=True to replace a different dataset already in the folder

The first form runs a named recipe: {', '.join(sorted(RECIPES))}.
The second tokenizes your own text into DATA_DIR/NAME (then `python train.py --dataset=NAME`): PATH_OR_NAME is a
text file, a folder of *.txt/*.md files (each a document) or a Hugging Face dataset (name or local path) with a
'text' column. The last val_fraction of the documents (of the text, for one file) is the val split."""
    if wants_help(args) or not args:
        print(usage)
        return 0 if args else 1
    names = [a for a in args if not a.startswith("--")]
    options = {"data_dir": data_dir}
    known = ("input", "name", "tokenizer", "val_fraction", "data_dir", "overwrite")
    for arg in args:
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if key not in known or not eq:
            raise UserError(f"unknown option {arg} for prepare; it takes {', '.join('--' + k + '=...' for k in known)}")
        options[key] = value
    data_dir = options.pop("data_dir") or "data"
    if options.get("overwrite", "False") not in ("True", "False"):
        raise UserError(f"--overwrite must be True or False, not {options['overwrite']!r}")
    overwrite = options.pop("overwrite", "False") == "True"
    if len(names) > 1 or (names and "input" in options):
        raise UserError("prepare takes one recipe NAME, or --input=PATH --name=NAME for your own text, not both")
    if names:
        if len(options) > 0:
            raise UserError(f"--{next(iter(options))} is for your own text (--input=...), not for a named recipe")
        prepare(names[0], data_dir, overwrite=overwrite)
        return 0
    if "input" not in options or not options.get("name"):
        raise UserError("give a recipe NAME, or --input=PATH_OR_NAME with --name=NAME (the folder to write)")
    try:
        val_fraction = float(options.get("val_fraction", "0.1"))
    except ValueError:
        raise UserError(f"--val_fraction must be a number, not {options['val_fraction']!r}") from None
    prepare_text(options["input"], options["name"], tokenizer=options.get("tokenizer", "gpt2"),
                 val_fraction=val_fraction, data_dir=data_dir, overwrite=overwrite)
    return 0


def settings_command(args, config_class, action, usage):
    """A command configured by a settings dataclass: --help lists the settings, else run action(config)."""
    from nanogpt.config import load_config

    if wants_help(args):
        print(settings_help(config_class, usage))
        return 0
    action(load_config(args, config_class))
    return 0


# each command imports its module only when run, so `nanogpt --help` and the error paths stay fast
def train_command(args):
    from nanogpt.config import TrainConfig, given_settings
    from nanogpt.train import train

    # a resumed run must know which settings the user asked for, to refuse a change it cannot make
    return settings_command(args, TrainConfig, lambda cfg: train(cfg, given=given_settings(args, TrainConfig)),
                            "usage: python train.py [config/file.py ...] [--key=value ...]")


def sample_command(args):
    from nanogpt.sample import SampleConfig, sample

    return settings_command(args, SampleConfig, sample,
                            "usage: python sample.py [config/file.py ...] [--key=value ...]")


def bench_command(args):
    from nanogpt.bench import BenchConfig, bench

    return settings_command(args, BenchConfig, bench, "usage: python bench.py [--key=value ...]")


def export_command(args):
    from nanogpt.export import ExportConfig, export_run

    return settings_command(args, ExportConfig, export_run,
                            "usage: nanogpt export [--out_dir=RUN | --init_from=SOURCE] --to=DIR")


def serve_command(args):
    from nanogpt.serve import ServeConfig, serve

    return settings_command(args, ServeConfig, serve,
                            "usage: nanogpt serve --out_dir=RUN [--port=8000] [--key=value ...]")


COMMANDS = {
    "prepare": prepare_command,
    "train": train_command,
    "sample": sample_command,
    "bench": bench_command,
    "export": export_command,
    "serve": serve_command,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 1
    return run(argv[0], argv[1:])


def exit_process(status):
    """End the process now that the command is done. Python's own shutdown spends ~0.4 s tearing down torch's
    modules (a fifth of a `sample.py` run); every file a command writes is closed, and renamed into place,
    before it returns, so only the standard streams need flushing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (BrokenPipeError, ValueError):
            pass
    os._exit(status)


def console_main():
    """The `nanogpt` console command."""
    exit_process(main())


if __name__ == "__main__":
    console_main()
