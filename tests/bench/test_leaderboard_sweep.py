"""``experiment=leaderboard_cifar10`` (issue 17): the leaderboard's one-job contenders as one Hydra sweep a cluster
runs, and ``python -m bench.leaderboard --from-sweep`` making the same report from its folders."""

from __future__ import annotations

import csv
import json

from omegaconf import OmegaConf

from bench.leaderboard import CONTENDER_CONFIGS, CONTENDERS, GRID_CONFIG_PREFIX
from common.config import CONF_DIR
from tests.conftest import compose_config, run_cli

EXPERIMENT = CONF_DIR / "experiment" / "leaderboard_cifar10.yaml"


def _swept() -> list[str]:
    params = OmegaConf.load(EXPERIMENT).hydra.sweeper.params
    return str(params["+contender"]).split(",")


def test_the_experiment_sweeps_every_contender_config_and_the_bench_grid():
    files = sorted(p.stem for p in (CONF_DIR / "contender").glob("*.yaml"))
    assert sorted(_swept()) == files
    assert set(CONTENDER_CONFIGS.values()) <= set(files) and set(CONTENDER_CONFIGS) <= set(CONTENDERS)
    # the grid points are the bench's default grid
    grid = sorted(
        compose_config(f"+contender={f}", fast=False).optimizer.lr
        for f in files
        if f.startswith(GRID_CONFIG_PREFIX)
    )
    assert grid == [0.003, 0.01, 0.03, 0.1, 0.3]
    cfg = compose_config("experiment=leaderboard_cifar10", fast=False)
    assert (cfg.network.name, cfg.dataset.name, cfg.trainer.epochs) == ("resnet18", "cifar10", 50)


def test_each_contender_config_selects_what_it_names():
    def pick(name: str, *extra: str):
        return compose_config(f"+contender={name}", "network=lenet5", "dataset=shapes", *extra, fast=False)

    assert pick("autohyper").method.name == "autohyper" and pick("autohyper").method.mode == "improved"
    assert pick("autohyper_paper").method.mode == "paper"
    assert pick("hd").method.algorithm == "hd" and pick("marthe").method.algorithm == "marthe"
    assert pick("ecco").optimizer._target_ == "ecco.build"
    sf = pick("schedulefree_sgd")
    assert sf.optimizer._target_ == "schedulefree.SGDScheduleFree" and not sf.scheduler
    adam = pick("adam")
    assert adam.optimizer._target_ == "torch.optim.Adam" and adam.optimizer.lr == 1e-3
    # a contender's own values win over the per-(optimizer, network, dataset) recipe (lenet5 digits: lr 0.02)
    assert pick("grid_lr1e-1", "dataset=digits").optimizer.lr == 0.1


def test_a_sweep_of_the_experiment_gives_the_leaderboard(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m", "experiment=leaderboard_cifar10", "dataset=digits", "network=lenet5", "debug=fast", "seed=0",
        "+contender=grid_lr1e-2,grid_lr1e-1,autohyper,adam", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("--from-sweep", str(sweep), cwd=tmp_path, module="bench.leaderboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["contender"]: r for r in csv.DictReader((sweep / "leaderboard.csv").open())}
    assert list(rows) == ["grid (oracle)", "autoHyper", "Adam 1e-3"]
    # the oracle is the grid point with the better validation accuracy (ties: the smaller LR), its cost 2 x E
    vals = {
        lr: json.loads((sweep / str(job) / "results.json").read_text())["val_acc"]
        for job, lr in ((0, 0.01), (1, 0.1))
    }
    best = max(vals, key=lambda lr: (vals[lr], -lr))
    runs = {r["contender"]: r for r in csv.DictReader((sweep / "runs.csv").open())}
    assert float(runs["grid (oracle)"]["lr"]) == best and float(rows["grid (oracle)"]["tuning_epochs"]) == 2
    assert float(rows["autoHyper"]["tuning_epochs"]) >= 1 and rows["Adam 1e-3"]["default"] == "True"
    assert (sweep / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    # jobs whose loss turned non-finite (launch marks them failed.json) are scored as chance, as on the local
    # board; autoHyper's search cost then comes from its trials' record
    for job in (2, 3):
        (sweep / str(job) / "results.json").unlink()
        (sweep / str(job) / "failed.json").write_text(
            json.dumps(
                {"error": "NonFiniteLossError", "message": "Training loss became nan at epoch 1, step 2."}
            )
        )
    proc = run_cli("--from-sweep", str(sweep), cwd=tmp_path, module="bench.leaderboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = {r["contender"]: r for r in csv.DictReader((sweep / "leaderboard.csv").open())}
    assert list(again) == list(rows) and again["Adam 1e-3"]["diverged_seeds"] == "0"
    assert (
        float(again["Adam 1e-3"]["test_acc_mean"]) == 0.1 and again["grid (oracle)"]["diverged_seeds"] == ""
    )
    assert again["autoHyper"]["tuning_epochs"] == rows["autoHyper"]["tuning_epochs"]
    assert "| lenet5 | autoHyper (diverged: seed 0) | 10.0 ± 0.0 |" in (sweep / "leaderboard.md").read_text()


def test_from_sweep_of_a_missing_folder_is_one_line(tmp_path):
    proc = run_cli("--from-sweep", str(tmp_path / "nope"), cwd=tmp_path, module="bench.leaderboard")
    assert (
        proc.returncode == 2 and proc.stderr.strip().startswith("error: ") and "\n" not in proc.stderr.strip()
    )
