"""The benchmark scripts read training logs and profiles; these check that reading against the real thing, so a
change to the log lines cannot silently turn a benchmark's figures into nans."""

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def import_benchmarks(*names):
    """The benchmark scripts as modules, without leaving benchmarks/ on sys.path: its tokenizers.py would shadow
    Hugging Face's tokenizers for every test that runs after."""
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return [importlib.import_module(name) for name in names]
    finally:
        sys.path[:] = saved


recipe, profile_step, peer = import_benchmarks("recipe", "profile_step", "peer")


def test_recipe_reads_the_curve_and_step_times_from_our_train_log(char_dataset, tmp_path):
    data_dir, _ = char_dataset
    cmd = [sys.executable, "train.py", "--dataset=tiny", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}",
           "--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16",
           "--batch_size=4", "--max_iters=6", "--lr_decay_iters=6", "--eval_interval=3", "--eval_iters=1",
           "--log_interval=1"]
    run = recipe.timed_run(cmd, REPO)
    assert [step for _, _, step in run["curve"]] == [0, 3, 6]
    times = [t for t, _, _ in run["curve"]]
    assert times == sorted(times) and 0 < times[-1] <= run["wall_s"]
    assert len(run["ms"]) == 6 and all(ms > 0 for ms in run["ms"])
    assert 0 < run["curve"][-1][1] < 10


def test_time_to_target_and_loss_within_a_budget():
    curve = [(1.0, 2.5, 0), (2.0, 1.9, 250), (3.0, 1.85, 500), (4.0, 1.7, 750)]
    assert recipe.time_to(curve, 1.88) == 3.0
    assert recipe.time_to(curve, 1.0) != recipe.time_to(curve, 1.0)  # never reached: nan
    assert recipe.loss_within(curve, 3.5) == 1.85
    assert recipe.loss_within(curve, 0.5) != recipe.loss_within(curve, 0.5)


def test_recipe_reports_the_ratio_to_upstreams_whole_run_when_upstream_never_reaches_the_target(capsys):
    def run(wall, curve):
        return {"wall_s": wall, "ms": [50.0], "curve": curve}

    results = {"upstream": [run(100.0, [(10.0, 2.5, 0), (100.0, 1.9, 2000)])],
               "fast": [run(90.0, [(10.0, 2.5, 0), (30.0, 1.87, 250), (90.0, 1.6, 700)])]}
    recipe.report(results, ["upstream", "fast"], "wall")
    out = capsys.readouterr().out
    assert "fast/upstream time to 1.88: 0.300 (upstream never reached 1.88: its whole run)" in out
    assert "fast val loss within upstream's wall time: 1.600" in out
    assert out.startswith("repeat 1 upstream ") and "repeat 1 fast " in out


def test_profile_per_step_is_the_difference_between_the_long_and_short_runs():
    short = {"wall_us": 1_000_000, "ops": {"aten::mm": [200_000, 100], "aten::randint": [5_000, 10]}}
    long = {"wall_us": 3_000_000, "ops": {"aten::mm": [1_000_000, 500], "aten::randint": [5_000, 10],
                                          "aten::_fused_adamw_": [100_000, 100]}}
    wall_ms, ops = profile_step.per_step(short, long, steps=100)
    assert wall_ms == pytest.approx(20.0)
    assert ops["aten::mm"] == pytest.approx((8.0, 4.0))
    assert ops["aten::randint"] == (0.0, 0.0)
    assert ops["aten::_fused_adamw_"] == pytest.approx((1.0, 1.0))


def test_peer_builds_its_corpus_without_tests_and_holds_out_the_same_documents_for_a_seed(tmp_path):
    for rel in ["a.py", "pkg/b.py", "pkg/tests/c.py", "test/d.py", "pkg/test_e.py", "f_test.py", "g.txt", "h.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"x = '{rel}'\n")
    (tmp_path / "empty.py").write_text("  \n")
    (tmp_path / "binary.py").write_bytes(b"\xff\xfe\x00")
    docs = peer.corpus_files(tmp_path, "*.py")
    assert [name for name, _ in docs] == ["a.py", "h.py", "pkg/b.py"]
    train, val = peer.split_documents(docs, 0.34, seed=0)
    assert len(val) == 1 and sorted(train + val) == sorted(docs)
    assert peer.split_documents(docs, 0.34, seed=0) == (train, val)


def test_peer_plans_the_steps_that_fit_the_budget_and_reads_the_value_at_equal_time():
    # a calibration of 10 steps of 1 s, evaluations of 2 s (the second after the last step), 30 s of start-up
    cal = {"step_ms": [5000.0] + [1000.0] * 9, "curve": [(32.0, 3.0, 0), (46.0, 2.5, 10)], "last_step_s": 43.0,
           "wall_s": 46.0}
    steps, step_s, eval_s, fixed_s = peer.plan_steps(cal, 10, budget_s=200.0, evals=4)
    assert (step_s, eval_s, fixed_s) == (1.0, 2.0, 32.0)
    assert steps == 152 and steps % 4 == 0  # (0.97 * 200 - 32 - 5 evaluations * 2 s) / 1 s = 152
    curve = [(30.0, 3.0, 0), (100.0, 2.0, 76), (199.0, 1.5, 152), (205.0, 1.4, 160)]
    assert peer.within(curve, 200.0) == 1.5
    assert peer.within(curve, 10.0) != peer.within(curve, 10.0)  # nothing yet: nan


def test_peer_common_evaluator_scores_every_token_once_after_the_document_start():
    """Windows of at most block tokens cover each document's tokens once, each predicted from the separator and
    what precedes it in the document; for a model whose context holds a whole document, the summed nats are the
    full-sequence cross-entropy."""
    import torch
    import torch.nn.functional as F

    for n, block in [(1, 4), (4, 4), (5, 4), (13, 4), (8, 3)]:
        scored = []
        for start, end, skip in peer.windows(n, block):
            assert 0 < end - start <= block and end - start >= min(n, block)  # full windows where the text allows
            scored += list(range(start + skip, end))  # document token i is predicted at sequence position i
        assert scored == list(range(n))
    torch.manual_seed(0)
    table = torch.randn(10, 10)  # a "model" whose logits at a position depend on the whole prefix
    logits_of = lambda x: table[x].cumsum(1)  # noqa: E731
    loss_sum = lambda x, y: F.cross_entropy(logits_of(x).flatten(0, 1), y.flatten(), ignore_index=-1,  # noqa: E731
                                            reduction="sum")
    docs = [[1, 2, 3], [4, 5, 6, 7, 8, 2, 1], [5]]
    nats, tokens = peer.summed_nats(loss_sum, docs, separator=9, block=16)
    expected = sum(loss_sum(torch.tensor([[9] + d[:-1]]), torch.tensor([d])) for d in docs[:2])
    expected += loss_sum(torch.tensor([[9, 9]]), torch.tensor([[-1, 5]]))  # a one-token document reads two separators
    assert tokens == 11 and abs(nats - float(expected)) < 1e-4
    short, _ = peer.summed_nats(loss_sum, docs, separator=9, block=2)
    assert short != nats  # a shorter context is a different (here, cruder) prediction
    assert peer.summed_nats(loss_sum, docs, separator=9, block=16, restart=True) == (nats, tokens)  # all fit
    rows = []

    def recording(x, y):
        rows.extend(zip(x.tolist(), y.tolist()))
        return loss_sum(x, y)
    _, restarted = peer.summed_nats(recording, docs, separator=9, block=3, restart=True)
    assert restarted == tokens and all(len(x) <= 3 and x[0] == 9 for x, _ in rows)  # every window from the start token
    assert sorted(t for _, y in rows for t in y if t != -1) == sorted(t for d in docs for t in d)  # each token once


def test_peer_skips_with_a_reason_where_nanochat_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["peer.py", f"--nanochat={tmp_path / 'nowhere'}", f"--work={tmp_path / 'w'}"])
    peer.main()
    assert capsys.readouterr().out == f"skipped: no nanochat checkout at {tmp_path / 'nowhere'} (pass --nanochat=DIR)\n"
    assert not (tmp_path / "w").exists()


def test_peer_undoes_nanochats_batch_scaling_of_its_learning_rates():
    args = peer.argparse.Namespace(n_layer=4, n_embd=256, block_size=512, tokens_per_step=4096, eval_tokens=65536)
    reference = peer.nanochat_command(args, 100, reference_lrs=True, evals=4, tag="a")
    default = peer.nanochat_command(args, 100, reference_lrs=False, evals=4, tag="b")
    assert "--matrix-lr=0.226274" in reference and "--embedding-lr=3.39411" in reference  # 0.02, 0.3 / sqrt(1/128)
    assert not any("-lr=" in a for a in default)
    assert "--depth=4" in default and "--aspect-ratio=64" in default and "--num-iterations=100" in default
