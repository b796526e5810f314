"""``method=autohyper`` end to end under ``debug=fast``: files, phases, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from autohyper import task
from common.config import ConfigError
from launch.run import run
from tests.conftest import run_cli

FAST = ("method=autohyper", "network=lenet5", "method.max_trials=3", "method.trial_epochs=2")


def test_autohyper_finishes_and_writes_its_files(cfg_factory):
    cfg = cfg_factory(*FAST)
    results = run(cfg)
    out = cfg.paths.output_dir
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "autohyper_lr", "autohyper_trials"):
        assert key in results
    search = json.loads(open(f"{out}/search/result.json").read())
    assert search["num_trials"] == 3 and search["lr"] == results["autohyper_lr"]
    assert results["autohyper_trial_epochs"] == 6
    rows = open(f"{out}/search/trials.csv").read().splitlines()
    assert rows[0] == "lr,z,branch,evaluated,cached" and len(rows) >= 4
    assert open(f"{out}/search/response.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(open(f"{out}/search/trials.jsonl").read().splitlines()) == 3


class Stop(Exception):
    pass


def test_search_resumes_mid_search_and_train_phase_alone(cfg_factory, monkeypatch):
    reference = run(cfg_factory(*FAST, name="reference"))
    cfg = cfg_factory(*FAST, name="resumed")
    real_train = task.TrialAgent._train
    trained: list[int] = []

    def train_then_stop(self, k, lr):
        if k == 2 and not trained.count(-1):
            trained.append(-1)
            raise Stop
        trained.append(k)
        return real_train(self, k, lr)

    monkeypatch.setattr(task.TrialAgent, "_train", train_then_stop)
    with pytest.raises(Stop):
        run(cfg)
    assert trained == [0, 1, -1]
    resumed = run(cfg)
    # the finished trials were replayed from search/trials.jsonl, not trained again
    assert trained == [0, 1, -1, 2]
    for key in ("autohyper_lr", "test_acc", "test_loss", "train_loss"):
        assert resumed[key] == reference[key]
    # a finished search is never rerun: without results.json the run goes straight to the train phase
    (Path(cfg.paths.output_dir) / "results.json").unlink()
    monkeypatch.setattr(task.TrialAgent, "__call__", lambda self, lr: pytest.fail("search rerun"))
    again = run(cfg)
    assert again["autohyper_lr"] == reference["autohyper_lr"]
    assert again["test_acc"] == reference["test_acc"]


@pytest.mark.parametrize(
    ("optimizer", "cls", "group_keys"),
    [
        # AdaBound from the maintained torch-optimizer package; its state carries the bound's final_lr and gamma
        ("adabound", "torch_optimizer.AdaBound", {"final_lr": 0.1, "gamma": 1e-3}),
        ("sgd_nesterov", "torch.optim.SGD", {"nesterov": True, "momentum": 0.9}),
    ],
)
def test_optimizers_of_the_issue_run_search_and_training(
    cfg_factory, monkeypatch, optimizer, cls, group_keys
):
    """``method=autohyper optimizer=<name>`` under debug=fast: the trials and the final training use it."""
    import importlib

    module, name = cls.rsplit(".", 1)
    klass = getattr(importlib.import_module(module), name)
    steps: list[str] = []
    real_step = klass.step

    def counting_step(self, *args, **kwargs):
        steps.append(type(self).__qualname__)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(klass, "step", counting_step)
    cfg = cfg_factory(*FAST, f"optimizer={optimizer}", name=optimizer)
    results = run(cfg)
    assert math.isfinite(results["test_loss"]) and results["autohyper_trials"] == 3
    # 3 trials x 2 epochs x 3 batches in the search, then 1 epoch x 3 batches of the final training
    assert steps == [name] * (3 * 2 * 3 + 3)
    # weights_only=True, as the resume reads it (a non-primitive in the optimizer state would fail here)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    # the scheduler decays "lr"; it keeps the LR it started from (the one the search found) in "initial_lr"
    assert group["initial_lr"] == pytest.approx(results["autohyper_lr"])
    for key, value in group_keys.items():
        assert group[key] == pytest.approx(value)
    # every trial checkpoint was readable on the next trial's resume check (none set aside as corrupt)
    assert not list(Path(cfg.paths.output_dir).rglob("*.corrupt-*"))


def test_mlp_is_searched_on_its_linear_weights(cfg_factory):
    """``network=mlp`` (the default network): its Linear weights give the metrics; the search and training run."""
    cfg = cfg_factory("method=autohyper", "network=mlp", "method.max_trials=2", "method.trial_epochs=2")
    results = run(cfg)
    assert math.isfinite(results["test_loss"]) and results["autohyper_trials"] == 2
    records = [
        json.loads(x)
        for x in (Path(cfg.paths.output_dir) / "search" / "trials.jsonl").read_text().splitlines()
    ]
    # Z is a fraction of 2L = 6 unfoldings (the MLP's 3 Linear layers), averaged over the 2 epochs
    for rec in records:
        assert len(rec["z_per_epoch"]) == 2
        assert all(z * 6 == pytest.approx(round(z * 6), abs=1e-9) for z in rec["z_per_epoch"])


# every option with a range or choices, refused with one line naming it: (override, key)
BAD_OPTIONS = [
    ("method.mode=fast", "method.mode"),
    ("method.trial_epochs=0", "method.trial_epochs"),
    ("method.p=3", "method.p"),
    ("method.min_lr=0", "method.min_lr"),
    ("method.max_lr=-0.1", "method.max_lr"),
    ("method.num_split=2", "method.num_split"),
    ("method.min_delta=0", "method.min_delta"),
    ("method.min_delta=1.5", "method.min_delta"),
    ("method.lr_delta=-0.5", "method.lr_delta"),
    ("method.power=0", "method.power"),
    ("method.exit_counter_thresh=-1", "method.exit_counter_thresh"),
    ("method.rel_lr_delta=1", "method.rel_lr_delta"),
    ("method.rel_lr_delta=-0.1", "method.rel_lr_delta"),
    ("method.max_trials=0", "method.max_trials"),
    ("method.trial_epochs=abc", "method.trial_epochs"),
    ("+method.trial_epoch=3", "method.trial_epoch"),
]


@pytest.mark.parametrize(("override", "key"), BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_bad_options_are_refused_before_anything_runs(cfg_factory, monkeypatch, override, key):
    monkeypatch.setattr(task, "make_data", lambda *a, **k: pytest.fail("data loaded"))
    cfg = cfg_factory("method=autohyper", "network=lenet5", override)
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    assert message.startswith(f"{key}") and "\n" not in message
    value = override.split("=", 1)[1]
    assert value in message or key.endswith("trial_epoch")
    assert not Path(cfg.paths.output_dir).exists()


def test_min_lr_must_be_below_max_lr(cfg_factory):
    cfg = cfg_factory("method=autohyper", "network=lenet5", "method.min_lr=0.2")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    assert str(info.value) == "method.min_lr must be below method.max_lr; got min_lr=0.2, max_lr=0.1"
    assert not Path(cfg.paths.output_dir).exists()


def test_networks_it_supports():
    # every image network: conv weights, or (mlp) Linear weights; not the LSTM (see task.supports)
    assert task.supports("mlp") and task.supports("lenet5") and task.supports("resnet18")
    assert not task.supports("lstm") and not task.supports("no_such_net")


def test_lstm_is_refused_in_one_line(cfg_factory):
    # household_power is not on this machine: the refusal comes before any data is read
    cfg = cfg_factory("method=autohyper", "network=lstm", "dataset=household_power")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    assert message.startswith("method=autohyper does not work with network=lstm") and "\n" not in message
    supported = message.split("supported: ")[1].split(", ")
    assert "mlp" in supported and "lenet5" in supported and "lstm" not in supported
    assert not Path(cfg.paths.output_dir).exists()


def test_a_bad_option_exits_2_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "method=autohyper", "network=lenet5", "method.p=3", "debug=fast", f"hydra.run.dir={out}", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: method.p must be one of 1, 2; got 3"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "meta.json").exists() and not (out / "search").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_modes_compose_and_run(cfg_factory, mode):
    results = run(cfg_factory(*FAST, f"method.mode={mode}", "optimizer=adam", name=mode))
    assert results["autohyper_trials"] == 3
