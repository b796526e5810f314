"""``trainer.select=best_val``: the weights tested at the end are those of the best validated epoch."""

from __future__ import annotations

import json

import pytest

import common.engine as engine
from common.config import ConfigError
from launch.run import run
from tests.conftest import Crash, crash_on_call

# lr 0.5 without momentum and no schedule: validation accuracy moves up and down between epochs, and an
# epoch-E run is the first E epochs of a longer one (nothing depends on the total length)
OVERRIDES = (
    "optimizer=sgd",
    "optimizer.lr=0.5",
    "scheduler=none",
    "trainer.epochs=6",
    "trainer.limit_train_batches=6",
    "trainer.limit_eval_batches=null",
)


def _history(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "val_acc" in x]


def test_best_val_tests_the_weights_of_the_best_epoch(cfg_factory, tmp_path):
    best = run(cfg_factory(*OVERRIDES, "trainer.select=best_val", name="best"))
    last = run(cfg_factory(*OVERRIDES, name="last"))
    vals = [h["val_acc"] for h in _history(tmp_path / "best")]
    assert len(vals) == 6
    # the first epoch with the highest validation accuracy
    chosen = vals.index(max(vals)) + 1
    assert best["selected_epoch"] == chosen
    assert best["best_val_acc"] == max(vals)
    # the training itself is the same; only the tested weights differ
    assert best["train_loss"] == last["train_loss"] and "selected_epoch" not in last
    # the test metrics are those of a run stopped at the chosen epoch
    short = run(cfg_factory(*OVERRIDES[:-3], f"trainer.epochs={chosen}", *OVERRIDES[-2:], name="short"))
    assert best["test_acc"] == short["test_acc"] and best["test_loss"] == short["test_loss"]
    if chosen < 6:
        assert (best["test_acc"], best["test_loss"]) != (last["test_acc"], last["test_loss"])


def test_best_val_survives_resume(cfg_factory, tmp_path, monkeypatch):
    reference = run(cfg_factory(*OVERRIDES, "trainer.select=best_val", name="ref"))
    restore = crash_on_call(monkeypatch, engine.Trainer, "default_step", at=27)  # in epoch 5
    with pytest.raises(Crash):
        run(cfg_factory(*OVERRIDES, "trainer.select=best_val", name="resumed"))
    restore()
    resumed = run(cfg_factory(*OVERRIDES, "trainer.select=best_val", name="resumed"))
    drop = ("time_s", "train_time_s")
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in reference.items() if k not in drop
    }


def test_bad_select_values(cfg_factory):
    with pytest.raises(ConfigError, match="trainer.select must be last or best_val"):
        run(cfg_factory("trainer.select=best"))
    with pytest.raises(ValueError, match="needs a validation split"):
        run(cfg_factory("trainer.select=best_val", "dataset.val_fraction=0"))
