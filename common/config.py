"""Config helpers: OmegaConf resolvers used by ``conf/`` and the validation of a composed config.

The resolvers are registered when this module is imported (``launch`` and the test fixtures import it), so
``${lt.repo_root:}`` and friends resolve in every composed config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


class ConfigError(ValueError):
    """A config value has the wrong type or the combination cannot run; the message names the key."""


def _int_mul(value: Any, factor: Any) -> int:
    # used for schedule milestones given as fractions of the number of epochs
    return int(math.floor(float(value) * float(factor)))


def register_resolvers() -> None:
    """Register the ``lt.*`` resolvers (idempotent)."""
    for name, fn in {
        "lt.repo_root": lambda: str(REPO_ROOT),
        "lt.int_mul": _int_mul,
        "lt.max": lambda a, b: max(a, b),
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as exc:  # an interpolation that does not resolve, a missing value
        raise ConfigError(f"{key}: {exc}") from None


def _check_int(cfg: DictConfig, key: str, minimum: int | None = None, optional: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _check_number(cfg: DictConfig, key: str, minimum: float | None = None, optional: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _check_bool(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def validate(cfg: DictConfig) -> None:
    """Check the keys every method reads; raise :class:`ConfigError` naming the first bad key.

    Hydra already rejects unknown group options (with the list of valid ones); this catches wrong value
    types (``trainer.epochs=abc``) and combinations that cannot run (an LSTM on images).
    """
    _check_int(cfg, "seed")
    _check_int(cfg, "trainer.epochs", minimum=0)
    _check_int(cfg, "trainer.log_every_steps", minimum=1)
    _check_int(cfg, "trainer.eval_every_epochs", minimum=1)
    _check_int(cfg, "trainer.limit_train_batches", minimum=1, optional=True)
    _check_int(cfg, "trainer.limit_eval_batches", minimum=1, optional=True)
    _check_int(cfg, "trainer.checkpoint_every_steps", minimum=1, optional=True)
    _check_int(cfg, "trainer.threads", minimum=1, optional=True)
    _check_number(cfg, "trainer.checkpoint_every_min", minimum=0)
    _check_number(cfg, "trainer.checkpoint_min_interval_s", minimum=0)
    _check_number(cfg, "trainer.grad_clip", minimum=0, optional=True)
    _check_number(cfg, "trainer.label_smoothing", minimum=0)
    for key in (
        "trainer.amp",
        "trainer.resume",
        "trainer.deterministic",
        "trainer.progress",
        "trainer.distributed",
    ):
        _check_bool(cfg, key)
    if _get(cfg, "trainer.amp_dtype") not in ("float16", "bfloat16"):
        raise ConfigError(f"trainer.amp_dtype must be float16 or bfloat16, got {cfg.trainer.amp_dtype!r}")
    if _get(cfg, "trainer.select") not in (None, "last", "best_val"):
        raise ConfigError(f"trainer.select must be last or best_val, got {cfg.trainer.select!r}")
    device = str(_get(cfg, "trainer.device"))
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    _check_int(cfg, "dataset.batch_size", minimum=1)
    _check_int(cfg, "dataset.eval_batch_size", minimum=1)
    if "lr" in cfg.optimizer:
        _check_number(cfg, "optimizer.lr", minimum=0)
    net_kind = _get(cfg, "network.input_kind")
    data_kind = _get(cfg, "dataset.kind")
    if net_kind is not None and data_kind is not None and net_kind != data_kind:
        raise ConfigError(
            f"network={cfg.network.name} takes {net_kind} inputs but dataset={cfg.dataset.name} "
            f"holds {data_kind} data: pick a matching network or dataset"
        )
    backend = _get(cfg, "logger.backend")
    if backend not in ("none", "wandb"):
        raise ConfigError(f"logger.backend must be none or wandb, got {backend!r}")
