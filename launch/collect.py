"""Collect a sweep's jobs into one table: the overrides of each job and its final metrics.

``python -m launch.collect <sweep folder>`` writes ``summary.csv`` and ``summary.md`` there and prints them,
plus a table aggregated over seeds (mean ± std per setting) when the sweep varies ``seed``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.io import write_text_atomic
from common.logging import format_table
from common.sweep import job_dirs, job_overrides

KEY_METRICS = ("test_acc", "test_loss", "val_acc", "train_loss", "test_mae")


def job_status(job_dir: Path) -> str:
    if (job_dir / "results.json").exists():
        return "done"
    if (job_dir / "failed.json").exists():
        return "failed"
    if (job_dir / "checkpoints").exists():
        return "partial"
    return "missing"


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder (those holding ``.hydra/``) under ``sweep_dir``, sorted by job number."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for job_dir in job_dirs(sweep_dir):
        row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir)) or ".", **job_overrides(job_dir)}
        row["status"] = job_status(job_dir)
        if row["status"] == "done":
            row.update(json.loads((job_dir / "results.json").read_text()))
        elif row["status"] == "failed":
            failure = json.loads((job_dir / "failed.json").read_text())
            row["error"] = f"{failure['error']}: {failure['message']}"[:120]
        rows.append(row)
    return rows


def aggregate_over_seeds(
    rows: list[dict[str, Any]], metrics: tuple[str, ...] = KEY_METRICS
) -> list[dict[str, Any]]:
    """Mean and std of the metrics over seeds, one row per setting of the other overrides.

    Each metric ``m`` gives ``m_mean`` and ``m_std`` (numbers; std 0.0 for a single seed); unfinished jobs and
    non-finite values are left out of the means, and ``seeds`` counts the jobs of the setting.
    """
    if not any("seed" in r for r in rows):
        return []
    override_keys = [k for k in rows[0] if k not in ("job", "status", "seed", "error") and _varies(rows, k)]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in override_keys)].append(r)
    out = []
    for key, members in groups.items():
        agg: dict[str, Any] = dict(zip(override_keys, key))
        agg["seeds"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if isinstance(r.get(m), int | float) and math.isfinite(r[m])]
            if values:
                agg[f"{m}_mean"] = statistics.mean(values)
                agg[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(agg)
    return out


def _mean_std_rows(seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seed table for display: ``m`` as ``"mean ± std"``."""
    shown = []
    for agg in seeds:
        row = {k: v for k, v in agg.items() if not k.endswith(("_mean", "_std"))}
        for k in agg:
            if k.endswith("_mean"):
                m = k[: -len("_mean")]
                row[m] = f"{agg[k]:.4f} ± {agg[f'{m}_std']:.4f}"
        shown.append(row)
    return shown


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    md = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    for r in rows:
        md += "| " + " | ".join(_md(r.get(c)) for c in columns) + " |\n"
    return md


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> str:
    """Write ``summary.csv`` and ``summary.md`` (and ``summary_seeds.csv`` when the sweep varies ``seed``) into
    ``sweep_dir``; return the printed text. ``summary.md`` holds both tables."""
    sweep_dir = Path(sweep_dir)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    _write_csv(sweep_dir / "summary.csv", rows)
    # the table shows the overrides that vary between jobs (the CSV keeps them all), the status, key metrics
    varying = [c for c in columns if c not in ("job", "status", "error") and _varies(rows, c)]
    shown = ["job", *varying, "status", *(c for c in KEY_METRICS if c in columns)]
    if "error" in columns:
        shown.append("error")
    text = format_table(rows, shown)
    md = _markdown(rows, shown)
    seeds = aggregate_over_seeds(rows)
    if seeds:
        _write_csv(sweep_dir / "summary_seeds.csv", seeds)
        display = _mean_std_rows(seeds)
        text += "\n\nOver seeds (mean ± std):\n" + format_table(display)
        md += "\nOver seeds (mean ± std):\n\n" + _markdown(
            display, list(dict.fromkeys(k for r in display for k in r))
        )
    write_text_atomic(sweep_dir / "summary.md", md)
    return text


def _varies(rows: list[dict[str, Any]], key: str) -> bool:
    """A string column (an override) whose value is not the same in every row."""
    values = [r.get(key) for r in rows]
    return all(isinstance(v, str | None) for v in values) and len(set(values)) > 1


def _md(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


USAGE = """usage: python -m launch.collect <sweep folder>

Collects the jobs of a Hydra sweep (every folder under it holding .hydra/config.yaml) into one table: the
overrides that vary, each job's status (done, failed, partial, missing) and key metrics. Writes summary.csv and
summary.md into the sweep folder (and summary_seeds.csv, mean and std over seeds, when the sweep varies seed).
Exits 1 when a job did not finish."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if len(argv) != 1:
        print(USAGE, file=sys.stderr)
        return 2
    if not Path(argv[0]).is_dir():
        print(f"error: {argv[0]} is not a folder", file=sys.stderr)
        return 2
    rows = collect(argv[0])
    if not rows:
        print(f"no jobs (folders with .hydra/config.yaml) under {argv[0]}", file=sys.stderr)
        return 1
    print(write_summary(argv[0], rows))
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
