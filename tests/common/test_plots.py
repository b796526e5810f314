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
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "learning rate" and ax.get_yscale() == "log"
    assert ax.get_title() == "learning rate per step: sweep"
    # one line per job, labelled by the override that varies, holding that job's logged LRs
    assert [line.get_label() for line in ax.get_lines()] == [f"scheduler={name}" for name in EXPECTED]
    for line, name in zip(ax.get_lines(), EXPECTED):
        assert list(line.get_ydata()) == pytest.approx(EXPECTED[name], rel=1e-12)
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
        steps, lrs = lr_curve(sweep / str(job))
        recs = [json.loads(x) for x in (sweep / str(job) / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3] and lrs == [r["adatune/lr"] for r in recs if "adatune/lr" in r]
    assert main([str(sweep)]) == 0
    (ax,) = lr_figure(sweep).axes
    assert [line.get_label() for line in ax.get_lines()] == ["method.algorithm=hd", "method.algorithm=marthe"]
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [3, 3]
    assert (sweep / "lr_schedules.png").read_bytes()[:4] == b"\x89PNG"
    assert "lr_schedules.png" in capsys.readouterr().out
    assert plot_sweep_lr(tmp_path / "empty") is None
