"""Launcher configs, submitit (local processes), the sweep table, and relaunching a sweep's unfinished jobs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml
from hydra.errors import ConfigCompositionException

from launch.collect import aggregate_over_seeds, collect, write_summary
from launch.collect import main as collect_main
from launch.resweep import sweep_jobs, unfinished
from tests.conftest import compose_config, run_cli


def test_launcher_configs_switch_to_multirun_and_take_cluster_settings(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from common.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=["launcher=slurm", "cluster.partition=gpu", "cluster.account=lab"],
            return_hydra_config=True,
        )  # fmt: skip
        local = compose("config", overrides=["launcher=submitit_local"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and str(local.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.account == "lab"
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert local.hydra.launcher._target_.endswith("LocalLauncher")


def test_bad_launcher_key_fails_at_composition_naming_it(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_config("launcher=slurm", "hydra.launcher.gpus=2", output_dir=tmp_path)
    assert "gpus" in str(err.value.__cause__ or err.value)


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_slurm_without_sbatch_says_to_use_submitit_local(tmp_path):
    proc = run_cli("launcher=slurm", "debug=fast", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "launcher=submitit_local" in proc.stderr and "sbatch" in proc.stderr
    assert not (tmp_path / "s" / "0").exists()


def test_submitit_local_sweep_needs_no_dash_m(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "launcher=submitit_local", "debug=fast", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "results.json").read_text())["epochs"] == 1
    assert (sweep / ".submitit").is_dir()
    # the table over seeds (mean ± std) is printed and written
    assert "Over seeds" in proc.stdout and (sweep / "summary.csv").exists()


def test_resweep_relaunches_only_unfinished_jobs_into_their_own_folders(tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli(
        "-m", "debug=fast", "optimizer=sgd,adam", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sweep_jobs(sweep)
    assert jobs[3] == ["debug=fast", "optimizer=adam", "seed=1"] and len(jobs) == 4
    done_before = {i: (sweep / str(i) / "results.json").stat().st_mtime_ns for i in range(4)}
    (sweep / "1" / "results.json").unlink()  # finished training, results lost: resumes from its checkpoint
    shutil.rmtree(sweep / "3")  # never started
    assert [i for i, _ in unfinished(sweep)] == [1, 3]

    again = run_cli(str(sweep), cwd=tmp_path, module="launch.resweep")
    assert again.returncode == 0, again.stderr[-3000:]
    assert unfinished(sweep) == []
    for i in (0, 2):  # untouched
        assert (sweep / str(i) / "results.json").stat().st_mtime_ns == done_before[i]
    assert yaml.safe_load((sweep / "3" / ".hydra" / "overrides.yaml").read_text()) == jobs[3]
    assert not (sweep / "4").exists()
    rows = collect(sweep)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert len(aggregate_over_seeds(rows)) == 2


def test_collect_marks_failed_and_unfinished_jobs(tmp_path):
    for i, (status, seed) in enumerate([("done", "0"), ("done", "1"), ("failed", "2"), ("partial", "3")]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text("{}\n")
        (job / ".hydra" / "overrides.yaml").write_text(f"- optimizer=sgd\n- seed={seed}\n")
        if status == "done":
            (job / "results.json").write_text(json.dumps({"test_acc": 0.5 + 0.1 * int(seed)}))
        elif status == "failed":
            (job / "failed.json").write_text(json.dumps({"error": "NonFiniteLossError", "message": "nan"}))
        else:
            (job / "checkpoints").mkdir()
    rows = collect(tmp_path)
    assert [r["status"] for r in rows] == ["done", "done", "failed", "partial"]
    assert rows[2]["error"] == "NonFiniteLossError: nan"
    (agg,) = aggregate_over_seeds(rows)
    assert agg["seeds"] == 4  # over the two finished seeds:
    assert agg["test_acc_mean"] == pytest.approx(0.55) and agg["test_acc_std"] == pytest.approx(0.1 / 2**0.5)
    # the tables are saved, the seed table as numbers (CSV) and as mean ± std (Markdown)
    text = write_summary(tmp_path, rows)
    assert "0.5500 ± 0.0707" in text and "0.5500 ± 0.0707" in (tmp_path / "summary.md").read_text()
    (seed_row,) = list(csv.DictReader((tmp_path / "summary_seeds.csv").open()))
    assert float(seed_row["test_acc_mean"]) == pytest.approx(0.55) and seed_row["seeds"] == "4"


def test_collect_help_and_bad_arguments(tmp_path, capsys):
    assert collect_main(["--help"]) == 0 and "usage: python -m launch.collect" in capsys.readouterr().out
    assert collect_main([]) == 2
    assert collect_main([str(tmp_path / "nope")]) == 2 and "is not a folder" in capsys.readouterr().err
    assert collect_main([str(tmp_path)]) == 1


def test_launcher_check_without_sbatch(monkeypatch):
    from omegaconf import OmegaConf

    import launch.callbacks as callbacks

    monkeypatch.setattr(callbacks.shutil, "which", lambda name: None)
    slurm = OmegaConf.create({"hydra": {"launcher": {"_target_": "x.SlurmLauncher"}}})
    with pytest.raises(SystemExit, match="launcher=submitit_local"):
        callbacks.LauncherCheck().on_multirun_start(slurm)
    callbacks.LauncherCheck().on_multirun_start(
        OmegaConf.create({"hydra": {"launcher": {"_target_": "x.LocalLauncher"}}})
    )
