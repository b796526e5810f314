"""A search trial's LR schedule spans the trial, and ``debug=fast`` bounds the search (issue 15, items 3 and 14).

The trials build their scheduler from ``cfg.scheduler`` with ``trainer.epochs`` set to ``method.trial_epochs``
(:func:`autohyper.task.trial_config`): the shipped schedulers give their horizon as ``${trainer.epochs}``, so a
trial's cosine ends with the trial and its step milestones are fractions of the trial, whether the final
training is shorter or longer than a trial. The expected LRs below are the schedules' closed forms.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autohyper import task
from common.config import ConfigError
from common.engine import Trainer
from common.method import configure_method
from launch.run import run


class SearchDone(Exception):
    """Raised instead of the final training: these tests look at the search's trials only."""


def trial_lr_logs(cfg_factory, monkeypatch, *overrides: str) -> tuple[float, list[list[float]]]:
    """Run the search of ``overrides``; return its first LR and, per trial, the LR each epoch trained at."""
    logged: list[list[float]] = []
    real_fit = Trainer.fit

    def recording_fit(self):
        try:
            return real_fit(self)
        finally:
            if self.phase.startswith("trial-"):
                # the "lr" an epoch logs is the LR it trained at (read before the epoch-end scheduler step)
                logged.append([h["lr"] for h in self.history])

    def no_training(*args, **kwargs):
        raise SearchDone

    monkeypatch.setattr(Trainer, "fit", recording_fit)
    monkeypatch.setattr(task, "train_model", no_training)
    cfg = cfg_factory(
        "method=autohyper", "network=lenet5", "optimizer=adam", "method.max_trials=1", *overrides
    )
    with pytest.raises(SearchDone):
        run(cfg)
    return float(cfg.method.min_lr), logged


def cosine(lr: float, horizon: int, epochs: int) -> list[float]:
    return [lr * (1 + math.cos(math.pi * e / horizon)) / 2 for e in range(epochs)]


@pytest.mark.parametrize(
    ("trainer_epochs", "trial_epochs"),
    [(2, 4), (8, 2)],
    ids=["run-shorter-than-trial", "run-longer-than-trial"],
)
def test_a_trial_cosine_spans_the_trial(cfg_factory, monkeypatch, trainer_epochs, trial_epochs):
    """Issue 15 item 3: trainer.epochs=2, trial_epochs=4 trained epochs 3 of 4 at LR 0 (cosine over 2 epochs)."""
    lr, logged = trial_lr_logs(
        cfg_factory,
        monkeypatch,
        "scheduler=cosine",
        f"trainer.epochs={trainer_epochs}",
        f"method.trial_epochs={trial_epochs}",
    )
    assert len(logged) == 1 and len(logged[0]) == trial_epochs
    assert logged[0] == pytest.approx(cosine(lr, trial_epochs, trial_epochs), rel=1e-9)
    assert all(x > 0 for x in logged[0])


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        # step_size = max(1, int(0.34 * 6)) = 2 epochs of the trial (over the run's 2 epochs it would be 1)
        ("step", [1, 1, 0.1, 0.1, 0.01, 0.01]),
        # milestones int(0.5 * 6) = 3 and int(0.75 * 6) = 4 of the trial (of the run: 1 and 1)
        ("multistep", [1, 1, 1, 0.1, 0.01, 0.01]),
        ("exponential", [0.95**e for e in range(6)]),
        ("none", [1] * 6),
    ],
)
def test_a_trial_schedule_is_the_schedulers_over_trial_epochs(cfg_factory, monkeypatch, scheduler, expected):
    lr, logged = trial_lr_logs(
        cfg_factory, monkeypatch, f"scheduler={scheduler}", "trainer.epochs=2", "method.trial_epochs=6"
    )
    assert logged == [pytest.approx([lr * f for f in expected], rel=1e-9)]


def test_trial_config_leaves_the_run_config_alone(cfg_factory):
    cfg = cfg_factory("method=autohyper", "network=lenet5", "scheduler=cosine", "trainer.epochs=2")
    trial = task.trial_config(cfg, 4)
    assert trial.trainer.epochs == 4 and trial.scheduler.T_max == 4
    assert cfg.trainer.epochs == 2 and cfg.scheduler.T_max == 2
    assert task.trial_lrs(cfg, 4, lr=1.0) == pytest.approx(cosine(1.0, 4, 4))
    assert task.trial_lrs(cfg_factory("scheduler=none"), 4) is None


def test_a_fixed_horizon_that_ends_inside_a_trial_is_refused(cfg_factory, monkeypatch):
    """A horizon given as a number stays a number in a trial; one that reaches LR 0 inside a trial is refused."""
    monkeypatch.setattr(task, "make_data", lambda *a, **k: pytest.fail("data loaded"))
    cfg = cfg_factory(
        "method=autohyper", "network=lenet5", "scheduler=cosine", "scheduler.T_max=2", "method.trial_epochs=4"
    )
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    assert (
        message.startswith("method.trial_epochs=4: the scheduler (CosineAnnealingLR)") and "\n" not in message
    )
    assert "at LR 0 in epoch 3;" in message and "${trainer.epochs}" in message
    assert not Path(cfg.paths.output_dir).exists()
    # a fixed horizon at least as long as the trial is fine
    configure_method(
        cfg_factory("method=autohyper", "network=lenet5", "scheduler.T_max=4", "method.trial_epochs=4")
    )


def test_debug_fast_bounds_the_search(cfg_factory):
    """Issue 15 item 14: debug=fast limits the trials (conf/method_debug/autohyper_fast.yaml), not the full run."""
    fast = cfg_factory("method=autohyper", "network=lenet5")
    assert (fast.method.max_trials, fast.method.trial_epochs) == (1, 1)
    assert fast.trainer.limit_train_batches == 3
    full = cfg_factory("method=autohyper", "network=lenet5", fast=False)
    assert (full.method.max_trials, full.method.trial_epochs) == (200, 5)
    # the command line still wins over the debug limits
    wider = cfg_factory("method=autohyper", "network=lenet5", "method.max_trials=4", "method.trial_epochs=3")
    assert (wider.method.max_trials, wider.method.trial_epochs) == (4, 3)
    # the limits are autohyper's alone: another method's schema under debug=fast sees none of these keys
    train = cfg_factory("method=train", "network=lenet5")
    assert "max_trials" not in train.method and "trial_epochs" not in train.method
    configure_method(train)
    configure_method(fast)


def test_debug_fast_search_does_a_few_batches_of_work(cfg_factory, monkeypatch):
    """Under debug=fast the run is 1 trial of 1 epoch x 3 batches, then 1 epoch x 3 batches of training.

    A trial validates every epoch but runs no test pass (the search reads Z alone); the final training tests.
    """
    phases: list[tuple[str, int]] = []
    passes: list[tuple[str, str]] = []
    real_fit, real_evaluate = Trainer.fit, Trainer.evaluate

    def counting_fit(self):
        try:
            return real_fit(self)
        finally:
            phases.append((self.phase, self.global_step))

    def counting_evaluate(self, loader, prefix):
        passes.append((self.phase, prefix))
        return real_evaluate(self, loader, prefix)

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    monkeypatch.setattr(Trainer, "evaluate", counting_evaluate)
    results = run(cfg_factory("method=autohyper", "network=lenet5"))
    assert results["autohyper_trials"] == 1 and results["autohyper_trial_epochs"] == 1
    assert phases == [("trial-0", 3), ("train", 3)]
    assert passes == [("trial-0", "val"), ("train", "val"), ("train", "test")]
    assert math.isfinite(results["test_acc"])
