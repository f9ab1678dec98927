"""The site's build hooks (mkdocs.yml: hooks): one slug rule with check_links.py, links out of docs/, Mermaid.

- Headings get GitHub's anchors (docs/tools/slugs.py), so a link written for GitHub works on the site.
- A page's link to a file of the repository outside docs/ (a benchmark's results file, the README) is checked to
  exist, a warning (an error under --strict) when it does not, and shown as the file's path in code: the site holds
  only docs/.
- Mermaid comes from its npm package (docs/tools/vendor_mermaid.py put it in docs/tools/vendor/) and is copied into
  the site, where mkdocs.yml's extra_javascript loads it; Material then renders ```mermaid blocks with it instead of
  fetching a copy from a CDN.
"""

import logging
import re
import shutil
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from slugs import slug  # noqa: E402

MERMAID = TOOLS / "vendor" / "mermaid.min.js"
SITE_MERMAID = "assets/javascripts/mermaid.min.js"  # the path extra_javascript names in mkdocs.yml
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
log = logging.getLogger("mkdocs.hooks.nanogpt")


def on_config(config):
    config.mdx_configs.setdefault("toc", {})["slugify"] = slug
    if not MERMAID.is_file():
        raise PluginError(f"{MERMAID} is missing: run `python docs/tools/vendor_mermaid.py` once (needs npm)")
    return config


def on_page_markdown(markdown, page, config, files):
    docs = Path(config.docs_dir).resolve()
    repo = docs.parent
    source = Path(page.file.abs_src_path).resolve()

    def outside(m):
        text, target = m.groups()
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return m.group(0)
        path = (source.parent / target.partition("#")[0]).resolve()
        if path.is_relative_to(docs):
            return m.group(0)
        if not path.exists():
            log.warning(f"{page.file.src_path}: link to {target}, which does not exist")
        shown = path.relative_to(repo) if path.is_relative_to(repo) else target
        return f"{text} (`{shown}`)" if text.strip("`") != str(shown) else f"`{shown}`"

    return LINK.sub(outside, markdown)


def on_post_build(config):
    target = Path(config.site_dir) / SITE_MERMAID
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MERMAID, target)
