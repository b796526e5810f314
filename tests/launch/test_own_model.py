"""A network and a data set of one's own: registered from user code, selected by config, run by ``launch``.

In process: a throw-away network and data set defined in this module, registered with ``register_model`` /
``register_dataset`` and selected by name from yamls written into ``tmp_path`` (on ``hydra.searchpath``), or named
by import path (``_target_`` / ``builder``) without registering. In a subprocess: the README's example, its files
written as the README shows them, run with the README's own ``python -m launch`` command line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import common.data.registry as data_registry
import common.models.registry as model_registry
from common.config import REPO_ROOT, ConfigError
from common.data import BuildContext, DataBundle, TensorSource, image_bundle, register_dataset
from common.models import available_models, network_info, register_model
from launch.run import run
from tests.conftest import compose_config

README = REPO_ROOT / "README.md"
SECTION = "## Your own model or data set"
CALLS: list[dict] = []


# --------------------------------------------------------------------------- the throw-away network and data set


def build_throwaway_net(num_classes: int, in_channels: int, image_size: int, width: int = 8) -> nn.Module:
    """Registered as ``throwaway_net``: records how it was called."""
    CALLS.append(
        {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "width": width}
    )
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size**2, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def build_throwaway_data(ctx: BuildContext) -> DataBundle:
    """Registered as ``throwaway_data``: four classes of 6x6 two-channel images, the class in the mean."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = (rng.normal(size=(400, 2, 6, 6)) + y[:, None, None, None]).astype(np.float32)
    return image_bundle(
        ctx, train=(x[:300], y[:300]), test=(x[300:], y[300:]), num_classes=4, input_scale=1.0
    )


def build_plain_net(num_classes: int, in_channels: int, hidden: int = 16) -> nn.Module:
    """Not registered, takes no image_size: named by ``_target_`` only (a lazy first layer)."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def build_plain_data(ctx: BuildContext) -> DataBundle:
    """Not registered: named by the dataset config's ``builder``; the bare contract (TensorSource loaders)."""
    g = torch.Generator().manual_seed(int(ctx.get("data_seed", 0)))

    def split(n: int) -> TensorSource:
        y = torch.randint(0, 3, (n,), generator=g)
        x = torch.randn(n, 1, 4, 4, generator=g) + y.view(-1, 1, 1, 1)
        return TensorSource(x.to(ctx.device), y.to(ctx.device))

    train, val, test = ctx.tensor_loaders({"train": split(120), "val": split(40), "test": split(60)})
    return DataBundle(
        train=train, val=val, test=test, num_classes=3, in_channels=1, image_size=4, task="classification",
        name=str(ctx.get("name")),
    )  # fmt: skip


@pytest.fixture
def registries(monkeypatch):
    """Copies of the two registries, restored after the test (so the throw-away names do not leak)."""
    monkeypatch.setattr(model_registry, "_REGISTRY", dict(model_registry._REGISTRY))
    monkeypatch.setattr(data_registry, "_BUILDERS", dict(data_registry._BUILDERS))
    CALLS.clear()


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


REGISTERED_CONF = {
    "network/throwaway_net.yaml": (
        "_target_: common.models.build_model\nname: throwaway_net\nnum_classes: ${dataset.num_classes}\n"
        "in_channels: ${dataset.in_channels}\nimage_size: ${dataset.image_size}\ninput_kind: image\n"
        "min_input_size: null\nwidth: 5\n"
    ),
    "dataset/throwaway_data.yaml": (
        "name: throwaway_data\nkind: image\nnum_classes: 4\nin_channels: 2\nimage_size: 6\nval_size: 50\n"
        "batch_size: 25\neval_batch_size: 100\n"
    ),
}


def test_registered_network_and_dataset_run_in_process(registries, tmp_path):
    register_model("throwaway_net", build_throwaway_net, default_input_size=6)
    register_dataset("throwaway_data", build_throwaway_data)
    assert "throwaway_net" in available_models() and "throwaway_data" in data_registry.available_datasets()
    assert network_info("throwaway_net").min_input_size is None
    conf = _write(tmp_path / "conf", REGISTERED_CONF)

    cfg = compose_config(
        f"hydra.searchpath=[file://{conf}]", "network=throwaway_net", "dataset=throwaway_data",
        "trainer.epochs=2", output_dir=tmp_path / "run",
    )  # fmt: skip
    results = run(cfg)
    assert CALLS == [{"num_classes": 4, "in_channels": 2, "image_size": 6, "width": 5}]
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["params"] == (2 * 36 * 5 + 5) + (5 * 4 + 4)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test_acc"] == results["test_acc"]


def test_registered_network_selected_by_overriding_a_shipped_config(registries, tmp_path):
    # no yaml of one's own: network=lenet5 with another name (its keys are the registry's common arguments)
    register_model("throwaway_net", build_throwaway_net, default_input_size=32)
    cfg = compose_config("network=lenet5", "network.name=throwaway_net", output_dir=tmp_path / "run")
    run(cfg)
    # digits are resized to lenet5.yaml's min_input_size (32): the builder sees the data's final size
    assert CALLS == [{"num_classes": 10, "in_channels": 1, "image_size": 32, "width": 8}]


def test_registered_builder_named_by_target_goes_through_the_registry(registries, tmp_path):
    # the registry's minimum input size (12) is applied: the data are resized up to it, and a config asking
    # for a smaller minimum is refused by build_model
    register_model("throwaway_net", build_throwaway_net, min_input_size=12, default_input_size=12)
    register_dataset("throwaway_data", build_throwaway_data)
    files = dict(REGISTERED_CONF)
    files["network/throwaway_net.yaml"] = (
        f"_target_: {__name__}.build_throwaway_net\nname: throwaway_net\ninput_kind: image\nwidth: 3\n"
    )
    conf = _write(tmp_path / "conf", files)
    overrides = (f"hydra.searchpath=[file://{conf}]", "network=throwaway_net", "dataset=throwaway_data")
    run(compose_config(*overrides, output_dir=tmp_path / "run"))
    assert CALLS == [{"num_classes": 4, "in_channels": 2, "image_size": 12, "width": 3}]
    with pytest.raises(ConfigError, match="min_input_size=4 is below network 'throwaway_net'"):
        run(compose_config(*overrides, "+network.min_input_size=4", output_dir=tmp_path / "small"))


def test_unregistered_builders_named_by_import_path(registries, tmp_path):
    conf = _write(
        tmp_path / "conf",
        {
            "network/plain.yaml": f"_target_: {__name__}.build_plain_net\nname: plain\ninput_kind: image\n"
            "min_input_size: null\nhidden: 7\n",
            "dataset/plain.yaml": f"builder: {__name__}.build_plain_data\nname: plain\nkind: image\n"
            "num_classes: 3\nin_channels: 1\nimage_size: 4\nbatch_size: 20\neval_batch_size: 60\ndata_seed: 1\n",
        },
    )
    cfg = compose_config(
        f"hydra.searchpath=[file://{conf}]", "network=plain", "dataset=plain", "trainer.epochs=2",
        output_dir=tmp_path / "run",
    )  # fmt: skip
    results = run(cfg)
    assert results["params"] == (16 * 7 + 7) + (7 * 3 + 3)
    assert "plain" not in available_models()  # nothing was registered


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"network/bad.yaml": "_target_: no_such_package.nets.build\nname: bad\ninput_kind: image\n"},
            "network._target_=no_such_package.nets.build: no module 'no_such_package' found; is its package on "
            "PYTHONPATH (or installed)?",
        ),
        (
            {"network/bad.yaml": f"_target_: {__name__}.build_no_such_net\nname: bad\ninput_kind: image\n"},
            f"network._target_={__name__}.build_no_such_net: {__name__} has no attribute 'build_no_such_net'",
        ),
    ],
    ids=["no-module", "no-function"],
)
def test_a_network_target_that_does_not_import_is_one_line(registries, tmp_path, files, message):
    conf = _write(tmp_path / "conf", files)
    cfg = compose_config(f"hydra.searchpath=[file://{conf}]", "network=bad", output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    assert str(info.value) == message


def test_a_dataset_builder_that_does_not_import_is_one_line(registries, tmp_path):
    conf = _write(
        tmp_path / "conf",
        {"dataset/bad.yaml": "builder: no_such_package.data.build\nname: bad\nkind: image\nnum_classes: 3\n"
         "in_channels: 1\nimage_size: 8\nbatch_size: 8\neval_batch_size: 8\n"},
    )  # fmt: skip
    cfg = compose_config(f"hydra.searchpath=[file://{conf}]", "dataset=bad", output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    assert str(info.value) == (
        "dataset.builder=no_such_package.data.build: no module 'no_such_package' found; is its package on "
        "PYTHONPATH (or installed)?"
    )


# --------------------------------------------------------------------------- the README's example, as a user runs it


def readme_example() -> tuple[dict[str, str], str]:
    """The files the README's section writes out (``# <path>`` first lines) and its ``python -m launch`` line."""
    section = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    files, commands = {}, []
    for block in re.findall(r"^```\w*\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL):
        header = re.fullmatch(r"# (\S+\.(?:py|yaml))", block.splitlines()[0])
        if header:
            files[header[1]] = block
        commands += [line for line in block.splitlines() if "python -m launch" in line]
    assert len(commands) == 1, commands
    return files, commands[0]


def _shell(command: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    # `python` in the README's command is this interpreter; nothing else of the test environment is passed on
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_readme_example_files_are_what_the_text_says():
    files, command = readme_example()
    assert set(files) == {"mywork/tiny.py", "conf/network/tiny.yaml", "conf/dataset/blobs.yaml"}
    assert command.startswith("PYTHONPATH=$PWD python -m launch ")
    assert "network=tiny" in command and "dataset=blobs" in command


def test_readme_example_runs_through_python_m_launch(tmp_path):
    files, command = readme_example()
    project = _write(tmp_path / "project", files)
    out = tmp_path / "run"
    # the README's command as written (10 epochs of 24 batches: a few seconds), into a known folder
    proc = _shell(f"{command} hydra.run.dir={shlex.quote(str(out))}", cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Results: method=train network=tiny dataset=blobs" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["test_acc"] >= 0.9, results  # the example learns its task
    # 64 pixels -> 64 hidden -> 3 classes (conf/network/tiny.yaml's hidden: 64)
    assert results["params"] == (64 * 64 + 64) + (64 * 3 + 3)

    # a typo in the yaml's _target_: one line, exit 2, no traceback, nothing of a run written
    bad = tmp_path / "bad"
    proc = _shell(
        f"{command} debug=fast network._target_=mywork.tiny.build_tyni hydra.run.dir={shlex.quote(str(bad))}",
        cwd=project,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: network._target_=mywork.tiny.build_tyni: mywork.tiny has no attribute 'build_tyni'"
    ]
    assert "Traceback" not in proc.stderr
    assert not (bad / "results.json").exists()
