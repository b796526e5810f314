"""Hydra callbacks: the table printed at the end of a sweep, and the sweep's plots."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from common.method import load_method
from common.plots import plot_sweep_lr
from common.sweep import job_dirs
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
        for path in sweep_plots(sweep_dir):
            print(f"plot: {path}", flush=True)
        failed = [r["job"] for r in rows if r["status"] != "done"]
        if failed:
            raise SystemExit(f"{len(failed)} of {len(rows)} jobs did not finish: {', '.join(failed)}")


def sweep_plots(sweep_dir: Path) -> list[Path]:
    """The plots of a finished sweep: LR against step of every job (any method that logs an LR), then each
    method's own sweep artifacts (``Method.sweep_artifacts``) for the methods whose jobs the sweep holds.

    A plot that fails is a warning, not a failed sweep: the table above is the sweep's result.
    """
    makers: list[tuple[str, Any]] = [("LR curves", lambda: [plot_sweep_lr(sweep_dir)])]
    for plugin in _plugins_of(sweep_dir):
        try:
            method = load_method(plugin)
        except Exception as exc:  # noqa: BLE001 - a job's config may name a plugin this checkout lacks
            log.warning("sweep artifacts of %s not written: %s", plugin, exc)
            continue
        if method.sweep_artifacts is not None:
            makers.append((f"method={method.name}", lambda m=method: m.sweep_artifacts(sweep_dir)))
    written: list[Path] = []
    for name, make in makers:
        try:
            paths = make()
        except Exception as exc:  # noqa: BLE001
            log.warning("%s plot of %s not written: %s", name, sweep_dir, exc)
            continue
        written.extend(Path(p) for p in paths if p is not None)
    return written


def _plugins_of(sweep_dir: Path) -> list[str]:
    """The method plugins (``method.plugin``) of the jobs under ``sweep_dir``, in order of first appearance."""
    plugins: dict[str, None] = {}
    for job in job_dirs(sweep_dir):
        try:
            plugin = OmegaConf.select(OmegaConf.load(job / ".hydra" / "config.yaml"), "method.plugin")
        except Exception:  # noqa: BLE001 - an unreadable config: that job has no artifacts
            continue
        if plugin:
            plugins[str(plugin)] = None
    return list(plugins)
