"""launcher=slurm gives up in one line on a request SLURM refuses or will never start (launch/slurm.py).

Fast tier: no real SLURM. A fake ``sbatch``/``squeue``/``scancel``/``scontrol``/``sinfo``/``sacct`` (small shell scripts
written into ``tmp_path`` and put first on PATH) answer from files the test writes; each logs its arguments.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launch import slurm
from launch.slurm import Node, Partition, Request, WatchedSlurmLauncher, classify
from tests.conftest import run_cli

# what scontrol and sinfo of scripts/slurm-local.sh's cluster print (2 CPUs, no GPU, 20489 MB)
LOCAL_PARTITION = (
    "PartitionName=local AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED "
    "MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=localhost PriorityJobFactor=1 PriorityTier=1 RootOnly=NO "
    "ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 TotalNodes=1 "
    "SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=2,mem=20489M,node=1,billing=2\n"
)
LOCAL_NODES = "localhost|2|20489|(null)\n"

DEFAULT_REQUEST = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32, "timeout_min": 240}
LOCAL_FIX = "hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=2 hydra.launcher.mem_gb=20"

_FAKES = {
    "sbatch": """
if [ -s "$FAKE_SLURM/sbatch.err" ]; then cat "$FAKE_SLURM/sbatch.err" >&2; exit 1; fi
echo "Submitted batch job 42"
""",
    "squeue": """
[ -e "$FAKE_SLURM/cancelled" ] || cat "$FAKE_SLURM/squeue.out" 2>/dev/null
""",
    "scancel": """
touch "$FAKE_SLURM/cancelled"
""",
    "scontrol": """
cat "$FAKE_SLURM/partitions.out"
""",
    "sinfo": """
case "$*" in
    *--Node*) part=$(echo "$*" | sed 's/.*--partition \\([^ ]*\\).*/\\1/'); cat "$FAKE_SLURM/nodes.$part" ;;
    *) awk '{sub("PartitionName=", "", $1); print $1}' "$FAKE_SLURM/partitions.out" ;;
esac
""",
    "sacct": """
echo "JobID|State|NodeList"
""",
    # never run: submitit's SlurmExecutor refuses to start unless `srun` is on PATH (a machine without SLURM, CI)
    "srun": """
echo "srun: the fake SLURM of tests/launch/test_slurm_watch.py runs no job step" >&2; exit 1
""",
}


class FakeSlurm:
    """The fake commands' folder (``bin``), their answers and the log of their calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        for name, body in _FAKES.items():
            script = self.bin / name
            script.write_text(f'#!/bin/bash\necho "{name} $*" >> "$FAKE_SLURM/calls.log"\n{body.lstrip()}')
            script.chmod(0o755)
        self.answer("partitions.out", LOCAL_PARTITION)
        self.answer("nodes.local", LOCAL_NODES)

    def answer(self, name: str, text: str) -> None:
        (self.root / name).write_text(text)

    def calls(self, command: str) -> list[str]:
        log = self.root / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if line.split()[0] == command]

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM": str(self.root)}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> FakeSlurm:
    fake = FakeSlurm(tmp_path / "fake-slurm")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


def _params(tmp_path: Path, **request) -> dict:
    """A launcher's parameters as Hydra passes them (hydra-submitit-launcher's SlurmQueueConf, resolved)."""
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    params = OmegaConf.to_container(OmegaConf.structured(SlurmQueueConf))
    params.pop("_target_")
    params.update(submitit_folder=str(tmp_path / "sweep" / ".submitit" / "%j"), name="test", **request)
    return params


def _launcher(tmp_path: Path, **request) -> WatchedSlurmLauncher:
    launcher = WatchedSlurmLauncher(**_params(tmp_path, **request))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=config)  # type: ignore[arg-type]
    return launcher


def _base_class() -> type:
    """The submitit launcher base class that ``WatchedSlurmLauncher`` really inherits from.

    Not ``hydra_plugins.hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher`` as read now: Hydra's
    plugin discovery (any earlier test that composed a config in this process) re-executes that module, which
    rebinds the name to a new class, so patching it would miss and the real submit-and-wait would run (and wait
    forever for the fake job 42).
    """
    return next(c for c in WatchedSlurmLauncher.__mro__ if c.__name__ == "BaseSubmititLauncher")


@pytest.fixture
def fake_base_launch(monkeypatch, fake_slurm):
    """Replace the base class's submit-and-wait: it records job 42_0 as submitit does, then waits until the job is
    cancelled (fake scancel) or ``finish_after`` seconds have passed, and returns ``["done"]``."""
    state = {"finish_after": 30.0}
    stop = threading.Event()

    def launch(self, job_overrides, initial_job_idx):
        folder = Path(self.params["submitit_folder"].replace("%j", "42_0"))
        folder.mkdir(parents=True)
        (folder / "42_0_submitted.pkl").write_bytes(b"")
        deadline = time.monotonic() + state["finish_after"]
        while time.monotonic() < deadline and not stop.is_set():
            if (fake_slurm.root / "cancelled").exists():
                raise RuntimeError("job 42_0 was cancelled")
            time.sleep(0.05)
        return ["done"]

    monkeypatch.setattr(_base_class(), "launch", launch)
    yield state
    stop.set()


# ---------------------------------------------------------------------------------------------------------------
# pending reasons


@pytest.mark.parametrize(
    "reason",
    [
        "PartitionConfig", "PartitionTimeLimit", "BadConstraints", "InvalidAccount", "InvalidQOS",
        "AccountNotAllowed", "QOSNotAllowed", "DependencyNeverSatisfied", "MaxMemPerLimit",
        "AssocMaxCpuPerJobLimit", "AssocMaxWallDurationPerJobLimit", "QOSMaxGRESPerNode", "QOSMaxMemoryPerJob",
        "QOSMaxNodePerJobLimit", "QOSMinCpuNotSatisfied", "QOSMinGRES",
    ],
)  # fmt: skip
def test_reasons_that_mean_never(reason):
    assert classify(reason) == "never"


@pytest.mark.parametrize(
    "reason",
    [
        "Priority", "Dependency", "BeginTime", "None", "JobHeldUser", "JobHeldAdmin",
        "JobArrayTaskLimit", "AssocGrpCpuLimit", "QOSGrpGRES", "QOSMaxJobsPerUserLimit", "QOSMaxCpuPerUserLimit",
        "AssocMaxJobsLimit", "AssocMaxSubmitJobLimit", "MaxCpuPerAccount", "PartitionDown", "NodeDown", "Licenses",
        "Reservation", "launch failed requeued held", "",
    ],
)  # fmt: skip
def test_reasons_that_are_waits(reason):
    assert classify(reason) == "wait"


@pytest.mark.parametrize(
    "reason", ["Resources", "ReqNodeNotAvail, UnavailableNodes:gpu[01-02]", "PartitionNodeLimit"]
)
def test_reasons_judged_by_what_the_nodes_can_hold(reason):
    assert classify(reason) == "fit"


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("UNLIMITED", None), ("infinite", None), ("30", 30), ("30:00", 30), ("04:00:00", 240), ("1-00:00:00", 1440),
     ("2-12", 3600), ("1-02:30", 1590), ("00:10:30", 11)],
)  # fmt: skip
def test_slurm_time_format_in_minutes(text, minutes):
    assert slurm._minutes(text) == minutes


# ---------------------------------------------------------------------------------------------------------------
# the request and what fits


def test_request_from_the_launcher_parameters(tmp_path):
    request = Request.from_params(_params(tmp_path, **DEFAULT_REQUEST))
    assert request.describe() == "gpus_per_node=1 cpus_per_task=8 mem_gb=32 timeout_min=240"
    assert request.mem_mb == 32 * 1024 and request.partition is None
    two = Request.from_params(
        _params(tmp_path, gpus_per_node=None, gpus_per_task=2, tasks_per_node=2, cpus_per_task=4, mem_gb=0.5)
    )
    assert (two.gpus_per_node, two.cpus_per_node) == (4, 8)
    assert two.describe() == "gpus_per_node=4 cpus_per_task=4 mem_gb=0.5 timeout_min=60 tasks_per_node=2"
    gres = Request.from_params(
        _params(tmp_path, additional_parameters={"gres": "gpu:a100:2", "partition": "gpu"})
    )
    assert (gres.gpus_per_node, gres.partition) == (2, "gpu")


def test_fit_picks_the_node_needing_fewest_changes_and_gives_values_that_fit():
    part = Partition(
        name="mixed",
        nodes=(
            Node("cpu01", cpus=64, mem_mb=256 * 1024, gpus=0),
            Node("gpu01", cpus=16, mem_mb=128 * 1024, gpus=4),
        ),
        max_time_min=120,
    )
    node, changes = part.fit(Request(gpus_per_node=1, cpus_per_task=32, mem_gb=64, timeout_min=240))
    assert node.name == "gpu01" and changes == {"cpus_per_task": 16, "timeout_min": 120}
    node, changes = part.fit(Request(gpus_per_node=8, cpus_per_task=4, tasks_per_node=2, mem_gb=500))
    assert node.name == "gpu01" and changes == {"gpus_per_node": 4, "mem_gb": 128}
    assert part.fits(Request(gpus_per_node=4, cpus_per_task=16, mem_gb=128, timeout_min=120))
    assert not part.fits(Request(cpus_per_task=2, nodes=3))
    capped = Partition(
        "capped", (Node("n1", 128, 512 * 1024),), max_cpus_per_node=32, max_mem_per_node_mb=64 * 1024
    )
    assert capped.fit(Request(cpus_per_task=48, mem_gb=100))[1] == {"cpus_per_task": 32, "mem_gb": 64}


def test_partition_read_from_scontrol_and_sinfo(fake_slurm):
    local = slurm.read_partition(None)
    assert local == Partition("local", (Node("localhost", cpus=2, mem_mb=20489, gpus=0),))
    fake_slurm.answer(
        "partitions.out",
        LOCAL_PARTITION.replace("Default=YES", "Default=NO")
        + "PartitionName=gpu Default=YES MaxNodes=2 MaxTime=1-00:00:00 MaxCPUsPerNode=UNLIMITED Nodes=g[1-2] "
        "MaxMemPerNode=65536\n",
    )
    fake_slurm.answer("nodes.gpu", "g1|32|128000|gpu:a100:4(S:0-1)\ng2|32|128000|gpu:2,shard:8\n")
    gpu = slurm.read_partition(None)
    assert gpu == slurm.read_partition("gpu")
    assert [n.gpus for n in gpu.nodes] == [4, 2]
    assert (gpu.max_time_min, gpu.max_nodes, gpu.max_mem_per_node_mb, gpu.max_cpus_per_node) == (
        1440,
        2,
        65536,
        None,
    )
    assert slurm.read_partition("nope") is None


# ---------------------------------------------------------------------------------------------------------------
# the lines


def _one_line(text: str) -> str:
    assert "\n" not in text and text.startswith("error: ")
    return text


def test_never_start_line_names_the_request_the_reason_and_the_overrides_that_fit():
    part = Partition("local", (Node("localhost", cpus=2, mem_mb=20489),))
    request = Request(gpus_per_node=0, cpus_per_task=8, mem_gb=2, timeout_min=240)
    line = _one_line(
        slurm.never_start_line("42_[0-1%2]", "PartitionConfig", request, part, ["42"], cancelled=True)
    )
    assert "job 42_[0-1%2] on partition 'local' (PartitionConfig" in line
    assert "cancelled the sweep's jobs (scancel 42)" in line
    assert "Asked gpus_per_node=0 cpus_per_task=8 mem_gb=2 timeout_min=240" in line
    assert "node localhost has 0 GPUs, 2 CPUs, 20 GB" in line
    assert line.endswith("rerun with hydra.launcher.cpus_per_task=2")


def test_never_start_line_without_values_says_which_keys_to_change():
    request = Request(cpus_per_task=64, mem_gb=8)
    line = _one_line(
        slurm.never_start_line("7", "QOSMaxCpuPerJobLimit", request, None, ["7"], cancelled=False)
    )
    assert "cancel its jobs: scancel 7" in line and line.endswith("lower hydra.launcher.cpus_per_task")
    per_node = slurm.never_start_line("7", "AssocMaxCpuPerNode", request, None, ["7"], True)
    assert per_node.endswith("lower hydra.launcher.cpus_per_task")
    cpu_minutes = slurm.never_start_line("7", "QOSMaxCpuMinutesPerJobLimit", request, None, ["7"], True)
    assert cpu_minutes.endswith("lower hydra.launcher.cpus_per_task or hydra.launcher.timeout_min")
    assert slurm.never_start_line("7", "QOSMinGRES", request, None, ["7"], True).endswith(
        "raise hydra.launcher.gpus_per_node"
    )
    assert "cluster.qos=" in slurm.never_start_line("7", "InvalidQOS", request, None, ["7"], True)
    assert "cluster.account=" in slurm.never_start_line("7", "InvalidAccount", request, None, ["7"], True)
    generic = slurm.never_start_line("7", "PartitionConfig", request, None, ["7"], True)
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min"):
        assert f"hydra.launcher.{key}=" in generic


def test_sbatch_refusal_line_keeps_what_sbatch_said_in_one_line(fake_slurm):
    part = Partition("local", (Node("localhost", cpus=2, mem_mb=20489),))
    stderr = (
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not available\n"
    )
    line = _one_line(slurm.sbatch_refusal_line(stderr, Request(cpus_per_task=2, mem_gb=32), part))
    assert (
        "refused the jobs on partition 'local': Memory specification can not be satisfied; Requested node "
        in line
    )
    assert line.endswith("rerun with hydra.launcher.mem_gb=20")
    refused = slurm.sbatch_refusal_line("sbatch: error: invalid partition name specified", Request(), None)
    assert "cluster.partition=local" in refused


def test_only_a_failed_sbatch_call_is_a_refusal():
    from submitit.core.utils import FailedJobError

    err = "sbatch: error: Invalid generic resource (gres) specification"
    try:
        try:
            raise subprocess.CalledProcessError(1, ["sbatch", "/x/submission.sh"], stderr=err)
        except subprocess.CalledProcessError as cause:
            raise FailedJobError(err) from cause
    except FailedJobError as exc:
        assert slurm.sbatch_refusal(exc) == err
    assert slurm.sbatch_refusal(FailedJobError("the job failed")) is None
    assert slurm.sbatch_refusal(subprocess.CalledProcessError(1, ["sacct"], stderr="x")) is None


# ---------------------------------------------------------------------------------------------------------------
# the launcher


def test_a_job_that_can_never_start_is_cancelled_and_the_sweep_ends_in_one_line(
    tmp_path, fake_slurm, fake_base_launch
):
    fake_slurm.answer("squeue.out", "42_[0-1%64]|local|PartitionConfig\n")
    launcher = _launcher(tmp_path, **DEFAULT_REQUEST)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    assert time.monotonic() - start < 10
    line = _one_line(str(exit_.value.code))
    assert (
        "(PartitionConfig" in line
        and "Asked gpus_per_node=1 cpus_per_task=8 mem_gb=32 timeout_min=240" in line
    )
    assert line.endswith(LOCAL_FIX)
    assert fake_slurm.calls("scancel") == ["scancel 42"]
    assert "--jobs=42" in fake_slurm.calls("squeue")[0]


def test_normal_waits_are_left_alone(tmp_path, fake_slurm, fake_base_launch):
    fake_slurm.answer("squeue.out", "42_[0-1%64]|local|Priority\n")
    fake_base_launch["finish_after"] = 2.5
    launcher = _launcher(tmp_path, gpus_per_node=0, cpus_per_task=1, mem_gb=2)
    assert launcher.launch([["seed=0"]], initial_job_idx=0) == ["done"]
    assert fake_slurm.calls("squeue") and not fake_slurm.calls("scancel")


def test_resources_is_a_wait_when_a_node_could_hold_the_request(tmp_path, fake_slurm, fake_base_launch):
    fake_slurm.answer("squeue.out", "42_1|local|Resources\n")
    fake_base_launch["finish_after"] = 2.5
    assert _launcher(tmp_path, gpus_per_node=0, cpus_per_task=2, mem_gb=20).launch([["a"]], 0) == ["done"]
    assert not fake_slurm.calls("scancel")


def test_resources_no_node_could_ever_hold_means_never(tmp_path, fake_slurm, fake_base_launch):
    fake_slurm.answer("squeue.out", "42_1|local|Resources\n")
    with pytest.raises(
        SystemExit, match=r"\(Resources: no node of the partition can hold the request\)"
    ) as exit_:
        _launcher(tmp_path, gpus_per_node=0, cpus_per_task=4, mem_gb=1).launch([["a"]], 0)
    assert str(exit_.value.code).endswith("rerun with hydra.launcher.cpus_per_task=2")
    assert fake_slurm.calls("scancel") == ["scancel 42"]


def test_sbatch_refusal_is_one_line_and_submitit_s_copy_of_it_is_not_printed(tmp_path, fake_slurm, capfd):
    fake_slurm.answer("sbatch.err", "sbatch: error: Invalid generic resource (gres) specification\n")
    with pytest.raises(SystemExit) as exit_:
        _launcher(tmp_path, **DEFAULT_REQUEST).launch([["seed=0"]], initial_job_idx=0)
    line = _one_line(str(exit_.value.code))
    assert (
        "sbatch refused the jobs on partition 'local': Invalid generic resource (gres) specification." in line
    )
    assert "Asked gpus_per_node=1 cpus_per_task=8 mem_gb=32 timeout_min=240" in line and line.endswith(
        LOCAL_FIX
    )
    assert "Invalid generic resource" not in capfd.readouterr().err
    assert len(fake_slurm.calls("sbatch")) == 1 and not fake_slurm.calls("scancel")


def test_other_errors_of_the_base_class_pass_through(tmp_path, fake_slurm, monkeypatch):
    def launch(self, job_overrides, initial_job_idx):
        raise ValueError("a bug")

    monkeypatch.setattr(_base_class(), "launch", launch)
    with pytest.raises(ValueError, match="a bug"):
        _launcher(tmp_path).launch([["a"]], 0)


def test_launcher_slurm_selects_the_watched_launcher_as_a_hydra_plugin():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins

    from common.config import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=["launcher=slurm"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    target = cfg.hydra.launcher._target_
    assert target == "hydra_plugins.lesstuning_launcher.WatchedSlurmLauncher"
    assert issubclass(Plugins.instance().class_name_to_class[target], WatchedSlurmLauncher)


# ---------------------------------------------------------------------------------------------------------------
# end to end: python -m launch launcher=slurm against the fake commands


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_cli_sbatch_refusal_exits_non_zero_with_one_line(tmp_path, fake_slurm):
    fake_slurm.answer("sbatch.err", "sbatch: error: Invalid generic resource (gres) specification\n")
    proc = run_cli("launcher=slurm", "debug=fast", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, timeout=120,
                   env=fake_slurm.env())  # fmt: skip
    assert proc.returncode != 0
    lines = _stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: sbatch refused the jobs") and lines[0].endswith(LOCAL_FIX)


def test_cli_never_starting_job_is_cancelled_and_exits_non_zero_with_one_line(tmp_path, fake_slurm):
    fake_slurm.answer("squeue.out", "42|local|PartitionConfig\n")
    proc = run_cli(
        "launcher=slurm", "debug=fast", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=2",
        f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path, timeout=120, env=fake_slurm.env(),
    )  # fmt: skip
    assert proc.returncode != 0
    lines = _stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "(PartitionConfig" in lines[0] and lines[0].endswith("rerun with hydra.launcher.cpus_per_task=2")
    assert fake_slurm.calls("scancel") == ["scancel 42"]
