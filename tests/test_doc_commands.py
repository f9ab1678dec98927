"""Every command in a code block of README.md and docs/ is one that works: the command exists, every --key=value is a
setting of that command with a value of its type, every config file, script and path it names exists; and every
Python snippet runs, or says why it cannot (`<!-- snippet: not runnable (why) -->` right above it)."""

import ast
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from nanogpt.config import TrainConfig, UserError, check_value, read_config_file

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^(?P<marker><!-- snippet: (?P<how>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)^```$",
                   re.M | re.S)
SHELL = {"bash", "sh", "console", "shell"}
# a value that stands for what the reader fills in (RUN, DIR, N, PATH_OR_NAME, <file>, ...): its type is not checked
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|<[^>]+>|\.\.\.|.*\.\.\.)$")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def config_classes():
    from nanogpt.bench import BenchConfig
    from nanogpt.chat import ChatConfig
    from nanogpt.datasets import PrepareConfig
    from nanogpt.evaluate import EvalConfig
    from nanogpt.export import ExportConfig
    from nanogpt.plot import PlotConfig
    from nanogpt.report import ReportConfig
    from nanogpt.sample import SampleConfig
    from nanogpt.serve import ServeConfig

    return {"train": TrainConfig, "sample": SampleConfig, "bench": BenchConfig, "prepare": PrepareConfig,
            "eval": EvalConfig, "export": ExportConfig, "serve": ServeConfig, "plot": PlotConfig,
            "report": ReportConfig, "chat": ChatConfig}


CONFIGS = config_classes()
ROOT_SCRIPTS = {"train.py": "train", "sample.py": "sample", "bench.py": "bench"}


def blocks(text):
    """(line, language, body, snippet marker or None) of every fenced code block of a page."""
    for m in BLOCK.finditer(text):
        yield text.count("\n", 0, m.start("body")), m.group("lang"), m.group("body"), m.group("how")


def shell_commands(body, lang):
    """The commands of a shell block: continuation lines joined, comments dropped, && ; | split apart; in a console
    block only the lines after a `$ ` prompt."""
    lines = body.splitlines()
    if lang == "console":
        lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
    elif lang == "":  # a block without a language: its lines that are commands of ours (the rest is output)
        lines = [ln for ln in lines if re.match(r"(python3? \S+\.py\b|nanogpt \w+|torchrun )", ln) and ln.isascii()]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            yield [line]  # unbalanced quotes: reported below as a command that does not parse
            continue
        command = []
        for word in words + ["&&"]:
            if word in ("&&", ";", "|", "||"):
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def strip_optional(words):
    """A usage line's optional parts ([--x=1], [RUN ...]) and redirections go; what is left is the command."""
    out, depth = [], 0
    for word in words:
        depth += word.count("[")
        if depth == 0 and not re.match(r"^\d?>", word):
            out.append(word)
        depth -= word.count("]")
    return out


def problems_with(words):
    """Why a shell command from the docs would not work ([] when it would, or when it is not ours to check)."""
    if words[:1] == ["pip"] and "install" in words:
        return pip_extras(words)
    words = strip_optional(words)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return []
    if words[0] in ("python", "python3"):
        words = words[1:]
        if words[:2] == ["-m", "nanogpt.cli"]:
            return nanogpt_command(words[2:])
        if not words or words[0] in ("-m", "-c"):
            return []  # python -m venv, python -m pytest, python -c '...': not ours
        return script_command(words[0], words[1:])
    if words[0] == "nanogpt":
        return nanogpt_command(words[1:])
    if words[0] == "torchrun":
        script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
        return ["torchrun without a script"] if script is None else script_command(words[script],
                                                                                    words[script + 1:])
    return []


def script_command(script, args):
    if script in ROOT_SCRIPTS:
        return settings_problems(ROOT_SCRIPTS[script], args)
    path = REPO / script
    if not path.is_file():
        return [f"no script {script}"]
    if re.fullmatch(r"data/\w+/prepare\.py", script):
        return settings_problems("prepare", args, recipe_given=True)
    options = set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", path.read_text()))
    if script.startswith("benchmarks/") or "argparse" in path.read_text():
        return [f"{script} has no option {a.split('=')[0]}" for a in args
                if a.startswith("--") and a.split("=")[0] not in options | {"--help", "--check"}
                and not a.startswith("--only=")]
    return []


def nanogpt_command(args):
    if not args or args[0] in ("-h", "--help"):
        return []
    if args[0] not in CONFIGS:
        return [f"nanogpt has no command {args[0]!r}"]
    return settings_problems(args[0], args[1:])


def settings_problems(command, args, recipe_given=False):
    """Each --key=value a setting of the command with a value of its type; each other word a config file that exists
    (prepare: one recipe name; plot: run folders)."""
    from nanogpt.datasets import RECIPES

    cls, out = CONFIGS[command], []
    for arg in args:
        if arg in ("-h", "--help"):
            continue
        if arg.startswith("--"):
            key, _, text = arg[2:].partition("=")
            if key not in {f.name for f in fields(cls)}:
                out.append(f"{command} has no setting {key!r}")
            elif not PLACEHOLDER.match(text):
                try:
                    value = ast.literal_eval(text)
                except (SyntaxError, ValueError):
                    value = text  # a bare word is a string, as the command line reads it
                try:
                    check_value(key, value, cls, arg)
                except UserError as e:
                    out.append(f"{command}: {e}")
        elif command == "prepare":
            if recipe_given or (arg not in RECIPES and not PLACEHOLDER.match(arg)):
                out.append(f"prepare has no recipe {arg!r}")
        elif command == "plot":
            continue  # more run folders
        elif not PLACEHOLDER.match(arg):
            path = REPO / arg
            if not path.is_file():
                out.append(f"no config file {arg}")
            else:
                try:
                    read_config_file(str(path), cls)
                except UserError as e:
                    out.append(f"{arg}: {e}")
    return out


def pip_extras(words):
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    wanted = [e.strip() for w in words for m in [re.fullmatch(r"\.\[([\w,\s-]+)\]", w)] if m
              for e in m.group(1).split(",")]
    return [f"pyproject.toml has no extra {e!r}" for e in wanted if e not in extras]


def page_commands(page):
    text = page.read_text(encoding="utf-8")
    for line, lang, body, _ in blocks(text):
        if lang in SHELL or lang == "":
            for words in shell_commands(body, lang):
                yield line, words


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_in_a_code_block_works(page):
    bad = [f"line {line}: {' '.join(words)[:80]}: {why}" for line, words in page_commands(page)
           for why in problems_with(words)]
    assert not bad, "\n".join(bad)


def test_the_pages_are_read_for_commands():
    """The block and command patterns still find what the pages hold (else the test above checks nothing)."""
    commands = [words for page in PAGES for _, words in page_commands(page)]
    ours = [w for w in commands if w[0] == "nanogpt" or any(x.endswith((".py")) for x in w[:3])]
    assert len(ours) >= 40
    assert any(w[:2] == ["python", "train.py"] for w in commands)


def test_a_wrong_command_is_caught():
    body = """python train.py config/train_shakespeare_char_cpu.py --max_iter=10 --dropout=high \\
    --n_layer=2.5   # typo, a word for a float, a float for an int
python train.py config/nope.py
nanogpt sample --out_dir=RUN --num_samples=N && nanogpt serve --max_batch=1
nanogpt serv --out_dir=RUN
python data/shakespeare_char/prepare.py --tokenizer=char
nanogpt prepare shakespear
python benchmarks/recipe.py --repeat=3
pip install -e '.[hf,docz]'
"""
    found = [why for words in shell_commands(body, "bash") for why in problems_with(words)]
    assert found == [
        "train has no setting 'max_iter'",
        "train: dropout must be a number (like 0.0), got 'high' in --dropout=high",
        "train: n_layer must be an integer (like 12), got 2.5 in --n_layer=2.5",
        "no config file config/nope.py",
        "nanogpt has no command 'serv'",
        "prepare has no recipe 'shakespear'",
        "benchmarks/recipe.py has no option --repeat",
        "pyproject.toml has no extra 'docz'",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Python snippets


def snippets():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        generated = [(m.start(), m.end()) for m in re.finditer(r"<!-- BEGIN GENERATED .*?<!-- END GENERATED", text,
                                                                re.S)]
        for m in BLOCK.finditer(text):
            if m.group("lang") == "python" and not any(a <= m.start() < b for a, b in generated):
                yield pytest.param(page, m.group("how"), m.group("body"),
                                   id=f"{page.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}")


@pytest.mark.parametrize("page, how, body", list(snippets()))
def test_python_snippet_runs_or_says_why_not(page, how, body, tmp_path):
    """No marker: the snippet runs as a program. `config file`: it is read as one. `not runnable (why)`: skipped,
    and the reason must be given. Code quoted from the source (generated regions) is checked by test_docs_generated."""
    if how and how.startswith("not runnable"):
        assert re.fullmatch(r"not runnable \(.{10,}\)", how), f"say why it cannot run: {how!r}"
        return
    if how == "config file":
        path = tmp_path / "snippet.py"
        path.write_text(body)
        read_config_file(str(path), TrainConfig)
        return
    assert how is None, f"unknown snippet marker {how!r}: 'config file' or 'not runnable (why)'"
    proc = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
