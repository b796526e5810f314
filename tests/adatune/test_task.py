"""``method=adatune``: every algorithm finishes under ``debug=fast``; a crashed run resumes to the same LR trajectory."""

from __future__ import annotations

import json

import pytest
import torch

import adatune.marthe as marthe_mod
from adatune.task import ValidationStream
from common.checkpoint import load_verified
from launch.run import run
from tests.conftest import Crash, crash_on_call

TIME_KEYS = ("time_s", "train_time_s")


def _lrs(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["adatune/lr"], r.get("adatune/mu")) for r in lines if "adatune/lr" in r]


@pytest.mark.parametrize(
    "overrides",
    [
        ("method.algorithm=hd",),
        ("method.algorithm=hd", "optimizer=adam"),
        ("method.algorithm=hd_val",),
        ("method.algorithm=rtho", "optimizer=adamw"),
        ("method.algorithm=marthe", "method.mu=auto", "method.alpha=1e-3"),
        ("method.algorithm=marthe", "method.mode=paper", "optimizer=sgd_momentum"),
    ],
)
def test_algorithms_finish(cfg_factory, tmp_path, overrides):
    results = run(cfg_factory("method=adatune", *overrides))
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "final_lr"):
        assert key in results
    lrs = _lrs(tmp_path / "run")
    assert [s for s, _, _ in lrs] == [1, 2, 3]
    assert results["final_lr"] >= 0
    assert (tmp_path / "run" / "lr_schedule.csv").read_text().startswith("step,lr")
    assert (tmp_path / "run" / "lr_schedule.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("crash_at", [5, pytest.param(7, marks=pytest.mark.slow)])
def test_resume_equals_uninterrupted(cfg_factory, tmp_path, monkeypatch, crash_at):
    overrides = (
        "method=adatune",
        "method.algorithm=marthe",
        "method.mu=auto",
        "method.alpha=1e-3",
        "trainer.epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.checkpoint_every_steps=3",
    )
    reference = run(cfg_factory(*overrides, name="ref"))
    restore = crash_on_call(monkeypatch, marthe_mod.MARTHE, "step", at=crash_at)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="res"))
    restore()
    resumed = run(cfg_factory(*overrides, name="res"))
    drop = lambda r: {k: v for k, v in r.items() if k not in TIME_KEYS}  # noqa: E731
    assert drop(resumed) == drop(reference)
    assert _lrs(tmp_path / "res") == _lrs(tmp_path / "ref")
    assert len({lr for _, lr, _ in _lrs(tmp_path / "ref")}) > 1  # the LR did move
    a = load_verified(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_verified(tmp_path / "res" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_validation_stream_is_a_function_of_the_step(cfg_factory):
    from common.factory import make_data

    cfg = cfg_factory()
    data = make_data(cfg, torch.device("cpu"))
    stream = ValidationStream(data.val, 32, seed=0)
    again = ValidationStream(data.val, 32, seed=0)
    for step in (0, 3, 11, 40):
        assert torch.equal(stream(step)[0], again(step)[0])
    assert stream.direct and stream(0)[0].shape[0] == 32
    # a pass covers distinct samples; the next pass is reshuffled
    first_pass = torch.cat([stream(s)[1] for s in range(stream.per_pass)])
    assert first_pass.shape[0] == stream.per_pass * 32
    assert not torch.equal(stream(0)[0], stream(stream.per_pass)[0])


@pytest.mark.parametrize("experiment", ["marthe_cifar10_vgg11", "marthe_cifar100_resnet18"])
def test_paper_experiments_compose(cfg_factory, experiment):
    cfg = cfg_factory(f"experiment={experiment}", fast=False)
    assert cfg.method.name == "adatune" and cfg.trainer.epochs == 200
    assert "_target_" not in cfg.scheduler
