"""The progress bar of `nanogpt prepare`: drawn on a terminal, silent in a log file (no carriage-return redraws)."""

import io
import sys

from nanogpt.datasets import prepare_text
from tests.conftest import CORPUS


class Terminal(io.StringIO):
    def isatty(self):
        return True


def prepare_with_stderr(monkeypatch, tmp_path, stream):
    (tmp_path / "corpus.txt").write_text(CORPUS)
    monkeypatch.setattr(sys, "stderr", stream)
    prepare_text(tmp_path / "corpus.txt", "mine", tokenizer="char", data_dir=tmp_path / "data", log=lambda *_: None)
    return stream.getvalue()


def test_progress_bar_on_a_terminal(monkeypatch, tmp_path):
    shown = prepare_with_stderr(monkeypatch, tmp_path, Terminal())
    assert "tokenizing" in shown and "100%" in shown and "tokens" in shown


def test_no_progress_bar_in_a_log_file(monkeypatch, tmp_path):
    assert prepare_with_stderr(monkeypatch, tmp_path, io.StringIO()) == ""
