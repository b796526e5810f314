"""The learning rate against the step for every run of a sweep, in one PNG.

``python -m common.plots <sweep folder>`` writes ``<sweep folder>/lr_schedules.png`` (the sweep callback of
``launch`` writes it at the end of every sweep). Each job folder contributes its ``lr_schedule.csv`` (a method
that changes the LR every step writes one: ``method=adatune``) or, failing that, the learning rates in its
``metrics.jsonl`` (the key ``lr``, or a method's namespaced ``<method>/lr``; ``method=train`` logs it per epoch,
drawn as a staircase), so tuned and scheduled runs of one sweep share the figure. Lines are labelled with the
overrides that vary between jobs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common.sweep import job_dirs, job_overrides

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["lr_curve", "lr_figure", "plot_sweep_lr"]


def _lr_of(record: dict) -> float | None:
    if "lr" in record:
        return record["lr"]
    namespaced = [k for k in record if k.endswith("/lr")]
    return record[namespaced[0]] if namespaced else None


def lr_curve(job_dir: str | Path) -> tuple[list[int], list[float]]:
    """(steps, learning rates) of one run folder; empty lists when it logged none."""
    job_dir = Path(job_dir)
    steps: list[int] = []
    lrs: list[float] = []
    schedule = job_dir / "lr_schedule.csv"
    if schedule.exists():
        with open(schedule, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                steps.append(int(row["step"]))
                lrs.append(float(row["lr"]))
        return steps, lrs
    metrics = job_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            lr = _lr_of(rec)
            if lr is not None and "step" in rec:
                steps.append(int(rec["step"]))
                lrs.append(float(lr))
    return steps, lrs


def lr_figure(sweep_dir: str | Path) -> Figure | None:
    """The figure of LR against step, one line per job under ``sweep_dir``; None when no job logged an LR."""
    sweep_dir = Path(sweep_dir)
    curves = [(job, job_overrides(job), *lr_curve(job)) for job in job_dirs(sweep_dir)]
    curves = [c for c in curves if c[2]]
    if not curves:
        return None
    keys = sorted({k for _, ov, _, _ in curves for k in ov})
    varying = [k for k in keys if len({ov.get(k) for _, ov, _, _ in curves}) > 1]

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for job, ov, steps, lrs in curves:
        label = " ".join(f"{k}={ov.get(k, '-')}" for k in varying) or job.name
        ax.plot(steps, lrs, label=label, drawstyle="steps-post", linewidth=1.2)
    if all(lr > 0 for *_, lrs in curves for lr in lrs):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"learning rate per step: {sweep_dir.name}")
    ax.legend(fontsize=7, loc="best", ncol=1 + len(curves) // 12)
    fig.tight_layout()
    return fig


def plot_sweep_lr(sweep_dir: str | Path, name: str = "lr_schedules.png") -> Path | None:
    """Write :func:`lr_figure` to ``<sweep_dir>/<name>``; returns the path (None: no job logged an LR)."""
    fig = lr_figure(sweep_dir)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    out = Path(sweep_dir) / name
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m common.plots <sweep folder>", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    out = plot_sweep_lr(args[0])
    print(out if out is not None else f"no learning rates logged under {args[0]}")
    return 0 if out is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
