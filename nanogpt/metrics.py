"""A run's metrics.jsonl: one JSON object per logged iteration and per evaluation, appended as the run goes.

Training writes it (rank 0 only) into out_dir beside the checkpoints; `nanogpt plot` and `nanogpt report` read it.
Each line is flushed when written, so the file can be followed while the run goes on and a crash loses at most
the line being written. Two kinds of line, told apart by "kind":

  {"kind": "iter", "iter": 250, "time": 9.1, "loss": 2.03, "lr": 9.1e-4, "tok_s": 21292, "mfu": 0.03,
   "grad_norm": 0.53, "tokens": 192768}
  {"kind": "eval", "iter": 250, "time": 9.4, "train_loss": 1.98, "val_loss": 2.08, "tokens": 192000, ...}

"time" is seconds of training since the run first started: a resumed run goes on from the time of the last line
it keeps. "tokens" is the number of training tokens the model has seen. An evaluation line also holds the
results of any eval_tasks (e.g. "bpb", "hellaswag_acc_norm").
"""

import json
import math
import time
from pathlib import Path

from nanogpt.errors import UserError
from nanogpt.files import write_bytes_atomically

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(out_dir):
    """The lines of a run's metrics.jsonl as dicts, in order; a torn last line (a crash mid-write) is skipped."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"no {METRICS_FILE} in {out_dir}: train a run there first (runs write it as they go)")
    return parse_lines(path.read_text(encoding="utf-8"))


def parse_lines(text):
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iter"), int):
            records.append(record)
    return records


def split_kinds(records):
    """(iteration lines, evaluation lines) of a run's metrics."""
    return [r for r in records if r.get("kind") == "iter"], [r for r in records if r.get("kind") == "eval"]


class MetricsWriter:
    """Appends lines to out_dir/metrics.jsonl (and, with tensorboard, scalars to out_dir/tensorboard).

    Nothing is touched until the first line: a run stopped before it logs anything leaves out_dir as it was. The
    first line of a run that starts at iteration start_iter first drops every line of an earlier attempt at
    iteration start_iter or later (rewriting the file atomically), so a resumed run continues the file without
    repeating an iteration; a fresh run (start_iter 0) starts an empty file.
    """

    def __init__(self, out_dir, start_iter=0, tensorboard=False):
        self.path = Path(out_dir) / METRICS_FILE
        self.start_iter = start_iter
        self.use_tensorboard = tensorboard
        self.start = time.time()
        self.file = self.tensorboard = None
        self.time_offset = 0.0
        if tensorboard:
            tensorboard_writer_class()  # a missing package fails at the start of the run, not at its first line

    def open(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create out_dir {self.path.parent}: {e.strerror}") from None
        kept = keep_before(self.path, self.start_iter)
        if kept and isinstance(kept[-1].get("time"), (int, float)):
            self.time_offset = kept[-1]["time"]  # the clock goes on from the earlier attempts'
        self.file = open(self.path, "a", encoding="utf-8")
        if self.use_tensorboard:
            self.tensorboard = tensorboard_writer_class()(log_dir=str(self.path.parent / TENSORBOARD_DIR))

    def write(self, kind, iter_num, **values):
        """Append one line: kind ('iter' or 'eval'), the iteration, the seconds since the run started and values
        (non-finite numbers are written as null, which JSON can hold)."""
        if self.file is None:
            self.open()
        record = {"kind": kind, "iter": iter_num, "time": round(self.time_offset + time.time() - self.start, 3)}
        record.update({k: clean(v) for k, v in values.items()})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("kind", "iter") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, iter_num)
            self.tensorboard.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def keep_before(path, start_iter):
    """Rewrite metrics.jsonl (atomically) to hold only the lines before iteration start_iter; returns them."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    kept = [r for r in parse_lines(text) if r["iter"] < start_iter]
    new_text = "".join(json.dumps(r) + "\n" for r in kept)
    if new_text != text:
        write_bytes_atomically(path, new_text.encode("utf-8"), "metrics file")
    return kept


def tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("tensorboard_log=True needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


def format_duration(seconds):
    """A short human duration: 45s, 1m23s, 2h05m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
