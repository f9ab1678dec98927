"""`nanogpt plot`: the train and val loss of one or several runs on one figure, from their metrics.jsonl.

Each run is drawn in its own colour, labelled by its folder: the logged train loss as a thin line, the val loss
estimates as a thick line with markers. matplotlib is an optional extra (`pip install -e '.[plot]'`).
"""

from dataclasses import asdict, dataclass
from pathlib import Path

from nanogpt.errors import UserError
from nanogpt.metrics import read_metrics, split_kinds

X_AXES = {"iter": ("iter", "iteration"), "time": ("time", "wall time (minutes)"), "tokens": ("tokens", "tokens seen")}


@dataclass
class PlotConfig:
    out_dir: str = ""  # the run(s) to plot: --out_dir=RUN [RUN …] or comma-separated
    to: str = "loss.png"  # the image to write (.png, .svg or .pdf)
    x: str = "iter"  # the x axis: iter, time (wall clock) or tokens (tokens seen)

    def to_dict(self):
        return asdict(self)


def series(records, key, x):
    """(xs, ys) of one value over the chosen x axis, skipping lines that lack either."""
    field = X_AXES[x][0]
    points = [(r[field], r[key]) for r in records if isinstance(r.get(key), (int, float))
              and isinstance(r.get(field), (int, float))]
    if x == "time":
        points = [(t / 60, y) for t, y in points]
    return [p[0] for p in points], [p[1] for p in points]


def figure_data(out_dirs, x="iter"):
    """What the figure shows, as plain data: axis labels, scale, and per line its label and points."""
    if x not in X_AXES:
        raise UserError(f"unknown x axis '{x}': use {', '.join(X_AXES)}")
    lines = []
    for out_dir in out_dirs:
        iters, evals = split_kinds(read_metrics(out_dir))
        name = Path(out_dir).name or str(out_dir)
        for style, records, key in (("train", iters, "loss"), ("val", evals, "val_loss")):
            lines.append({"run": name, "label": f"{name} {style}", "style": style, "points": series(records, key, x)})
    lines = [line for line in lines if line["points"][0]]
    if not lines:
        raise UserError(f"no losses logged yet in {', '.join(map(str, out_dirs))}")
    values = [y for line in lines for y in line["points"][1] if y > 0]
    # losses fall fastest at the start: a log scale shows both the early drop and the late progress once they
    # span more than a factor of two
    log_scale = bool(values) and max(values) / min(values) > 2
    return {"xlabel": X_AXES[x][1], "ylabel": "loss (nats/token)", "yscale": "log" if log_scale else "linear",
            "title": "training loss", "lines": lines}


def draw(data, to):
    """Render figure_data to an image file."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no window, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("nanogpt plot needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colours = {}
    for line in data["lines"]:
        colour = colours.setdefault(line["run"], f"C{len(colours) % 10}")
        xs, ys = line["points"]
        if line["style"] == "train":
            ax.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.45, label=line["label"])
        else:
            ax.plot(xs, ys, color=colour, linewidth=2, marker="o", markersize=3, label=line["label"])
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(data["ylabel"])
    ax.set_yscale(data["yscale"])
    ax.set_title(data["title"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(to)
    except OSError as e:
        raise UserError(f"cannot write {to}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def plot_runs(out_dirs, to="loss.png", x="iter"):
    """Draw the loss curves of the runs into `to`; returns the figure's data (see figure_data)."""
    data = figure_data(out_dirs, x)
    draw(data, to)
    return data


def plot_from_config(cfg: PlotConfig, extra_runs=(), log=print):
    """The plot command: cfg.out_dir (comma-separated) and extra_runs, the words that followed it."""
    runs = [r for r in cfg.out_dir.split(",") if r] + list(extra_runs)
    if not runs:
        raise UserError("say which runs to plot: --out_dir=RUN [RUN ...]")
    data = plot_runs(runs, cfg.to, cfg.x)
    log(f"wrote {cfg.to}: {', '.join(line['label'] for line in data['lines'])}")
    return data
