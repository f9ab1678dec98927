"""One results format for every benchmark: a JSON file per benchmark run, written atomically.

    from results import write_results
    write_results("sample_speed", {"ratio_median": 8.3, ...}, notes="machine shared with other jobs")

The file (benchmarks/results/NAME.json unless `path` is given) holds the date, the machine (processor, cores,
memory, GPU if any, torch and Python versions), the exact command line, the figures, and free-text notes. Pages of
the documentation that quote a benchmark's figures are checked against these files, so a figure in the docs always
has a run behind it.
"""

import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine():
    """What the figures were measured on: enough to tell two machines apart, nothing personal."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": _cpu_model()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(name, figures, notes="", path=None, command=None):
    """Write one benchmark's figures (a JSON-serialisable dict) with where and how they were measured; return the path."""
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    record = {
        "benchmark": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "figures": figures,
        "notes": notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_results(name, path=None):
    """The record `write_results` wrote for `name` (a dict), or None when that benchmark has not been run here."""
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
