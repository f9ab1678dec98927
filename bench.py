"""nanoGPT's `python bench.py [--key=value ...]`: times the training step alone; the code is nanogpt/bench.py."""

import sys

from nanogpt.cli import exit_process, run

if __name__ == "__main__":
    exit_process(run("bench", sys.argv[1:], prog="python bench.py"))
