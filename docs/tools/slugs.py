"""The one rule that turns a heading into its #anchor, shared by the site (mkdocs.yml's toc, through
docs/tools/mkdocs_hooks.py) and docs/tools/check_links.py, so a link that works on GitHub works on the site."""

import re


def slug(heading, separator="-"):
    """GitHub's anchor for a heading's text: lower case, punctuation dropped (letters, digits, _ and - stay), each
    space a hyphen. Python-Markdown's toc calls it as slugify(text, separator)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", separator)
