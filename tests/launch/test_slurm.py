"""Against a real one-node SLURM (scripts/slurm-local.sh start): a 2-job sweep, a requeued job that resumes, and
requests the node can never hold ending the sweep in one line (launch/slurm.py).

Marked ``slurm``: run with ``make test-slurm`` (CI runs them when it can start the cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from common.checkpoint import load_verified
from common.config import REPO_ROOT
from tests.conftest import run_cli

pytestmark = pytest.mark.slurm

SLURM_RESOURCES = (
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if shutil.which("sbatch") is None:
        pytest.skip("no SLURM here: scripts/slurm-local.sh start")
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        pytest.skip("slurmctld does not answer: scripts/slurm-local.sh start")


def _node() -> tuple[int, int]:
    """CPUs and memory (MB) of the cluster's node."""
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True, check=True
    ).stdout
    cpus, mem = out.split()[:2]
    return int(cpus), int(mem)


def _fit_overrides() -> str:
    cpus, mem = _node()
    return f"hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task={cpus} hydra.launcher.mem_gb={mem // 1024}"


def _queue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return out.split()


def _wait_until_queue_empty(seconds: float = 30) -> list[str]:
    # the batch step may still be winding down when the launcher has read the last result
    deadline = time.monotonic() + seconds
    while _queue() and time.monotonic() < deadline:
        time.sleep(0.5)
    return _queue()


def test_two_job_sweep_on_slurm(tmp_path):
    sweep = tmp_path / "sweep"
    start = time.monotonic()
    proc = run_cli(
        "launcher=slurm", "debug=fast", "optimizer=sgd,adam", *SLURM_RESOURCES, f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert 0.0 <= results["test_acc"] <= 1.0
        meta = json.loads((sweep / job / "meta.json").read_text())
        assert meta["slurm"].get("SLURM_ARRAY_JOB_ID"), "the job did not run under SLURM"
    assert "sgd" in proc.stdout and "adam" in proc.stdout  # the sweep table
    print(f"2-job sweep round trip on the local SLURM: {elapsed:.1f} s")
    assert _wait_until_queue_empty() == []


def test_requeued_job_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    # small enough to finish in seconds, slow enough (about 0.3 s a step) to be caught mid-run
    args = [
        "debug=fast", "network=resnet18", "dataset=synthetic", "dataset.batch_size=8", "dataset.eval_batch_size=32",
        "trainer.epochs=3", "trainer.limit_train_batches=6", "trainer.checkpoint_every_steps=2", "trainer.threads=1",
    ]  # fmt: skip
    reference = run_cli(*args, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "launcher=slurm", *args, *SLURM_RESOURCES, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ckpt = sweep / "0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    step = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            step = load_verified(ckpt)["global_step"] if ckpt.exists() else 0
        except Exception:  # being replaced right now
            step = 0
        if step >= 4:
            break
        time.sleep(0.1)
    assert step >= 4, "the job never reached its fourth step"
    job_id = _queue()[0].split("_")[0]
    requeued_at = time.monotonic()
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    out, err = proc.communicate(timeout=300)
    print(f"requeued at step {step}; the job finished {time.monotonic() - requeued_at:.1f} s later")
    assert proc.returncode == 0, err[-3000:]

    meta = json.loads((sweep / "0" / "meta.json").read_text())
    # meta.json keeps the first start's provenance and lists each resume's under "resumes"
    starts = [meta, *meta.get("resumes", [])]
    restarts = max(int(m["slurm"].get("SLURM_RESTART_COUNT", "0")) for m in starts)
    assert restarts >= 1, "the job was not requeued"
    assert "Resumed train" in (sweep / "0" / "run.log").read_text()
    drop = ("time_s", "train_time_s")
    got = {k: v for k, v in json.loads((sweep / "0" / "results.json").read_text()).items() if k not in drop}
    want = {
        k: v for k, v in json.loads((tmp_path / "ref" / "results.json").read_text()).items() if k not in drop
    }
    assert got == want
    assert _wait_until_queue_empty() == []


def test_ecco_robustness_draws_as_slurm_jobs(tmp_path):
    out = tmp_path / "study"
    proc = run_cli(
        "debug=fast", "method=ecco_robustness", "method.trials=1", "method.optimizers=[ecco,adam]",
        "method.executor=slurm", "method.job.gpus_per_node=0", "method.job.cpus_per_task=1", "method.job.mem_gb=2",
        "method.job.timeout_min=10", "trainer.threads=1", f"hydra.run.dir={out}",
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("ecco-000", "adam-000"):
        row = json.loads((out / "trials" / name / "result.json").read_text())
        assert 0.0 <= row["test_acc"] <= 1.0
    # one job array of two tasks: submitit's logs carry the SLURM array job id
    logs = sorted(p.name for p in (out / "submitit").glob("*_0_log.out"))
    assert len(logs) == 2 and all("_" in n for n in logs)
    assert (out / "robustness.png").exists()
    assert _wait_until_queue_empty() == []


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_default_request_exits_non_zero_in_one_line_within_two_minutes(tmp_path):
    # 1 GPU, 8 CPUs, 32 GB on a node without GPU: sbatch refuses the gres
    start = time.monotonic()
    proc = run_cli(
        "launcher=slurm", "debug=fast", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, timeout=120
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    line = _one_line(proc)
    print(f"{elapsed:.1f} s: {line}")
    assert "Asked gpus_per_node=1 cpus_per_task=8 mem_gb=32 timeout_min=240" in line
    assert line.endswith(_fit_overrides())
    assert elapsed < 120 and _wait_until_queue_empty() == []


def test_request_the_node_can_never_hold_is_cancelled_in_one_line_within_two_minutes(tmp_path):
    # accepted by sbatch, then pending with Reason=PartitionConfig: more CPUs than the node has
    cpus, _ = _node()
    start = time.monotonic()
    proc = run_cli(
        "launcher=slurm", "debug=fast", "seed=0,1", "hydra.launcher.gpus_per_node=0",
        f"hydra.launcher.cpus_per_task={4 * cpus}", "hydra.launcher.mem_gb=1", f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    line = _one_line(proc)
    print(f"{elapsed:.1f} s: {line}")
    assert "(PartitionConfig" in line and "cancelled the sweep's jobs" in line
    assert line.endswith(f"rerun with hydra.launcher.cpus_per_task={cpus}")
    assert elapsed < 120 and _wait_until_queue_empty() == []


def test_slurm_local_start_prints_the_overrides_that_fit_its_node():
    proc = subprocess.run(
        [str(REPO_ROOT / "scripts" / "slurm-local.sh"), "start"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"launcher=slurm {_fit_overrides()}" in proc.stderr
