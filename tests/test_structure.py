"""The package's shape: its modules import one another without a cycle (imports inside functions included), no
function in nanogpt/ is longer than 80 lines, only the engine module decodes, and pickle is read only where a
format is one."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nanogpt"
MAX_FUNCTION_LINES = 80


def modules():
    """{module name: parsed source} for every nanogpt/*.py ('__init__' is the package itself)."""
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def imported_modules(tree, names):
    """The nanogpt modules a module imports anywhere in its source: at the top, inside functions, or relative."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "nanogpt" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 0 and parts[0] != "nanogpt":
                continue
            if node.level == 0:
                parts = parts[1:]
            if parts and parts[0]:
                found.add(parts[0])  # from nanogpt.x import y / from .x import y
            else:  # from nanogpt import x / from . import x: x is a module, or a name the package defines
                found.update(alias.name if alias.name in names else "__init__" for alias in node.names)
    return found & set(names)


def import_graph():
    trees = modules()
    return {name: imported_modules(tree, trees) - {name} for name, tree in trees.items()}


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state = {}  # module -> "open" while on the search path, "done" once all it reaches is explored
    path = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_is_read():
    graph = import_graph()
    # a few edges known to exist, so a parser that finds nothing cannot pass the cycle test
    assert {"checkpoint", "runtime", "model"} <= graph["train"]
    assert "hf" in graph["model"]  # an import inside a function (GPT.from_pretrained) counts
    assert "train" in graph["cli"]


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "nanogpt modules import each other in a circle: " + " -> ".join(cycle)


def long_functions():
    """(place, length) of every function or method in nanogpt/ longer than MAX_FUNCTION_LINES, nested ones too."""
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # from `def` to the last line, docstring included
                if length > MAX_FUNCTION_LINES:
                    found.append((f"nanogpt/{name}.py:{node.lineno} {node.name}", length))
    return found


def test_no_function_longer_than_80_lines():
    offenders = long_functions()
    assert not offenders, "functions longer than 80 lines: " + ", ".join(f"{p} ({n} lines)" for p, n in offenders)


ENGINE = "generate"  # the one module that turns logits into tokens, step after step
# what picks a token from logits: torch's samplers, the inverse-CDF lookup, and the engine's own functions
TOKEN_PICKERS = {"multinomial", "searchsorted", "argmax", "topk", "sample_tokens", "top_k_filter", "top_p_filter"}


def decode_loops(trees):
    """(module, line) of every loop outside the engine module that picks tokens from logits (a decode loop), and
    of every loop in GPT.generate, which must stay a thin call of the engine."""
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if name == "model" and isinstance(node, ast.FunctionDef) and node.name == "generate":
                found += [(name, n.lineno) for n in ast.walk(node) if isinstance(n, (ast.For, ast.While))]
            if name == ENGINE or not isinstance(node, (ast.For, ast.While, ast.comprehension)):
                continue
            body = node if not isinstance(node, ast.comprehension) else node.iter
            for call in ast.walk(body):
                if isinstance(call, ast.Call):
                    func = call.func
                    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    module = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
                    if called in TOKEN_PICKERS and module != "np":
                        found.append((name, node.lineno))
    return sorted(set(found))


def test_the_decode_loop_finder_finds_one():
    loop = "def gen(model, idx):\n    for _ in range(9):\n        idx = torch.multinomial(model(idx), 1)\n"
    thin = "class GPT:\n    def generate(self, idx):\n        while True:\n            pass\n"
    assert decode_loops({"sample": ast.parse(loop), "model": ast.parse(thin)}) == [("model", 3), ("sample", 2)]
    assert decode_loops({ENGINE: ast.parse(loop)}) == []


def test_only_the_engine_module_has_a_decode_loop():
    trees = modules()
    assert ENGINE in trees and "generate" in {n.name for n in ast.walk(trees["model"]) if isinstance(n, ast.FunctionDef)}
    assert decode_loops(trees) == [], "decode loops outside nanogpt/generate.py: sample, serve, evaluation and " \
                                      "GPT.generate all call its engine"


def imports_of(tree):
    """Top-level names of every module a parsed source imports, anywhere in it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


def test_pickle_only_where_a_format_is_one():
    # checkpoint.py reads DCP's .metadata and legacy.py nanoGPT's meta.pkl, each through an unpickler that builds
    # plain values only; nothing else may load or write a pickle (the prepare's workers exchange JSON and bytes)
    users = {name for name, tree in modules().items() if "pickle" in imports_of(tree)}
    assert users == {"checkpoint", "legacy"}
    assert "pickle" in imports_of(ast.parse("import json\nfrom pickle import loads"))
