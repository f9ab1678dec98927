"""The docs stay true to the code: the settings reference matches the dataclasses, and every link resolves."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tool", [["gen_config_reference.py", "--check"], ["check_links.py"]])
def test_docs_tools_pass(tool):
    proc = subprocess.run([sys.executable, str(REPO / "docs" / "tools" / tool[0]), *tool[1:]], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
