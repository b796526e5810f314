"""``optimizer=ecco`` with method=train and ``method=ecco_robustness`` under debug=fast: finish, resume, draws."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import common.engine as engine
import ecco.optimizer as ecco_optimizer
import ecco.task as task
from common.checkpoint import load_verified
from ecco.draws import draw, summarize
from ecco.task import OPTIMIZERS
from launch.run import run
from tests.conftest import Crash, crash_on_call


def _weights(path):
    return load_verified(path / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("mode", ["improved", "paper"])
def test_optimizer_ecco_with_method_train_resumes_exactly(cfg_factory, tmp_path, monkeypatch, mode):
    overrides = (
        "optimizer=ecco",
        f"optimizer.mode={mode}",
        "trainer.epochs=2",
        "trainer.checkpoint_every_steps=2",
    )
    reference = run(cfg_factory(*overrides, name="ref"))
    assert 0.0 <= reference["test_acc"] <= 1.0
    restore = crash_on_call(monkeypatch, engine.Trainer, "default_step", at=5)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="resumed"))
    restore()
    resumed = run(cfg_factory(*overrides, name="resumed"))
    assert resumed["test_acc"] == reference["test_acc"]
    w_ref, w_res = _weights(tmp_path / "ref"), _weights(tmp_path / "resumed")
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


def test_optimizer_ecco_auto_limiting_works_with_method_train(cfg_factory, monkeypatch):
    built = []
    real_init = ecco_optimizer.ECCO.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(ecco_optimizer.ECCO, "__init__", spy)
    results = run(cfg_factory("optimizer=ecco", "optimizer.limit_activations=auto"))
    assert math.isfinite(results["train_loss"])
    (opt,) = built
    assert len(opt.limited_layers) == 2  # the MLP's two hidden Linear layers feed a ReLU


def test_the_default_ecco_config_is_not_in_the_capped_regime(cfg_factory, monkeypatch, caplog):
    """optimizer=ecco's defaults must let eta act: the paper's 0.3 capped every step (ECCO = SGD at lr dt_max)."""
    built = []
    real_init = ecco_optimizer.ECCO.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(ecco_optimizer.ECCO, "__init__", spy)
    # the default job (MLP on digits, batch 32) for 4 epochs of 40 steps: the capping report comes after 100
    with caplog.at_level("INFO", logger="ecco.optimizer"):
        run(cfg_factory("optimizer=ecco", "trainer.epochs=4", "trainer.limit_train_batches=null", "dataset.batch_size=32"))
    (opt,) = built
    assert opt.capped_fraction() < 0.9
    assert any("hit the cap" in r.getMessage() for r in caplog.records)
    assert not any("eta has no effect" in r.getMessage() for r in caplog.records)


def test_robustness_study_finishes_and_does_not_rerun_finished_draws(cfg_factory, tmp_path, monkeypatch):
    overrides = (
        "method=ecco_robustness",
        "method.trials=2",
        "method.optimizers=[ecco,sgd_momentum]",
        "method.ecco.limit_activations=auto",
    )
    real = task.run_trial
    crash_on_call(monkeypatch, task, "run_trial", at=3)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides))
    out = tmp_path / "run"
    assert not (out / "robustness.png").exists()
    assert sorted(p.name for p in (out / "trials").iterdir() if (p / "result.json").exists()) == [
        "ecco-000",
        "ecco-001",
    ]
    ran = []
    monkeypatch.setattr(task, "run_trial", lambda *a, **k: ran.append(a[3:5]) or real(*a, **k))
    results = run(cfg_factory(*overrides))
    assert ran == [("sgd_momentum", 0), ("sgd_momentum", 1)]
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [(r["optimizer"], int(r["trial"])) for r in rows] == [
        ("ecco", 0),
        ("ecco", 1),
        ("sgd_momentum", 0),
        ("sgd_momentum", 1),
    ]
    first = json.loads((out / "trials" / "ecco-000" / "result.json").read_text())
    assert first["eta"] == draw("ecco", 0)["eta"] and 0.0 <= float(rows[0]["test_acc"]) <= 1.0
    assert (out / "summary.csv").exists()
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"ecco_test_acc_median", "sgd_momentum_test_acc_frac_near_best", "test_acc"} <= set(results)


@pytest.mark.parametrize("ranges", ["paper", "loguniform"])
def test_draws_are_reproducible_and_in_range(ranges):
    for name in OPTIMIZERS:
        a, b = draw(name, 3, seed=1, ranges=ranges), draw(name, 3, seed=1, ranges=ranges)
        assert a == b and a != draw(name, 4, seed=1, ranges=ranges)
    etas = [draw("ecco", k, ranges=ranges)["eta"] for k in range(200)]
    assert all(0 < e <= 100 for e in etas)
    if ranges == "paper":
        assert sum(e >= 1 for e in etas) > 180  # U(0,100): about 99 % of draws have η ≥ 1 (brief §1.4)
    else:
        assert min(etas) < 1e-3 and max(etas) > 10
    adam = draw("adam", 0, ranges=ranges)
    assert 0 < adam["lr"] <= 1 and len(adam["betas"]) == 2


def test_summarize_hand_computed():
    rows = [{"optimizer": "a", "acc": v} for v in (0.90, 0.95, 0.96, 0.97)]
    rows += [{"optimizer": "b", "acc": v} for v in (0.10, float("nan"), 0.965)]
    by = {r["optimizer"]: r for r in summarize(rows, "acc")}
    assert by["a"]["median"] == pytest.approx(0.955) and by["a"]["q1"] == pytest.approx(0.9375)
    assert by["a"]["frac_near_best"] == pytest.approx(0.5)  # 0.96, 0.97 within 1 point of 0.97
    assert by["b"]["diverged"] == 1 and by["b"]["frac_near_best"] == pytest.approx(1 / 3)


def test_robustness_draws_as_submitit_jobs_equal_the_inline_study(cfg_factory, tmp_path):
    overrides = (
        "method=ecco_robustness",
        "method.trials=2",
        "method.optimizers=[ecco,adam]",
        "trainer.threads=1",
    )
    inline = run(cfg_factory(*overrides, name="inline"))
    jobs = run(cfg_factory(*overrides, "method.executor=local", "method.job.gpus_per_node=0", name="jobs"))
    drop = ("time_s", "train_time_s")
    assert {k: v for k, v in jobs.items() if k not in drop} == {
        k: v for k, v in inline.items() if k not in drop
    }
    # each draw ran in its own submitit job (its logs are in the study's submitit folder)
    logs = list((tmp_path / "jobs" / "submitit").glob("*_result.pkl"))
    assert len(logs) == 4
    for name in ("ecco-000", "ecco-001", "adam-000", "adam-001"):
        a = json.loads((tmp_path / "inline" / "trials" / name / "result.json").read_text())
        b = json.loads((tmp_path / "jobs" / "trials" / name / "result.json").read_text())
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    # the study run again (results.json removed) submits nothing: every draw has its result.json
    (tmp_path / "jobs" / "results.json").unlink()
    again = run(cfg_factory(*overrides, "method.executor=local", "method.job.gpus_per_node=0", name="jobs"))
    assert len(list((tmp_path / "jobs" / "submitit").glob("*_result.pkl"))) == 4
    assert {k: v for k, v in again.items() if k not in drop} == {
        k: v for k, v in jobs.items() if k not in drop
    }


def test_lstm_power_study_reports_the_mse_distribution(cfg_factory, tmp_path):
    from tests.common.test_data import write_power

    write_power(tmp_path)
    cfg = cfg_factory(
        "experiment=ecco_power_lstm", f"paths.data_dir={tmp_path}", "dataset.resample=null", "method.trials=2",
        "method.optimizers=[ecco,sgd_momentum]", "trainer.epochs=1", "network.hidden_size=8",
    )  # fmt: skip
    assert cfg.method.ranges == "paper_lstm" and cfg.dataset.in_channels == len(cfg.dataset.features) == 6
    results = run(cfg)
    rows = list(csv.DictReader(open(tmp_path / "run" / "trials.csv")))
    assert len(rows) == 4 and "test_acc" not in rows[0]
    # the summary is of the test MSE; SGD's draws are the LSTM ranges' (weight decay near 1)
    assert {"ecco_test_loss_median", "sgd_momentum_test_loss_q3"} <= set(results)
    wd = [float(r["weight_decay"]) for r in rows if r["optimizer"] == "sgd_momentum"]
    assert all(0.9 <= w <= 1.5 for w in wd)


def test_paper_lstm_ranges():
    for k in range(20):
        sgd = draw("sgd_momentum", k, ranges="paper_lstm")
        assert 0.9 <= sgd["lr"] <= 1.5 and 0.9 <= sgd["weight_decay"] <= 1.5 and 50 <= sgd["t_max"] <= 500
        ada = draw("adagrad", k, ranges="paper_lstm")
        assert all(0 < ada[key] <= 1 for key in ("lr", "lr_decay", "weight_decay"))
        rms = draw("rmsprop", k, ranges="paper_lstm")
        assert all(0 < rms[key] <= 1 for key in ("lr", "alpha", "weight_decay"))
        assert set(draw("ecco", k, ranges="paper_lstm")) == {"alpha_0", "eta"}
