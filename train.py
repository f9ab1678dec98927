"""nanoGPT's `python train.py [config/file.py] [--key=value ...]`, kept verbatim; the code is nanogpt/train.py."""

import sys

from nanogpt.cli import exit_process, run

if __name__ == "__main__":
    exit_process(run("train", sys.argv[1:], prog="python train.py"))
