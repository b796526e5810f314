"""The accuracy-cost plot of a sweep, on a folder of small fake results.json files (a test of the plotting)."""

from __future__ import annotations

import json

import pytest

from ecc.plot import PLOT_FILE, load_points, main, plot_accuracy_cost


def _sweep(root):
    for i, (budget, seed) in enumerate((b, s) for b in (0.3, 0.5, 0.7) for s in (0, 1)):
        run = root / str(i)
        run.mkdir(parents=True)
        res = {"test_acc": 0.9 + 0.1 * budget - 0.01 * seed, "dense_test_acc": 0.98, "budget_ratio": budget,
               "predicted_cost_ratio": budget - 0.01, "measured_cost_ratio": budget + 0.02 * seed}  # fmt: skip
        (run / "results.json").write_text(json.dumps(res))
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")
    (root / "other").mkdir()
    (root / "other" / "results.json").write_text(json.dumps({"test_acc": 0.5}))  # no cost: skipped


def test_plot_of_a_sweep_folder(tmp_path):
    _sweep(tmp_path)
    assert len(load_points(tmp_path)) == 6
    path = plot_accuracy_cost(tmp_path)
    assert path == tmp_path / PLOT_FILE and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_plot_entry_point_and_empty_folder(tmp_path, capsys):
    _sweep(tmp_path / "sweep")
    out = tmp_path / "figs" / "acc.png"
    main([str(tmp_path / "sweep"), "--out", str(out)])  # what `python -m ecc.plot <dir> --out <png>` calls
    assert "6 runs" in capsys.readouterr().out and out.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="results.json"):
        plot_accuracy_cost(tmp_path / "empty")
