"""``python -m bench.leaderboard --smoke`` (issue 17): every contender's whole path, on a tiny shapes set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bench.leaderboard import CONTENDERS, Run, autohyper_cost, summarize
from tests.conftest import run_cli


def test_smoke_runs_every_contender_and_writes_the_report(tmp_path):
    out = tmp_path / "lb"
    proc = run_cli("--smoke", "--out", str(out), cwd=tmp_path, module="bench.leaderboard", timeout=600,
                   env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["contender"] for r in rows] == list(CONTENDERS)
    by_name = {r["contender"]: r for r in rows}
    # the defaults cost nothing; the searches cost what they trained; the oracle's grid is 2 LRs x 1 epoch
    assert all(float(by_name[n]["tuning_epochs"]) == 0 and by_name[n]["default"] == "True"
               for n in ("HD", "MARTHE", "ECCO", "Prodigy", "Adam 1e-3"))  # fmt: skip
    assert float(by_name["grid (oracle)"]["tuning_epochs"]) == 2
    # Optuna's searches get autoHyper's trial budget (one trial of one epoch under --smoke)
    assert float(by_name["optuna TPE"]["tuning_epochs"]) == float(by_name["autoHyper"]["tuning_epochs"]) == 1
    assert (
        json.loads((out / "lenet5" / "optuna_tpe" / "0" / "search" / "optuna_best.json").read_text())["trial"]
        == 0
    )
    assert float(by_name["LR range test"]["tuning_epochs"]) > 0
    assert any(r["pareto"] == "True" for r in rows)
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == len(CONTENDERS) and all(0 <= float(r["test_acc"]) <= 1 for r in runs)
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lenet5 |" in (out / "leaderboard.md").read_text()


def _run(name, acc, cost, seed=0):
    return Run(name, "net", seed, acc, acc, 0.1, cost, 0.0, 0.0, cost == 0)


def test_pareto_front_is_accuracy_against_trial_epochs():
    rows = {r["contender"]: r for r in summarize([
        _run("cheap", 0.80, 0), _run("better", 0.90, 5), _run("dominated", 0.85, 10), _run("best", 0.95, 50),
        _run("tied-worse", 0.80, 3),
    ])}  # fmt: skip
    assert {n for n, r in rows.items() if r["pareto"]} == {"cheap", "better", "best"}
    spread = summarize([_run("a", 0.8, 0, seed=0), _run("a", 0.9, 0, seed=1)])[0]
    assert abs(spread["test_acc_mean"] - 0.85) < 1e-12 and abs(spread["test_acc_std"] - 0.0707107) < 1e-6


def test_autohyper_cost_reads_the_total_of_its_trials():
    # results.json's autohyper_trial_epochs is the search's total (13 trials of 5 epochs: 65), not one trial's
    assert autohyper_cost({"autohyper_trials": 13.0, "autohyper_trial_epochs": 65.0}) == (65.0, 5)
    assert autohyper_cost({"autohyper_trials": 3.0, "autohyper_trial_epochs": 6.0}) == (6.0, 2)


def test_two_networks_give_two_panels_and_one_legend_of_every_contender(tmp_path):
    from bench.leaderboard import figure

    runs = [_run("grid", 0.7, 50), _run("adam", 0.6, 0), _run("adam", 0.62, 0, seed=1)]
    # a contender run on the second network only (e.g. a leaderboard still filling) is in the legend too
    wide = [Run(r.contender, "resnet18-w8", r.seed, r.test_acc + 0.2, r.val_acc, r.lr, r.tuning_epochs, 0.0, 0.0,
                r.default) for r in runs] + [Run("ecco", "resnet18-w8", 0, 0.85, 0.85, None, 0.0, 0.0, 0.0, True)]  # fmt: skip
    rows = summarize(runs + wide)
    assert {(r["network"], r["contender"]) for r in rows if r["pareto"]} == {
        ("net", "grid"), ("net", "adam"), ("resnet18-w8", "grid"), ("resnet18-w8", "ecco")
    }  # fmt: skip
    labels = figure(rows, runs + wide, tmp_path / "leaderboard.png")
    assert labels == ["grid", "adam", "ecco"] and (tmp_path / "leaderboard.png").stat().st_size > 10_000


def test_a_contender_that_diverges_is_scored_as_chance_and_not_retrained(tmp_path, monkeypatch):
    import launch.run
    from bench.leaderboard import Setting, train
    from common.engine import NonFiniteLossError

    calls = []

    def diverging(cfg):
        calls.append(cfg)
        raise NonFiniteLossError("Training loss became nan at epoch 1, step 45.")

    monkeypatch.setattr(launch.run, "run", diverging)
    setting = Setting(tmp_path, ["dataset=shapes"], ["lenet5"], [0], 1, [0.1])
    folder = tmp_path / "lenet5" / "marthe" / "0"
    results, _ = train(setting, folder, ["method=adatune"])
    assert results["test_acc"] == results["val_acc"] == 0.1 and results["diverged"] == 1.0
    again, secs = train(setting, folder, ["method=adatune"])
    assert again["test_acc"] == 0.1 and secs == 0.0 and len(calls) == 1


def test_a_diverged_seed_is_named_in_the_table_and_the_runs(tmp_path, monkeypatch):
    import launch.run
    from bench.leaderboard import Setting, defaults_contender, markdown
    from common.engine import NonFiniteLossError

    def diverging(cfg):
        raise NonFiniteLossError("Training loss became nan at epoch 1, step 45.")

    monkeypatch.setattr(launch.run, "run", diverging)
    setting = Setting(tmp_path, ["dataset=shapes"], ["lenet5"], [0, 1], 1, [0.1])
    marthe = defaults_contender("MARTHE", ["+contender=marthe"])
    gone = [marthe(setting, "net", ["network=lenet5"], seed) for seed in (0, 1)]
    assert all(r.diverged and r.test_acc == 0.1 for r in gone)
    rows = summarize([*gone, _run("adam", 0.8, 0), _run("adam", 0.82, 0, seed=1)])
    by_name = {r["contender"]: r for r in rows}
    assert by_name["MARTHE"]["diverged_seeds"] == "0,1" and by_name["adam"]["diverged_seeds"] == ""
    table = markdown(rows, setting)
    assert "| net | MARTHE (diverged: seeds 0,1) | 10.0 ± 0.0 |" in table
    assert "| net | adam * | 81.0 ± 1.4 |" in table and "adam (diverged" not in table


def test_autohyper_cost_of_a_run_whose_final_training_diverged_comes_from_its_trials(tmp_path):
    from bench.leaderboard import autohyper_spent

    # a finished run: its results' figures
    assert autohyper_spent(tmp_path, {"autohyper_trials": 4.0, "autohyper_trial_epochs": 20.0,
                                      "autohyper_search_s": 12.5}) == (20.0, 5, 12.5)  # fmt: skip
    # diverged in the final training: results.json is the chance record; the search wrote one line per trial
    (tmp_path / "search").mkdir()
    lines = [{"index": i, "lr": 0.01 * (i + 1), "z": 1.0, "z_per_epoch": [1.0, 1.0, 1.0], "seconds": 2.0 + i}
             for i in range(4)]  # fmt: skip
    (tmp_path / "search" / "trials.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert autohyper_spent(tmp_path, {"test_acc": 0.1, "diverged": 1.0}) == (12.0, 3, 14.0)
    assert autohyper_spent(tmp_path / "none", {"diverged": 1.0}) == (0.0, 1, 0.0)


def test_the_table_names_each_override_once_as_hydra_applies_it():
    from bench.leaderboard import Setting, last_per_key, markdown

    assert last_per_key(["dataset=shapes", "dataset.train_size=10000", "trainer.threads=1",
                         "dataset.train_size=256"]) == ["dataset=shapes", "dataset.train_size=256",
                                                        "trainer.threads=1"]  # fmt: skip
    setting = Setting(Path("."), ["dataset=shapes", "dataset.train_size=10000"], ["net"], [0], 10, [0.1],
                      extra=["dataset.train_size=10000", "trainer.threads=1"])  # fmt: skip
    head = markdown(summarize([_run("adam", 0.8, 0)]), setting).splitlines()[0]
    assert "on dataset=shapes dataset.train_size=10000 trainer.threads=1;" in head
