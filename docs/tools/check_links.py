"""Check that every relative Markdown link in docs/ resolves to a file, and every #anchor to a heading in it.

Run from anywhere: python docs/tools/check_links.py   (exit 1 and a list of broken links if any)
"""

import re
import sys
from pathlib import Path

from slugs import slug  # the site's rule too (mkdocs_hooks.py), so both agree on every anchor

DOCS = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
# pages other engineers own may be linked before they exist
EXPECTED_ELSEWHERE = {DOCS / "distributed.md"}


def anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    # the heading's text as rendered: a link shows its words only
    return {slug(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def main():
    broken = []
    for page in sorted(DOCS.rglob("*.md")):
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # an external URL
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if dest in EXPECTED_ELSEWHERE and not dest.exists():
                continue
            if not dest.exists():
                broken.append(f"{page.relative_to(DOCS)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(DOCS)}: {target} (no such heading)")
    for line in broken:
        print(line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
