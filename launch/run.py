"""``run(cfg)``: one job from a composed config. Called by ``python -m launch`` and directly by tests.

It owns the run folder: a lock against a second process writing into it, ``config_resolved.yaml``,
``meta.json``, the logger, and ``results.json`` (written last, atomically: it marks the job done).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import CheckpointManager
from common.config import REPO_ROOT, validate
from common.distributed import init_distributed, shutdown
from common.engine import RunContext
from common.io import write_json_atomic
from common.logging import RunLogger, format_table
from common.method import Method, configure_method
from common.optim import resolve_device
from common.seeding import seed_everything

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"


class RunLockedError(RuntimeError):
    """Another process is already running in this output folder."""


@contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<output_dir>/.lock`` (released by the OS even on SIGKILL)."""
    fh = open(output_dir / ".lock", "w")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"another process is running in {output_dir}; wait for it or choose another hydra.run.dir"
            ) from None
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_meta(cfg: DictConfig) -> dict[str, Any]:
    """Provenance of a run: code version, machine, library versions, SLURM ids."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm": {k: v for k, v in os.environ.items() if k in _SLURM_KEYS},
        "method": cfg.method.name,
        "seed": cfg.seed,
    }


_SLURM_KEYS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
)


def results_table(results: dict[str, Any], cfg: DictConfig, output_dir: Path) -> str:
    """The table printed at the end of a run."""
    title = (
        f"Results: method={cfg.method.name} network={cfg.network.name} dataset={cfg.dataset.name} "
        f"seed={cfg.seed}\n  {output_dir}"
    )
    rows = [{"metric": k, "value": v} for k, v in results.items()]
    return f"{title}\n{format_table(rows, floatfmt='.4g')}"


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the job described by ``cfg`` in ``cfg.paths.output_dir`` and return its final metrics.

    A folder that already holds ``results.json`` is a finished job: its results are returned as they are.
    A folder with a checkpoint is resumed (``trainer.resume=true``).
    """
    validate(cfg)
    method = configure_method(cfg)  # the method's options, checked before the folder is touched
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dist_ctx, dist_device = init_distributed(cfg.trainer.distributed, cfg.trainer.device)
    main = dist_ctx.is_main  # only rank 0 writes into the folder
    try:
        with run_lock(output_dir) if main else nullcontext():
            done = output_dir / RESULTS_FILE
            if done.exists() and cfg.trainer.resume:
                results = json.loads(done.read_text())
                log.info("%s already holds results.json: the job is finished, nothing to do", output_dir)
                if main:
                    print(results_table(results, cfg, output_dir), flush=True)
                return results
            if main:
                (output_dir / FAILED_FILE).unlink(missing_ok=True)
                (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                write_json_atomic(output_dir / "meta.json", run_meta(cfg))
            results = _run_method(
                method, cfg, output_dir, dist_ctx, dist_device or resolve_device(cfg.trainer.device)
            )
            if main:
                write_json_atomic(done, results)
        dist_ctx.barrier()
    finally:
        shutdown()
    if main:
        print(results_table(results, cfg, output_dir), flush=True)
    return results


def _run_method(
    method: Method, cfg: DictConfig, output_dir: Path, dist_ctx: Any, device: torch.device
) -> dict[str, float]:
    """Seed, build the run context, call the method's ``run(cfg, ctx)``; the logger is finished in any case."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    seed_everything(cfg.seed, deterministic=cfg.trainer.deterministic)
    logger = RunLogger(
        output_dir,
        cfg.logger,
        run_config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        run_name=f"{cfg.method.name}-{cfg.network.name}-{cfg.dataset.name}-s{cfg.seed}",
        enabled=dist_ctx.is_main,
    )
    ctx = RunContext(
        cfg=cfg,
        output_dir=output_dir,
        device=device,
        logger=logger,
        checkpoints=CheckpointManager(output_dir),
        progress=cfg.trainer.progress,
        dist=dist_ctx,
    )
    exit_code = 1
    try:
        results = dict(method.run(cfg, ctx))
        logger.summary(results)
        exit_code = 0
    finally:
        logger.finish(exit_code)
    return results
