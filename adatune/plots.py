"""The learning rate against the step for every run of a sweep, in one PNG.

``python -m adatune.plots <sweep folder>`` writes ``<sweep folder>/lr_schedules.png``. Each job folder (one holding
``.hydra/``) contributes its ``lr_schedule.csv`` (``method=adatune``: the LR of every step) or, failing that, the
``lr`` entries of its ``metrics.jsonl`` (``method=train``: the LR logged per epoch, a staircase per epoch), so
tuned and scheduled runs of one sweep share the figure. Lines are labelled with the overrides that vary.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

__all__ = ["lr_curve", "plot_sweep_lr"]


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
            rec = json.loads(line)
            lr = rec.get("adatune/lr", rec.get("lr"))
            if lr is not None and "step" in rec:
                steps.append(int(rec["step"]))
                lrs.append(float(lr))
    return steps, lrs


def _overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.exists() else None
    return dict(str(item).lstrip("+~").partition("=")[::2] for item in items or [])


def plot_sweep_lr(sweep_dir: str | Path, name: str = "lr_schedules.png") -> Path | None:
    """Plot LR against step for each job under ``sweep_dir``; returns the PNG's path (None: no job logged an LR)."""
    sweep_dir = Path(sweep_dir)
    jobs = sorted(
        (p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")),
        key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else 0, str(p)),
    )
    curves = [(job, _overrides(job), *lr_curve(job)) for job in jobs]
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
    ax.set_title(sweep_dir.name)
    ax.legend(fontsize=7, loc="best", ncol=1 + len(curves) // 12)
    fig.tight_layout()
    out = sweep_dir / name
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m adatune.plots <sweep folder>", file=sys.stderr)
        return 2
    out = plot_sweep_lr(args[0])
    print(out if out is not None else f"no learning rates logged under {args[0]}")
    return 0 if out is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
