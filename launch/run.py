"""``run(cfg)``: one job from a composed config. Called by ``python -m launch`` and directly by tests.

It owns the run folder: a lock against a second process writing into it, ``config_resolved.yaml``,
``meta.json``, the logger, and ``results.json`` (written last, atomically: it marks the job done).
"""

from __future__ import annotations

import copy
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
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import CheckpointManager
from common.config import REPO_ROOT, ConfigError, validate
from common.distributed import init_distributed, shutdown
from common.engine import RunContext
from common.io import write_json_atomic, write_text_atomic
from common.logging import RunLogger, format_table
from common.method import Method, configure_method
from common.optim import resolve_device
from common.seeding import seed_everything
from launch.health import learning_warning

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"


class RunLockedError(RuntimeError):
    """Another process is already running in this output folder."""


@contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<output_dir>/.lock`` (released by the OS even on SIGKILL)."""
    # "a", not "w": a refused second process must not empty the holder's pid before trying the lock
    fh = open(output_dir / ".lock", "a")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"another process is running in {output_dir}; wait for it or choose another hydra.run.dir"
            ) from None
        fh.seek(0)
        fh.truncate()
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
    rows = [{"metric": k, "value": v} for k, v in results.items() if k != "warning"]
    return f"{title}\n{format_table(rows, floatfmt='.4g')}"


class FolderConfigError(ConfigError):
    """The folder holds a run of another config: resuming or rerunning it would mix two configs."""


# Keys that do not change what a run computes: where files go, how it logs and checkpoints, how many threads.
# A resume or rerun may change them; any other difference is refused (trainer.epochs may grow, see below).
NEUTRAL_KEYS = (
    "paths",
    "logger",
    "tags",
    "cluster",
    "objective",
    "trainer.progress",
    "trainer.resume",
    "trainer.threads",
    "trainer.device",
    "trainer.log_every_steps",
    "trainer.checkpoint_every_min",
    "trainer.checkpoint_every_steps",
    "trainer.checkpoint_min_interval_s",
)
CONFIG_RECORD = "config_resolved.yaml"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (before, after)}`` of the leaves that differ, neutral keys left out."""
    a, b = _flatten(before), _flatten(after)
    neutral = tuple(NEUTRAL_KEYS)
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not any(k == n or k.startswith(n + ".") for n in neutral)
    }


def check_folder_config(cfg: DictConfig, output_dir: Path) -> dict[str, Any] | None:
    """Refuse to resume or rerun a folder that was run with another config; return the old record's meta note.

    The folder's ``config_resolved.yaml`` is compared with ``cfg`` (resolved) leaf by leaf. Growing
    ``trainer.epochs`` of an unfinished run is allowed (returned, to be recorded in ``meta.json``); every other
    difference in a key that changes results raises :class:`FolderConfigError` listing the keys.
    """
    record = output_dir / CONFIG_RECORD
    if not cfg.trainer.resume or not record.exists():
        return None
    before = OmegaConf.to_container(OmegaConf.load(record), resolve=False)
    changes = config_changes(before, OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    note = None
    epochs = changes.get("trainer.epochs")
    if epochs is not None and not (output_dir / RESULTS_FILE).exists() and epochs[1] > epochs[0]:
        # keys derived from trainer.epochs (a scheduler's horizon) follow it: compare with the old epochs put back
        probe = copy.deepcopy(cfg)
        probe.trainer.epochs = epochs[0]
        changes = config_changes(before, OmegaConf.to_container(probe, resolve=True))  # type: ignore[arg-type]
        note = {"epochs_extended": {"from": epochs[0], "to": epochs[1]}}
    if changes:
        shown = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in list(changes.items())[:6])
        more = f" and {len(changes) - 6} more" if len(changes) > 6 else ""
        raise FolderConfigError(
            f"{output_dir} holds a run with another config: {shown}{more}. Run in another folder "
            "(hydra.run.dir=...), or restart this one from scratch with trainer.resume=false"
        )
    return note


def write_hydra_record(output_dir: Path, cfg: DictConfig) -> None:
    """Write ``.hydra/{config,hydra,overrides}.yaml`` (Hydra's own, turned off: ``hydra.output_subdir: null``).

    They are written here, with the folder's lock held, so that a second process refused by the lock (or by
    :func:`check_folder_config`) never rewrites the first one's record. ``config.yaml`` is the job's config as
    composed (interpolations kept), as Hydra writes it.
    """
    if not HydraConfig.initialized():
        return
    folder = output_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    hydra_cfg = HydraConfig.instance().cfg
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_cfg),
        ("overrides.yaml", HydraConfig.get().overrides.task),
    ):
        write_text_atomic(folder / name, OmegaConf.to_yaml(node))


@contextmanager
def run_log(output_dir: Path) -> Iterator[None]:
    """Copy the log records of this run into ``<output_dir>/run.log`` (appended), while the lock is held."""
    handler = logging.FileHandler(output_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the job described by ``cfg`` in ``cfg.paths.output_dir`` and return its final metrics.

    A folder that already holds ``results.json`` is a finished job: its results are returned as they are.
    A folder with a checkpoint is resumed (``trainer.resume=true``). Nothing in the folder is written before
    the config is checked and the folder's lock is held; a folder run with another config is refused.
    """
    validate(cfg)
    method = configure_method(cfg)  # the method's options, checked before the folder is touched
    if not cfg.trainer.distributed:
        # trainer.device=cuda without CUDA: refused before the folder is touched
        resolve_device(cfg.trainer.device)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dist_ctx, dist_device = init_distributed(cfg.trainer.distributed, cfg.trainer.device)
    main = dist_ctx.is_main  # only rank 0 writes into the folder
    try:
        with run_lock(output_dir) if main else nullcontext():
            note = check_folder_config(cfg, output_dir)
            done = output_dir / RESULTS_FILE
            if done.exists() and cfg.trainer.resume:
                results = json.loads(done.read_text())
                log.info("%s already holds results.json: the job is finished, nothing to do", output_dir)
                if main:
                    print(results_table(results, cfg, output_dir), flush=True)
                return results
            with run_log(output_dir) if main else nullcontext():
                if dist_ctx.enabled:  # said before the log file was open: say it again into run.log
                    log.info(
                        "distributed: rank %d of %d on %s (%s)",
                        dist_ctx.rank,
                        dist_ctx.world_size,
                        dist_device,
                        torch.distributed.get_backend(),
                    )
                if main:
                    write_hydra_record(output_dir, cfg)
                    (output_dir / FAILED_FILE).unlink(missing_ok=True)
                    write_text_atomic(output_dir / CONFIG_RECORD, OmegaConf.to_yaml(cfg, resolve=True))
                    write_json_atomic(output_dir / "meta.json", _meta_with_history(cfg, output_dir, note))
                results = _run_method(
                    method, cfg, output_dir, dist_ctx, dist_device or resolve_device(cfg.trainer.device)
                )
                if main:
                    warning = learning_warning(results, cfg, output_dir)
                    if warning:
                        log.warning("%s", warning)
                        results["warning"] = warning
                    write_json_atomic(done, results)
        dist_ctx.barrier()
    finally:
        shutdown()
    if main:
        print(results_table(results, cfg, output_dir), flush=True)
        if results.get("warning"):
            print(f"warning: {results['warning']}", flush=True)
    return results


def _meta_with_history(cfg: DictConfig, output_dir: Path, note: dict[str, Any] | None) -> dict[str, Any]:
    """This start's provenance; a resumed folder keeps its first start's and lists the later ones."""
    meta = run_meta(cfg)
    path = output_dir / "meta.json"
    if not (cfg.trainer.resume and path.exists()):
        return meta
    try:
        first = json.loads(path.read_text())
    except json.JSONDecodeError:
        return meta
    resumes = [
        *first.get("resumes", []),
        {k: meta[k] for k in ("started", "host", "git_sha", "argv", "slurm")},
    ]
    first["resumes"] = resumes
    if note:
        first.setdefault("epochs_extended", []).append(note["epochs_extended"])
    return first


def record_failure(cfg: DictConfig, exc: BaseException, trace: str | None = None) -> None:
    """Mark a sweep's job failed (``failed.json``, plus Hydra's ``.hydra/`` record so ``collect`` lists it).

    Not when the folder is another process's (its lock is held) or holds a run of another config.
    """
    if isinstance(exc, RunLockedError | FolderConfigError):
        return
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(output_dir):
            if not (output_dir / ".hydra" / "config.yaml").exists():
                write_hydra_record(output_dir, cfg)
            record = {"error": type(exc).__name__, "message": str(exc)}
            if trace:
                record["traceback"] = trace
            write_json_atomic(output_dir / FAILED_FILE, record)
    except RunLockedError:
        return


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
