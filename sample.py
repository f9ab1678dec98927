"""nanoGPT's `python sample.py --out_dir=... [--key=value ...]`, kept verbatim; the code is nanogpt/sample.py."""

import sys

from nanogpt.cli import exit_process, run

if __name__ == "__main__":
    exit_process(run("sample", sys.argv[1:], prog="python sample.py"))
