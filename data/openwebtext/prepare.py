"""nanoGPT's `python data/openwebtext/prepare.py`: streams OpenWebText from the Hugging Face hub, tokenizes it with
GPT-2 BPE and writes shards (train-000000.bin, ..., ~17 GB in all), val shards and meta.json beside this file; run
again after an interruption, it resumes."""

import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))  # run from a clone without `pip install`: import the package beside us

from nanogpt.cli import exit_process, run  # noqa: E402

if __name__ == "__main__":
    exit_process(run("prepare", ["openwebtext", f"--data_dir={here.parent}"] + sys.argv[1:],
                     prog="python data/openwebtext/prepare.py"))
