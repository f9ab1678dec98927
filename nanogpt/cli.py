"""The command line: `nanogpt <command> [config files] [--key=value ...]`, and the root scripts' entry points.

Every command turns a UserError into one line on stderr and exit status 1; anything else is a bug and keeps its
traceback.
"""

import atexit
import difflib
import os
import signal
import sys
from dataclasses import fields, replace

from nanogpt.config import field_help, load_config
from nanogpt.errors import UserError

USAGE = """usage: nanogpt <command> [config files] [--key=value ...]

commands:
  prepare NAME      prepare a dataset under data/NAME (shakespeare_char, shakespeare, openwebtext)
  prepare --input=PATH --name=NAME   prepare your own text (a file, a folder, a Hugging Face dataset)
  prepare --input=PATH --name=NAME --format=chat   conversations (JSONL or a dataset of `messages`) for SFT
  train             train or finetune a model (python train.py)
  sample            sample from a trained model (python sample.py)
  bench             time the training step alone (python bench.py)
  export            write a run (or GPT-2 weights) as a Hugging Face folder: --out_dir=RUN --to=DIR
  serve             serve a run over HTTP: OpenAI-style /v1/completions, /v1/chat/completions, a playground at /
  chat              talk to a chat-finetuned run in the terminal: --out_dir=RUN [--system=PROMPT]
  eval              evaluate a run (or GPT-2): --out_dir=RUN --tasks=loss,bpb,hellaswag
  plot              plot the loss curves of runs: --out_dir=RUN [RUN ...] [--to=loss.png] [--x=iter|time|tokens]
  report            write a run's report.md: settings, size, losses, evaluations, loss plot

`nanogpt <command> --help` lists a command's settings, their defaults and what each one means."""


def settings_help(config_class, usage, heading="settings (config files and --key=value override them, in order):"):
    """The usage text, then every setting of a config dataclass with its default and its meaning (the comment
    beside the field, as config.field_help reads it)."""
    meanings = field_help(config_class)
    lines = [usage, "", heading]
    for f in fields(config_class):
        lines.append(f"  --{f.name}={f.default!r}".ljust(39) + " " + meanings[f.name])
    return "\n".join(lines)


def run(command, args, prog=None):
    """Run one command; returns the process exit status. prog is what the user typed to start it, for usage lines:
    the root scripts pass theirs (`python train.py`); the `nanogpt` command leaves it to `nanogpt <command>`."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # logs appear as they are written, through pipes and tee too
    try:
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, COMMANDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown command '{command}'{hint}; run `nanogpt --help` for the list")
        return COMMANDS[command](args, prog)
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


def settings_command(args, config_class, action, usage):
    """A command configured by a settings dataclass: --help lists the settings, else run action(config)."""
    if wants_help(args):
        print(settings_help(config_class, usage))
        return 0
    action(load_config(args, config_class))
    return 0


# each command imports its module only when run, so `nanogpt --help` and the error paths stay fast
def prepare_command(args, prog=None):
    from nanogpt.datasets import RECIPES, PrepareConfig, prepare_dataset

    if prog:  # nanoGPT's data/NAME/prepare.py, whose recipe is the script's folder
        usage = f"usage: {prog} [--data_dir=DIR] [--overwrite=True]"
    else:
        usage = f"""usage: nanogpt prepare NAME [--data_dir=data]
       nanogpt prepare openwebtext|fineweb_edu [--max_tokens=N] [--sample=sample-10BT] [--source=LOCAL_COPY]
       nanogpt prepare --input=PATH_OR_NAME --name=NAME [--tokenizer=gpt2|char|bpe] [--vocab_size=N]
                       [--pattern='*.txt,*.md'] [--val_fraction=0.1] [--val_split=random|tail] [--data_dir=data]
       nanogpt prepare --input=FILE.jsonl|DATASET|synthetic --name=NAME --format=chat
                       [--tokenizer=gpt2 | --tokenizer_from=DATASET_OR_RUN]
       every form takes --overwrite=True to replace a different dataset already in the folder

The first form runs a named recipe: {', '.join(sorted(RECIPES))}.
The web recipes (the second form) stream their corpus from the Hugging Face hub, or --source, into shards.
The third tokenizes your own text into DATA_DIR/NAME (then `python train.py --dataset=NAME`): PATH_OR_NAME is a
text file, a folder of files matching --pattern (each a document) or a Hugging Face dataset (name or local path)
with a 'text' column. val_fraction of the documents, drawn with --seed, are the val split (--val_split=tail: the
last ones). --tokenizer=bpe --vocab_size=N trains a byte-level BPE of N tokens on the train split (tokenizer.json).
Ids stream into shards on --workers processes with bounded memory; an interrupted prepare resumes when run again.
--format=chat reads conversations (OpenAI `messages`) into a chat dataset: tokens and a loss mask that counts the
assistant's tokens only, with the tokenizer of the model to finetune (docs/guides/chat.md)."""
    if wants_help(args) or not args:
        print(settings_help(PrepareConfig, usage, heading="settings (--key=value):"))
        return 0 if args else 1
    # the one word that is not --key=value is the recipe NAME; the settings go through the common parser
    names = [a for a in args if not a.startswith("--")]
    if len(names) > 1:
        raise UserError(f"prepare takes one recipe NAME, not {len(names)} ({' '.join(names)})")
    cfg = load_config([a for a in args if a.startswith("--")], PrepareConfig)
    if names and cfg.recipe:
        raise UserError(f"give the recipe once: {names[0]} or --recipe={cfg.recipe}, not both")
    prepare_dataset(replace(cfg, recipe=names[0]) if names else cfg)
    return 0


def train_command(args, prog=None):
    from nanogpt.config import TrainConfig, given_settings
    from nanogpt.train import train

    # a resumed run must know which settings the user asked for: it keeps its saved ones for the rest
    return settings_command(args, TrainConfig, lambda cfg: train(cfg, given=given_settings(args, TrainConfig)),
                            f"usage: {prog or 'nanogpt train'} [config/file.py ...] [--key=value ...]")


# commands that take config files and --key=value settings and call one function: (module, settings class,
# function, what follows `usage: nanogpt NAME`)
SIMPLE_COMMANDS = {
    "sample": ("nanogpt.sample", "SampleConfig", "sample", "[config/file.py ...] [--key=value ...]"),
    "bench": ("nanogpt.bench", "BenchConfig", "bench", "[config/file.py ...] [--key=value ...]"),
    "export": ("nanogpt.export", "ExportConfig", "export_run", "[--out_dir=RUN | --init_from=SOURCE] --to=DIR"),
    "serve": ("nanogpt.serve", "ServeConfig", "serve", "--out_dir=RUN [--port=8000] [--key=value ...]"),
    "chat": ("nanogpt.chat", "ChatConfig", "chat", "--out_dir=RUN [--system=PROMPT] [--temperature=0.7]"),
    "eval": ("nanogpt.evaluate", "EvalConfig", "evaluate_model",
             "[--out_dir=RUN | --init_from=gpt2] --tasks=loss,bpb,hellaswag"),
    "report": ("nanogpt.report", "ReportConfig", "write_report", "--out_dir=RUN"),
}


def simple_command(name):
    """The entry of a SIMPLE_COMMANDS command; its module is imported only when it runs, so `nanogpt --help` and
    the error paths stay fast."""
    def command(args, prog=None):
        import importlib

        module_name, config_name, function_name, usage = SIMPLE_COMMANDS[name]
        module = importlib.import_module(module_name)
        return settings_command(args, getattr(module, config_name), getattr(module, function_name),
                                f"usage: {prog or 'nanogpt ' + name} {usage}")

    return command


def plot_command(args, prog=None):
    from nanogpt.plot import PlotConfig, plot_from_config

    # `--out_dir=RUN1 RUN2 ...`: the words after --out_dir are more runs (plot takes no config files)
    runs = [a for a in args if not a.startswith("-")]
    options = [a for a in args if a.startswith("-")]
    usage = f"usage: {prog or 'nanogpt plot'} --out_dir=RUN [RUN ...] [--to=loss.png] [--x=iter|time|tokens]"
    return settings_command(options, PlotConfig, lambda cfg: plot_from_config(cfg, runs), usage)


def report_command(args, prog=None):
    from nanogpt.report import ReportConfig, write_report

    return settings_command(args, ReportConfig, write_report, f"usage: {prog or 'nanogpt report'} --out_dir=RUN")


COMMANDS = {
    "prepare": prepare_command,
    "train": train_command,
    **{name: simple_command(name) for name in SIMPLE_COMMANDS},
    "plot": plot_command,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 1
    return run(argv[0], argv[1:])


def exit_process(status):
    """End the process now that the command is done, skipping only the slow part of Python's shutdown: tearing down
    torch's modules (benchmarks/sample_speed.py measures what it saves on a `sample.py` run). The atexit handlers
    still run first, so wandb, TensorBoard and any other library that flushes its files at exit does; the files a
    command writes itself are closed, and renamed into place, before it returns."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C must not turn the finished command into a traceback
    atexit._run_exitfuncs()  # CPython's own call that runs the registered handlers, as a normal exit would
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
