"""metrics.jsonl, the iter line's gradient norm and ETA, `nanogpt plot` and `nanogpt report`."""

import dataclasses
import json
import re

import pytest

from nanogpt.cli import main
from nanogpt.errors import UserError
from nanogpt.metrics import METRICS_FILE, MetricsWriter, format_duration, read_metrics, split_kinds
from nanogpt.train import train
from tests.conftest import tiny_config


def test_a_run_logs_one_line_per_logged_iteration_and_per_evaluation(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    lines = []
    cfg = tiny_config(data_dir, tmp_path / "run", max_iters=12, eval_interval=5, log_interval=2)
    train(cfg, log=lines.append)
    iters, evals = split_kinds(read_metrics(tmp_path / "run"))
    assert [r["iter"] for r in iters] == [0, 2, 4, 6, 8, 10]
    assert [r["iter"] for r in evals] == [0, 5, 10, 12]
    tokens_per_iter = cfg.batch_size * cfg.block_size
    assert iters[-1]["tokens"] == 11 * tokens_per_iter and evals[-1]["tokens"] == 12 * tokens_per_iter
    assert all(r["grad_norm"] > 0 and r["loss"] > 0 and r["lr"] > 0 for r in iters)
    times = [r["time"] for r in read_metrics(tmp_path / "run")]
    assert times == sorted(times)
    # the log keeps nanoGPT's iter line as it was, then adds the gradient norm and the ETA
    iter_lines = [line for line in lines if line.startswith("iter ")]
    pattern = (r"iter \d+: loss \d+\.\d{4}, time \d+\.\d{2}ms, mfu (n/a|\d+\.\d{2}%), tok/s \d+, lr \d\.\d{3}e[-+]\d\d, "
               r"grad norm \d+\.\d\d, eta (\d+h\d\dm|\d+m\d\ds|\d+s)$")
    assert iter_lines and all(re.match(pattern, line) for line in iter_lines), iter_lines[:2]
    norms = [float(re.search(r"grad norm (\S+),", line).group(1)) for line in iter_lines]
    assert norms == pytest.approx([r["grad_norm"] for r in iters], abs=0.006)


def test_without_clipping_the_norm_is_measured_on_logged_steps(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    lines = []
    train(tiny_config(data_dir, tmp_path / "run", max_iters=4, grad_clip=0.0, log_interval=2), log=lines.append)
    iters, _ = split_kinds(read_metrics(tmp_path / "run"))
    assert [r["iter"] for r in iters] == [0, 2] and all(r["grad_norm"] > 0 for r in iters)


def test_resumed_run_continues_the_file_without_duplicates(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    straight = tiny_config(data_dir, tmp_path / "straight", max_iters=20, eval_interval=5)
    train(straight, log=lambda *_: None)
    cfg = dataclasses.replace(straight, out_dir=str(tmp_path / "halves"), max_iters=10)
    train(cfg, log=lambda *_: None)
    # a later attempt had got further before dying: its lines past the checkpoint (iteration 10) must go
    with open(tmp_path / "halves" / METRICS_FILE, "a") as f:
        f.write(json.dumps({"kind": "iter", "iter": 11, "time": 99.0, "loss": 9.9}) + "\n")
        f.write('{"kind": "iter", "iter": 12, "ti')  # torn by the crash
    train(dataclasses.replace(cfg, init_from="resume", max_iters=20), log=lambda *_: None)

    def keys(run):
        return [(r["kind"], r["iter"]) for r in read_metrics(tmp_path / run)]

    assert keys("halves") == keys("straight")
    assert len(set(keys("halves"))) == len(keys("halves"))
    straight_losses = [r.get("loss") for r in read_metrics(tmp_path / "straight")]
    assert [r.get("loss") for r in read_metrics(tmp_path / "halves")] == straight_losses  # bit for bit
    times = [r["time"] for r in read_metrics(tmp_path / "halves")]
    assert times == sorted(times)  # the resumed run's clock goes on from where the first stopped


def test_a_fresh_run_starts_an_empty_file(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"kind": "iter", "iter": 3, "time": 1.0}\n')
    writer = MetricsWriter(tmp_path, start_iter=0)
    writer.write("eval", 0, val_loss=float("nan"))
    writer.close()
    assert read_metrics(tmp_path) == [{"kind": "eval", "iter": 0, "time": pytest.approx(0, abs=1), "val_loss": None}]


def test_eval_only_leaves_the_metrics_alone(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    train(tiny_config(data_dir, tmp_path / "run", max_iters=4, eval_interval=2), log=lambda *_: None)
    before = (tmp_path / "run" / METRICS_FILE).read_text()
    train(tiny_config(data_dir, tmp_path / "run", eval_only=True, init_from="resume"), log=lambda *_: None)
    assert (tmp_path / "run" / METRICS_FILE).read_text() == before


def test_format_duration():
    assert [format_duration(s) for s in (0, 45.4, 83, 3599, 7500)] == ["0s", "45s", "1m23s", "59m59s", "2h05m"]


# ------------------------------------------------------------------------------------------------- plot, report


@pytest.fixture
def two_runs(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    for name, lr in (("run-a", 1e-2), ("run-b", 3e-3)):
        train(tiny_config(data_dir, tmp_path / name, max_iters=10, eval_interval=5, learning_rate=lr),
              log=lambda *_: None)
    return tmp_path / "run-a", tmp_path / "run-b"


def test_plot_of_two_runs_writes_a_png_with_the_right_axes_and_legend(two_runs, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from nanogpt.plot import plot_runs

    to = tmp_path / "loss.png"
    data = plot_runs(two_runs, to, x="tokens")
    with Image.open(to) as image:
        assert image.format == "PNG" and image.size == (800, 500)
        image.load()  # decodes the whole file
    assert data["xlabel"] == "tokens seen" and data["ylabel"] == "loss (nats/token)"
    assert [line["label"] for line in data["lines"]] == ["run-a train", "run-a val", "run-b train", "run-b val"]
    val_a = data["lines"][1]["points"]
    assert val_a[0] == [0, 5 * 64, 10 * 64]  # tokens seen at each evaluation (batch 4 x block 16)
    iters_a, evals_a = split_kinds(read_metrics(two_runs[0]))
    assert val_a[1] == [r["val_loss"] for r in evals_a]
    assert data["lines"][0]["points"][1] == [r["loss"] for r in iters_a]


def test_plot_command_takes_several_runs_after_out_dir(two_runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    to = tmp_path / "both.png"
    assert main(["plot", f"--out_dir={two_runs[0]}", str(two_runs[1]), f"--to={to}", "--x=time"]) == 0
    assert to.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "run-a val" in capsys.readouterr().out
    assert main(["plot", "--x=epochs", f"--out_dir={two_runs[0]}"]) == 1
    assert "unknown x axis 'epochs'" in capsys.readouterr().err


def test_plot_of_a_folder_without_metrics_is_a_user_error(tmp_path):
    from nanogpt.plot import plot_runs

    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_runs([tmp_path], tmp_path / "x.png")


def test_report_renders_for_a_cpu_run(two_runs):
    pytest.importorskip("matplotlib")
    from nanogpt.report import ReportConfig, write_report

    run = two_runs[0]
    (run / "eval.json").write_text(json.dumps({"tasks": {"bpb": {"bpb": 3.25, "tokens": 90, "iter_num": 10}}}))
    text = write_report(ReportConfig(out_dir=str(run)), log=lambda *_: None)
    assert (run / "report.md").read_text() == text
    assert text.startswith("# Run report: run-a")
    _, evals = split_kinds(read_metrics(run))
    assert f"| final val loss | {evals[-1]['val_loss']:.4f} |" in text
    assert "| iterations | 10 |" in text and "| tokens seen | 640 |" in text
    assert "| parameters | 0.03M" in text
    assert "![train and val loss](loss.png)" in text and (run / "loss.png").is_file()
    assert "| bpb | bpb | 3.2500 | 10 |" in text
    assert "| **n_layer** | **`2`** |" in text and "| seed | `1337` |" in text


def test_tensorboard_log_writes_the_same_values(char_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data_dir, _ = char_dataset
    train(tiny_config(data_dir, tmp_path / "run", max_iters=4, eval_interval=2, tensorboard_log=True),
          log=lambda *_: None)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    iters, evals = split_kinds(read_metrics(tmp_path / "run"))
    assert [e.value for e in events.Scalars("iter/loss")] == pytest.approx([r["loss"] for r in iters])
    assert [e.step for e in events.Scalars("eval/val_loss")] == [r["iter"] for r in evals]


def test_nothing_is_written_before_the_first_line(tmp_path):
    MetricsWriter(tmp_path / "run", start_iter=0).close()
    assert not (tmp_path / "run").exists()
