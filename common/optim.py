"""Optimizers and schedulers from config, and the device choice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → the first CUDA device when there is one, else the CPU; otherwise ``torch.device(spec)``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"trainer.device={spec} but CUDA is not available here; use trainer.device=auto or cpu"
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
