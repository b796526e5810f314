"""Method ``ecco_robustness``: the paper's robustness study, random hyperparameter search per optimizer.

For each optimizer in ``method.optimizers`` and each of ``method.trials`` draws (``ecco.draws.draw``), one full
training run of ``cfg.network`` on ``cfg.dataset`` in ``<output_dir>/trials/<optimizer>-<k>/`` (its own
checkpoint and ``metrics.jsonl``; ``result.json`` marks it finished and it is never rerun). ``trials.csv`` holds
every draw and its final metrics; ``summary.csv`` the distribution per optimizer; ``robustness.png`` a
box/strip plot.

``method.executor``: ``inline`` (default) trains the draws one after the other in this process; ``local`` or
``slurm`` submits every unfinished draw as its own job through submitit (one job array; ``method.job.*`` sizes
the jobs, ``cluster.*`` names the partition/account/qos/setup lines), waits for them and collects their
``result.json``. A draw's job resumes its own checkpoint when it is requeued; rerunning the study resubmits
only the draws that have no ``result.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import CheckpointManager
from common.config import ConfigError
from common.data import DataBundle
from common.engine import NonFiniteLossError, RunContext, Trainer, evaluate
from common.factory import make_data, make_model
from common.io import write_json_atomic, write_text_atomic
from common.logging import RunLogger, format_table
from common.method import Method, MethodConfig, option
from common.optim import resolve_device
from common.seeding import seed_everything
from ecco.draws import RANGES, draw, summarize
from ecco.optimizer import LIMIT_ACTIVATIONS, MODES
from ecco.optimizer import build as build_ecco

log = logging.getLogger(__name__)


# One builder per optimizer of the study: (model, its draw without t_max, ECCO's fixed options) -> optimizer.
# Their names are the study's optimizers (method.optimizers); ecco.draws.draw has ranges for each.
OptimizerBuilder = Callable[[torch.nn.Module, dict[str, Any], dict[str, Any]], torch.optim.Optimizer]
BUILDERS: dict[str, OptimizerBuilder] = {
    # ECCO gets the model itself, so that limit_activations=auto can find the layers feeding a ReLU
    "ecco": lambda model, hp, ecco_options: build_ecco(model, **hp, **ecco_options),
    "adam": lambda model, hp, _: torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=tuple(hp["betas"])),
    "sgd_momentum": lambda model, hp, _: torch.optim.SGD(model.parameters(), **hp),
    "adagrad": lambda model, hp, _: torch.optim.Adagrad(model.parameters(), **hp),
    "rmsprop": lambda model, hp, _: torch.optim.RMSprop(model.parameters(), **hp),
}
OPTIMIZERS = tuple(BUILDERS)
EXECUTORS = ("inline", "local", "slurm")


def make_optimizer(
    name: str, hp: dict[str, Any], model: torch.nn.Module, ecco_options: dict[str, Any]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer and its epoch-level scheduler (cosine where the draw has ``t_max``) of one trial.

    Args:
        name: one of :data:`OPTIMIZERS`.
        hp: the draw (:func:`ecco.draws.draw`).
        model: the trial's model.
        ecco_options: ECCO's options besides the drawn ``eta``/``alpha_0`` (ignored by the other optimizers).

    Raises:
        ValueError: ``name`` is not one of :data:`OPTIMIZERS`.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    kw = {k: v for k, v in hp.items() if k != "t_max"}
    optimizer = BUILDERS[name](model, kw, ecco_options)
    scheduler = None
    if "t_max" in hp:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(hp["t_max"]))
    return optimizer, scheduler


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def run_trial(
    cfg: DictConfig, ctx: RunContext, data: DataBundle, name: str, trial: int, trial_dir: Path
) -> dict[str, Any]:
    """Train one draw to the end (resuming its checkpoint) and return its row of ``trials.csv``."""
    m = cfg.method
    epochs = m.epochs if m.epochs is not None else int(cfg.trainer.epochs)
    hp = draw(name, trial, seed=m.search_seed, ranges=m.ranges, epochs=epochs)
    seed_everything(int(cfg.seed) + trial)
    model = make_model(cfg, data, ctx.device)
    ecco_options = OmegaConf.to_container(m.ecco) if name == "ecco" else {}
    optimizer, scheduler = make_optimizer(name, hp, model, ecco_options)
    # each draw's steps start at 0: it logs into its own metrics.jsonl, not the study's (rank 0 writes it)
    logger = RunLogger(trial_dir, {"backend": "none"}, enabled=ctx.dist.is_main)
    trial_ctx = ctx.child(trial_dir, logger=logger)
    trainer = Trainer.from_config(
        cfg, model, optimizer, data, trial_ctx, scheduler=scheduler, epochs=epochs, phase=f"{name}-{trial}"
    )
    status = "ok"
    try:
        metrics = trainer.fit()
    except NonFiniteLossError as exc:
        # a diverged draw is a result of the study: score the weights it ended with
        log.info("trial %s-%d diverged: %s", name, trial, exc)
        status = "diverged"
        metrics = {"train_loss": math.nan}
        metrics.update(evaluate(model, data.test, task=data.task, limit_batches=trainer.limit_eval_batches))
    finally:
        logger.finish()
        if hasattr(optimizer, "remove_hooks"):
            optimizer.remove_hooks()
    row: dict[str, Any] = {"optimizer": name, "trial": trial, "status": status}
    row.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()})
    if name == "ecco":
        row["capped_fraction"] = optimizer.capped_fraction()
    row.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    return row


def finish_trial(
    cfg: DictConfig, ctx: RunContext, data: DataBundle, name: str, trial: int, trial_dir: Path
) -> dict[str, Any]:
    """Train one draw and write its ``result.json`` (atomically, last: the marker that it is done)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    row = run_trial(cfg, ctx, data, name, trial, trial_dir)
    write_json_atomic(trial_dir / "result.json", row)
    return row


def draw_job(cfg: DictConfig, name: str, trial: int, trial_dir: str) -> dict[str, Any]:
    """The body of one submitit job: one draw, on the device ``trainer.device`` resolves to in that job."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    seed_everything(int(cfg.seed), deterministic=cfg.trainer.deterministic)  # as the study's own process
    device = resolve_device(cfg.trainer.device)
    data = make_data(cfg, device)
    out = Path(trial_dir)
    # the job's own context, rooted at its draw's folder; run_trial trains in a child of it with the
    # draw's own logger, so this one records nothing
    ctx = RunContext(
        cfg=cfg,
        output_dir=out,
        device=device,
        logger=RunLogger.null(),
        checkpoints=CheckpointManager(out),
        progress=False,
    )
    return finish_trial(cfg, ctx, data, name, trial, out)


def make_executor(cfg: DictConfig, folder: Path) -> Any:
    """A submitit executor for ``method.executor`` (``local`` or ``slurm``), or None for ``inline``."""
    m = cfg.method
    kind = m.executor
    if kind == "inline":
        return None
    import submitit

    job = m.job
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = dict(
        timeout_min=job.timeout_min,
        gpus_per_node=job.gpus_per_node,
        cpus_per_task=job.cpus_per_task,
        name=f"ecco-{cfg.network.name}",
    )
    if kind == "slurm":
        c = cfg.cluster
        params.update(
            mem_gb=job.mem_gb,
            slurm_array_parallelism=job.array_parallelism,
            slurm_partition=c.get("partition"),
            slurm_account=c.get("account"),
            slurm_qos=c.get("qos"),
            slurm_setup=list(c.get("setup") or []),
        )
        params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    return executor


def _plot(path: Path, rows: list[dict[str, Any]], metric: str, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    groups = [
        [float(r[metric]) for r in rows if r["optimizer"] == n and math.isfinite(float(r[metric]))]
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
    ax.boxplot(groups, tick_labels=names, showfliers=False)
    for i, g in enumerate(groups, start=1):
        ax.scatter([i] * len(g), g, s=10, alpha=0.6)
    ax.set_ylabel(metric)
    ax.set_title("random search: final metric per draw")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Run (or finish) the study; return per-optimizer medians and the best draw's metrics."""
    m = cfg.method
    names = list(m.optimizers)
    data = make_data(cfg, ctx.device)
    regression = data.task == "regression"
    metric = "test_loss" if regression else "test_acc"
    draws = [(name, trial) for name in names for trial in range(m.trials)]
    trial_dir = {d: ctx.output_dir / "trials" / f"{d[0]}-{d[1]:03d}" for d in draws}
    pending = [d for d in draws if not (trial_dir[d] / "result.json").exists()]
    executor = make_executor(cfg, ctx.output_dir / "submitit")
    if executor is not None and pending:
        with executor.batch():
            jobs = [executor.submit(draw_job, cfg, n, k, str(trial_dir[(n, k)])) for n, k in pending]
        log.info("submitted %d draws as %s jobs (%s)", len(jobs), m.executor, jobs[0].job_id.split("_")[0])
        failed = []
        for (n, k), job in zip(pending, jobs, strict=True):
            try:
                row = job.result()
                log.info("trial %s-%d: %s=%.4g (%s)", n, k, metric, float(row[metric]), row["status"])
            except Exception as exc:  # one failed draw does not lose the others; a rerun resubmits it
                failed.append(f"{n}-{k} (job {job.job_id}): {str(exc).strip().splitlines()[-1]}")
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {len(pending)} draw jobs failed; rerun the same command to resubmit them "
                f"(logs in {ctx.output_dir / 'submitit'}):\n  " + "\n  ".join(failed)
            )
        pending = []
    rows: list[dict[str, Any]] = []
    for d in draws:
        done = trial_dir[d] / "result.json"
        if d in pending:
            row = finish_trial(cfg, ctx, data, d[0], d[1], trial_dir[d])
            log.info("trial %s-%d: %s=%.4g (%s)", d[0], d[1], metric, float(row[metric]), row["status"])
        else:
            row = json.loads(done.read_text())
        rows.append(row)
        _write_csv(ctx.output_dir / "trials.csv", rows)
    _write_csv(ctx.output_dir / "trials.csv", rows)
    summary = summarize(rows, metric, higher_is_better=not regression, tolerance=0.1 if regression else 0.01)
    _write_csv(ctx.output_dir / "summary.csv", summary)
    log.info("robustness (%s, %s ranges):\n%s", metric, m.ranges, format_table(summary, floatfmt=".4g"))
    _plot(ctx.output_dir / "robustness.png", rows, metric, names)
    results: dict[str, float] = {}
    for s in summary:
        for key in ("median", "q1", "q3", "frac_near_best"):
            results[f"{s['optimizer']}_{metric}_{key}"] = s[key]
    finite = [r for r in rows if math.isfinite(float(r[metric]))]
    if finite:
        best = (min if regression else max)(finite, key=lambda r: float(r[metric]))
        for key in ("test_acc", "test_loss", "val_acc", "val_loss", "train_loss"):
            if key in best:
                results[key] = float(best[key])
    results["trials"] = float(len(rows))
    return results


@dataclass
class EccoOptions:
    """ECCO's options besides the drawn ``eta`` and ``alpha_0`` (``method.ecco``; see ``conf/optimizer/ecco.yaml``).

    Attributes:
        mode: ``improved`` (the original's bugs fixed) or ``paper`` (its arithmetic, quirks included).
        limit_activations: ``none`` or ``auto`` (limit the Linear/BatchNorm layers that feed a ReLU).
        dt_max: the cap on every step size.
        limit_floor: the smallest step limiting may shrink a step to.
        dt_min: the smallest step size (0: none); at most ``dt_max``.
        zeta: use the ζ factor (False keeps no gradient buffer).
        fused: the improved step as two ``torch.compile``'d passes.
    """

    mode: str = option(choices=MODES)
    limit_activations: str = option(choices=LIMIT_ACTIVATIONS)
    dt_max: float = option(gt=0, lt=math.inf)
    limit_floor: float = option(ge=0, lt=math.inf)
    dt_min: float = option(ge=0, lt=math.inf)
    zeta: bool = option()
    fused: bool = option()


@dataclass
class JobResources:
    """What one draw's submitit job asks for (``method.job``; ``executor=local`` or ``slurm``).

    Attributes:
        timeout_min: the job's time limit in minutes.
        gpus_per_node: GPUs per job (0: CPU jobs).
        cpus_per_task: CPU cores per job.
        mem_gb: memory per job (SLURM only).
        array_parallelism: how many draws of the job array run at once (SLURM only).
    """

    timeout_min: int = option(ge=1)
    gpus_per_node: int = option(ge=0)
    cpus_per_task: int = option(ge=1)
    mem_gb: int = option(ge=1)
    array_parallelism: int = option(ge=1)


@dataclass
class EccoRobustnessConfig(MethodConfig):
    """``method=ecco_robustness``: the options of the robustness study (values in its yaml).

    Attributes:
        optimizers: the optimizers compared, each one of :data:`OPTIMIZERS`, each once.
        trials: random draws per optimizer.
        ranges: the range variant of the draws (:data:`ecco.draws.RANGES`).
        epochs: epochs per draw (None: ``trainer.epochs``).
        search_seed: the seed of the draws (the run seed sets each draw's initialisation).
        ecco: ECCO's fixed options.
        executor: ``inline`` (the draws one after the other here), ``local`` or ``slurm`` (a submitit job each).
        job: the resources of each draw's job.
    """

    optimizers: list[str] = option(choices=OPTIMIZERS)
    trials: int = option(ge=1)
    ranges: str = option(choices=RANGES)
    epochs: int | None = option(ge=1)
    search_seed: int = option()
    ecco: EccoOptions = field(default_factory=EccoOptions)
    executor: str = option(choices=EXECUTORS)
    job: JobResources = field(default_factory=JobResources)

    def check(self, cfg: DictConfig) -> None:
        """Refuse an empty or repeated optimizer list and ECCO options that cannot go together."""
        if not self.optimizers:
            raise ConfigError(f"method.optimizers is empty; name at least one of {', '.join(OPTIMIZERS)}")
        repeated = sorted({n for n in self.optimizers if self.optimizers.count(n) > 1})
        if repeated:
            raise ConfigError(f"method.optimizers names {repeated[0]} twice; each optimizer once")
        if self.ecco.dt_min > self.ecco.dt_max:
            raise ConfigError(
                f"method.ecco.dt_min ({self.ecco.dt_min}) must be <= method.ecco.dt_max ({self.ecco.dt_max})"
            )
        if self.ecco.fused and self.ecco.mode != "improved":
            raise ConfigError(f"method.ecco.fused=true needs method.ecco.mode=improved; got {self.ecco.mode}")


METHOD = Method(name="ecco_robustness", schema=EccoRobustnessConfig, run=run)
