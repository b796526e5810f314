"""Relaunch the jobs of a sweep that have no ``results.json``, each into its own original folder.

    python -m launch.resweep <sweep folder> [hydra overrides, e.g. hydra.launcher.timeout_min=600]

The sweep's job list is rebuilt from ``<sweep>/multirun.yaml`` exactly as Hydra's basic sweeper built it (same
order, so job ``i`` is folder ``<sweep>/i``), with the same launcher and settings. Each unfinished job runs again
in its folder and resumes from its checkpoint there; finished jobs are not launched at all. At the end the sweep
table is printed again, over all jobs.

This uses Hydra's launcher API directly (``hydra._internal``: hydra-core is pinned below 1.4).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra._internal.callbacks import Callbacks
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

from common.config import CONF_DIR
from launch.run import RESULTS_FILE

log = logging.getLogger("launch")


def sweep_jobs(sweep_dir: str | Path) -> list[list[str]]:
    """Every job's overrides, in Hydra's job order, from ``<sweep>/multirun.yaml``."""
    sweep_dir = Path(sweep_dir)
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.exists():
        raise FileNotFoundError(f"{multirun} not found: is {sweep_dir} a Hydra multirun folder?")
    task = list(OmegaConf.load(multirun).hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(task)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def unfinished(sweep_dir: str | Path) -> list[tuple[int, list[str]]]:
    """(job number, overrides) of the jobs whose folder holds no ``results.json``."""
    sweep_dir = Path(sweep_dir)
    return [
        (i, job)
        for i, job in enumerate(sweep_jobs(sweep_dir))
        if not (sweep_dir / str(i) / RESULTS_FILE).exists()
    ]


def resweep(sweep_dir: str | Path, extra_overrides: list[str] | None = None) -> list[int]:
    """Launch the unfinished jobs of ``sweep_dir`` with the sweep's own launcher; return their numbers."""
    from launch.cli import task

    sweep_dir = Path(sweep_dir).resolve()
    pending = unfinished(sweep_dir)
    if not pending:
        log.info("every job of %s has results.json: nothing to relaunch", sweep_dir)
        return []
    hydra_section = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    overrides = [
        *(o for o in hydra_section.overrides.hydra if not str(o).startswith("hydra.sweep.dir=")),
        f"hydra.sweep.dir={sweep_dir}",
        *hydra_section.overrides.task,
        *(extra_overrides or []),
    ]
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(
        task_name="cli", config_search_path=create_config_search_path(str(CONF_DIR))
    )
    cfg = hydra.compose_config(
        "config", overrides=overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=True
    )
    HydraConfig.instance().set_config(cfg)
    callbacks = Callbacks(cfg)
    callbacks.on_multirun_start(config=cfg, config_name="config")
    launcher = Plugins.instance().instantiate_launcher(
        config=cfg,
        hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
        task_function=task,
    )
    log.info("relaunching %d of the sweep's jobs: %s", len(pending), " ".join(str(i) for i, _ in pending))
    # each job keeps its own folder (and so its checkpoint) whatever number the launcher gives it
    launcher.launch([[*job, f"hydra.sweep.subdir={i}"] for i, job in pending], initial_job_idx=0)
    callbacks.on_multirun_end(config=cfg, config_name="config")
    return [i for i, _ in pending]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m launch.resweep <sweep folder> [overrides]", file=sys.stderr)
        return 2
    try:
        resweep(argv[0], argv[1:])
    except SystemExit as exc:  # the sweep summary reports jobs that still failed
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
