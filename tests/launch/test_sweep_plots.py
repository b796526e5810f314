"""The plots written at the end of a sweep (launch.callbacks.sweep_plots)."""

from __future__ import annotations

from launch.callbacks import sweep_plots
from tests.ecc.test_plot import _sweep


def test_ecc_sweep_gets_its_accuracy_cost_plot(tmp_path):
    _sweep(tmp_path)  # six fake method=ecc results.json (no metrics.jsonl: no LR curves)
    assert sweep_plots(tmp_path) == [tmp_path / "accuracy_cost.png"]


def test_a_failing_plot_is_a_warning_not_a_failed_sweep(tmp_path, monkeypatch, caplog):
    import ecc.plot

    _sweep(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(ecc.plot, "plot_accuracy_cost", broken)
    assert sweep_plots(tmp_path) == []
    assert "accuracy-cost plot" in caplog.text and "no display" in caplog.text
