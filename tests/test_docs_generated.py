"""The generated parts of README and docs/ (docs/tools/generate.py) equal what the code, the benchmarks' results
files and the real commands give now; and the generator catches what it is there to catch."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "tools" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def test_every_generated_region_is_current():
    """Code quotes, figure tables, the benchmarks table, the settings tables and the command excerpts (the commands
    rerun only when the code they follow from changed since the pages were generated)."""
    proc = subprocess.run([sys.executable, "docs/tools/generate.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_pages_have_generated_regions_of_every_kind():
    kinds = {gen.kind_of(key) for page in gen.PAGES for key, _ in gen.regions(page.read_text(encoding="utf-8"))}
    assert kinds == set(gen.KINDS)


def test_a_code_quote_follows_the_source_and_its_line_numbers(tmp_path, monkeypatch):
    source = tmp_path / "mod.py"
    source.write_text("import os\n\n\nclass A:\n    x = 1\n\n    # why\n    @staticmethod\n    def f():\n"
                      "        return 2\n")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.find_symbol(source, "A.f") == (7, 10)
    quote = gen.render_code("mod.py:A.f", tmp_path / "page.md")
    assert quote.startswith("`mod.py`, lines 7–10 (`A.f`)") and "    def f():\n        return 2\n```" in quote
    page = tmp_path / "page.md"
    page.write_text(f"<!-- BEGIN GENERATED code:mod.py:A.f -->\n{quote}<!-- END GENERATED code:mod.py:A.f -->\n")
    assert gen.generate({"code"}, [page]) == {}
    source.write_text(source.read_text().replace("return 2", "return 3"))
    changes = gen.generate({"code"}, [page])
    assert gen.stale_regions(changes) == ["page.md: code:mod.py:A.f"]
    try:
        gen.find_symbol(source, "A.g")
    except LookupError as e:
        assert "defines no A.g" in str(e)
    else:
        raise AssertionError("a missing symbol must be an error")


def test_a_figure_table_shows_the_results_file(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from results import read_results, write_results
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    figures = {"runs": {"ours": {"ms/iter": 58.2, "s to 1.88": None}, "upstream": {"ms/iter": 62.9}},
               "ratio": 0.925}
    write_results("demo", figures, notes="shared machine", path=tmp_path / "demo.json", command="python demo.py")
    assert read_results("demo", path=tmp_path / "demo.json")["figures"] == figures
    monkeypatch.setattr(gen, "RESULTS", tmp_path)
    table = gen.render_figures("demo", REPO / "README.md")
    assert "| runs | ms/iter | s to 1.88 |" in table and "| ours | 58.2 | — |" in table
    assert "| upstream | 62.9 | — |" in table and "| ratio | 0.925 |" in table
    assert "`python demo.py`. shared machine." in table
    record = json.loads((tmp_path / "demo.json").read_text())
    record["figures"]["ratio"] = 0.9
    (tmp_path / "demo.json").write_text(json.dumps(record))
    assert gen.render_figures("demo", REPO / "README.md") != table


def test_excerpts_compare_with_times_masked_and_losses_within_a_tolerance():
    old = ("$ python train.py\nstep 20: train loss 3.5548, val loss 3.5524\n"
           "iter 20: loss 3.5329, time 2498.47ms, mfu n/a, tok/s 307, lr 2.079e-04, grad norm 1.57, eta 22s\n"
           "done: 40 iterations, median 2010.07ms/iter; 40 trained in 51s")
    faster_cpu = old.replace("2498.47ms", "41.20ms").replace("tok/s 307", "tok/s 18,640").replace("eta 22s", "eta 1m2s")
    assert gen.same_excerpt(old, faster_cpu.replace("3.5524", "3.5611").replace("51s", "3s"))
    assert not gen.same_excerpt(old, old.replace("3.5524", "3.9"))           # a loss that moved
    assert not gen.same_excerpt(old, old.replace("grad norm", "gnorm"))      # the words of a log line
    assert not gen.same_excerpt(old, old.replace("40 iterations", "41 iterations"))
    assert not gen.same_excerpt(old, old + "\nsaving checkpoint")            # a line more
    sample = "$ python sample.py\nFirst Citizen:\nSpeak.\n---------------\nROMEO:\n---------------"
    assert gen.same_excerpt(sample, sample.replace("ROMEO:", "JULIET:\nAy."), sampled=True)
    assert not gen.same_excerpt(sample, sample.replace("---------------\nROMEO:\n", ""), sampled=True)
