"""Hydra callbacks: the table printed at the end of a sweep."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from launch.collect import collect, write_summary

log = logging.getLogger("launch")


class SweepSummary(Callback):
    """After a multirun, print one table of all jobs (and over seeds) and write summary.csv/.md.

    Failed jobs are listed; the sweep then exits non-zero so scripts notice.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            return
        print(f"\nSweep: {sweep_dir}\n{write_summary(sweep_dir, rows)}", flush=True)
        failed = [r["job"] for r in rows if r["status"] != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} of {len(rows)} jobs did not finish: {', '.join(failed)}")
