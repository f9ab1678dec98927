"""The documentation site builds with `mkdocs build --strict` (a broken link or anchor fails it) and works offline in
a real browser: search finds "Muon", and a Mermaid diagram renders (a screenshot of each page is saved).

Needs `pip install -e '.[docs]'`, Mermaid vendored (`python docs/tools/vendor_mermaid.py`) and Chromium; .ci/run
sets all three up, so under CI a missing one fails instead of skipping."""

import asyncio
import base64
import functools
import http.server
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from tests.chromium import devtools_port, find_chromium

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = os.environ.get("NANOGPT_SCREENSHOTS")  # a folder to keep the screenshots in, to look at them


def missing(reason):
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI's .ci/run installs it)")
    warnings.warn(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        missing("mkdocs is not installed: pip install -e '.[docs]'")
    if not (REPO / "docs" / "tools" / "vendor" / "mermaid.min.js").is_file():
        missing("Mermaid is not vendored: python docs/tools/vendor_mermaid.py")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_the_site_builds_strict_with_no_cdn(site):
    assert (site / "code-analysis" / "model" / "index.html").is_file() and (site / "api" / "index.html").is_file()
    assert (site / "assets" / "javascripts" / "mermaid.min.js").stat().st_size > 1_000_000
    pages = [p.read_text(encoding="utf-8") for p in site.rglob("*.html")]
    assert not [p for p in pages if "fonts.googleapis" in p or "unpkg.com" in p or "jsdelivr" in p]
    # the API reference is filled from the docstrings
    assert "Logits and loss for token ids" in (site / "api" / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def chromium():
    return find_chromium() or missing("no chromium binary installed (apt-get install -y chromium)")


async def in_browser(browser, user_data_dir, visits):
    """Open each (url, JavaScript condition) in headless Chromium through the DevTools protocol, wait until the
    condition gives a value, and return [(value, PNG screenshot)]. The browser has no network beyond 127.0.0.1."""
    import aiohttp

    results = []
    # the proxy makes anything off this machine fail
    async with devtools_port(browser, user_data_dir, "--window-size=1280,1000", "--proxy-server=http://0.0.0.0:9",
                             "--proxy-bypass-list=127.0.0.1", wait_s=60) as port:
        async with aiohttp.ClientSession() as session:
            for url, condition in visits:
                async with session.put(f"http://127.0.0.1:{port}/json/new?{url}") as response:
                    target = await response.json(content_type=None)
                async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    ids = iter(range(1, 10_000))

                    async def call(method, **params):
                        message_id = next(ids)
                        await ws.send_json({"id": message_id, "method": method, "params": params})
                        while (reply := await ws.receive_json(timeout=60)).get("id") != message_id:
                            pass
                        return reply.get("result", {})

                    value = None
                    for _ in range(600):
                        reply = await call("Runtime.evaluate", expression=condition, returnByValue=True)
                        value = reply.get("result", {}).get("value")
                        if value:
                            break
                        await asyncio.sleep(0.1)
                    shot = await call("Page.captureScreenshot", format="png")
                    # the whole DOM, shadow roots included (Material draws diagrams in a closed one)
                    dom = await call("DOM.getDocument", depth=-1, pierce=True)
                    results.append((value, base64.b64decode(shot["data"]), dom["root"]))
    return results


# the search box's results once Material's search worker has indexed the site
SEARCH_RESULTS = """(() => { const items = [...document.querySelectorAll('.md-search-result__item')];
  return items.length ? items.map(i => i.textContent).join(' | ') : null; })()"""
# Material replaces each ```mermaid block by a div whose (closed) shadow root holds the drawn SVG
DIAGRAM = """(() => { const el = document.querySelector('div.mermaid');
  return el && el.getBoundingClientRect().height > 200 ? el.getBoundingClientRect().height : null; })()"""


def walk(node):
    yield node
    for child in node.get("children", []) + node.get("shadowRoots", []):
        yield from walk(child)


def diagram_svg(dom):
    """(number of drawn nodes, their text) of the first SVG inside a .mermaid element's shadow root."""
    for host in walk(dom):
        attrs = dict(zip(host.get("attributes", [])[::2], host.get("attributes", [])[1::2]))
        if "mermaid" in attrs.get("class", "").split() and host.get("shadowRoots"):
            svg = next((n for n in walk(host) if n.get("nodeName", "").lower() == "svg"), None)
            if svg is None:
                return 0, ""
            nodes = [n for n in walk(svg) if "node" in dict(zip(n.get("attributes", [])[::2],
                                                                n.get("attributes", [])[1::2])).get("class", "").split()]
            text = " ".join(n.get("nodeValue", "") for n in walk(svg) if n.get("nodeType") == 3)
            return len(nodes), text
    return 0, ""


def test_search_finds_muon_and_a_diagram_renders(served, tmp_path):
    browser = chromium()
    visits = [(f"{served}/?q=Muon", SEARCH_RESULTS), (f"{served}/code-analysis/model/", DIAGRAM)]
    (search, search_png, _), (height, diagram_png, dom) = asyncio.run(
        asyncio.wait_for(in_browser(browser, tmp_path / "chromium", visits), 240))
    keep = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "search-muon.png").write_bytes(search_png)
    (keep / "model-diagram.png").write_bytes(diagram_png)
    assert search and "Muon" in search, search
    assert height, "the model page's Mermaid diagram did not render"
    nodes, text = diagram_svg(dom)
    assert nodes >= 5 and "attention" in text.lower(), (nodes, text[:200])
    assert search_png.startswith(b"\x89PNG") and len(diagram_png) > 10_000
