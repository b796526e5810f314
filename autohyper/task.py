"""Method ``autohyper``: search the initial LR by response modelling, then train at it.

Phase 1 (``search``): :func:`autohyper.lr_search.search_lr` with a :class:`TrialAgent` as the response: each
trial trains a network for ``method.trial_epochs`` epochs at one LR, takes the low-rank metrics of every conv
weight (of every Linear weight for a network without convs, an MLP) after each epoch's last step (before
validation, as the original) and returns Z. Every finished trial is appended to ``search/trials.jsonl`` and
replayed on a resume (the search is a deterministic function of the Z sequence, so it retraces the same path
without training again); a trial cut in the middle resumes from its own checkpoint (``search/checkpoints``,
phase ``trial-<k>``). The search writes ``search/trials.csv`` (the original's ``lrrt.csv``: ``lr, z, branch``),
``search/result.json`` and ``search/response.png`` (Z against LR, log x).

Phase 2 (``train``): a fresh network (seeded by ``cfg.seed``) trained with ``cfg.optimizer`` at the found LR and
``cfg.scheduler``; a finished search is never rerun, and this phase resumes from ``checkpoints/last.pt``.

Trials: in ``improved`` mode every trial starts from the same initial weights (seed ``cfg.seed``); in ``paper``
mode each trial has its own init (seed ``cfg.seed + 1 + k``), as the original's unseeded fresh network, but
reproducible. The data order is the same in both (the loaders are a function of the run seed and epoch).

The options (``conf/method/autohyper.yaml``) are typed and bounded by :class:`AutoHyperConfig`, checked by
``launch`` before anything runs; :data:`METHOD` is the plugin (``plugin: autohyper.task:METHOD``).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict, read_write

from autohyper.lr_search import MODES, SearchResult, Step, search_lr
from autohyper.metrics import NetworkMetrics, network_metrics, response_value
from autohyper.plot import plot_response
from common.config import ConfigError
from common.data import DataBundle
from common.engine import NonFiniteLossError, RunContext, Trainer
from common.factory import build_optimizer, build_scheduler, make_data, make_model
from common.io import write_json_atomic, write_text_atomic
from common.logging import RunLogger
from common.method import Method, MethodConfig, is_image_network, option
from common.seeding import seed_everything
from common.task import train_model

log = logging.getLogger(__name__)

SEARCH_PARAMS = (
    "min_lr",
    "max_lr",
    "num_split",
    "min_delta",
    "lr_delta",
    "power",
    "exit_counter_thresh",
    "mode",
    "rel_lr_delta",
    "max_trials",
)


def trial_config(cfg: DictConfig, epochs: int) -> DictConfig:
    """``cfg`` as one search trial sees it: a run of ``epochs`` epochs (``trainer.epochs = epochs``).

    Every value that interpolates ``${trainer.epochs}`` follows the trial's length, above all the scheduler's
    horizon (cosine ``T_max``, step sizes and milestones as fractions of the run), so a trial's schedule spans
    the trial whether the final training is shorter or longer than it. A horizon written as a literal number
    stays as written (:func:`trial_lrs` shows what a trial would train at; :meth:`AutoHyperConfig.check`
    refuses one that would reach LR 0 inside a trial).
    """
    trial = copy.deepcopy(cfg)
    with read_write(trial), open_dict(trial):
        trial.trainer.epochs = epochs
    return trial


class _StandInOptimizer(torch.optim.Optimizer):
    """An optimizer that updates nothing: a scheduler driven on it shows the LRs it would set."""

    def __init__(self, lr: float):
        # momentum and betas: schedulers that cycle them (OneCycleLR) find what they need
        super().__init__([torch.zeros(1)], {"lr": lr, "momentum": 0.9, "betas": (0.9, 0.999)})

    def step(self, closure: Any = None) -> None:
        return None


def trial_lrs(cfg: DictConfig, epochs: int, lr: float = 1.0) -> list[float] | None:
    """The LR each epoch of a trial of ``epochs`` epochs at ``lr`` trains at (``cfg.scheduler``, epoch-stepped).

    None when there is no scheduler object to drive (``scheduler=none``: constant ``lr``) or when it cannot be
    driven on a stand-in optimizer (the run itself reports a scheduler that does not build).
    """
    tcfg = trial_config(cfg, epochs)
    optimizer = _StandInOptimizer(lr)
    try:
        scheduler = build_scheduler(tcfg.scheduler, optimizer)
    except Exception:  # the run's own build raises the scheduler's error, with its context
        return None
    if scheduler is None:
        return None
    lrs = []
    for _ in range(epochs):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return lrs


class TrialTrainer(Trainer):
    """A search trial's trainer: the search reads the trial's Z, never its test accuracy, so no test pass ends it.

    (Each epoch still validates, as the original's trials evaluated every epoch: the trial's log lines show it.)
    """

    def final_metrics(self) -> dict[str, float]:
        return {"epochs": self.epoch, "steps": self.global_step, "train_time_s": self.elapsed}


class MetricsRecorder:
    """Takes the network's metrics after the last optimizer step of every epoch (checkpointed with the trial)."""

    def __init__(self, model: torch.nn.Module, p: int):
        self.model = model
        self.p = p
        self.history: list[NetworkMetrics] = []

    def record(self) -> None:
        previous = self.history[-1] if self.history else None
        self.history.append(network_metrics(self.model, p=self.p, previous=previous))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [m.to_dict() for m in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [NetworkMetrics.from_dict(d) for d in state["history"]]


class TrialAgent:
    """The response ``lr -> Z`` of real trainings, with a record of finished trials for resuming.

    Args:
        cfg: the run config (network, dataset, optimizer, scheduler, trainer, ``method``).
        ctx: the run context; trials write into ``<output_dir>/search``.
        data: the data bundle.
    """

    def __init__(self, cfg: DictConfig, ctx: RunContext, data: DataBundle):
        self.cfg = cfg
        self.ctx = ctx
        self.data = data
        self.mode = cfg.method.mode
        self.epochs = cfg.method.trial_epochs
        # the trials' optimizer, scheduler and trainer settings: a run of trial_epochs epochs
        self.trial_cfg = trial_config(cfg, self.epochs)
        self.p = cfg.method.p
        # the trials checkpoint into search/checkpoints and log nothing into the run's metrics.jsonl (their
        # steps restart at 0 every trial)
        self.trial_ctx = ctx.child("search", logger=RunLogger.null())
        self.dir = self.trial_ctx.output_dir
        self.records_path = self.dir / "trials.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.records_path.exists():
            for line in self.records_path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: that trial is redone
                    break
        self.index = 0

    @property
    def seconds(self) -> float:
        """Training time of the trials recorded so far (across resumes)."""
        return sum(r["seconds"] for r in self.records)

    def __call__(self, lr: float) -> float:
        k = self.index
        self.index += 1
        if k < len(self.records):
            rec = self.records[k]
            if not math.isclose(rec["lr"], lr, rel_tol=1e-9):
                raise RuntimeError(
                    f"{self.records_path}: trial {k} was at lr={rec['lr']}, the search now asks {lr}; "
                    "the search settings changed since: use a new output folder"
                )
            return float(rec["z"]) if rec["z"] is not None else math.nan
        start = time.monotonic()
        z, z_epochs, diverged = self._train(k, lr)
        rec = {
            "index": k,
            "lr": lr,
            "z": None if diverged else z,
            "diverged": diverged,
            "z_per_epoch": z_epochs,
            "seconds": time.monotonic() - start,
        }
        with open(self.records_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(rec)
        log.info("autoHyper trial %d: lr=%.5g Z=%s", k, lr, "diverged" if diverged else f"{z:.4f}")
        return math.nan if diverged else z

    def _train(self, k: int, lr: float) -> tuple[float, list[float], bool]:
        cfg = self.trial_cfg
        # improved: every trial from the same initial weights; paper: a fresh init per trial (seeded here)
        seed_everything(cfg.seed if self.mode == "improved" else cfg.seed + 1 + k)
        model = make_model(cfg, self.data, self.ctx.device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=lr)
        scheduler = build_scheduler(cfg.scheduler, optimizer)
        recorder = MetricsRecorder(model, self.p)
        n_batches = len(self.data.train)
        if cfg.trainer.limit_train_batches is not None:
            n_batches = min(n_batches, int(cfg.trainer.limit_train_batches))
        trainer: TrialTrainer

        def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            out = trainer.default_step(x, y)
            # the metrics are taken after the epoch's last optimizer step, before validation (Metrics.evaluate)
            if trainer.batch + 1 == n_batches:
                recorder.record()
            return out

        trainer = TrialTrainer.from_config(
            cfg,
            model,
            optimizer,
            self.data,
            self.trial_ctx,
            scheduler=scheduler,
            step_fn=step_fn,
            extra_state={"autohyper_metrics": recorder},
            phase=f"trial-{k}",
        )
        diverged = False
        try:
            trainer.fit()
        except NonFiniteLossError:
            diverged = True
            if self.mode == "paper":
                # the original trains on with NaN weights; their EVBMF fails and the exception path copies the
                # previous epoch's values (zeros before the first): pad the remaining epochs that way
                while len(recorder.history) < self.epochs:
                    recorder.record()
        # paper: Z rounded through float16 as the original's compute_rank; improved: float64
        f16 = self.mode == "paper"
        z_epochs = [response_value([m], float16=f16) for m in recorder.history]
        if diverged and self.mode == "improved":
            return math.nan, z_epochs, True
        return response_value(recorder.history, float16=f16), z_epochs, False


def _write_trials_csv(path: Path, rows: list[Step]) -> None:
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["lr", "z", "branch", "evaluated", "cached"])
    for s in rows:
        w.writerow([repr(s.lr), repr(s.z), s.branch, int(s.evaluated), int(s.cached)])
    write_text_atomic(path, text.getvalue())


def run_search(cfg: DictConfig, ctx: RunContext, data: DataBundle) -> dict[str, Any]:
    """Phase 1: the LR search, or its stored result when ``search/result.json`` exists."""
    result_path = ctx.output_dir / "search" / "result.json"
    if result_path.exists():
        log.info("autoHyper: search already finished (%s), not rerun", result_path)
        return json.loads(result_path.read_text())
    agent = TrialAgent(cfg, ctx, data)
    rows: list[Step] = []
    csv_path = agent.dir / "trials.csv"

    def on_step(step: Step) -> None:
        rows.append(step)
        _write_trials_csv(csv_path, rows)

    params = {k: cfg.method[k] for k in SEARCH_PARAMS}
    result: SearchResult = search_lr(agent, on_step=on_step, **params)
    summary = result.to_dict()
    summary["trial_epochs"] = agent.epochs
    summary["search_s"] = agent.seconds
    try:
        plot_response(result, agent.dir / "response.png")
    except Exception as exc:  # a plot must never cost a finished search
        log.warning("autoHyper: could not draw the response plot: %s", exc)
    write_json_atomic(result_path, summary, sort_keys=False)
    return summary


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Search the initial LR (phase ``search``), then train at it (phase ``train``); return final metrics."""
    data = make_data(cfg, ctx.device)
    search = run_search(cfg, ctx, data)
    lr = float(search["lr"])
    seed_everything(cfg.seed)
    model = make_model(cfg, data, ctx.device)
    results = train_model(cfg, model, data, ctx, lr=lr, phase="train")
    results.update(
        autohyper_lr=lr,
        autohyper_trials=float(search["num_trials"]),
        autohyper_trial_epochs=float(search["num_trials"] * search["trial_epochs"]),
        autohyper_search_s=float(search["search_s"]),
    )
    return results


@dataclass
class AutoHyperConfig(MethodConfig):
    """The options of ``method=autohyper`` (values in ``conf/method/autohyper.yaml``).

    Attributes:
        mode: ``improved`` (seeded trials, cache, divergence guard, relative exit) or ``paper`` (the original's
            decisions, see :mod:`autohyper.lr_search`).
        trial_epochs: epochs per search trial (the original: 5).
        p: knowledge-gain power, 1 or 2 (it cannot change Z: a nonzero gain is nonzero at either power).
        min_lr, max_lr: the first grid's ends, ``0 < min_lr < max_lr``.
        num_split: the grid size (at least 3: a plateau narrows to two grid steps).
        min_delta: the plateau threshold on ``(prod Z)^power``, a product of values in [0, 1].
        lr_delta: ``paper``: the absolute window width at which the search stops (0: never by width).
        power: the exponent of the running product.
        exit_counter_thresh: stop after more than this many plateaus.
        rel_lr_delta: ``improved``: the relative window width ``(hi - lo)/hi`` at which the search stops
            (0: never by width; 1 or more would stop before the first trial).
        max_trials: stop after this many trials.
    """

    mode: str = option(choices=MODES)
    trial_epochs: int = option(ge=1)
    p: int = option(choices=(1, 2))
    min_lr: float = option(gt=0)
    max_lr: float = option(gt=0)
    num_split: int = option(ge=3)
    min_delta: float = option(gt=0, le=1)
    lr_delta: float = option(ge=0)
    power: float = option(gt=0)
    exit_counter_thresh: int = option(ge=0)
    rel_lr_delta: float = option(ge=0, lt=1)
    max_trials: int = option(ge=1)

    def check(self, cfg: DictConfig) -> None:
        """The first grid needs ``min_lr < max_lr``; a trial's schedule must not reach LR 0 inside the trial."""
        if not self.min_lr < self.max_lr:
            raise ConfigError(
                f"method.min_lr must be below method.max_lr; got min_lr={self.min_lr}, max_lr={self.max_lr}"
            )
        # the shipped schedulers interpolate ${trainer.epochs}, which a trial sets to trial_epochs (trial_config);
        # a horizon given as a number (scheduler.T_max=3) is kept, and may end before the trial does
        lrs = trial_lrs(cfg, self.trial_epochs)
        dead = [e + 1 for e, lr in enumerate(lrs or []) if not lr > 0]
        if dead:
            target = str(cfg.scheduler.get("_target_", "")).rsplit(".", 1)[-1]
            raise ConfigError(
                f"method.trial_epochs={self.trial_epochs}: the scheduler ({target}) would train a search trial "
                f"at LR 0 in epoch {', '.join(map(str, dead))}; give its horizon as ${{trainer.epochs}} (a trial's "
                "own length inside a trial) instead of a number, or shorten method.trial_epochs"
            )


def supports(network: str) -> bool:
    """The image networks: their conv weights (or, for an MLP, its Linear weights) give the low-rank metrics.

    Not the LSTM: its recurrent weights are not layers of the paper's metrics, and its only Linear layer, the
    regression head (``horizon x hidden``, one row by default), always has EVBMF rank 0, so Z would stay 1.
    """
    return is_image_network(network)


METHOD = Method(
    name="autohyper",
    schema=AutoHyperConfig,
    run=run,
    supports=supports,
    supports_doc="image networks: conv layers, or an MLP's Linear layers",
)
