"""The docs stay true to the code: the settings reference matches the dataclasses, every link resolves, every table
row has its header's cells, and every piece of code the README and docs/ name exists, so renaming or moving a
function fails here until the pages say where it went."""

import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MODULES = {p.stem for p in (REPO / "nanogpt").glob("*.py") if p.stem != "__init__"}

# How the pages name code (the docs' own convention, see docs/README.md):
#   `nanogpt/train.py: set_up`        a module and a name in it (a function, class or constant)
#   `train.py: set_up`                the same, for a module of the package
#   `nanogpt/model.py: GPT.forward`   an attribute chain: a method, a class attribute, a dataclass field, or an
#                                     attribute the class's code assigns to self
#   `nanogpt/cli.py: run("train", ...)` a call: the name is what comes before the bracket
#   ..., `name2`, `name3` and `name4` more names of the same module, listed right after the first
#   from nanogpt.runs import load_run (in code blocks too)
NAME = r"[A-Za-z_][\w.]*"
SEPARATOR = r"(?:,\s*|,?\s+and\s+|,?\s+or\s+)"
MORE = rf"((?:{SEPARATOR}`{NAME}`(?![\w`]))*)"
REFERENCE = re.compile(rf"`(nanogpt/)?(\w+)\.py:\s+({NAME})[^`]*`{MORE}")
REFERENCE_AFTER_PATH = re.compile(rf"`(nanogpt/)?(\w+)\.py`:\s+`({NAME})`{MORE}")
IMPORT = re.compile(r"^\s*from nanogpt\.(\w+) import ([\w, ]+)$", re.M)
FENCED = re.compile(r"^```.*?^```", re.M | re.S)


def references(text):
    """(line, module, name, explicit) for every code reference in a page's Markdown text; explicit: the module
    was written as nanogpt/<module>.py, so it must exist."""
    found = []
    prose = FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for pattern in (REFERENCE, REFERENCE_AFTER_PATH):
        for m in pattern.finditer(prose):
            prefix, module, first, more = m.groups()
            line = prose.count("\n", 0, m.start()) + 1
            for name in [first, *re.findall(rf"`({NAME})`", more)]:
                found.append((line, module, name.rstrip("."), bool(prefix)))
    for m in IMPORT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found += [(line, m.group(1), name.strip(), True) for name in m.group(2).split(",") if name.strip()]
    return found


def missing(module, name):
    """Why nanogpt.<module> has no `name` (a dotted chain), or None when it has."""
    try:
        obj = importlib.import_module(f"nanogpt.{module}")
    except ImportError as e:
        return f"nanogpt/{module}.py does not import ({e})"
    for part in name.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif inspect.isclass(obj) and is_instance_attribute(obj, part):
            obj = None  # an instance attribute: nothing further down can be checked
        else:
            return f"nanogpt/{module}.py has no {name}"
    return None


def is_instance_attribute(cls, attr):
    """A dataclass field without a default, or an attribute the class's own code assigns to self."""
    if dataclasses.is_dataclass(cls) and attr in {f.name for f in dataclasses.fields(cls)}:
        return True
    return re.search(rf"\bself\.{attr}\s*=", inspect.getsource(cls)) is not None


def broken_references(text):
    broken = []
    for line, module, name, explicit in references(text):
        if module not in MODULES and not explicit:
            continue  # `prepare.py: ...` and the like name files outside the package
        reason = missing(module, name)
        if reason:
            broken.append(f"line {line}: {reason}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_code_exists(page):
    broken = broken_references(page.read_text(encoding="utf-8"))
    assert not broken, "\n".join(broken)


def test_every_page_names_code():
    """The reference pattern still matches the way the pages are written (else the test above checks nothing)."""
    counts = {str(page.relative_to(REPO)): len(references(page.read_text(encoding="utf-8"))) for page in PAGES}
    assert counts["docs/concept-index.md"] >= 80 and counts["README.md"] >= 5 and sum(counts.values()) >= 200


def test_a_renamed_function_is_caught():
    page = """
The loop is `nanogpt/train.py: _train`, set up by `nanogpt/train.py: set_up`, `build_model` and `set_everything_up`.
Devices: `runtime.py: resolve_device(name)`, `resolve_devices`; a method: `nanogpt/model.py: GPT.generate_fast`.
Attributes: `nanogpt/model.py: CausalSelfAttention.flash`, `GPTConfig.n_layer`; `nanogpt/train.py: Session.cfg`.
`nanogpt/gone.py: anything`; not ours: `prepare.py: main`.

```python
from nanogpt.sample import load_run
```
"""
    assert broken_references(page) == [
        "line 2: nanogpt/train.py has no _train",
        "line 2: nanogpt/train.py has no set_everything_up",
        "line 3: nanogpt/runtime.py has no resolve_devices",
        "line 3: nanogpt/model.py has no GPT.generate_fast",
        "line 5: nanogpt/gone.py does not import (No module named 'nanogpt.gone')",
        "line 8: nanogpt/sample.py has no load_run",
    ]


def table_cells(row):
    """The cells of a Markdown table row; a | inside `code` or escaped as \\| does not split cells."""
    row = re.sub(r"`[^`]*`", "code", row.replace("\\|", "x"))
    return row.strip().strip("|").split("|")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_table_rows_match_their_header(page):
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    bad = []
    for table in re.findall(r"(?:^\|.*\|[ \t]*\n)+", text, re.M):
        rows = table.splitlines()
        width = len(table_cells(rows[0]))
        bad += [f"{len(table_cells(row))} cells, not {width}: {row[:60]}" for row in rows[1:]
                if len(table_cells(row)) != width]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("tool", [["gen_config_reference.py", "--check"], ["check_links.py"]])
def test_docs_tools_pass(tool):
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "tools" / tool[0]), *tool[1:]], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readmes_faster_training_list_names_what_the_fast_preset_uses():
    """The README's "Train faster" line names the fast preset's switches, and no switch the preset leaves off."""
    from nanogpt.config import load_config

    line = re.search(r"\*\*Train faster\*\*(.*?)explained", (REPO / "README.md").read_text(), re.S).group(1)
    cfg = load_config([str(REPO / "config" / "train_shakespeare_char_cpu_fast.py")])
    named = {"rotary": cfg.position == "rope", "QK-norm": cfg.qk_norm, "ReLU²": cfg.activation == "relu2",
             "SwiGLU": cfg.activation == "swiglu", "untied head": not cfg.tie_embeddings,
             "soft-capping": cfg.logit_softcap > 0, "Muon": cfg.optimizer == "muon",
             "RMSNorm": cfg.norm == "rmsnorm", "LayerNorm": cfg.norm == "layernorm",
             "WSD": cfg.lr_schedule == "wsd", "cosine": cfg.lr_schedule == "cosine",
             "value embeddings": cfg.value_embeddings, "x0": cfg.x0_mix}
    for name, used in named.items():
        assert (name in " ".join(line.split())) == used, f"the README's list and the preset disagree on {name}"
