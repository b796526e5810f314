"""Method ``sixth``: scales the learning rate by ``method.lr_scale``, trains, reports the scale it used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from common.config import ConfigError
from common.engine import RunContext
from common.factory import make_data, make_model
from common.io import write_text_atomic
from common.method import Method, MethodConfig, option
from common.sweep import job_dirs
from common.task import train_model


@dataclass
class SixthConfig(MethodConfig):
    lr_scale: float = option(gt=0, le=10)
    note: str = option(choices=("a", "b"))
    epochs: int | None = option(ge=1)
    # a bug on purpose (after the data is loaded), to test what a sweep does with a job that raises
    fail: bool = option()

    def check(self, cfg: DictConfig) -> None:
        if self.note == "b" and self.lr_scale > 1:
            raise ConfigError("method.note=b needs method.lr_scale <= 1")


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    m = cfg.method
    data = make_data(cfg, ctx.device)
    if m.fail:
        raise RuntimeError("sixth: failing as asked (method.fail=true)")
    model = make_model(cfg, data, ctx.device)
    kw = {} if m.epochs is None else {"epochs": m.epochs}
    results = train_model(cfg, model, data, ctx, lr=float(cfg.optimizer.lr) * m.lr_scale, **kw)
    results["sixth/lr_scale"] = m.lr_scale
    return results


def sweep_artifacts(sweep_dir: Path) -> list[Path]:
    """One text file listing the jobs of the sweep (what a real method would plot)."""
    jobs = [str(j.relative_to(sweep_dir)) for j in job_dirs(sweep_dir)]
    return [write_text_atomic(sweep_dir / "sixth_jobs.txt", "\n".join(jobs) + "\n")]


METHOD = Method(
    name="sixth",
    schema=SixthConfig,
    run=run,
    supports=lambda network: network in ("mlp", "lenet5"),
    supports_doc="the two smallest nets",
    sweep_artifacts=sweep_artifacts,
)
