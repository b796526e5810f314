"""Optimizers and schedulers from config, and the device choice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.config import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; otherwise ``torch.device(spec)``.

    Raises:
        ConfigError: ``spec`` is not a device name, or names a CUDA device that is not visible here.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.device={spec} but no CUDA device is visible here; use trainer.device=cpu or "
                "trainer.device=auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"trainer.device={spec} but only {count} CUDA device(s) are visible here (cuda:0 to "
                f"cuda:{count - 1}); use trainer.device=cuda or trainer.device=auto"
            )
    return device


def build_optimizer(
    cfg_optimizer: DictConfig | Mapping[str, Any], params: Iterable | torch.nn.Module, **overrides: Any
) -> torch.optim.Optimizer:
    """Instantiate a ``_partial_: true`` optimizer config on ``params`` (parameters, groups, or the model).

    Given the model, a factory marked ``takes_model = True`` (e.g. ``ecco.build``, which hooks layers for
    activation limiting) receives the model itself; every other optimizer receives ``model.parameters()``.
    ``overrides`` replace config values (e.g. ``lr=`` for a learning rate found by a search).
    """
    # plain containers: a ListConfig (e.g. betas) kept in param_groups would make the checkpoint unreadable
    # with torch.load(weights_only=True), i.e. look corrupt on resume
    factory = instantiate(cfg_optimizer, **{"_convert_": "all", **overrides})
    if isinstance(params, torch.nn.Module):
        target = getattr(factory, "func", factory)
        return factory(params if getattr(target, "takes_model", False) else params.parameters())
    return factory(params)


def build_scheduler(
    cfg_scheduler: DictConfig | Mapping[str, Any] | None, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Instantiate a ``_partial_: true`` scheduler config, or None for ``scheduler=none``."""
    if not cfg_scheduler or "_target_" not in cfg_scheduler:
        return None
    return instantiate(cfg_scheduler)(optimizer)
