"""`python -m launch` in a subprocess, from another folder: a run, a 2-job sweep, bad input, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.checkpoint import load_verified
from common.config import REPO_ROOT
from tests.conftest import run_cli


def test_cli_run_from_another_folder(tmp_path):
    out = tmp_path / "job"
    proc = run_cli("debug=fast", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Results: method=train network=mlp dataset=digits" in proc.stdout
    assert "test_acc" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"test_acc", "test_loss", "val_acc", "train_loss"}
    assert (out / ".hydra" / "config.yaml").exists() and (out / "run.log").exists()
    assert not (tmp_path / "outputs").exists(), "nothing may be written into the current folder"


def test_cli_multirun_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "debug=fast", "optimizer=sgd,adam", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "results.json").exists()
    assert "optimizer" in proc.stdout and "sgd" in proc.stdout and "adam" in proc.stdout
    assert (sweep / "summary.csv").exists() and (sweep / "summary.md").exists()
    # the sweep's LR plot (method=train logs the LR every epoch); no ecc runs, so no accuracy-cost plot
    assert f"plot: {sweep / 'lr_schedules.png'}" in proc.stdout
    assert (sweep / "lr_schedules.png").read_bytes()[:4] == b"\x89PNG"
    assert not (sweep / "accuracy_cost.png").exists()


def test_cli_unknown_network_lists_choices(tmp_path):
    proc = run_cli("network=resnet9000", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'network/resnet9000'" in proc.stderr
    assert "resnet18" in proc.stderr and "mlp" in proc.stderr


def test_cli_wrong_type_is_one_line(tmp_path):
    proc = run_cli("debug=fast", "trainer.epochs=abc", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "trainer.epochs" in errors[0]
    assert "Traceback" not in proc.stderr


def test_cli_missing_dataset_says_where(tmp_path):
    proc = run_cli(
        "debug=fast", "dataset=cifar10", "network=resnet18", f"paths.data_dir={tmp_path / 'nodata'}",
        f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert str(tmp_path / "nodata") in proc.stderr and "download" in proc.stderr
    assert "Traceback" not in proc.stderr


def _launch_background(args: list[str], cwd) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "launch", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_or_interrupted_then_rerun_equals_uninterrupted(tmp_path, sig):
    args = [
        "debug=fast",
        "trainer.epochs=4",
        "trainer.limit_train_batches=10",
        "trainer.checkpoint_every_steps=2",
        "network.dropout=0.2",
    ]
    ref = run_cli(*args, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run_dir = tmp_path / "killed"
    proc = _launch_background([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ckpt.exists():
            try:
                if load_verified(ckpt)["global_step"] >= 14:
                    break
            except Exception:  # being replaced right now
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert not (run_dir / "results.json").exists(), "the run ended before it could be killed"
    resume = [*args, f"hydra.run.dir={run_dir}"]
    if sig == signal.SIGINT:  # a graceful stop: a checkpoint of the step where it stopped, exit 130
        assert proc.returncode == 130, stderr.decode()[-2000:]
        state = load_verified(ckpt)
        assert state["global_step"] >= 14
        # one line: where it stopped, in the log's epoch numbers, and the exact command that continues it
        (line,) = [x for x in stderr.decode().splitlines() if x.startswith("interrupted:")]
        hint = re.fullmatch(
            r"interrupted: stopped by SIGINT at epoch (\d)/4, batch (\d+)/10 \(step (\d+); (\d) of 4 epochs "
            rf"completed\), with a checkpoint of that point in {re.escape(str(run_dir / 'checkpoints'))}; "
            r"to continue, run: (.*)",
            line,
        )
        assert hint, line
        epoch, batch, step, completed = map(int, hint.groups()[:4])
        assert (epoch, batch, step, completed) == (
            state["epoch"] + 1, state["batch"], state["global_step"], state["epoch"]
        )  # fmt: skip
        assert hint[5] == f"python -m launch {' '.join(args)} hydra.run.dir={run_dir}"
        resume = shlex.split(hint[5])[3:]  # continue with the printed command itself

    again = run_cli(*resume, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    drop = ("time_s", "train_time_s")
    r_ref = {
        k: v for k, v in json.loads((tmp_path / "ref" / "results.json").read_text()).items() if k not in drop
    }
    r_new = {k: v for k, v in json.loads((run_dir / "results.json").read_text()).items() if k not in drop}
    assert r_new == r_ref
    w_ref = load_verified(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    w_new = load_verified(ckpt)["model"]
    assert all(torch.equal(w_ref[k], w_new[k]) for k in w_ref)


def test_interrupted_sweep_says_to_resweep_and_resweep_finishes_it(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "debug=fast",
        "trainer.epochs=4",
        "trainer.limit_train_batches=10",
        "trainer.checkpoint_every_steps=2",
    ]
    proc = _launch_background(["-m", *args, "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    ckpt = sweep / "0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ckpt.exists() and load_verified(ckpt)["global_step"] >= 6:
                break
        except Exception:  # being replaced right now
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    (line,) = [x for x in stderr.decode().splitlines() if x.startswith("interrupted:")]
    assert line.startswith("interrupted: stopped by SIGINT at epoch ")
    assert line.endswith(f"; to continue, run: python -m launch.resweep {sweep}")
    assert not all((sweep / job / "results.json").exists() for job in ("0", "1"))

    again = run_cli(str(sweep), cwd=tmp_path, module="launch.resweep")
    assert again.returncode == 0, again.stderr[-3000:]
    assert all((sweep / job / "results.json").exists() for job in ("0", "1"))


def test_cli_sweep_goes_on_past_a_failed_job_and_reports_it(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "debug=fast", "network=lstm,mlp", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1
    assert (sweep / "0" / "failed.json").exists() and (sweep / "1" / "results.json").exists()
    assert "1 of 2 jobs did not finish" in proc.stderr + proc.stdout
    table = (sweep / "summary.md").read_text()
    assert "failed" in table and "ConfigError" in table and "done" in table
