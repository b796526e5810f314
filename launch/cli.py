"""``python -m launch [overrides]``: compose ``conf/`` with Hydra and run one job (or a sweep with ``-m``)."""

from __future__ import annotations

import logging
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from common.config import CONF_DIR, ConfigError
from launch.run import RunLockedError, record_failure, run

log = logging.getLogger("launch")

# errors a user can fix: reported in one line, not as a traceback
_USER_ERRORS: dict[type[BaseException], int] = {ConfigError: 2, RunLockedError: 4}


def _user_errors() -> dict[type[BaseException], int]:
    from common.data import DatasetNotFoundError
    from common.engine import NonFiniteLossError

    return {**_USER_ERRORS, DatasetNotFoundError: 2, NonFiniteLossError: 3}


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task(cfg: DictConfig) -> float | None:
    """The Hydra task: run one job and return ``cfg.objective`` for sweepers.

    A user error ends a single run with a one-line message and a non-zero exit code. Inside a sweep any failure
    of a job (a user error, or a bug: its traceback goes to the job's ``run.log`` and ``failed.json``) marks
    that job failed and the sweep goes on; the sweep summary lists it and the sweep exits non-zero. A job
    refused by another process's lock on its folder writes nothing there.
    """
    from common.engine import RunInterrupted

    try:
        results = run(cfg)
    except RunInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr, flush=True)
        sys.exit(128 + exc.signum)
    except tuple(_user_errors()) as exc:
        code = next(c for t, c in _user_errors().items() if isinstance(exc, t))
        log.error("%s: %s", type(exc).__name__, exc)
        if _in_sweep():
            record_failure(cfg, exc)
            return None
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(code)
    except Exception as exc:
        if not _in_sweep():
            raise  # a bug: the traceback is what the user needs (HYDRA_FULL_ERROR=1 shows all of it)
        log.exception("job %s failed", cfg.paths.output_dir)
        record_failure(cfg, exc, traceback.format_exc())
        return None
    value = results.get(cfg.objective)
    if value is None:
        log.warning("objective %r is not among the results %s", cfg.objective, sorted(results))
    return value


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    return task(cfg)
