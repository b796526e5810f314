"""Every ``python -m launch`` command of README.md and the package READMEs runs.

Each command runs with :data:`FAST` appended (``debug=fast``, and a batch size that bounds what a batch costs), in
this process (the composed config through ``launch.run.run``, which is what ``python -m launch`` calls), into a
temporary folder, on a temporary data folder holding CIFAR-10 and UCI household-power files in the real formats
(random content): it must finish with ``results.json``. A ``-m`` command runs every job of its sweep, except that
a ``seed`` axis runs its first seed only (seeds change no code path; the sweep machinery itself is tested in
``test_launchers.py``). The commands that take more than a few seconds so (:data:`HEAVY`) run in the slow tier,
the others in the fast tier. Commands that cannot run here are listed in :data:`SKIPPED` with the reason,
commands with placeholders in :data:`FILLED` with what fills them, commands that a README shows failing in
:data:`EXPECTED_ERRORS`: a new command that is in none of them and cannot run as written fails
:func:`test_every_readme_command_is_run_or_listed`.

Slow tier, besides: the commands whose accuracy a README states (:data:`STATED`) run in full and reach it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from common.config import CONF_DIR, REPO_ROOT
from launch.cli import _user_errors
from launch.run import RESULTS_FILE, run
from tests.conftest import compose_config

READMES = (REPO_ROOT / "README.md", *sorted(REPO_ROOT.glob("*/README.md")))
_LAUNCH = re.compile(r"(?:^|\s)python -m launch(?=\s|$)")
_PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|\|")


def readme_commands() -> dict[str, list[str]]:
    """``{command: [README, ...]}``: lines of fenced blocks (a trailing ``# comment`` cut) and inline code spans
    (which may wrap over lines) that run ``python -m launch``, whitespace normalised."""
    found: dict[str, list[str]] = {}
    for path in READMES:
        name = str(path.relative_to(REPO_ROOT))
        prose, fenced = [], False
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                prose.append("")  # a span never crosses a fence
            elif fenced:
                code = " ".join(re.sub(r"\s+#.*$", "", line).split())
                if _LAUNCH.search(code):
                    found.setdefault(code, []).append(name)
            else:
                prose.append(line)
        for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
            code = " ".join(span.split())
            if _LAUNCH.search(code):
                found.setdefault(code, []).append(name)
    return found


# README command -> why it does not run here
SKIPPED: dict[str, str] = {
    "python -m launch ... hydra.run.dir=outputs/train/runs/2026-11-25_15-02-11-123456": (
        "resuming a run ('...' is the first run's overrides): tests/launch/test_cli.py and tests/common"
    ),
    "python -m launch launcher=slurm network=resnet18 dataset=cifar10 seed=0,1,2 optimizer=sgd,adam": (
        "SLURM: the slurm tier (tests/launch/test_slurm.py)"
    ),
    "python -m launch launcher=slurm hydra.launcher.gpus_per_node=0 hydra.launcher.cpus_per_task=2 "
    "hydra.launcher.mem_gb=20": "SLURM: the slurm tier (tests/launch/test_slurm.py)",
    "python -m launch method=ecco_robustness method.executor=slurm": "SLURM: the slurm tier",
    "python -m launch method=ecco_robustness method.executor=slurm cluster.partition=gpu": "SLURM: the slurm tier",
    "python -m launch launcher=submitit_local ...": (
        "'...' is any job; submitit processes: tests/launch/test_launchers.py::test_submitit_local_sweep_needs_no_dash_m"
    ),
    'PYTHONPATH=$PWD python -m launch "hydra.searchpath=[file://$PWD/conf]" network=tiny dataset=blobs '
    "trainer.epochs=10": "needs the user's own files: tests/launch/test_own_model.py writes and runs them",
    "python -m launch -m hydra/sweeper=optuna 'optimizer.lr=tag(log, interval(1e-4, 1))' hydra.sweeper.n_trials=8": (
        "an Optuna search (a continuous range has no grid to expand): "
        "tests/launch/test_optuna_sweeper.py runs such a sweep through python -m launch"
    ),
    "python -m launch -m experiment=leaderboard_cifar10 launcher=slurm": (
        "SLURM and CIFAR-10: the experiment's sweep runs through python -m launch in "
        "tests/bench/test_leaderboard_sweep.py (digits, debug=fast)"
    ),
    "python -m launch -m experiment=leaderboard_cifar10 launcher=slurm dataset=cifar100": "SLURM and CIFAR-100",
    "python -m launch -m launcher=slurm hydra/sweeper=optuna network=resnet18 dataset=cifar10 trainer.epochs=5 "
    "'optimizer.lr=tag(log, interval(3e-3, 0.3))' hydra.sweeper.n_trials=20 hydra.sweeper.n_jobs=4": (
        "SLURM, and an Optuna search: tests/launch/test_optuna_sweeper.py runs such a sweep"
    ),
    "python -m launch method=mymethod method.lr_scale=20": (
        "needs the user's own package mymethod: tests/plugin/test_sixth_method.py runs such a plugin"
    ),
}

# README command -> (exit code, part of the error line) that the README shows it ending with
EXPECTED_ERRORS: dict[str, tuple[int, str]] = {
    "python -m launch method=adatune method.mu=2": (2, "method.mu must be a number in [0, 1] or auto; got 2"),
    "python -m launch method=ecc method.budget=1.5": (2, "method.budget"),
    "python -m launch method=sedona method.aux=foo": (
        2,
        "method.aux must be one of mlp_sr, predsim, conv1, conv2, conv3, conv4; got 'foo'",
    ),
}

# README command with placeholders -> (the commands run for it, what fills the placeholders). {search} is the
# folder of the first sedona_search command of its block, run here under debug=fast.
_SEARCH = "python -m launch method=sedona_search network=lenet5 dataset=digits"
FILLED: dict[str, tuple[tuple[str, ...], str]] = {
    "python -m launch method=autohyper method.mode=paper ...": (
        ("python -m launch method=autohyper method.mode=paper",),
        "'...': the user's other options, none",
    ),
    "python -m launch method=ecc network=alexnet_small "
    "method.cost=macs|latency_cpu|latency_cuda|energy_nvml|energy_rapl|tx2_alexnet": (
        tuple(
            f"python -m launch method=ecc network=alexnet_small method.cost={c}"
            for c in ("macs", "latency_cpu", "latency_cuda", "energy_nvml", "energy_rapl", "tx2_alexnet")
        ),
        "one command per alternative",
    ),
    "python -m launch method=sedona network=lenet5 method.decoupling=<path>/decoupling.json method.num_blocks=4": (
        (
            "python -m launch method=sedona network=lenet5 method.decoupling={search}/decoupling.json "
            "method.num_blocks=4",
        ),
        "<path>: a sedona_search run of LeNet-5 on digits",
    ),
    "python -m launch method=sedona_search ... method.objective=val method.memory_keep=spread": (
        (f"{_SEARCH} method.objective=val method.memory_keep=spread",),
        "'...': the options of the block's first command",
    ),
    "python -m launch method=sedona_search ... method.search_beta=false method.fixed_head=mlp_sr": (
        (f"{_SEARCH} method.search_beta=false method.fixed_head=mlp_sr",),
        "'...': the options of the block's first command",
    ),
    "python -m launch method=sedona_search ... method.eval_mode=continuous trainer.epochs=50": (
        (f"{_SEARCH} method.eval_mode=continuous trainer.epochs=50",),
        "'...': the options of the block's first command",
    ),
    "python -m launch method=sedona method.decoupling=<run folder>/decoupling.json method.num_blocks=4 ...": (
        (
            "python -m launch method=sedona method.decoupling={search}/decoupling.json method.num_blocks=4 "
            "network=lenet5 dataset=digits",
        ),
        "<run folder>: the block's first search, run here; '...': its network and dataset",
    ),
}

# runnable command -> overrides appended after debug=fast: the command sets lengths of its own, which win over
# debug=fast (so they would run for minutes to hours on a CPU); the bounded run still goes through every phase
FAST_BOUNDS: dict[str, tuple[str, ...]] = {
    "python -m launch network=lenet5 dataset=digits optimizer=sgd_momentum scheduler=cosine trainer.epochs=30 "
    "seed=1": ("trainer.epochs=1",),
    "python -m launch method=sedona_search network=lenet5 dataset=digits method.meta_iters=200 "
    "method.inner_steps=5": ("method.meta_iters=2", "method.inner_steps=2"),
    "python -m launch method=sedona_search network=resnet50_imagenet dataset=cifar10 method.pretrain_epochs=100 "
    "method.meta_iters=2000": ("method.pretrain_epochs=1", "method.meta_iters=2", "method.inner_steps=2"),
    "python -m launch method=sedona_search network=lenet5 dataset=digits method.eval_mode=continuous "
    "trainer.epochs=50": ("trainer.epochs=1",),
    "python -m launch method=ecc_cost_data network=alexnet_small method.cost=latency_cpu method.samples=300": (
        "method.samples=20",
    ),
    "python -m launch method=ecc network=resnet18 dataset=digits method.cost=latency_cpu method.samples=150 "
    "method.cost_repeats=10 method.budget=0.5 optimizer.lr=0.02 trainer.epochs=3 method.admm_epochs=5 "
    "trainer.threads=1": (
        "method.samples=20",
        "method.cost_repeats=2",
        "trainer.epochs=1",
        "method.admm_epochs=2",
    ),
    "python -m launch method=ecco_robustness method.ranges=loguniform method.trials=20 "
    "method.ecco.limit_activations=auto": ("method.trials=1",),
}

_CUDA_DEVICES = torch.cuda.device_count()
# runnable command -> (runs here?, reason when not): hardware a command asks for
NEEDS: dict[str, tuple[bool, str]] = {
    "python -m launch method=ecc network=alexnet_small method.cost=latency_cuda": (
        _CUDA_DEVICES >= 1,
        "needs CUDA",
    ),
    "python -m launch method=ecc network=alexnet_small method.cost=energy_nvml": (
        _CUDA_DEVICES >= 1,
        "needs CUDA and NVML",
    ),
    "python -m launch experiment=ecc_cifar10_mobilenet": (
        _CUDA_DEVICES >= 1,
        "method.cost=energy_nvml needs CUDA",
    ),
    "python -m launch method=sedona network=vgg19 dataset=cifar10 method.num_blocks=4 "
    "method.devices=[cuda:0,cuda:1,cuda:2,cuda:3]": (_CUDA_DEVICES >= 4, "needs 4 CUDA devices"),
}
# runnable command -> exception type name that means "this machine lacks the hardware" (a skip, not a failure)
UNAVAILABLE_HERE = {
    "python -m launch method=ecc network=alexnet_small method.cost=energy_nvml": "CostBackendUnavailable",
    "python -m launch experiment=ecc_cifar10_mobilenet": "CostBackendUnavailable",
    "python -m launch method=ecc network=alexnet_small method.cost=energy_rapl": "CostBackendUnavailable",
}

README_COMMANDS = readme_commands()


def runnable_commands() -> list[str]:
    """The commands run by the fast tier, in README order."""
    out: list[str] = []
    for cmd in README_COMMANDS:
        if cmd in SKIPPED or cmd in EXPECTED_ERRORS:
            continue
        for c in FILLED[cmd][0] if cmd in FILLED else (cmd,):
            if c not in out:
                out.append(c)
    return out


RUNNABLE = runnable_commands()


def launch_args(cmd: str) -> list[str]:
    """The arguments after ``python -m launch``."""
    words = shlex.split(cmd)
    assert words[:3] == ["python", "-m", "launch"], cmd
    return words[3:]


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The jobs of a command: one, or (with ``-m``) the sweep's grid as Hydra's basic sweeper expands it, a
    ``seed`` axis cut to its first value."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    axes = []
    for o in OverridesParser.create().parse_overrides([a for a in args if a not in ("-m", "--multirun")]):
        if o.is_sweep_override():
            key = o.get_key_element()
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
            axes.append(values[:1] if key == "seed" else values)
        else:
            axes.append([o.input_line])
    return [list(job) for job in itertools.product(*axes)]


@contextmanager
def _torch_state() -> Iterator[None]:
    """Restore what a run may change process-wide (``trainer.threads``, ``trainer.deterministic``)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


# appended to every command in the fast tier: debug=fast bounds the number of batches, the batch size bounds their
# cost (batch 128 of ResNet-18 on 32 px is seconds a step on one CPU thread; BatchNorm still sees 8 samples)
FAST = ("debug=fast", "dataset.batch_size=8")


def run_job(args: list[str], folder: Path, *extra: str, fast: bool = True) -> dict[str, Any]:
    """Compose ``args`` (+ :data:`FAST` + ``extra``) as ``python -m launch`` does and run it in ``folder``."""
    overrides = [*args, *(FAST if fast else ()), f"paths.log_dir={folder / 'log'}", *extra]
    cfg = compose_config(*overrides, output_dir=folder, fast=False)
    with _torch_state():
        return run(cfg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """CIFAR-10 and UCI household-power files in their real formats (random content)."""
    from tests.common.test_data import write_cifar, write_power

    root = tmp_path_factory.mktemp("data")
    # cifar10.yaml carves val_size=5000 from the training images: 5 x 1100 leaves 500 to train on
    write_cifar(root, "cifar10", per_file=1100)
    write_power(root, minutes=3000)
    return root


_DONE: dict[tuple[str, ...], tuple[Path, dict[str, Any]]] = {}
_FOLDERS = itertools.count()


def run_command(cmd: str, root: Path, data: Path, search: Path | None = None) -> list[tuple[Path, dict]]:
    """Run every job of ``cmd`` under debug=fast (a job already run by another command is not run again)."""
    text = cmd.replace("{search}", str(search)) if search is not None else cmd
    out = []
    bounds = FAST_BOUNDS.get(cmd, ())
    for job in sweep_jobs(launch_args(text)):
        key = (*job, *bounds)
        if key not in _DONE:
            folder = root / f"job{next(_FOLDERS)}"
            results = run_job(job, folder, *bounds, f"paths.data_dir={data}")
            _DONE[key] = (folder, results)
        out.append(_DONE[key])
    return out


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme_jobs")


@pytest.fixture(scope="module")
def search_folder(jobs_root, data_dir) -> Path:
    """The folder of the sedona_search run that ``{search}`` stands for."""
    cmd = next(c for c in RUNNABLE if c.startswith(_SEARCH))
    ((folder, _),) = run_command(cmd, jobs_root, data_dir)
    return folder


def test_every_readme_command_is_run_or_listed():
    assert len(README_COMMANDS) >= 40, "the READMEs' commands were not found"
    for cmd, where in README_COMMANDS.items():
        listed = cmd in SKIPPED or cmd in EXPECTED_ERRORS or cmd in FILLED
        assert listed or (cmd.startswith("python -m launch") and not _PLACEHOLDER.search(cmd)), (
            f"{cmd!r} ({', '.join(where)}) cannot run as written: fill it in FILLED, or say why in SKIPPED"
        )
    for table in (SKIPPED, EXPECTED_ERRORS, FILLED, STATED):
        stale = sorted(set(table) - set(README_COMMANDS))
        assert not stale, f"listed but in no README any more: {stale}"
    for table in (FAST_BOUNDS, NEEDS, UNAVAILABLE_HERE, HEAVY):
        assert set(table) <= set(RUNNABLE), sorted(set(table) - set(RUNNABLE))
    for filled, _why in FILLED.values():
        assert all(not _PLACEHOLDER.search(c.replace("{search}", "")) for c in filled), filled


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


RECIPES = sorted((CONF_DIR / "recipe").glob("*/*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_names_a_real_combination_and_is_applied(path):
    # conf/config.yaml selects it as `optional`: a misnamed file or key would be silently ignored
    optimizer = path.parent.name
    assert (CONF_DIR / "optimizer" / f"{optimizer}.yaml").exists(), path
    pairs = [
        (path.stem[: len(n.stem)], path.stem[len(n.stem) + 1 :])
        for n in (CONF_DIR / "network").glob("*.yaml")
        if path.stem.startswith(n.stem + "_")
    ]
    known = [(n, d) for n, d in pairs if (CONF_DIR / "dataset" / f"{d}.yaml").exists()]
    assert known, f"{path.name} is not <network>_<dataset> of conf/network and conf/dataset"
    network, dataset = known[0]
    values = _leaves(OmegaConf.to_container(OmegaConf.load(path)))
    combination = (f"optimizer={optimizer}", f"network={network}", f"dataset={dataset}")
    cfg = compose_config(*combination, fast=False)
    plain = compose_config(*combination, "~recipe", fast=False)  # ~recipe drops it
    for key, value in values.items():
        assert OmegaConf.select(plain, key, default="absent") != "absent", f"{path.name}: {key} is no key"
        assert OmegaConf.select(cfg, key) == value != OmegaConf.select(plain, key), key
    # the command line wins over it (so do experiment and debug: later in the defaults list)
    key = next(iter(values))
    assert OmegaConf.select(compose_config(*combination, f"{key}=0.123"), key) == 0.123


def test_the_default_job_and_experiments_keep_their_values():
    assert compose_config(fast=False).optimizer.lr == 0.1  # the MLP: no recipe, README's figures unchanged
    assert compose_config("experiment=digits_lenet5", fast=False).optimizer.lr == 0.05  # the experiment's own


def test_sweeps_expand_as_hydra_does():
    jobs = sweep_jobs(
        launch_args("python -m launch -m method=sedona method.num_blocks=1,2 method.aux=a,b seed=0,1")
    )
    assert jobs == [
        ["method=sedona", "method.num_blocks=1", "method.aux=a", "seed=0"],
        ["method=sedona", "method.num_blocks=1", "method.aux=b", "seed=0"],
        ["method=sedona", "method.num_blocks=2", "method.aux=a", "seed=0"],
        ["method=sedona", "method.num_blocks=2", "method.aux=b", "seed=0"],
    ]
    assert sweep_jobs(["method.devices=[cpu,cpu]"]) == [["method.devices=[cpu,cpu]"]]


# runnable command -> its time under debug=fast here: run in the slow tier (still under debug=fast), to keep this
# module's fast tier within about 2 minutes on 2 shared cores. Seconds measured with another job loading the CPU.
HEAVY: dict[str, str] = {
    "python -m launch method=autohyper network=resnet18 dataset=cifar10 optimizer=adam": "31 s",
    "python -m launch experiment=marthe_cifar10_vgg11": "13 s",
    "python -m launch method=ecc network=alexnet_small method.budget=0.5": "34 s",
    **{
        f"python -m launch method=ecc network=alexnet_small method.cost={c}": "about 30 s"
        for c in ("macs", "latency_cpu", "latency_cuda", "energy_nvml", "energy_rapl", "tx2_alexnet")
    },
    "python -m launch method=ecc network=alexnet_small method.algorithm=netadapt method.cost=latency_cpu": "30 s",
    "python -m launch method=ecc_cost_data network=alexnet_small method.cost=latency_cpu method.samples=300": "7 s",
    "python -m launch method=ecc network=resnet18 dataset=cifar10 method.cost=macs": "111 s",
    "python -m launch experiment=ecc_cifar10_alexnet": "24 s",
    "python -m launch experiment=ecc_cifar10_mobilenet": "CUDA only",
    "python -m launch method=ecc network=resnet18 dataset=digits method.cost=latency_cpu method.samples=150 "
    "method.cost_repeats=10 method.budget=0.5 optimizer.lr=0.02 trainer.epochs=3 method.admm_epochs=5 "
    "trainer.threads=1": "33 s",
    "python -m launch method=ecco_robustness network=resnet18 dataset=cifar10": "75 s",
    "python -m launch method=ecco_robustness method.ranges=loguniform method.trials=20 "
    "method.ecco.limit_activations=auto": "6 s",
    "python -m launch experiment=ecco_power_lstm paths.data_dir=/data": "6 s",
    "python -m launch method=sedona network=vgg19 dataset=cifar10 method.num_blocks=4 method.aux=mlp_sr": "5 s",
    "python -m launch method=sedona network=vgg19 dataset=cifar10 method.num_blocks=4 method.decoupling=found": "5 s",
    "python -m launch method=sedona network=vgg19 method.num_blocks=4 method.devices=[cpu,cpu] "
    "method.queue_size=50": "5 s",
    # the relaxed nets: every candidate head at every cut
    "python -m launch method=sedona_search network=lenet5 dataset=digits method.meta_iters=200 "
    "method.inner_steps=5": "20 s",
    "python -m launch method=sedona_search network=resnet50_imagenet dataset=cifar10 method.pretrain_epochs=100 "
    "method.meta_iters=2000": "9 min: a relaxed ResNet-50 step takes about a minute on one CPU thread",
    "python -m launch method=sedona_search network=lenet5 dataset=digits method.objective=val "
    "method.memory_keep=spread": "64 s",
    "python -m launch method=sedona_search network=lenet5 dataset=digits method.search_beta=false "
    "method.fixed_head=mlp_sr": "17 s",
    "python -m launch method=sedona_search network=lenet5 dataset=digits method.eval_mode=continuous "
    "trainer.epochs=50": "22 s",
    "python -m launch method=sedona network=lenet5 method.decoupling={search}/decoupling.json method.num_blocks=4": (
        "needs the search above"
    ),
    "python -m launch method=sedona method.decoupling={search}/decoupling.json method.num_blocks=4 network=lenet5 "
    "dataset=digits": "needs the search above",
    "python -m launch -m method=sedona network=lenet5 method.num_blocks=1,2,4 method.aux=mlp_sr,predsim "
    "seed=0,1,2": "6 jobs, 22 s",
}


def _id(cmd: str) -> str:
    return cmd.removeprefix("python -m launch").strip() or "(no arguments)"


@pytest.mark.parametrize(
    "cmd", [pytest.param(c, id=_id(c), marks=[pytest.mark.slow] if c in HEAVY else []) for c in RUNNABLE]
)
def test_readme_command_runs_under_debug_fast(cmd, request, jobs_root, data_dir):
    runs_here, why = NEEDS.get(cmd, (True, ""))
    if not runs_here:
        pytest.skip(why)
    search = request.getfixturevalue("search_folder") if "{search}" in cmd else None
    try:
        done = run_command(cmd, jobs_root, data_dir, search)
    except Exception as exc:
        if type(exc).__name__ == UNAVAILABLE_HERE.get(cmd):
            pytest.skip(f"{type(exc).__name__}: {exc}")
        raise
    for folder, results in done:
        assert results and set(json.loads((folder / RESULTS_FILE).read_text())) == set(results)


@pytest.mark.parametrize("cmd", sorted(EXPECTED_ERRORS), ids=_id)
def test_readme_error_command_exits_with_its_line(cmd, tmp_path):
    code, message = EXPECTED_ERRORS[cmd]
    with pytest.raises(tuple(_user_errors())) as err:
        run_job(launch_args(cmd), tmp_path / "run")
    assert next(c for t, c in _user_errors().items() if isinstance(err.value, t)) == code
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


# README command -> ({metric of results.json: (low, high)}, where the README says so): run in full. One test image
# of digits is 1/360: a figure stated for one seed may move by one image with the number of threads.
_IMAGE = 1 / 360
_SHAPES = 0.015
STATED: dict[str, tuple[dict[str, tuple[float, float]], str]] = {
    # "reaches 97.5% test accuracy (97.5-98.1% over seeds 0-5)"
    "python -m launch": ({"test_acc": (0.975 - _IMAGE, 0.981 + _IMAGE)}, "README.md, the default job"),
    # "97.8% test accuracy (96.9-98.3% over seeds 0-4)"
    "python -m launch network=lenet5 dataset=digits optimizer=sgd_momentum scheduler=cosine trainer.epochs=30 "
    "seed=1": ({"test_acc": (0.969 - _IMAGE, 0.983 + _IMAGE)}, "README.md, Running"),
    # the shapes table, seed 0 (a sweep's seed axis runs its first seed): 2000 test images; a figure may move by a
    # few of them with the number of threads over 20 epochs
    "python -m launch -m dataset=shapes network=lenet5 optimizer.lr=0.05 seed=0,1,2": (
        {"test_acc": (0.848 - _SHAPES, 0.848 + _SHAPES)},
        "README.md, Shapes",
    ),
    "python -m launch -m dataset=shapes network=mlp optimizer.lr=0.01 seed=0,1,2": (
        {"test_acc": (0.579 - _SHAPES, 0.579 + _SHAPES)},
        "README.md, Shapes",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("cmd", sorted(STATED), ids=_id)
def test_stated_accuracy(cmd, tmp_path):
    stated, _where = STATED[cmd]
    for i, job in enumerate(sweep_jobs(launch_args(cmd))):
        results = run_job(job, tmp_path / f"run{i}", fast=False)
        for metric, (low, high) in stated.items():
            assert math.isfinite(results[metric]) and low <= results[metric] <= high, (metric, results)
