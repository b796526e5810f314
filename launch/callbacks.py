"""Hydra callbacks: the table printed at the end of a sweep."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from launch.collect import collect, write_summary

log = logging.getLogger("launch")


class LauncherCheck(Callback):
    """Fail before submitting anything when ``launcher=slurm`` is used where SLURM is not installed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = str(config.hydra.launcher.get("_target_", ""))
        if target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
            raise SystemExit(
                "error: launcher=slurm needs SLURM's sbatch, which is not on this machine's PATH. "
                "Run the same sweep as local processes with launcher=submitit_local (or -m for one process), "
                "or start the one-node test cluster: scripts/slurm-local.sh start"
            )


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
