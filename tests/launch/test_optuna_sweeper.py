"""``hydra/sweeper=optuna`` (launch/optuna_sweeper.py): the search space from Hydra's grammar, a sweep end to end."""

from __future__ import annotations

import csv
import json
import math

import optuna.distributions as dist
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from launch.optuna_sweeper import search_space
from tests.conftest import run_cli


def _space(*overrides: str):
    return search_space(OverridesParser.create().parse_overrides(list(overrides)))


def test_search_space_from_hydra_sweep_grammar():
    space, fixed = _space(
        "optimizer.lr=tag(log, interval(1e-4, 1))",
        "optimizer.momentum=interval(0.5, 0.99)",
        "trainer.epochs=tag(int, interval(2, 8))",
        "optimizer.weight_decay=choice(0, 5e-4)",
        "seed=range(0, 3)",
        "scheduler=cosine,none",
        "network=lenet5",
    )
    assert space["optimizer.lr"] == dist.FloatDistribution(1e-4, 1.0, log=True)
    assert space["optimizer.momentum"] == dist.FloatDistribution(0.5, 0.99, log=False)
    assert space["trainer.epochs"] == dist.IntDistribution(2, 8)
    assert space["optimizer.weight_decay"] == dist.CategoricalDistribution([0, 5e-4])
    assert space["seed"] == dist.CategoricalDistribution([0, 1, 2])
    assert space["scheduler"] == dist.CategoricalDistribution(["cosine", "none"])
    assert fixed == ["network=lenet5"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("optimizer.lr=tag(log, interval(0, 1))", "log interval needs low > 0"),
     ("optimizer.lr=interval(1, 1)", "needs low < high")],
)  # fmt: skip
def test_bad_intervals_are_one_line(override, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _space(override)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: optimizer.lr: ") and message in err and "\n" not in err


def test_optuna_sweep_runs_trials_as_jobs_and_records_the_best_by_validation(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m", "hydra/sweeper=optuna", "optimizer.lr=tag(log, interval(1e-3, 1))", "optimizer.weight_decay=choice(0, -1)",
        "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=3",
        "debug=fast", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    # a negative weight decay makes torch refuse the optimizer: that job fails, the search goes on, and the
    # sweep exits non-zero as every sweep with a failed job does
    rows = list(csv.DictReader((sweep / "optuna.csv").open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        job = sweep / row["job"]
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        assert f"optimizer.lr={row['optimizer.lr']}" in overrides
        assert 1e-3 <= float(row["optimizer.lr"]) <= 1
        if row["optimizer.weight_decay"] == "-1":
            assert row["state"] == "FAIL" and row["value"] == "" and (job / "failed.json").exists()
        else:
            val_acc = json.loads((job / "results.json").read_text())["val_acc"]
            assert row["state"] == "COMPLETE" and float(row["value"]) == val_acc
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert complete and failed, "seed 3 draws both weight decays in 4 trials"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    best = json.loads((sweep / "optuna_best.json").read_text())
    top = max(complete, key=lambda r: float(r["value"]))
    assert best["trial"] == int(top["trial"]) and math.isclose(best["value"], float(top["value"]))
    assert best["params"]["optimizer.lr"] == pytest.approx(float(top["optimizer.lr"]), rel=1e-15)
    assert (sweep / "summary.csv").exists()  # the sweep table of launch, as for any sweep


def test_optuna_sweep_with_nothing_to_search_is_one_line(tmp_path):
    proc = run_cli("-m", "hydra/sweeper=optuna", "debug=fast", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: hydra/sweeper=optuna has nothing")
    assert "Traceback" not in proc.stderr
