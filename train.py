"""nanoGPT's `python train.py [config/file.py] [--key=value ...]`, kept verbatim; the code is nanogpt/train.py."""

import sys

from nanogpt.cli import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:]))
