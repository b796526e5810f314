"""Method ``train``: plain supervised training, the baseline every method compares against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig
from torch import nn

from common.data import DataBundle
from common.engine import RunContext, Trainer
from common.factory import build_optimizer, build_scheduler, make_data, make_model
from common.method import Method, MethodConfig
from common.metrics import count_flops, count_parameters


def train_model(
    cfg: DictConfig,
    model: nn.Module,
    data: DataBundle,
    ctx: RunContext,
    *,
    lr: float | None = None,
    **trainer_kw: Any,
) -> dict[str, float]:
    """Train ``model`` with ``cfg.optimizer`` (at ``lr`` when given) and ``cfg.scheduler``; return final metrics.

    ``trainer_kw`` override the ``cfg.trainer`` settings (e.g. ``epochs=``, ``phase=`` for one phase of a method).
    """
    optimizer = build_optimizer(cfg.optimizer, model, **({} if lr is None else {"lr": lr}))
    scheduler = build_scheduler(cfg.scheduler, optimizer)
    return Trainer.from_config(cfg, model, optimizer, data, ctx, scheduler=scheduler, **trainer_kw).fit()


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Train ``cfg.network`` on ``cfg.dataset`` with ``cfg.optimizer``/``cfg.scheduler``; return final metrics."""
    data = make_data(cfg, ctx.device)
    model = make_model(cfg, data, ctx.device)
    results = train_model(cfg, model, data, ctx)
    x, _ = next(iter(data.test.epoch_iter(0)))
    results["params"] = count_parameters(model)
    results["flops_per_sample"] = count_flops(model, x[:1])
    return results


@dataclass
class TrainConfig(MethodConfig):
    """``method=train`` has no options of its own: ``cfg.optimizer``, ``cfg.scheduler`` and ``cfg.trainer`` say it all."""


METHOD = Method(name="train", schema=TrainConfig, run=run)
