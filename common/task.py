"""Method ``train``: plain supervised training, the baseline every method compares against."""

from __future__ import annotations

from omegaconf import DictConfig

from common.engine import RunContext, Trainer
from common.factory import build_optimizer, build_scheduler, make_data, make_model
from common.metrics import count_flops, count_parameters


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Train ``cfg.network`` on ``cfg.dataset`` with ``cfg.optimizer``/``cfg.scheduler``; return final metrics."""
    data = make_data(cfg, ctx.device)
    model = make_model(cfg, data, ctx.device)
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = build_scheduler(cfg.scheduler, optimizer)
    trainer = Trainer.from_config(cfg, model, optimizer, data, ctx, scheduler=scheduler)
    results = trainer.fit()
    x, _ = next(iter(data.test.epoch_iter(0)))
    results["params"] = count_parameters(model)
    results["flops_per_sample"] = count_flops(model, x[:1])
    return results
