"""The accuracy-cost plot of an ECC sweep, checked by its content, and its drawing at the end of a sweep."""

from __future__ import annotations

import json
import logging

import matplotlib.pyplot as plt
import pytest
import yaml

from ecc.plot import PLOT_FILE, accuracy_cost_figure, load_points, main, plot_accuracy_cost
from launch.callbacks import sweep_plots

BUDGETS, SEEDS = (0.3, 0.5, 0.7), (0, 1)


def _result(budget, seed):
    return {"test_acc": 0.9 + 0.1 * budget - 0.01 * seed, "dense_test_acc": 0.98, "budget_ratio": budget,
            "predicted_cost_ratio": budget - 0.01, "measured_cost_ratio": budget + 0.02 * seed}  # fmt: skip


def _sweep(root, results=True):
    """A finished ``-m method=ecc method.budget=0.3,0.5,0.7 seed=0,1`` sweep (jobs 0..5), a failed job, a stray
    ``results.json`` without costs."""
    for i, (budget, seed) in enumerate((b, s) for b in BUDGETS for s in SEEDS):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        cfg = {"method": {"name": "ecc", "plugin": "ecc.task:METHOD", "budget": budget}, "seed": seed}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"method.budget={budget}", f"seed={seed}"])
        )
        if results:
            (job / "results.json").write_text(json.dumps(_result(budget, seed)))
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")
    (root / "other").mkdir()
    (root / "other" / "results.json").write_text(json.dumps({"test_acc": 0.5}))  # no cost: skipped


def test_figure_shows_every_run_its_prediction_the_budget_means_and_the_dense_accuracy(tmp_path):
    _sweep(tmp_path)
    points = load_points(tmp_path)
    assert len(points) == 6
    fig = accuracy_cost_figure(points)
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "ECC: 6 runs"
        assert ax.get_xlabel() == "cost ratio (slim / dense)" and ax.get_ylabel() == "test accuracy"
        assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
            "dense", "mean ± std per budget", "measured cost", "predicted cost",
        ]  # fmt: skip
        measured, predicted = ax.collections[:2]  # the two scatters: filled, then hollow dots
        runs = [_result(b, s) for b in BUDGETS for s in SEEDS]
        assert sorted(map(tuple, measured.get_offsets().tolist())) == sorted(
            (r["measured_cost_ratio"], r["test_acc"]) for r in runs
        )
        assert sorted(map(tuple, predicted.get_offsets().tolist())) == sorted(
            (r["predicted_cost_ratio"], r["test_acc"]) for r in runs
        )
        # one grey line per run from its predicted to its measured cost, at its accuracy
        joins = [line for line in ax.lines if line.get_color() == "0.7"]
        assert sorted(tuple(line.get_xdata()) for line in joins) == sorted(
            (r["predicted_cost_ratio"], r["measured_cost_ratio"]) for r in runs
        )
        # the mean per budget over the two seeds
        (errorbar,) = ax.containers
        mean_line = errorbar.lines[0]
        assert mean_line.get_xdata().tolist() == pytest.approx([b + 0.01 for b in BUDGETS])
        assert mean_line.get_ydata().tolist() == pytest.approx([0.9 + 0.1 * b - 0.005 for b in BUDGETS])
        dense = [line for line in ax.lines if line.get_label() == "dense"]
        assert len(dense) == 1 and list(dense[0].get_ydata()) == [0.98, 0.98]
    finally:
        plt.close(fig)


def test_one_run_per_budget_has_no_mean_and_no_prediction_no_hollow_dots(tmp_path):
    points = [{"test_acc": 0.9, "measured_cost_ratio": 0.5}, {"test_acc": 0.8, "measured_cost_ratio": 0.3}]
    fig = accuracy_cost_figure(points)
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "ECC: 2 runs" and not ax.containers
        assert len(ax.collections) == 1 and len(ax.lines) == 0  # no prediction, no dense accuracy
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["measured cost"]
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="no runs"):
        accuracy_cost_figure([])


def test_plot_file_and_entry_point(tmp_path, capsys):
    _sweep(tmp_path / "sweep")
    path = plot_accuracy_cost(tmp_path / "sweep")
    assert path == tmp_path / "sweep" / PLOT_FILE and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "figs" / "acc.png"
    main([str(tmp_path / "sweep"), "--out", str(out)])  # what `python -m ecc.plot <dir> --out <png>` calls
    assert "6 runs" in capsys.readouterr().out and out.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="results.json"):
        plot_accuracy_cost(tmp_path / "empty")


def test_ecc_sweep_gets_its_accuracy_cost_plot_from_the_plugin(tmp_path):
    _sweep(tmp_path)  # no metrics.jsonl: no LR curves
    assert sweep_plots(tmp_path) == [tmp_path / PLOT_FILE]
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_without_ecc_results_gets_no_plot(tmp_path):
    _sweep(tmp_path, results=False)  # every ECC job failed
    (tmp_path / "other" / "results.json").unlink()
    (tmp_path / "broken" / "results.json").unlink()
    assert sweep_plots(tmp_path) == []
    assert not (tmp_path / PLOT_FILE).exists()


def test_a_failing_plot_is_a_warning_not_a_failed_sweep(tmp_path, monkeypatch, caplog):
    import ecc.plot

    _sweep(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(ecc.plot, "plot_accuracy_cost", broken)
    with caplog.at_level(logging.WARNING):
        assert sweep_plots(tmp_path) == []
    assert "method=ecc" in caplog.text and "no display" in caplog.text
