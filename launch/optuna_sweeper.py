"""``hydra/sweeper=optuna``: a Hydra sweeper that searches with Optuna (TPE or random), on any launcher.

    python -m launch -m hydra/sweeper=optuna 'optimizer.lr=tag(log, interval(1e-4, 1))' 'optimizer.weight_decay=choice(0, 5e-4)' \
        hydra.sweeper.n_trials=8 hydra.sweeper.n_jobs=2

The search space is given as overrides on the command line (as above), or in a config as ``hydra.sweeper.params``
(``{key: sweep}``, e.g. in an experiment file). It uses Hydra's own override grammar, as its other sweepers do:
``interval(a, b)`` is a float range
(``tag(log, interval(a, b))`` log-uniform, ``tag(int, interval(a, b))`` integers), ``choice(a, b, c)``,
``range(a, b)`` and a comma list ``a,b,c`` are categorical; any other override is fixed for every trial. Each
trial is one job of the sweep (folders ``0 .. n_trials-1``, run by the configured launcher, ``n_jobs`` at a time);
its value is what the job returns, ``cfg.objective`` (``val_acc`` by default: the test split never steers the
search). A failed job (its ``failed.json``) is told to Optuna as a failed trial and the search goes on.

At the end the sweep folder holds ``optuna.csv`` (every trial: number, job, state, value, parameters) and
``optuna_best.json`` (the best trial's parameters, value and job folder). The study lives in memory: a sweep
interrupted and run again starts a new study, but finished jobs are not rerun (``launch.resweep``).

Written here rather than taken from ``hydra-optuna-sweeper``, which pins Optuna below 3.0 (2021); this uses
Optuna's current ask-and-tell interface.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from common.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")


def _refuse(message: str) -> None:
    """A sweep that cannot start: one ``error:`` line and exit 2, as ``python -m launch`` reports config errors
    (Hydra would wrap an exception raised here in a traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def search_space(overrides: Sequence[Override]) -> tuple[dict[str, Any], list[str]]:
    """``({key: optuna distribution}, fixed overrides)`` of parsed Hydra overrides."""
    import optuna.distributions as dist

    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            tags = set(value.tags)
            low, high = value.start, value.end
            if low is None or high is None or not low < high:
                _refuse(f"{key}: an optuna interval needs low < high, got ({low}, {high})")
            log_scale = "log" in tags
            if log_scale and low <= 0:
                _refuse(f"{key}: a log interval needs low > 0, got {low}")
            if "int" in tags:
                space[key] = dist.IntDistribution(int(low), int(high), log=log_scale)
            else:
                space[key] = dist.FloatDistribution(float(low), float(high), log=log_scale)
        elif isinstance(value, ChoiceSweep):
            space[key] = dist.CategoricalDistribution(list(value.list))
        elif isinstance(value, RangeSweep):
            space[key] = dist.CategoricalDistribution(list(override.sweep_iterator()))
        else:  # a comma list: Hydra parses it as a simple choice sweep
            space[key] = dist.CategoricalDistribution(list(override.sweep_iterator()))
    return space, fixed


def _as_override(key: str, value: Any) -> str:
    # repr keeps floats exact; strings go through as Hydra would read them
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


class OptunaSweeper(Sweeper):
    """Ask Optuna for ``n_jobs`` trials, launch them as one batch, tell it their values; until ``n_trials``."""

    def __init__(
        self,
        params: dict[str, str] | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: str = "tpe",
        seed: int = 0,
        direction: str = "maximize",
        n_startup_trials: int = 5,
    ) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            _refuse(f"hydra.sweeper.sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
        if direction not in DIRECTIONS:
            _refuse(f"hydra.sweeper.direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
        if int(n_trials) < 1 or int(n_jobs) < 1 or int(n_startup_trials) < 0:
            _refuse(
                f"hydra.sweeper: n_trials and n_jobs must be >= 1 and n_startup_trials >= 0; got n_trials={n_trials} "
                f"n_jobs={n_jobs} n_startup_trials={n_startup_trials}"
            )
        self.params = dict(params or {})
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler, self.seed, self.direction = sampler, int(seed), direction
        self.n_startup_trials = int(n_startup_trials)
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if self.sampler == "tpe":
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials)
        else:
            sampler = optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.create_study(direction=self.direction, sampler=sampler)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        import optuna

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        space, fixed = search_space(overrides)
        if not space:
            _refuse(
                "hydra/sweeper=optuna has nothing to search: give a sweep override, e.g. "
                "'optimizer.lr=tag(log, interval(1e-4, 1))', or hydra.sweeper.params in a config"
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self._study()
        log.info("optuna: %s, %d trials, %d at a time, over %s", self.sampler, self.n_trials, self.n_jobs,
                 ", ".join(space))  # fmt: skip
        returns = []
        done = 0
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [[*fixed, *(_as_override(k, v) for k, v in t.params.items())] for t in trials]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=done)
            for trial, result in zip(trials, results, strict=True):
                value = result.return_value  # raises the job's exception, as Hydra's sweepers do
                if value is None or not math.isfinite(float(value)):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, float(value))
            done += len(trials)
            returns.append(results)
        self._write(study, sweep_dir, list(space))
        return returns

    def _write(self, study: Any, sweep_dir: Path, keys: list[str]) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["trial", "job", "state", "value", *keys])
        for t in study.trials:
            writer.writerow([t.number, t.number, t.state.name, "" if t.value is None else t.value,
                             *(t.params.get(k, "") for k in keys)])  # fmt: skip
        write_text_atomic(sweep_dir / "optuna.csv", text.getvalue())
        finished = [t for t in study.trials if t.value is not None]
        if not finished:
            log.warning("optuna: no trial finished; see the failed.json of the jobs under %s", sweep_dir)
            return
        best = study.best_trial
        write_json_atomic(
            sweep_dir / "optuna_best.json",
            {"trial": best.number, "job": str(sweep_dir / str(best.number)), "value": best.value,
             "params": best.params, "direction": self.direction, "sampler": self.sampler},
        )  # fmt: skip
        log.info("optuna: best trial %d (job %s): %s = %.6g at %s", best.number, best.number,
                 self.config.objective if self.config is not None else "objective", best.value, best.params)  # fmt: skip
