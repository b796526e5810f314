"""The training engine: run(cfg) of method train, resume == uninterrupted, determinism, NaN guard, metrics."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import common.engine as engine
from common.checkpoint import load_verified
from common.engine import NonFiniteLossError
from common.metrics import count_flops, count_parameters, topk_correct
from launch.run import run
from tests.conftest import Crash, crash_on_call

TIME_KEYS = ("time_s", "train_time_s")


def _comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIME_KEYS}


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_verified(run_dir / "checkpoints" / "last.pt")["model"]


def test_run_train_writes_its_files(cfg_factory, tmp_path):
    cfg = cfg_factory()
    results = run(cfg)
    out = tmp_path / "run"
    for name in ("results.json", "metrics.jsonl", "config_resolved.yaml", "meta.json", "checkpoints/last.pt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved == pytest.approx(results)
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "params", "flops_per_sample"):
        assert key in results, key
    assert 0.0 <= results["test_acc"] <= 1.0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "train" and meta["torch"] == torch.__version__
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["epoch"] == 1 and "val_acc" in lines[-1]
    # torch.load(weights_only=True) reads the checkpoint
    assert "model" in torch.load(out / "checkpoints" / "last.pt", weights_only=True)


def test_finished_run_is_not_redone(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory()
    first = run(cfg)
    mtime = (tmp_path / "run" / "results.json").stat().st_mtime_ns
    second = run(cfg)
    assert first == second
    assert (tmp_path / "run" / "results.json").stat().st_mtime_ns == mtime
    assert "Results" in capsys.readouterr().out


def test_learns_digits_above_chance(cfg_factory):
    results = run(
        cfg_factory(
            "trainer.epochs=3", "trainer.limit_train_batches=null", "trainer.limit_eval_batches=null",
            "dataset.batch_size=32",
        )  # fmt: skip
    )
    assert results["test_acc"] > 0.85


def test_same_seed_same_result_other_seed_other_result(cfg_factory, tmp_path):
    a = run(cfg_factory("seed=3", name="a"))
    b = run(cfg_factory("seed=3", name="b"))
    c = run(cfg_factory("seed=4", name="c"))
    assert _comparable(a) == _comparable(b)
    assert _comparable(a) != _comparable(c)
    wa, wb, wc = (_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("crash_at", [5, 9, 12])
def test_resume_equals_uninterrupted(cfg_factory, tmp_path, monkeypatch, crash_at):
    overrides = (
        "trainer.epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.checkpoint_every_steps=3",
        "network.dropout=0.3",  # dropout draws from the global RNG: its state must be restored too
        "scheduler=step",
    )
    reference = run(cfg_factory(*overrides, name="ref"))

    restore = crash_on_call(monkeypatch, engine.Trainer, "default_step", at=crash_at)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="resumed"))
    assert not (tmp_path / "resumed" / "results.json").exists()
    restore()
    resumed = run(cfg_factory(*overrides, name="resumed"))

    assert _comparable(resumed) == _comparable(reference)
    w_ref, w_res = _weights(tmp_path / "ref"), _weights(tmp_path / "resumed")
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)
    # the metrics log holds each step once, as the uninterrupted one does
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    ref_steps = [json.loads(x)["step"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref_steps


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(cfg_factory, tmp_path, monkeypatch):
    real_step = engine.Trainer.default_step
    calls = {"n": 0}

    def nan_step(self, x, y):
        calls["n"] += 1
        loss, out = real_step(self, x, y)
        return (loss * float("nan") if calls["n"] >= 6 else loss), out

    monkeypatch.setattr(engine.Trainer, "default_step", nan_step)
    cfg = cfg_factory("trainer.epochs=3", "trainer.limit_train_batches=4")
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 2, step 6.*last good checkpoint \(epoch 1"):
        run(cfg)
    state = load_verified(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "results.json").exists()


def test_topk_correct_hand_computed():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    target = torch.tensor([2, 0, 0])
    top1, top2, top5 = topk_correct(logits, target, (1, 2, 5))
    assert (top1.item(), top2.item(), top5.item()) == (1, 2, 3)


def test_flop_and_parameter_counts_closed_form():
    lin = torch.nn.Linear(20, 7)
    assert count_parameters(lin) == 20 * 7 + 7
    assert count_flops(lin, torch.zeros(1, 20)) == 2 * 20 * 7
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 3, 10, 10)) == 2 * 3 * 8 * 9 * 10 * 10


def test_interrupt_names_the_epoch_and_how_to_continue(cfg_factory, tmp_path, monkeypatch):
    # SIGINT during the 6th step: the 2nd of 4 batches of epoch 2 of 3 (one epoch complete)
    real_step = engine.Trainer.default_step
    calls = {"n": 0}

    def step_then_ctrl_c(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x, y)

    monkeypatch.setattr(engine.Trainer, "default_step", step_then_ctrl_c)
    overrides = ("trainer.epochs=3", "trainer.limit_train_batches=4")
    with pytest.raises(engine.RunInterrupted) as info:
        run(cfg_factory(*overrides))
    out = tmp_path / "run"
    # not started by Hydra (the Python API): the hint is to run the same config into the same folder
    assert str(info.value) == (
        "stopped by SIGINT at epoch 2/3, batch 2/4 (step 6; 1 of 3 epochs completed), with a checkpoint of that "
        f"point in {out / 'checkpoints'}; to continue, run the same config again with paths.output_dir={out}"
    )
    assert info.value.signum == signal.SIGINT
    state = load_verified(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["global_step"]) == (1, 2, 6)
    monkeypatch.setattr(engine.Trainer, "default_step", real_step)
    assert "test_acc" in run(cfg_factory(*overrides))
