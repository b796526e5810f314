"""Method ``autohyper``: search the initial LR by response modelling, then train at it.

Phase 1 (``search``): :func:`autohyper.search.search_lr` with a :class:`TrialAgent` as the response: each trial
trains a network for ``method.trial_epochs`` epochs at one LR, takes the low-rank metrics of every conv weight
after each epoch's last step (before validation, as the original) and returns Z. Every finished trial is
appended to ``search/trials.jsonl`` and replayed on a resume (the search is a deterministic function of the Z
sequence, so it retraces the same path without training again); a trial cut in the middle resumes from its own
checkpoint (``search/checkpoints``, phase ``trial-<k>``). The search writes ``search/trials.csv`` (the original's
``lrrt.csv``: ``lr, z, branch``), ``search/result.json`` and ``search/response.png`` (Z against LR, log x).

Phase 2 (``train``): a fresh network (seeded by ``cfg.seed``) trained with ``cfg.optimizer`` at the found LR and
``cfg.scheduler``; a finished search is never rerun, and this phase resumes from ``checkpoints/last.pt``.

Trials: in ``improved`` mode every trial starts from the same initial weights (seed ``cfg.seed``); in ``paper``
mode each trial has its own init (seed ``cfg.seed + 1 + k``), as the original's unseeded fresh network, but
reproducible. The data order is the same in both (the loaders are a function of the run seed and epoch).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from autohyper.metrics import NetworkMetrics, conv_weights, network_metrics, response_value
from autohyper.plot import plot_response
from autohyper.search import SearchResult, Step, search_lr
from common.checkpoint import CheckpointManager
from common.engine import NonFiniteLossError, RunContext, Trainer
from common.factory import build_optimizer, build_scheduler, make_data, make_model
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


class _NullLogger:
    """Trials log nothing into the run's ``metrics.jsonl`` (their steps restart at 0 every trial)."""

    def log(self, metrics: Any, step: int) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def summary(self, metrics: Any) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


class TrialAgent:
    """The response ``lr -> Z`` of real trainings, with a record of finished trials for resuming.

    Args:
        cfg: the run config (network, dataset, optimizer, scheduler, trainer, ``method``).
        ctx: the run context; trials write into ``<output_dir>/search``.
        data: the data bundle.
    """

    def __init__(self, cfg: DictConfig, ctx: RunContext, data: Any):
        self.cfg = cfg
        self.ctx = ctx
        self.data = data
        self.mode = str(cfg.method.mode)
        self.epochs = int(cfg.method.trial_epochs)
        self.p = int(cfg.method.p)
        self.dir = ctx.output_dir / "search"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records_path = self.dir / "trials.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.records_path.exists():
            for line in self.records_path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: that trial is redone
                    break
        self.index = 0
        self.trial_ctx = RunContext(
            cfg=cfg,
            output_dir=self.dir,
            device=ctx.device,
            logger=_NullLogger(),  # type: ignore[arg-type]
            checkpoints=CheckpointManager(self.dir),
            progress=ctx.progress,
        )

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
        cfg = self.cfg
        # improved: every trial from the same initial weights; paper: a fresh init per trial (seeded here)
        seed_everything(cfg.seed if self.mode == "improved" else cfg.seed + 1 + k)
        model = make_model(cfg, self.data, self.ctx.device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=lr)
        scheduler = build_scheduler(cfg.scheduler, optimizer)
        recorder = MetricsRecorder(model, self.p)
        n_batches = len(self.data.train)
        if cfg.trainer.limit_train_batches is not None:
            n_batches = min(n_batches, int(cfg.trainer.limit_train_batches))
        trainer: Trainer

        def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            out = trainer.default_step(x, y)
            # the metrics are taken after the epoch's last optimizer step, before validation (Metrics.evaluate)
            if trainer.batch + 1 == n_batches:
                recorder.record()
            return out

        trainer = Trainer.from_config(
            cfg,
            model,
            optimizer,
            self.data,
            self.trial_ctx,
            epochs=self.epochs,
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
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["lr", "z", "branch", "evaluated", "cached"])
        for s in rows:
            w.writerow([repr(s.lr), repr(s.z), s.branch, int(s.evaluated), int(s.cached)])
    os.replace(tmp, path)


def run_search(cfg: DictConfig, ctx: RunContext, data: Any) -> dict[str, Any]:
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
    _write_json(result_path, summary)
    return summary


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Search the initial LR (phase ``search``), then train at it (phase ``train``); return final metrics."""
    data = make_data(cfg, ctx.device)
    probe = make_model(cfg, data)
    if not conv_weights(probe):
        raise ValueError(
            f"method=autohyper needs a network with conv layers (4-D weights); {cfg.network.name} has none"
        )
    del probe
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
