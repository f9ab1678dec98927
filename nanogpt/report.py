"""`nanogpt report`: one Markdown page about a run, to read or share: what was trained, for how long, how well.

report.md (written into the run's folder) holds a summary (model size, tokens seen, wall time, final and best
losses), the loss plot (loss.png beside it, when matplotlib is installed), the results of `nanogpt eval`
(eval.json) and every training setting, the ones changed from the defaults in bold.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nanogpt import checkpoint
from nanogpt.config import TrainConfig
from nanogpt.errors import UserError
from nanogpt.evaluate import EVAL_FILE
from nanogpt.files import write_bytes_atomically
from nanogpt.metrics import METRICS_FILE, format_duration, read_metrics, split_kinds
from nanogpt.plot import plot_runs

REPORT_FILE = "report.md"
PLOT_FILE = "loss.png"


@dataclass
class ReportConfig:
    out_dir: str = "out"  # the run to report on; report.md (and loss.png) are written into it

    def to_dict(self):
        return asdict(self)


def write_report(cfg: ReportConfig, log=print):
    """Write out_dir/report.md; returns its text."""
    out_dir = Path(cfg.out_dir)
    ckpt = checkpoint.load_checkpoint(out_dir)
    model = checkpoint.load_model(ckpt, out_dir)
    records = read_metrics(out_dir) if (out_dir / METRICS_FILE).is_file() else []
    plot_note = draw_plot(out_dir) if records else f"(no {METRICS_FILE}: this run predates it)"
    text = render(out_dir.resolve().name, ckpt, model, records, read_eval(out_dir), plot_note)
    write_bytes_atomically(out_dir / REPORT_FILE, text.encode("utf-8"), "report")
    log(f"wrote {out_dir / REPORT_FILE}")
    return text


def draw_plot(out_dir):
    """Draw loss.png into the run; returns the Markdown that shows it, or says why there is none."""
    try:
        plot_runs([out_dir], out_dir / PLOT_FILE)
    except UserError as e:
        return f"(no plot: {e})"
    return f"![train and val loss]({PLOT_FILE})"


def read_eval(out_dir):
    path = Path(out_dir) / EVAL_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("tasks", {})
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{path} is not valid JSON: run `nanogpt eval` again") from None


def render(name, ckpt, model, records, evals, plot_note):
    """The report's Markdown."""
    config = ckpt.get("config") or {}
    iters, eval_lines = split_kinds(records)
    last_eval = eval_lines[-1] if eval_lines else {}
    last_iter = iters[-1] if iters else {}
    tokens = max((r.get("tokens") or 0 for r in records), default=0) or ckpt["iter_num"] * tokens_per_iter(config)
    wall = max((r.get("time") or 0 for r in records), default=None)
    arch = model.config
    summary = [
        ("model", f"{arch.n_layer} layers, {arch.n_head} heads, {arch.n_embd} wide, block {arch.block_size}, "
                  f"vocabulary {arch.vocab_size}"),
        ("parameters", f"{model.get_num_params() / 1e6:.2f}M (without position embeddings)"),
        ("dataset", f"{config.get('dataset', '?')} ({(ckpt.get('tokenizer') or {}).get('tokenizer', '?')} tokens)"),
        ("iterations", f"{ckpt['iter_num']:,}"),
        ("tokens seen", f"{tokens:,}"),
        ("wall time", format_duration(wall) if wall is not None else "unknown"),
        ("final train loss", number(last_eval.get("train_loss"))),
        ("final val loss", number(last_eval.get("val_loss"))),
        ("best val loss", number(float(ckpt.get("best_val_loss", float("nan"))))),
    ]
    if iters:
        summary.append(("last logged step", f"iter {last_iter['iter']}: loss {number(last_iter.get('loss'))}, "
                                            f"{number(last_iter.get('tok_s'), '.0f')} tok/s"))
    parts = [f"# Run report: {name}", "", table(("", ""), summary), "", "## Loss", "", plot_note, ""]
    parts += ["## Evaluation", "", eval_table(evals), ""]
    parts += ["## Settings", "", "Changed from the defaults in **bold**.", "", settings_table(config), ""]
    return "\n".join(parts)


def tokens_per_iter(config):
    defaults = TrainConfig()
    return (config.get("gradient_accumulation_steps", defaults.gradient_accumulation_steps)
            * config.get("batch_size", defaults.batch_size) * config.get("block_size", defaults.block_size))


def number(value, spec=".4f"):
    return "–" if value is None or value != value else format(value, spec)


def table(header, rows):
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return "\n".join(lines + [f"| {a} | {b} |" for a, b in rows])


def eval_table(evals):
    if not evals:
        return "No evaluations yet: `nanogpt eval --out_dir=RUN --tasks=bpb,hellaswag` adds them."
    lines = ["| task | figure | value | at iteration |", "| --- | --- | --- | --- |"]
    for task, figures in evals.items():
        for figure, value in figures.items():
            if figure in ("model", "checkpoint", "iter_num", "dataset") or (figure == "limit" and not value):
                continue
            shown = f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
            lines.append(f"| {task} | {figure} | {shown} | {figures.get('iter_num', '–')} |")
    return "\n".join(lines)


def settings_table(config):
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    rows = []
    for key, value in config.items():
        shown = f"`{value!r}`"
        rows.append((f"**{key}**" if key in defaults and defaults[key] != value else key,
                     f"**{shown}**" if key in defaults and defaults[key] != value else shown))
    return table(("setting", "value"), rows)
