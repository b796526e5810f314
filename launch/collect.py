"""Collect a sweep's jobs into one table: the overrides of each job and its final metrics.

``python -m launch.collect <sweep folder>`` writes ``summary.csv`` and ``summary.md`` there and prints them,
plus a table aggregated over seeds (mean ± std per setting) when the sweep varies ``seed``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

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
    """Mean ± std of the metrics over seeds, one row per setting of the other overrides."""
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
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                agg[m] = f"{statistics.mean(values):.4f} ± {sd:.4f}"
        out.append(agg)
    return out


def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> str:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``; return the printed text."""
    sweep_dir = Path(sweep_dir)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(sweep_dir / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    # the table shows the overrides that vary between jobs (the CSV keeps them all), the status, key metrics
    varying = [c for c in columns if c not in ("job", "status", "error") and _varies(rows, c)]
    shown = ["job", *varying, "status", *(c for c in KEY_METRICS if c in columns)]
    if "error" in columns:
        shown.append("error")
    text = format_table(rows, shown)
    seeds = aggregate_over_seeds(rows)
    if seeds:
        text += "\n\nOver seeds (mean ± std):\n" + format_table(seeds)
    md = "| " + " | ".join(shown) + " |\n|" + "---|" * len(shown) + "\n"
    for r in rows:
        md += "| " + " | ".join(_md(r.get(c)) for c in shown) + " |\n"
    (sweep_dir / "summary.md").write_text(md)
    return text


def _varies(rows: list[dict[str, Any]], key: str) -> bool:
    """A string column (an override) whose value is not the same in every row."""
    values = [r.get(key) for r in rows]
    return all(isinstance(v, str | None) for v in values) and len(set(values)) > 1


def _md(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launch.collect <sweep folder>", file=sys.stderr)
        return 2
    rows = collect(argv[0])
    if not rows:
        print(f"no jobs (folders with .hydra/) under {argv[0]}", file=sys.stderr)
        return 1
    print(write_summary(argv[0], rows))
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
