"""The learning rate against the epoch for every run of a sweep, in one PNG, one panel per training phase.

``python -m common.plots <sweep folder>`` writes ``<sweep folder>/lr_schedules.png`` (the sweep callback of
``launch`` writes it at the end of every sweep). Each job folder contributes its ``lr_schedule.csv`` (a method
that changes the LR every step writes one: ``method=adatune``) or, failing that, the per-epoch learning rates in
its ``metrics.jsonl`` (the key ``lr``, or a method's namespaced ``<method>/lr``), drawn as a staircase, so tuned
and scheduled runs of one sweep share the figure. A method of several phases (ECC: pretraining, ADMM,
fine-tuning) logs each epoch with its ``phase``; each phase gets a panel of its own, since their epochs restart
and their learning rates are unrelated. Lines are labelled with the overrides that vary between jobs.
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

__all__ = ["lr_curve", "lr_curves", "lr_figure", "plot_sweep_lr"]

# what the Trainer calls a run of one phase only (common.engine.Trainer's default ``phase``)
DEFAULT_PHASE = "train"


def _lr_of(record: dict) -> float | None:
    if "lr" in record:
        return record["lr"]
    namespaced = [k for k in record if k.endswith("/lr")]
    return record[namespaced[0]] if namespaced else None


def _records(job_dir: Path) -> list[dict]:
    metrics = job_dir / "metrics.jsonl"
    if not metrics.exists():
        return []
    records = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return records


def lr_curves(job_dir: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{phase: (epochs, learning rates)}`` of one run folder, phases in the order they ran; empty when none.

    Per-epoch records give a staircase: the LR of epoch ``e`` (logged at its end) holds from ``e - 1`` to ``e``.
    A per-step ``lr_schedule.csv`` is placed at ``step / steps per epoch``, the latter read from the epoch records.
    """
    job_dir = Path(job_dir)
    records = _records(job_dir)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    schedule = job_dir / "lr_schedule.csv"
    if schedule.exists():
        # the run's own phase name (method=adatune's is "adatune"): a per-step schedule is of one phase
        ends = [r for r in records if "epoch" in r and "step" in r]
        per_epoch = ends[0]["step"] / ends[0]["epoch"] if ends and ends[0]["epoch"] > 0 else 1.0
        epochs: list[float] = []
        lrs: list[float] = []
        with open(schedule, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                epochs.append(int(row["step"]) / per_epoch)
                lrs.append(float(row["lr"]))
        return {DEFAULT_PHASE: (epochs, lrs)} if lrs else {}
    for rec in records:
        lr = _lr_of(rec)
        if lr is None or "epoch" not in rec:
            continue
        xs, ys = curves.setdefault(str(rec.get("phase", DEFAULT_PHASE)), ([], []))
        xs.append(float(rec["epoch"]) - 1.0)
        ys.append(float(lr))
    for xs, ys in curves.values():  # close the last epoch's step
        xs.append(xs[-1] + 1.0)
        ys.append(ys[-1])
    return curves


def lr_curve(job_dir: str | Path) -> tuple[list[float], list[float]]:
    """(epochs, learning rates) of a run's first phase (the only one of most methods); empty lists when none."""
    curves = lr_curves(job_dir)
    return next(iter(curves.values())) if curves else ([], [])


def lr_figure(sweep_dir: str | Path) -> Figure | None:
    """The figure of LR against epoch, one panel per phase, one line per job under ``sweep_dir``; None when no
    job logged an LR."""
    sweep_dir = Path(sweep_dir)
    jobs = [(job, job_overrides(job), lr_curves(job)) for job in job_dirs(sweep_dir)]
    jobs = [j for j in jobs if j[2]]
    if not jobs:
        return None
    keys = sorted({k for _, ov, _ in jobs for k in ov})
    varying = [k for k in keys if len({ov.get(k) for _, ov, _ in jobs}) > 1]
    phases: list[str] = []
    for _, _, curves in jobs:
        phases += [p for p in curves if p not in phases]

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(phases), figsize=(7 if len(phases) == 1 else 4.2 * len(phases), 4.2),
                             squeeze=False)  # fmt: skip
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, phase in zip(axes[0], phases):
        lrs_here = []
        for i, (job, ov, curves) in enumerate(jobs):
            if phase not in curves:
                continue
            label = " ".join(f"{k}={ov.get(k, '-')}" for k in varying) or job.name
            xs, ys = curves[phase]
            ax.plot(
                xs, ys, label=label, drawstyle="steps-post", linewidth=1.2, color=colours[i % len(colours)]
            )
            lrs_here += ys
        if lrs_here and all(lr > 0 for lr in lrs_here):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(phase if len(phases) > 1 else f"learning rate per epoch: {sweep_dir.name}", fontsize=10)
        ax.legend(fontsize=7, loc="best", ncol=1 + len(jobs) // 12)
    axes[0][0].set_ylabel("learning rate")
    if len(phases) > 1:
        fig.suptitle(f"learning rate per epoch, by phase: {sweep_dir.name}", fontsize=11)
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
