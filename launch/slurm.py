"""``launcher=slurm``: hydra-submitit-launcher's SLURM launcher that gives up in one line on a request SLURM refuses.

A request can fail on SLURM in two ways without any job running:

* ``sbatch`` refuses it (a GPU on a cluster without GPUs, more memory than any node has): submitit raises with
  sbatch's error stream and Hydra prints a traceback. :class:`WatchedSlurmLauncher` turns it into one line.
* ``sbatch`` accepts it, but the job pends with a reason that says it can never start (``PartitionConfig``,
  ``PartitionTimeLimit``, a per-job QOS limit...). SLURM keeps such a job forever and submitit waits for its result
  forever. While the base class waits, :class:`WatchedSlurmLauncher` polls ``squeue`` for the jobs it submitted; one
  that can never start is cancelled (``scancel``) and the sweep ends with one line.

Both lines name the request as submitted and the overrides that make it fit the partition's nodes, read with
``scontrol show partition`` and ``sinfo``. Hydra instantiates launchers only from the ``hydra_plugins`` namespace:
``hydra_plugins/lesstuning_launcher`` names the class there and ``conf/launcher/slurm.yaml`` selects it.
"""

from __future__ import annotations

import glob
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)

# Pending reasons (squeue %r, https://slurm.schedmd.com/job_reason_codes.html) after which a job never starts as it was
# submitted: the request breaks a limit of its partition, account or QOS, or names something that does not exist.
# Aggregate limits (AssocGrp*, QOSGrp*, *PerUser, *PerAccount, job counts), Priority, Dependency, BeginTime, holds and
# down partitions clear by themselves or by an administrator: those are waits.
NEVER_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
        "DependencyNeverSatisfied",
        "ReservationDeleted",
        "MaxMemPerLimit",
    }
)
# per-job and per-node maxima of an association or QOS (AssocMaxCpuPerJobLimit, QOSMaxGRESPerNode,
# QOSMaxWallDurationPerJobLimit...) and QOS minima (QOSMinCpuNotSatisfied, QOSMinGRES...)
_NEVER_PATTERN = re.compile(r"^(Assoc|QOS)Max\w*Per(Job|Node)|^QOSMin")
# Reasons shown both by a job waiting for busy, down or drained nodes and by one no node can hold: the job never starts
# when no node of its partition could hold the request even idle. The value is the verdict when the partition cannot
# be read (PartitionNodeLimit is a partition limit first; the other two are mostly waits).
FIT_REASONS = {"PartitionNodeLimit": True, "ReqNodeNotAvail": False, "Resources": False}

_EXPLAINED = {
    "PartitionConfig": "the request breaks a limit of the partition",
    "PartitionTimeLimit": "the time limit exceeds the partition's",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "BadConstraints": "its constraints can never be satisfied",
    "InvalidAccount": "the account is invalid",
    "InvalidQOS": "the QOS is invalid",
    "AccountNotAllowed": "the account may not use this partition",
    "QOSNotAllowed": "the QOS may not be used here",
    "DependencyNeverSatisfied": "its dependency can never be satisfied",
    "ReservationDeleted": "its reservation no longer exists",
    "MaxMemPerLimit": "the memory exceeds the limit per CPU or per node",
    "ReqNodeNotAvail": "no node of the partition can hold the request",
    "Resources": "no node of the partition can hold the request",
}

_KEYS = ("gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
_COMMAND_TIMEOUT_S = 30


def classify(reason: str) -> str:
    """``"never"``, ``"fit"`` (never, unless some node of the partition could hold the request) or ``"wait"``.

    Args:
        reason: a pending reason as squeue's ``%r`` prints it, e.g. ``"ReqNodeNotAvail, UnavailableNodes:n1"``.
    """
    code = _reason_code(reason)
    if code in NEVER_REASONS or _NEVER_PATTERN.match(code):
        return "never"
    if code in FIT_REASONS:
        return "fit"
    return "wait"


def _reason_code(reason: str) -> str:
    match = re.match(r"\(?([A-Za-z]+)", reason.strip())
    return match.group(1) if match else ""


def _number(value: Any, default: float = 0) -> float:
    return default if value in (None, "") else float(value)


def _count_gpus(gres: str | None) -> int:
    """GPUs in a gres string: ``"gpu:2"``, ``"gpu:a100:4(S:0-1),shard:8"``; 0 for ``"(null)"`` or None."""
    if not gres:
        return 0
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _gb(mb: float) -> str:
    return f"{mb / 1024:.0f}" if mb >= 10 * 1024 else f"{mb / 1024:.1f}".removesuffix(".0")


@dataclass(frozen=True)
class Request:
    """What the launcher asks of SLURM for each job, in the launcher's own keys."""

    gpus_per_node: int = 0
    cpus_per_task: int = 1
    tasks_per_node: int = 1
    nodes: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Request:
        """The request of a launcher's parameters (``hydra.launcher``: ``gpus_per_node``, ``cpus_per_task``...)."""
        extra = params.get("additional_parameters") or {}
        tasks = int(_number(params.get("tasks_per_node"), 1))
        gpus = int(_number(params.get("gpus_per_node")))
        if not gpus and params.get("gpus_per_task"):
            gpus = int(params["gpus_per_task"]) * tasks
        if not gpus:
            gpus = _count_gpus(params.get("gres") or extra.get("gres"))
        mem = params.get("mem_gb")
        return cls(
            gpus_per_node=gpus,
            cpus_per_task=int(_number(params.get("cpus_per_task"), 1)),
            tasks_per_node=tasks,
            nodes=int(_number(params.get("nodes"), 1)),
            mem_gb=None if mem is None else float(mem),
            timeout_min=int(_number(params.get("timeout_min"), 60)),
            partition=params.get("partition") or extra.get("partition"),
        )

    @property
    def cpus_per_node(self) -> int:
        return self.cpus_per_task * self.tasks_per_node

    @property
    def mem_mb(self) -> float:
        return 0.0 if self.mem_gb is None else self.mem_gb * 1024

    def describe(self) -> str:
        """``gpus_per_node=1 cpus_per_task=8 mem_gb=32 timeout_min=240`` (plus tasks and nodes when not 1)."""
        mem = "default" if self.mem_gb is None else _num(self.mem_gb)
        words = [f"gpus_per_node={self.gpus_per_node}", f"cpus_per_task={self.cpus_per_task}"]
        words += [f"mem_gb={mem}", f"timeout_min={self.timeout_min}"]
        if self.tasks_per_node != 1:
            words.append(f"tasks_per_node={self.tasks_per_node}")
        if self.nodes != 1:
            words.append(f"nodes={self.nodes}")
        return " ".join(words)


@dataclass(frozen=True)
class Node:
    """One node as configured: what a job could get on it when it is idle."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int = 0


@dataclass(frozen=True)
class Partition:
    """A partition's nodes and its limits per job (None: unlimited)."""

    name: str
    nodes: tuple[Node, ...]
    max_time_min: int | None = None
    max_nodes: int | None = None
    max_cpus_per_node: int | None = None
    max_mem_per_node_mb: int | None = None

    def fit(self, request: Request) -> tuple[Node | None, dict[str, int | float]]:
        """The node that needs the fewest changes to ``request`` and those changes (launcher key → value that fits).

        No changes: the request fits an idle node of the partition.
        """
        common: dict[str, int | float] = {}
        if self.max_time_min is not None and request.timeout_min > self.max_time_min:
            common["timeout_min"] = self.max_time_min
        most_nodes = len(self.nodes) if self.max_nodes is None else min(self.max_nodes, len(self.nodes))
        if request.nodes > most_nodes > 0:
            common["nodes"] = most_nodes
        best: tuple[tuple[int, int, int, int], Node, dict[str, int | float]] | None = None
        for node in self.nodes:
            changes = {**self._node_changes(request, node), **common}
            rank = (len(changes), -node.gpus, -node.cpus, -node.mem_mb)
            if best is None or rank < best[0]:
                best = (rank, node, changes)
        return (None, common) if best is None else (best[1], best[2])

    def _node_changes(self, request: Request, node: Node) -> dict[str, int | float]:
        changes: dict[str, int | float] = {}
        if request.gpus_per_node > node.gpus:
            changes["gpus_per_node"] = node.gpus
        cpus = node.cpus if self.max_cpus_per_node is None else min(node.cpus, self.max_cpus_per_node)
        if request.cpus_per_node > cpus:
            changes["cpus_per_task"] = max(1, cpus // request.tasks_per_node)
        mem = node.mem_mb if self.max_mem_per_node_mb is None else min(node.mem_mb, self.max_mem_per_node_mb)
        if request.mem_mb > mem:
            changes["mem_gb"] = mem // 1024 if mem >= 1024 else round(mem / 1024, 2)
        return changes

    def fits(self, request: Request) -> bool:
        """Whether some node of the partition could hold ``request`` when idle, within the partition's limits."""
        node, changes = self.fit(request)
        return node is not None and not changes


def _run(*cmd: str) -> str | None:
    """stdout of a SLURM command, or None when it fails (a controller that does not answer is no verdict)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", cmd[0], exc)
        return None
    if proc.returncode != 0:
        log.debug("%s failed (%d): %s", " ".join(cmd), proc.returncode, proc.stderr.strip())
        return None
    return proc.stdout


def _minutes(value: str) -> int | None:
    """SLURM's time format ([days-]hours:minutes:seconds, minutes, minutes:seconds...) in minutes; None: unlimited."""
    value = value.strip()
    if not value or value.upper() in {"UNLIMITED", "INFINITE", "NONE", "N/A"}:
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # minutes[:seconds]
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return int(days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def _limit(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key, "UNLIMITED")
    return int(value) if value.isdigit() else None


def read_partition(name: str | None) -> Partition | None:
    """The partition ``name`` (None: the default one) from ``scontrol show partition`` and ``sinfo``; None if unknown."""
    out = _run("scontrol", "--oneliner", "show", "partition")
    if out is None:
        return None
    chosen: dict[str, str] | None = None
    for line in out.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if (name is None and fields.get("Default") == "YES") or fields.get("PartitionName") == name:
            chosen = fields
            break
    if chosen is None:
        return None
    part = chosen["PartitionName"]
    nodes: dict[str, Node] = {}
    out = _run("sinfo", "--noheader", "--Node", "--partition", part, "--format", "%N|%c|%m|%G") or ""
    for line in out.splitlines():
        cells = line.strip().split("|")
        mem = re.match(r"\d+", cells[2]) if len(cells) == 4 else None
        if mem and cells[1].isdigit():
            nodes[cells[0]] = Node(cells[0], int(cells[1]), int(mem.group()), _count_gpus(cells[3]))
    if not nodes:  # no nodes read: no verdict on what fits
        return None
    return Partition(
        name=part,
        nodes=tuple(nodes.values()),
        max_time_min=_minutes(chosen.get("MaxTime", "UNLIMITED")),
        max_nodes=_limit(chosen, "MaxNodes"),
        max_cpus_per_node=_limit(chosen, "MaxCPUsPerNode"),
        max_mem_per_node_mb=_limit(chosen, "MaxMemPerNode"),
    )


def _partition_names() -> list[str]:
    out = _run("sinfo", "--noheader", "--format", "%P") or ""
    return [p.strip().rstrip("*") for p in out.split() if p.strip()]


def _hints(reason: str) -> str:
    """What to change when no value that fits can be computed: the keys the reason points at."""
    code = _reason_code(reason)
    lowered = reason.lower()
    if _NEVER_PATTERN.match(code) or code == "MaxMemPerLimit":
        # the resource is named before "Per": QOSMaxCpuPerNode limits CPUs (per node), not nodes
        what = code.split("Per")[0]
        words = {"Cpu": "cpus_per_task", "Mem": "mem_gb", "GRES": "gpus_per_node", "Wall": "timeout_min"}
        words |= {"Minutes": "timeout_min", "Node": "nodes"}
        keys = list(dict.fromkeys(k for word, k in words.items() if word in what)) or list(_KEYS)
        verb = "raise" if code.startswith("QOSMin") else "lower"
        return f"{verb} " + " or ".join(f"hydra.launcher.{k}" for k in keys)
    if "qos" in lowered:
        return "set cluster.qos=<a QOS you may use> (sacctmgr show assoc user=$USER)"
    if "account" in lowered:
        return "set cluster.account=<your account> (sacctmgr show assoc user=$USER)"
    if "invalid partition" in lowered:
        names = _partition_names()
        return "set cluster.partition=" + ("|".join(names) if names else "<a partition>") + " (sinfo)"
    if code in {"BadConstraints", "DependencyNeverSatisfied", "ReservationDeleted"}:
        return "check hydra.launcher.additional_parameters (constraint, gres, dependency, reservation)"
    return "lower " + ", ".join(f"hydra.launcher.{k}=" for k in _KEYS) + " (see sinfo)"


def _fix(reason: str, request: Request, partition: Partition | None) -> str:
    """``node n1 has 0 GPUs, 2 CPUs, 20 GB: rerun with hydra.launcher.gpus_per_node=0 ...`` or a hint."""
    node, changes = partition.fit(request) if partition is not None else (None, {})
    where = ""
    if node is not None:
        where = f"node {node.name} has {node.gpus} GPUs, {node.cpus} CPUs, {_gb(node.mem_mb)} GB"
        if partition is not None and partition.max_time_min is not None:
            where += f", partition time limit {partition.max_time_min} min"
        where += ": "
    if changes:
        return where + "rerun with " + " ".join(f"hydra.launcher.{k}={_num(v)}" for k, v in changes.items())
    return where + _hints(reason)


def never_start_line(
    job: str,
    reason: str,
    request: Request,
    partition: Partition | None,
    job_ids: Sequence[str],
    cancelled: bool,
) -> str:
    """The one line of a sweep whose job ``job`` can never start (``job_ids``: the sweep's jobs, cancelled or not)."""
    code = _reason_code(reason)
    where = f" on partition '{partition.name}'" if partition is not None else ""
    why = _EXPLAINED.get(code, "the request exceeds a per-job limit of the account or QOS")
    ids = " ".join(job_ids)
    done = f"cancelled the sweep's jobs (scancel {ids})" if cancelled else f"cancel its jobs: scancel {ids}"
    return (
        f"error: SLURM will never start job {job}{where} ({code}: {why}); {done}. Asked {request.describe()}; "
        f"{_fix(reason, request, partition)}"
    )


def sbatch_refusal_line(stderr: str, request: Request, partition: Partition | None) -> str:
    """The one line of a sweep whose jobs ``sbatch`` refused (its error stream made readable)."""
    said: list[str] = []
    for line in stderr.splitlines():
        text = re.sub(r"^\s*sbatch:\s*(error:\s*)?", "", line).strip()
        text = text.removeprefix("Batch job submission failed: ").strip()
        if text and text not in said:
            said.append(text)
    where = f" on partition '{partition.name}'" if partition is not None else ""
    reason = "; ".join(said) or "no reason given"
    return f"error: sbatch refused the jobs{where}: {reason}. Asked {request.describe()}; {_fix(reason, request, partition)}"


def sbatch_refusal(exc: BaseException) -> str | None:
    """sbatch's error stream when ``exc`` is submitit's failure to submit (a failed ``sbatch`` call), else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, subprocess.CalledProcessError):
            cmd = cause.cmd if isinstance(cause.cmd, (list, tuple)) else str(cause.cmd).split()
            if cmd and Path(str(cmd[0])).name == "sbatch":
                err = cause.stderr
                text = err.decode(errors="replace") if isinstance(err, bytes) else err or ""
                return text.strip() or str(exc)
        cause = cause.__cause__ or cause.__context__
    return None


@dataclass(frozen=True)
class Pending:
    """A submitted job that squeue lists as pending."""

    job: str
    partition: str
    reason: str


def pending_jobs(job_ids: Sequence[str]) -> list[Pending] | None:
    """The pending ones among ``job_ids`` (array ids cover all their tasks); None when squeue does not answer."""
    out = _run("squeue", "--noheader", "--states=PENDING", f"--jobs={','.join(job_ids)}", "--format=%i|%P|%r")
    if out is None:
        return None
    rows = [line.strip().split("|", 2) for line in out.splitlines() if line.strip()]
    return [Pending(*row) for row in rows if len(row) == 3]


class PendingWatch:
    """Reads the pending reasons of a sweep's jobs and says when one can never start."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._partitions: dict[str, Partition | None] = {}

    def partition(self, name: str | None) -> Partition | None:
        """The partition ``name`` (None: the default), read once."""
        key = name or ""
        if key not in self._partitions:
            self._partitions[key] = read_partition(name)
        return self._partitions[key]

    def verdict(self, job_ids: Sequence[str]) -> Pending | None:
        """The first of ``job_ids`` that is pending for a reason that means it can never start, or None."""
        for job in pending_jobs(job_ids) or []:
            kind = classify(job.reason)
            if kind == "never":
                return job
            if kind == "fit":
                part = self.partition(job.partition or self.request.partition)
                never = FIT_REASONS[_reason_code(job.reason)] if part is None else not part.fits(self.request)
                if never:
                    return job
        return None


class _SubmittedJobs:
    """The SLURM ids of jobs submitted into a submitit folder since this object was made.

    submitit records each job it submits as ``<folder with %j = id>/<id>_submitted.pkl`` right after ``sbatch``.
    """

    def __init__(self, submitit_folder: str) -> None:
        pattern = str(submitit_folder).replace("%j", "*").replace("%t", "*")
        self._glob = str(Path(pattern) / "*_submitted.pkl")
        self._before = self._scan()

    def _scan(self) -> set[str]:
        return {Path(p).name.removesuffix("_submitted.pkl") for p in glob.glob(self._glob)}

    def ids(self) -> list[str]:
        """Job (or array job) ids, without array task ids: ``scancel``/``squeue`` on one covers all its tasks."""
        return sorted({job.split("_")[0] for job in self._scan() - self._before})


class _HeldStderr:
    """Holds back what one thread writes to ``sys.stderr`` until released.

    submitit prints sbatch's error stream before it raises it; the launcher's one line already says it.
    """

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread
        self._stream = sys.stderr
        self._held: list[str] | None = []
        sys.stderr = self  # type: ignore[assignment]

    def write(self, text: str) -> int:
        held = self._held
        if held is not None and threading.current_thread() is self._thread:
            held.append(text)
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def release(self, replay: bool = True) -> None:
        """Put ``sys.stderr`` back and write what was held (unless ``replay`` is false)."""
        if self._held is None:
            return
        held, self._held = self._held, None
        if sys.stderr is self:
            sys.stderr = self._stream
        if replay and held:
            self._stream.write("".join(held))
            self._stream.flush()


def _poll_delays(fast_for_s: float, fast_s: float, slow_s: float) -> Iterator[float]:
    """1, 2, 4 s, then every ``fast_s`` for ``fast_for_s`` (SLURM shows why a job pends at its first scheduling
    pass), then every ``slow_s`` (later array tasks, without loading the controller)."""
    start = time.monotonic()
    yield from (1.0, 2.0, 4.0)
    while True:
        yield fast_s if time.monotonic() - start < fast_for_s else slow_s


class WatchedSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's ``SlurmLauncher`` that ends the sweep in one line when SLURM refuses its jobs.

    The base class submits and waits for the results in a thread of its own; meanwhile this thread polls ``squeue``
    for the jobs submitted: a job pending for a reason that means it can never start is cancelled and the sweep exits
    non-zero with one line naming the request and the overrides that fit (``SystemExit``: no traceback). A refusal by
    ``sbatch`` ends the same way. Nothing of this is kept on the instance: submitit pickles it into every job.
    """

    # squeue every poll_s seconds for watch_fast_s after the start, then every poll_slow_s
    poll_s: float = 5.0
    poll_slow_s: float = 60.0
    watch_fast_s: float = 300.0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        request = Request.from_params(self.params)
        submitted = _SubmittedJobs(self.params["submitit_folder"])
        base_launch = super().launch
        outcome: dict[str, Any] = {}

        def submit_and_wait() -> None:
            try:
                outcome["returns"] = base_launch(job_overrides, initial_job_idx)
            except BaseException as exc:  # noqa: BLE001 - handed to the launching thread below
                outcome["error"] = exc

        worker = threading.Thread(target=submit_and_wait, name="submitit-launch", daemon=True)
        held = _HeldStderr(worker)
        worker.start()
        watch = PendingWatch(request)
        try:
            for delay in _poll_delays(self.watch_fast_s, self.poll_s, self.poll_slow_s):
                worker.join(delay)
                if not worker.is_alive():
                    break
                ids = submitted.ids()
                if not ids:
                    continue
                held.release()
                stuck = watch.verdict(ids)
                if stuck is not None:
                    cancelled = _run("scancel", *ids) is not None
                    part = watch.partition(stuck.partition or request.partition)
                    raise SystemExit(never_start_line(stuck.job, stuck.reason, request, part, ids, cancelled))
        finally:
            refused = "error" in outcome and sbatch_refusal(outcome["error"]) is not None
            held.release(replay=not refused)
        if "error" in outcome:
            exc = outcome["error"]
            stderr = sbatch_refusal(exc)
            if stderr is not None:
                line = sbatch_refusal_line(stderr, request, watch.partition(request.partition))
                raise SystemExit(line) from None
            raise exc
        return outcome["returns"]
