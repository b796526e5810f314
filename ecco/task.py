"""Method ``ecco_robustness``: the paper's robustness study, random hyperparameter search per optimizer.

For each optimizer in ``method.optimizers`` and each of ``method.trials`` draws (``ecco.search.draw``), one full
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
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from common.checkpoint import CheckpointManager
from common.engine import NonFiniteLossError, RunContext, Trainer, evaluate
from common.factory import make_data, make_model
from common.logging import RunLogger, format_table
from common.optim import resolve_device
from common.seeding import seed_everything
from ecco.optimizer import build as build_ecco
from ecco.search import OPTIMIZERS, draw, summarize

log = logging.getLogger(__name__)


def make_optimizer(name: str, hp: dict[str, Any], model: torch.nn.Module, ecco_options: dict[str, Any]):
    """The optimizer and its epoch-level scheduler (cosine where the draw has ``t_max``) of one trial."""
    kw = {k: v for k, v in hp.items() if k != "t_max"}
    if name == "ecco":
        optimizer = build_ecco(model, **kw, **ecco_options)
    elif name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=kw["lr"], betas=tuple(kw["betas"]))
    elif name == "sgd_momentum":
        optimizer = torch.optim.SGD(model.parameters(), **kw)
    elif name == "adagrad":
        optimizer = torch.optim.Adagrad(model.parameters(), **kw)
    elif name == "rmsprop":
        optimizer = torch.optim.RMSprop(model.parameters(), **kw)
    else:
        raise ValueError(f"method.optimizers: unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    scheduler = None
    if "t_max" in hp:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(hp["t_max"]))
    return optimizer, scheduler


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def run_trial(
    cfg: DictConfig, ctx: RunContext, data: Any, name: str, trial: int, trial_dir: Path
) -> dict[str, Any]:
    """Train one draw to the end (resuming its checkpoint) and return its row of ``trials.csv``."""
    m = cfg.method
    epochs = int(m.epochs if m.epochs is not None else cfg.trainer.epochs)
    hp = draw(name, trial, seed=int(m.search_seed), ranges=str(m.ranges), epochs=epochs)
    seed_everything(int(cfg.seed) + trial)
    model = make_model(cfg, data, ctx.device)
    ecco_options = dict(OmegaConf.to_container(m.ecco, resolve=True)) if name == "ecco" else {}
    optimizer, scheduler = make_optimizer(name, hp, model, ecco_options)
    logger = RunLogger(trial_dir, {"backend": "none"})
    trial_ctx = RunContext(
        cfg=cfg,
        output_dir=trial_dir,
        device=ctx.device,
        logger=logger,
        checkpoints=CheckpointManager(trial_dir),
        progress=ctx.progress,
    )
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


def finish_trial(cfg: DictConfig, ctx: RunContext, data: Any, name: str, trial: int, trial_dir: Path) -> dict:
    """Train one draw and write its ``result.json`` (atomically, last: the marker that it is done)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    row = run_trial(cfg, ctx, data, name, trial, trial_dir)
    _write_json(trial_dir / "result.json", row)
    return row


def draw_job(cfg: DictConfig, name: str, trial: int, trial_dir: str) -> dict:
    """The body of one submitit job: one draw, on the device ``trainer.device`` resolves to in that job."""
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    seed_everything(int(cfg.seed), deterministic=cfg.trainer.deterministic)  # as the study's own process
    device = resolve_device(cfg.trainer.device)
    data = make_data(cfg, device)
    out = Path(trial_dir)
    # run_trial makes the draw's own logger and checkpoints; of this context it reads the device only
    ctx = RunContext(cfg=cfg, output_dir=out, device=device, logger=None, checkpoints=None, progress=False)
    return finish_trial(cfg, ctx, data, name, trial, out)


def make_executor(cfg: DictConfig, folder: Path):
    """A submitit executor for ``method.executor`` (``local`` or ``slurm``), or None for ``inline``."""
    m = cfg.method
    kind = str(m.get("executor", "inline"))
    if kind == "inline":
        return None
    if kind not in ("local", "slurm"):
        raise ValueError(f"method.executor must be inline, local or slurm, got {kind!r}")
    import submitit

    job = m.job
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = dict(
        timeout_min=int(job.timeout_min),
        gpus_per_node=int(job.gpus_per_node),
        cpus_per_task=int(job.cpus_per_task),
        name=f"ecco-{cfg.network.name}",
    )
    if kind == "slurm":
        c = cfg.cluster
        params.update(
            mem_gb=int(job.mem_gb),
            slurm_array_parallelism=int(job.array_parallelism),
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
    names = [str(n) for n in m.optimizers]
    for n in names:
        if n not in OPTIMIZERS:
            raise ValueError(f"method.optimizers: unknown optimizer {n!r}; choose from {OPTIMIZERS}")
    data = make_data(cfg, ctx.device)
    regression = data.task == "regression"
    metric = "test_loss" if regression else "test_acc"
    draws = [(name, trial) for name in names for trial in range(int(m.trials))]
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
