"""The paper's schedule baselines as ``method=train scheduler=...`` sweeps, and the sweep-level LR plot (common.plots)."""

from __future__ import annotations

import json
import math

import pytest

from common.plots import lr_curve, lr_figure, main, plot_sweep_lr
from launch.run import run
from tests.conftest import run_cli

LR0 = 0.1  # conf/optimizer/sgd_momentum.yaml
EXPECTED = {  # the LR of epochs 1..3 (trainer.epochs=3)
    "step": [LR0, LR0 * 0.1, LR0 * 0.01],  # step_size max(1, int(3 * 0.34)) = 1, gamma 0.1
    "exponential": [LR0, LR0 * 0.95, LR0 * 0.95**2],
    "cosine_restarts": [LR0 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(3)],  # T_0 10
}


def _epoch_lrs(job_dir):
    recs = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["lr"] for r in recs if "epoch" in r and "lr" in r]


def test_schedule_baselines_sweep_with_method_train_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m",
        "method=train",
        "scheduler=step,exponential,cosine_restarts",
        "seed=0",
        "debug=fast",
        "trainer.epochs=3",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, name in enumerate(EXPECTED):
        assert _epoch_lrs(sweep / str(job)) == pytest.approx(EXPECTED[name], rel=1e-12)
        assert json.loads((sweep / str(job) / "results.json").read_text())["epochs"] == 3
    fig = lr_figure(sweep)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "learning rate" and ax.get_yscale() == "log"
    assert ax.get_title() == "learning rate per epoch: sweep"
    # one line per job, labelled by the override that varies: a staircase of that job's logged LRs, the LR of
    # epoch e held from e - 1 to e
    assert [line.get_label() for line in ax.get_lines()] == [f"scheduler={name}" for name in EXPECTED]
    for line, name in zip(ax.get_lines(), EXPECTED):
        assert list(line.get_xdata()) == [0.0, 1.0, 2.0, 3.0]
        assert list(line.get_ydata()) == pytest.approx([*EXPECTED[name], EXPECTED[name][-1]], rel=1e-12)
        assert line.get_drawstyle() == "steps-post"
    out = plot_sweep_lr(sweep)
    assert out == sweep / "lr_schedules.png" and out.read_bytes()[:4] == b"\x89PNG"


def test_sweep_plot_reads_the_per_step_lr_of_adatune_runs(cfg_factory, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for job, algorithm in enumerate(("hd", "marthe")):
        run(cfg_factory("method=adatune", f"method.algorithm={algorithm}", name=f"sweep/{job}"))
        # what Hydra's multirun leaves in each job folder
        (sweep / str(job) / ".hydra").mkdir()
        (sweep / str(job) / ".hydra" / "config.yaml").write_text("method:\n  name: adatune\n")
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- method=adatune\n- method.algorithm={algorithm}\n"
        )
        epochs, lrs = lr_curve(sweep / str(job))
        recs = [json.loads(x) for x in (sweep / str(job) / "metrics.jsonl").read_text().splitlines()]
        # debug=fast: one epoch of 3 steps, so step s is at epoch s / 3
        assert epochs == pytest.approx([1 / 3, 2 / 3, 1.0]) and lrs == [
            r["adatune/lr"] for r in recs if "adatune/lr" in r
        ]
    assert main([str(sweep)]) == 0
    (ax,) = lr_figure(sweep).axes
    assert [line.get_label() for line in ax.get_lines()] == ["method.algorithm=hd", "method.algorithm=marthe"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3]
    assert (sweep / "lr_schedules.png").read_bytes()[:4] == b"\x89PNG"
    assert "lr_schedules.png" in capsys.readouterr().out
    assert plot_sweep_lr(tmp_path / "empty") is None


def _write_job(sweep, job, overrides, records):
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("method:\n  name: ecc\n")
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_method_of_several_phases_gets_one_panel_per_phase(tmp_path):
    """ECC logs pretraining, ADMM and fine-tuning into one metrics.jsonl, each restarting at epoch 1."""
    sweep = tmp_path / "sweep"
    for job, budget in enumerate((0.3, 0.5)):
        records = [
            {"step": 3 * e, "epoch": e, "lr": 0.1 * 0.5 ** (e - 1)} for e in (1, 2)
        ]  # one-phase pretraining
        records[0] = {**records[0], "phase": "pretrain"}
        records[1] = {**records[1], "phase": "pretrain"}
        records.append({"step": 4, "train/loss_running": 1.0, "lr": 0.001})  # a running-loss record: no epoch
        records += [{"step": 3 * e, "epoch": e, "lr": 0.001, "phase": "admm"} for e in (1, 2, 3)]
        records += [{"step": 3, "epoch": 1, "lr": 0.01 * (1 + job), "phase": "finetune"}]
        _write_job(sweep, job, ["method=ecc", f"method.budget={budget}"], records)
    fig = lr_figure(sweep)
    assert [ax.get_title() for ax in fig.axes] == ["pretrain", "admm", "finetune"]
    assert fig._suptitle.get_text() == "learning rate per epoch, by phase: sweep"
    pretrain, admm, finetune = fig.axes
    assert [line.get_label() for line in admm.get_lines()] == ["method.budget=0.3", "method.budget=0.5"]
    assert list(pretrain.get_lines()[0].get_xdata()) == [0.0, 1.0, 2.0]
    assert list(pretrain.get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.05, 0.05])
    assert list(admm.get_lines()[1].get_xdata()) == [0.0, 1.0, 2.0, 3.0]
    assert [list(line.get_ydata()) for line in finetune.get_lines()] == [[0.01, 0.01], [0.02, 0.02]]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes) and pretrain.get_ylabel() == "learning rate"
