"""The tuning-free optimizers that came after the papers, as configs of this project.

``optimizer=schedulefree_sgd|schedulefree_adamw`` (the authors' ``schedulefree`` package) and
``optimizer=prodigy|dadapt_adam`` (``pytorch-optimizer``): each trains, round-trips its state and resumes bitwise on
the CPU like our own optimizers. Schedule-Free evaluates a different sequence of weights than the one it steps:
the Trainer switches it to its evaluation weights (``optimizer.eval()``) for every evaluation and at the end, with
BatchNorm statistics recomputed for them, and back (``optimizer.train()``) for training.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import common.engine as engine
from common.checkpoint import load_verified
from common.factory import build_optimizer, build_scheduler
from launch.run import run
from tests.conftest import Crash, compose_config, crash_on_call

PEERS = ["schedulefree_sgd", "schedulefree_adamw", "prodigy", "dadapt_adam"]
TIME_KEYS = ("time_s", "train_time_s")


def _comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIME_KEYS}


@pytest.mark.parametrize("name", PEERS)
def test_peer_config_builds_its_optimizer_at_the_package_defaults(name):
    cfg = compose_config(f"optimizer={name}")
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer(cfg.optimizer, model)
    expected = {"schedulefree_sgd": "SGDScheduleFree", "schedulefree_adamw": "AdamWScheduleFree",
                "prodigy": "Prodigy", "dadapt_adam": "DAdaptAdam"}[name]  # fmt: skip
    assert type(opt).__name__ == expected
    group = opt.param_groups[0]
    assert group["lr"] == {"schedulefree_adamw": 0.0025}.get(name, 1.0)
    # Schedule-Free brings no schedule (the config overrides the root's cosine; the command line still wins)
    assert (build_scheduler(cfg.scheduler, opt) is None) == name.startswith("schedulefree")
    assert build_scheduler(compose_config(f"optimizer={name}", "scheduler=cosine").scheduler, opt) is not None


@pytest.mark.parametrize("name", PEERS)
def test_state_dict_round_trip_continues_identically(name):
    cfg = compose_config(f"optimizer={name}")
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    b = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def step(model, opt):
        if hasattr(opt, "train"):
            opt.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    opt_a = build_optimizer(cfg.optimizer, a)
    for _ in range(3):
        step(a, opt_a)
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(cfg.optimizer, b)
    # through bytes, as a checkpoint: the state must load with torch.load(weights_only=True)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        step(a, opt_a)
        step(b, opt_b)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", PEERS)
def test_peer_resume_equals_uninterrupted(cfg_factory, tmp_path, monkeypatch, name):
    overrides = (f"optimizer={name}", "trainer.epochs=3", "trainer.limit_train_batches=4",
                 "trainer.checkpoint_every_steps=3", "network.dropout=0.3")  # fmt: skip
    reference = run(cfg_factory(*overrides, name="ref"))
    assert math.isfinite(reference["train_loss"])
    restore = crash_on_call(monkeypatch, engine.Trainer, "default_step", at=9)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="resumed"))
    restore()
    resumed = run(cfg_factory(*overrides, name="resumed"))
    assert _comparable(resumed) == _comparable(reference)
    w_ref = load_verified(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    w_res = load_verified(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


def test_schedule_free_evaluates_its_averaged_weights_with_their_batchnorm_statistics(
    cfg_factory, monkeypatch
):
    seen = []
    real_evaluate = engine.Trainer.evaluate
    refreshes = []
    real_enter = engine.Trainer._enter_evaluation_weights

    def spy_evaluate(self, loader, prefix):
        seen.append((prefix, self.optimizer.param_groups[0]["train_mode"]))
        return real_evaluate(self, loader, prefix)

    def spy_enter(self):
        bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        real_enter(self)
        refreshes.append(not torch.equal(before, bn.running_mean))

    monkeypatch.setattr(engine.Trainer, "evaluate", spy_evaluate)
    monkeypatch.setattr(engine.Trainer, "_enter_evaluation_weights", spy_enter)
    steps = []
    real_step = engine.Trainer.default_step

    def spy_step(self, x, y):
        steps.append(self.optimizer.param_groups[0]["train_mode"])
        return real_step(self, x, y)

    monkeypatch.setattr(engine.Trainer, "default_step", spy_step)
    results = run(cfg_factory("optimizer=schedulefree_sgd", "network=vgg11_bn", "trainer.epochs=2",
                              "trainer.limit_train_batches=3", "trainer.limit_eval_batches=1"))  # fmt: skip
    assert math.isfinite(results["test_loss"])
    # every training step in training mode; val (twice) and test on the evaluation weights
    assert steps and all(steps)
    assert seen == [("val", False), ("val", False), ("test", False)]
    # each switch to the evaluation weights recomputed the BatchNorm statistics
    assert refreshes == [True, True, True]
