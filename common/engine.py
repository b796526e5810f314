"""The training engine shared by every method: train/evaluate loops, AMP, checkpoint/resume, NaN guard.

One :class:`Trainer` drives one phase of training. Its checkpoint holds everything the rest of the phase
depends on (weights, optimizer, scheduler, AMP scaler, RNG states, the position inside the epoch and the
running sums of the epoch), and the train loader's batches are a pure function of (seed, epoch, batch index),
so a run resumed from any checkpoint ends bitwise equal (on CPU) to one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.checkpoint import CheckpointManager
from common.config import TrainerOptions
from common.data import DataBundle, Loader
from common.distributed import DistContext
from common.logging import RunLogger, progress
from common.metrics import topk_correct
from common.seeding import rng_state, set_rng_state

log = logging.getLogger(__name__)

# Schedule-Free evaluation: training batches that recompute BatchNorm statistics for the averaged weights
BN_REFRESH_BATCHES = 50
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint was kept."""


class RunInterrupted(KeyboardInterrupt):
    """Stopped by SIGINT/SIGTERM between two steps, after writing a checkpoint of that exact point."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def resume_command() -> str | None:
    """The command that continues the current ``python -m launch`` run from its checkpoints.

    In a single run: ``python -m launch <its overrides> hydra.run.dir=<its folder>`` (the overrides Hydra
    recorded, e.g. ``hydra.searchpath`` too, so that a timestamped folder is found again); in a sweep:
    ``python -m launch.resweep <sweep folder>``, which reruns every unfinished job in its own folder. None when
    the run was not started by Hydra (the Python API: call ``launch.run.run(cfg)`` again with the same config).
    """
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    output_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        # the job folder is <sweep.dir>/<sweep.subdir>; read from the job's folder, so that a sweep.dir with
        # ${now:...} is not evaluated again
        depth = len(Path(str(hc.sweep.subdir)).parts)
        return f"python -m launch.resweep {shlex.quote(str(output_dir.parents[depth - 1]))}"
    # hydra.mode is Hydra's own; hydra.run.dir is replaced by the folder this run writes into
    own = [o for o in hc.overrides.hydra if not o.startswith(("hydra.run.dir=", "hydra.mode="))]
    args = [*hc.overrides.task, *own, f"hydra.run.dir={output_dir}"]
    return " ".join(["python -m launch", *(shlex.quote(str(a)) for a in args)])


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class RunContext:
    """What a method's ``run(cfg, ctx)`` gets from the launcher besides the config."""

    cfg: DictConfig
    output_dir: Path
    device: torch.device
    logger: RunLogger
    checkpoints: CheckpointManager
    progress: bool = True
    dist: DistContext = field(default_factory=DistContext)

    def child(
        self, folder: str | Path, *, logger: RunLogger | None = None, cfg: DictConfig | None = None
    ) -> RunContext:
        """The context of a sub-run (a phase, a trial, a draw) in ``folder`` (created; relative to this run's).

        The sub-run checkpoints into ``folder/checkpoints`` and keeps this run's device, progress setting and
        distributed context. It logs into this run's logger unless ``logger`` is given (e.g.
        ``RunLogger.null()`` for trials whose steps restart at 0, or a ``RunLogger(folder, ...)`` of its own).
        """
        folder = self.output_dir / folder
        folder.mkdir(parents=True, exist_ok=True)
        return replace(
            self,
            cfg=self.cfg if cfg is None else cfg,
            output_dir=folder,
            logger=self.logger if logger is None else logger,
            checkpoints=CheckpointManager(folder),
        )


StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

# (loss, output or None, targets) of one completed batch of a pipeline
StepResult = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


@runtime_checkable
class StepPipeline(Protocol):
    """An asynchronous training step: batches go in, their results come out later, in submission order.

    The :class:`Trainer` uses one in place of its synchronous step (``step_fn``), e.g.
    ``sedona.pipeline.BlockPipeline``, whose blocks train on other devices or threads while the next batch
    is submitted. The Trainer takes each epoch's sums from the results, and drains the pipeline before every
    checkpoint and at every epoch end, so ``batch``/``global_step`` count completed steps there and a resumed
    run is exact.
    """

    def submit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Start the training step of the batch ``(x, y)`` (may block while the pipeline is full)."""
        ...

    def poll(self) -> Iterable[StepResult]:
        """The ``(loss, output, y)`` of the batches completed since the last call, without waiting.

        ``loss`` and ``output`` are detached; ``output`` may be None (no accuracy is counted then).
        """
        ...

    def drain(self) -> Iterable[StepResult]:
        """Wait until every submitted batch is completed; return the results not returned yet."""
        ...


def autocast(
    device: torch.device, enabled: bool, dtype: str = "float16"
) -> contextlib.AbstractContextManager:
    """Mixed precision context: fp16/bf16 on CUDA, bf16 on CPU (CPU autocast has no useful fp16)."""
    if not enabled:
        return contextlib.nullcontext()
    torch_dtype = torch.bfloat16 if (dtype == "bfloat16" or device.type == "cpu") else torch.float16
    return torch.autocast(device_type=device.type, dtype=torch_dtype)


def default_loss(
    task: str, label_smoothing: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for classification, mean squared error for regression."""
    if task == "regression":
        return F.mse_loss
    if label_smoothing:
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=label_smoothing)
    return F.cross_entropy


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    *,
    task: str = "classification",
    prefix: str = "test",
    limit_batches: int | None = None,
    amp: bool = False,
    amp_dtype: str = "float16",
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy (top-1, top-5) of ``model`` on ``loader``; for regression loss (MSE) and MAE.

    The model is put in eval mode and its previous mode restored.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    abs_err = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    try:
        for i, (x, y) in enumerate(loader.epoch_iter(0)):
            if limit_batches is not None and i >= limit_batches:
                break
            with autocast(device, amp, amp_dtype):
                out = model(x)
            out = out.float()
            if task == "regression":
                loss_sum += F.mse_loss(out, y, reduction="sum").double() / max(1, out[0].numel())
                abs_err += (out - y).abs().sum().double() / max(1, out[0].numel())
            else:
                loss_sum += F.cross_entropy(out, y, reduction="sum").double()
                c1, c5 = topk_correct(out, y, (1, 5))
                top1 += c1
                top5 += c5
            seen += y.shape[0]
    finally:
        model.train(was_training)
    if seen == 0:
        return {}
    result = {f"{prefix}_loss": loss_sum.item() / seen}
    if task == "regression":
        result[f"{prefix}_mae"] = abs_err.item() / seen
    else:
        result[f"{prefix}_acc"] = top1.item() / seen
        result[f"{prefix}_top5"] = top5.item() / seen
    return result


class Trainer:
    """Trains ``model`` for ``options.epochs`` epochs, checkpointing and resuming automatically.

    Args:
        model: the network, already on ``ctx.device``.
        optimizer: any ``torch.optim.Optimizer`` (or an object with ``step``/``zero_grad``/``state_dict``).
        data: the data set's loaders.
        ctx: the run context (output folder, logger, checkpoints, device).
        options: the phase's settings (epochs, AMP, checkpointing, limits, ``select``, ...): see
            :class:`~common.config.TrainerOptions`; :meth:`from_config` takes them from ``cfg.trainer``.
        scheduler: an epoch-level LR scheduler (stepped after each epoch) or None.
        loss_fn: ``loss_fn(output, target)``; defaults to cross-entropy (with ``options.label_smoothing``)
            or MSE by ``data.task``.
        step_fn: replaces the default optimisation step: ``step_fn(x, y) -> (loss, output)``, both detached;
            methods with their own update (hypergradient tuners, local losses) pass one.
        pipeline: an asynchronous replacement of ``step_fn`` (see :class:`StepPipeline`), or None.
        extra_state: more objects with ``state_dict``/``load_state_dict`` to checkpoint (e.g. an LR tuner).
        phase: name of this phase; a checkpoint of another phase is not resumed here.

    With ``options.select == "best_val"`` the weights tested at the end are those of the epoch with the best
    validation accuracy (lowest validation loss for regression); the best state is kept in the checkpoint, so
    a resumed run selects among all its epochs. The options are also attributes (``trainer.epochs``,
    ``trainer.limit_eval_batches``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        data: DataBundle,
        ctx: RunContext,
        options: TrainerOptions,
        *,
        scheduler: Any | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        step_fn: StepFn | None = None,
        pipeline: StepPipeline | None = None,
        extra_state: Mapping[str, Stateful] | None = None,
        phase: str = "train",
    ):
        self.model = model
        self.dist = ctx.dist
        if self.dist.enabled and step_fn is not None:
            raise ValueError(
                "trainer.distributed=true works with the default training step, not a method's own step"
            )
        # DDP averages the gradients of the ranks' slices of each batch; evaluation uses the bare model
        self.net: nn.Module = (
            nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
            if self.dist.enabled
            else model
        )
        self.optimizer = optimizer
        # Schedule-Free optimizers (and any with the same interface) step one sequence of weights and evaluate
        # another: optimizer.eval() swaps the evaluation weights in, optimizer.train() swaps them back
        self.averaged = callable(getattr(optimizer, "eval", None)) and callable(
            getattr(optimizer, "train", None)
        )
        self.data = data
        self.ctx = ctx
        self.device = ctx.device
        self.options = options
        self.epochs = options.epochs
        self.scheduler = scheduler
        self.task = data.task
        self.loss_fn = loss_fn or default_loss(self.task, options.label_smoothing)
        self.step_fn = step_fn or self.default_step
        self.pipeline = pipeline
        self.extra_state = dict(extra_state or {})
        self.phase = phase
        self.amp = options.amp and self.device.type in ("cuda", "cpu")
        self.amp_dtype = options.amp_dtype
        self.grad_clip = options.grad_clip
        self.log_every_steps = options.log_every_steps
        self.checkpoint_every_s = options.checkpoint_every_min * 60.0
        self.checkpoint_every_steps = options.checkpoint_every_steps
        self.checkpoint_min_interval_s = options.checkpoint_min_interval_s
        self.limit_train_batches = options.limit_train_batches
        self.limit_eval_batches = options.limit_eval_batches
        self.eval_every_epochs = options.eval_every_epochs
        self.resume = options.resume
        if options.select == "best_val" and data.val is None:
            raise ValueError("trainer.select=best_val needs a validation split (dataset.val_size > 0)")
        self.select = options.select
        # best_val: {"epoch", "metric", "model"} of the best validated epoch so far
        self.best: dict[str, Any] | None = None
        use_scaler = self.amp and self.device.type == "cuda" and self.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self._scale = self.scaler.get_scale() if use_scaler else 1.0
        # NaN checks cost a host sync on CUDA: every step on CPU (free), at log points on CUDA; with several
        # processes it is a collective, so all ranks check at the same (log) steps
        self.check_every = 1 if self.device.type == "cpu" and not self.dist.enabled else self.log_every_steps
        # position
        self.epoch = 0
        self.batch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self._reset_sums()
        self._last_save = time.monotonic()
        self._clock = time.monotonic()
        self._last_good: str | None = None
        self._stop_signal: int | None = None

    # the keyword arguments of __init__ besides the options (from_config passes them through)
    _ARGS = ("scheduler", "loss_fn", "step_fn", "pipeline", "extra_state", "phase")

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        model: nn.Module,
        optimizer: Any,
        data: DataBundle,
        ctx: RunContext,
        **kw: Any,
    ) -> Trainer:
        """A trainer with the ``cfg.trainer`` settings; keyword arguments override them.

        ``kw`` holds :class:`~common.config.TrainerOptions` fields (``epochs=``, ``limit_train_batches=``,
        ...) and the keyword arguments of ``__init__`` (``phase=``, ``step_fn=``, ``scheduler=``, ...); any
        other name raises :class:`TypeError`.
        """
        unknown = [k for k in kw if k not in cls._ARGS and k not in TrainerOptions.names()]
        if unknown:
            raise TypeError(f"Trainer.from_config() got an unexpected keyword argument {unknown[0]!r}")
        overrides = {k: v for k, v in kw.items() if k in TrainerOptions.names()}
        args = {k: v for k, v in kw.items() if k in cls._ARGS}
        return cls(model, optimizer, data, ctx, TrainerOptions.from_config(cfg.trainer, **overrides), **args)

    # ---------------------------------------------------------------- steps
    def default_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One plain optimisation step (zero grad, forward, backward, optional clipping, step)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp, self.amp_dtype):
            out = self.net(x)
            loss = self.loss_fn(out, y)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled():
            # GradScaler skips the step when the scaled gradients overflow and halves the scale: a scale that
            # fell means a skipped step. Reading it is one host sync per step, paid under fp16 only.
            scale = self.scaler.get_scale()
            if scale < self._scale:
                self._amp_skipped += 1
            self._scale = scale
        return loss.detach(), out.detach()

    def _global_sums(self) -> dict[str, Any]:
        """The epoch's running sums over all ranks (a collective when distributed)."""
        if not self.dist.enabled:
            return {"loss_sum": self._loss_sum.cpu(), "correct": self._correct.cpu(), "seen": self._seen}
        packed = torch.stack(
            [
                self._loss_sum,
                self._correct.double(),
                torch.tensor(float(self._seen), device=self.device, dtype=torch.float64),
            ]
        )
        total = self.dist.all_reduce_sum(packed).cpu()
        return {"loss_sum": total[0], "correct": total[1].long(), "seen": int(total[2].item())}

    def _reset_sums(self) -> None:
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._seen = 0
        # optimizer steps GradScaler skipped this epoch (fp16 overflow), counted on this rank
        self._amp_skipped = 0

    def _batches_per_epoch(self) -> int:
        n = len(self.data.train)
        return n if self.limit_train_batches is None else min(n, self.limit_train_batches)

    # ---------------------------------------------------------------- checkpoints
    def _tick(self) -> None:
        # training wall time, carried across resumes
        now = time.monotonic()
        self.elapsed += now - self._clock
        self._clock = now

    def state_dict(self) -> dict[str, Any]:
        self._tick()
        return {
            "phase": self.phase,
            "epoch": self.epoch,
            "batch": self.batch,
            "global_step": self.global_step,
            "elapsed_s": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "extra": {name: obj.state_dict() for name, obj in self.extra_state.items()},
            "epoch_sums": {
                "loss_sum": self._loss_sum.cpu(),
                "correct": self._correct.cpu(),
                "seen": self._seen,
                "amp_skipped": self._amp_skipped,
            },
            "history": self.history,
            "best": self.best,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        for name, obj in self.extra_state.items():
            obj.load_state_dict(state["extra"][name])
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self.global_step = int(state["global_step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.history = list(state["history"])
        self.best = state.get("best")
        sums = state["epoch_sums"]
        self._loss_sum = sums["loss_sum"].to(self.device)
        self._correct = sums["correct"].to(self.device)
        self._seen = int(sums["seen"])
        self._amp_skipped = int(sums.get("amp_skipped", 0))
        if self.scaler.is_enabled():
            self._scale = self.scaler.get_scale()
        if not self.dist.is_main:  # the checkpoint holds the sums over all ranks: rank 0 carries them on
            self._reset_sums()
        set_rng_state(state["rng"])

    def save(self) -> None:
        self._drain_pipeline()
        self._check_finite()
        state = self.state_dict()
        if self.dist.is_main:
            self.ctx.checkpoints.save(state)
        self._last_save = time.monotonic()
        self._last_good = self._position()

    def _position(self) -> str:
        """Where the phase stands, in the epoch numbers of the log (``train 2/4``, ``epoch 2/4``).

        Mid-epoch it names the epoch being run (1-based) and how many epochs are complete; at an epoch end,
        the epoch that was completed.
        """
        phase = "" if self.phase == "train" else f" of phase {self.phase}"
        if self.batch == 0:
            if self.epoch == 0:
                return (
                    f"the start of epoch 1/{self.epochs}{phase} (step {self.global_step}; no epoch completed)"
                )
            return f"epoch {self.epoch}/{self.epochs}{phase} completed (step {self.global_step})"
        done = f"{self.epoch} of {self.epochs} epochs completed"
        return (
            f"epoch {self.epoch + 1}/{self.epochs}{phase}, batch {self.batch}/{self._batches_per_epoch()} "
            f"(step {self.global_step}; {done})"
        )

    def _try_resume(self) -> bool:
        if not self.resume:
            return False
        state = self.ctx.checkpoints.load()
        if state is None or state.get("phase") != self.phase:
            return False
        self.load_state_dict(state)
        self.ctx.logger.truncate_after(self.global_step)
        self._last_good = self._position()
        log.info("Resumed %s from %s (%s)", self.phase, self.ctx.checkpoints.dir, self._last_good)
        return True

    def _check_finite(self) -> None:
        if self.dist.any(not bool(torch.isfinite(self._loss_sum)), self.device):
            where = f"epoch {self.epoch + 1}, step {self.global_step}"
            kept = (
                f"The last good checkpoint ({self._last_good}) is kept in {self.ctx.checkpoints.dir}."
                if self._last_good
                else "No checkpoint had been written yet."
            )
            raise NonFiniteLossError(
                f"Training loss became {self._loss_sum.item()} at {where}. {kept} "
                "Try a smaller learning rate, trainer.grad_clip, or trainer.amp=false."
            )

    # ---------------------------------------------------------------- loops
    def fit(self) -> dict[str, float]:
        """Run (or finish) the phase and return the final metrics, test set included.

        SIGINT (Ctrl-C) or SIGTERM stop the run after the current step with a checkpoint of that point
        (a second Ctrl-C stops at once); running the same folder again continues from there.
        """
        self._try_resume()
        self.model.train()
        if self.averaged:
            self.optimizer.train()
        with self._graceful_stop():
            self._clock = time.monotonic()
            while self.epoch < self.epochs:
                self._train_epoch()
                self._end_epoch()
        return self.final_metrics()

    @contextlib.contextmanager
    def _graceful_stop(self):
        # ranks would stop at different steps; SLURM preemption of a distributed job goes through the requeue
        if threading.current_thread() is not threading.main_thread() or self.dist.enabled:
            yield
            return
        # SIGTERM only when nobody else (e.g. submitit) has claimed it
        signums = [signal.SIGINT]
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signums.append(signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in signums}

        def handler(signum, frame):
            if self._stop_signal is not None:  # asked twice: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning(
                "%s received: stopping after this step with a checkpoint", signal.Signals(signum).name
            )

        for s in signums:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_if_asked(self) -> None:
        if self._stop_signal is None:
            return
        self.save()
        command = resume_command()
        how = (
            f"to continue, run: {command}"
            if command is not None
            else "to continue, run the same config again with paths.output_dir="
            f"{OmegaConf.select(self.ctx.cfg, 'paths.output_dir', default=str(self.ctx.output_dir))}"
        )
        raise RunInterrupted(
            f"stopped by {signal.Signals(self._stop_signal).name} at {self._last_good}, with a checkpoint of "
            f"that point in {self.ctx.checkpoints.dir}; {how}",
            self._stop_signal,
        )

    def _train_epoch(self) -> None:
        loader = self.data.train
        n = self._batches_per_epoch()
        bar = progress(
            loader.epoch_iter(self.epoch, start_batch=self.batch),
            enabled=self.ctx.progress,
            total=n,
            initial=self.batch,
            desc=f"{self.phase} {self.epoch + 1}/{self.epochs}",
        )
        for x, y in bar:
            if self.batch >= n:
                break
            x, y = self.dist.shard(x), self.dist.shard(y)
            if self.pipeline is None:
                loss, out = self.step_fn(x, y)
                self._accumulate(loss, out, y)
            else:  # asynchronous: the sums follow the completed batches
                self.pipeline.submit(x, y)
                for result in self.pipeline.poll():
                    self._accumulate(*result)
            self.batch += 1
            self.global_step += 1
            if self.global_step % self.check_every == 0:
                self._check_finite()
            if self.global_step % self.log_every_steps == 0:
                avg = self._loss_sum.item() / max(1, self._seen)
                self.ctx.logger.log({"train/loss_running": avg, "lr": self.lr}, step=self.global_step)
                bar.set_postfix(loss=f"{avg:.4f}")
            if self.batch < n and self._save_due():
                self.save()
            self._stop_if_asked()
        self._drain_pipeline()
        bar.close()

    def _accumulate(self, loss: torch.Tensor, out: torch.Tensor | None, y: torch.Tensor) -> None:
        bs = y.shape[0]
        self._loss_sum += loss.double() * bs
        if out is not None and self.task == "classification":
            self._correct += (out.argmax(dim=-1) == y).sum()
        self._seen += bs

    def _drain_pipeline(self) -> None:
        # wait for every submitted batch (before a checkpoint or the epoch's end); no-op without a pipeline
        if self.pipeline is not None:
            for result in self.pipeline.drain():
                self._accumulate(*result)

    def _save_due(self) -> bool:
        if self.checkpoint_every_steps and self.global_step % self.checkpoint_every_steps == 0:
            return True
        if self.checkpoint_every_s <= 0:
            return False
        due = time.monotonic() - self._last_save >= self.checkpoint_every_s
        if not self.dist.enabled:
            return due
        # every rank must take part in a save: rank 0's clock decides, at log steps only
        return self.global_step % self.log_every_steps == 0 and self.dist.broadcast_flag(due, self.device)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _end_epoch(self) -> None:
        self._check_finite()
        metrics: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.lr}
        sums = self._global_sums()
        metrics["train_loss"] = sums["loss_sum"].item() / max(1, sums["seen"])
        if self.task == "classification":
            metrics["train_acc"] = sums["correct"].item() / max(1, sums["seen"])
        if self.scaler.is_enabled():
            metrics["amp_skipped_steps"] = self._amp_skipped
            if self._amp_skipped > 0.1 * self._batches_per_epoch():
                log.warning(
                    "AMP fp16: %d of %d steps of epoch %d were skipped (the scaled gradients overflowed); "
                    "trainer.amp_dtype=bfloat16 has fp32's range and needs no loss scaling",
                    self._amp_skipped, self._batches_per_epoch(), self.epoch + 1,
                )  # fmt: skip
        self._tick()
        last = self.epoch + 1 == self.epochs
        if self.data.val is not None and ((self.epoch + 1) % self.eval_every_epochs == 0 or last):
            with self._evaluation_weights():
                metrics.update(self.evaluate(self.data.val, "val"))
                if self.select == "best_val":
                    self._keep_if_best(metrics)
        metrics["time_s"] = self.elapsed
        if self.scheduler is not None:
            self.scheduler.step()
        self.history.append(metrics)
        # a method of several phases logs into one metrics.jsonl whose epochs restart at each phase: say which
        self.ctx.logger.log(
            metrics if self.phase == "train" else {**metrics, "phase": self.phase}, step=self.global_step
        )
        log.info(
            "%s epoch %d/%d  %s",
            self.phase,
            self.epoch + 1,
            self.epochs,
            "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float)),
        )
        self.epoch += 1
        self.batch = 0
        self._reset_sums()
        # epochs of a fraction of a second would spend most of their time writing checkpoints
        recent = time.monotonic() - self._last_save < self.checkpoint_min_interval_s
        if self.dist.enabled:
            recent = self.dist.broadcast_flag(recent, self.device)
        if self.epoch == self.epochs or not recent:
            self.save()

    @contextlib.contextmanager
    def _evaluation_weights(self):
        """The weights to evaluate: for a Schedule-Free optimizer its averaged sequence, with BatchNorm statistics
        of those weights (a few training batches, no gradients), then back to the training sequence."""
        if not self.averaged:
            yield
            return
        self._enter_evaluation_weights()
        try:
            yield
        finally:
            self.optimizer.train()

    def _enter_evaluation_weights(self) -> None:
        self.optimizer.eval()
        norms = [m for m in self.model.modules() if isinstance(m, _BATCH_NORMS)]
        if not any(m.track_running_stats for m in norms):
            return
        # the running statistics were gathered with the training weights: recompute them for the averaged ones
        # (as the Schedule-Free authors advise), over at most BN_REFRESH_BATCHES of this epoch's batches
        batches = min(BN_REFRESH_BATCHES, self._batches_per_epoch())
        was_training = self.model.training
        self.model.train()
        with torch.no_grad(), autocast(self.device, self.amp, self.amp_dtype):
            for i, (x, _) in enumerate(self.data.train.epoch_iter(self.epoch)):
                if i >= batches:
                    break
                self.net(x)
        self.model.train(was_training)

    def _keep_if_best(self, metrics: Mapping[str, Any]) -> None:
        # accuracy for classification (higher is better), loss otherwise; ties keep the earlier epoch
        key = "val_acc" if "val_acc" in metrics else "val_loss"
        score = metrics[key] if key == "val_acc" else -metrics[key]
        if self.best is None or score > self.best["metric"]:
            model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = {"epoch": self.epoch + 1, "metric": score, "key": key, "model": model}

    def evaluate(self, loader: Loader, prefix: str) -> dict[str, float]:
        return evaluate(
            self.model,
            loader,
            task=self.task,
            prefix=prefix,
            limit_batches=self.limit_eval_batches,
            amp=self.amp,
            amp_dtype=self.amp_dtype,
            device=self.device,
        )

    def final_metrics(self) -> dict[str, float]:
        """The last epoch's train/val metrics and the test metrics of the final weights."""
        final: dict[str, float] = {}
        if self.history:
            last = self.history[-1]
            final.update({k: v for k, v in last.items() if k.startswith(("train_", "val_"))})
            vals = [h["val_acc"] for h in self.history if "val_acc" in h]
            if vals:
                final["best_val_acc"] = max(vals)
        if self.select == "best_val" and self.best is not None:
            # test the selected weights; the model is left holding them (what a caller saves next)
            self.model.load_state_dict(self.best["model"])
            final["selected_epoch"] = float(self.best["epoch"])
        elif self.averaged:
            # a Schedule-Free run ends on its averaged weights: tested here, and what a caller saves next
            self._enter_evaluation_weights()
        final.update(self.evaluate(self.data.test, "test"))
        final["epochs"] = self.epoch
        final["steps"] = self.global_step
        final["train_time_s"] = self.elapsed
        return final
