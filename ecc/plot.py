"""The accuracy-cost plot of an ECC sweep: ``python -m ecc.plot <multirun dir> [--out PATH]``.

Reads every ``results.json`` under the folder (a ``python -m launch -m method=ecc method.budget=...`` sweep)
that has ``test_acc`` and ``measured_cost_ratio``, and writes ``accuracy_cost.png`` (in the folder unless
``--out``): one filled dot per run at its *measured* cost ratio, a hollow dot at the *predicted* ratio of the
same run joined to it by a thin line (the cost model's error), the mean +- std per budget, and the dense
accuracy (mean over runs) as a dashed line. Runs without ``budget_ratio`` are grouped by their predicted ratio.
``launch`` draws it at the end of every sweep holding ``method=ecc`` runs (``ecc.task.METHOD.sweep_artifacts``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FILE = "accuracy_cost.png"


def load_points(folder: str | Path) -> list[dict[str, Any]]:
    """The ``results.json`` of every run under ``folder`` with a finite test accuracy and measured cost ratio."""
    points = []
    for path in sorted(Path(folder).rglob("results.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        acc, measured = res.get("test_acc"), res.get("measured_cost_ratio")
        if not isinstance(acc, int | float) or not isinstance(measured, int | float):
            continue
        if not (math.isfinite(acc) and math.isfinite(measured)):
            continue
        points.append({**res, "path": str(path.parent)})
    return points


def accuracy_cost_figure(points: Sequence[dict[str, Any]]) -> Figure:
    """The accuracy-cost figure of ``points`` (:func:`load_points`' records); the caller saves or closes it.

    One axes: a filled dot per run at its measured cost ratio (``measured cost``), a hollow dot at its predicted
    ratio (``predicted cost``) joined to it by a thin grey line, the mean +- std per budget when a budget has
    several runs (``mean ± std per budget``), and the mean dense accuracy as a dashed line (``dense``).

    Raises:
        ValueError: ``points`` is empty.
    """
    if not points:
        raise ValueError("no runs to plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    measured = [p["measured_cost_ratio"] for p in points]
    acc = [p["test_acc"] for p in points]
    predicted = [p.get("predicted_cost_ratio", float("nan")) for p in points]
    for m, pr, a in zip(measured, predicted, acc):
        if math.isfinite(pr):
            ax.plot([pr, m], [a, a], color="0.7", lw=0.8, zorder=1)
    ax.scatter(measured, acc, s=22, color="tab:blue", label="measured cost", zorder=3)
    if any(math.isfinite(p) for p in predicted):
        ax.scatter(predicted, acc, s=22, facecolors="none", edgecolors="tab:orange", label="predicted cost",
                   zorder=2)  # fmt: skip

    groups: dict[float, list[dict[str, Any]]] = {}
    for p in points:
        key = p.get("budget_ratio", p.get("predicted_cost_ratio", p["measured_cost_ratio"]))
        groups.setdefault(round(float(key), 6), []).append(p)
    if any(len(g) > 1 for g in groups.values()):
        xs, ys, xerr, yerr = [], [], [], []
        for key in sorted(groups):
            g = groups[key]
            gx, gy = [p["measured_cost_ratio"] for p in g], [p["test_acc"] for p in g]
            xs.append(statistics.mean(gx))
            ys.append(statistics.mean(gy))
            xerr.append(statistics.stdev(gx) if len(g) > 1 else 0.0)
            yerr.append(statistics.stdev(gy) if len(g) > 1 else 0.0)
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, color="k", marker="s", ms=4, lw=1, capsize=3,
                    label="mean ± std per budget", zorder=4)  # fmt: skip
    dense = [p["dense_test_acc"] for p in points if isinstance(p.get("dense_test_acc"), int | float)]
    if dense:
        ax.axhline(statistics.mean(dense), color="tab:green", ls="--", lw=1, label="dense")
    ax.set_xlabel("cost ratio (slim / dense)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"ECC: {len(points)} runs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_accuracy_cost(folder: str | Path, out: str | Path | None = None) -> Path:
    """Writes the accuracy-cost plot of the runs under ``folder`` (:func:`accuracy_cost_figure`); returns its path.

    Raises:
        FileNotFoundError: No usable ``results.json`` under ``folder``.
    """
    points = load_points(folder)
    if not points:
        raise FileNotFoundError(f"no results.json with test_acc and measured_cost_ratio under {folder}")
    fig = accuracy_cost_figure(points)
    path = Path(out) if out is not None else Path(folder) / PLOT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def sweep_artifacts(sweep_dir: Path) -> list[Path]:
    """``Method.sweep_artifacts`` of ``method=ecc``: the accuracy-cost plot of a finished sweep, if it has ECC runs.

    Returns ``[<sweep_dir>/accuracy_cost.png]``, or ``[]`` when no run under ``sweep_dir`` has a test accuracy
    and a measured cost ratio (a sweep whose ECC jobs all failed).
    """
    if not load_points(sweep_dir):
        return []
    return [plot_accuracy_cost(sweep_dir)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a multirun folder of method=ecc runs (searched recursively)")
    parser.add_argument("--out", default=None, help=f"output PNG (default: <folder>/{PLOT_FILE})")
    args = parser.parse_args(argv)
    path = plot_accuracy_cost(args.folder, args.out)
    print(f"{len(load_points(args.folder))} runs -> {path}")


if __name__ == "__main__":
    main()
