"""User errors of the harness are one line and exit 2 from ``python -m launch``, not tracebacks.

``trainer.device=cuda`` where no CUDA device is visible, and ``dataset.download=true`` without a network (made
certain with a proxy that refuses every connection, so that a machine with a network does not download).
"""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import pytest
import torchvision

import common.data.vision as vision
from common.config import ConfigError
from common.data import DatasetNotFoundError
from common.optim import resolve_device
from tests.conftest import run_cli

# a proxy on a port nothing listens on: every download fails at once, network or not
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_cuda_device_without_cuda_is_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "debug=fast",
        "trainer.device=cuda",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert _one_error_line(proc) == (
        "error: trainer.device=cuda but no CUDA device is visible here; use trainer.device=cpu or trainer.device=auto"
    )
    assert not (out / "results.json").exists()


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="trainer.device=cuda:1 but no CUDA device is visible here"):
        resolve_device("cuda:1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert str(resolve_device("cuda:1")) == "cuda:1"
    with pytest.raises(
        ConfigError, match=r"trainer.device=cuda:2 but only 2 CUDA device\(s\) are visible here"
    ):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="trainer.device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")


def test_download_without_network_is_one_line_naming_the_url_and_the_folder(tmp_path):
    data = tmp_path / "data"
    proc = run_cli(
        "debug=fast", "dataset=mnist", "dataset.download=true", f"paths.data_dir={data}",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=NO_NETWORK,
    )  # fmt: skip
    line = _one_error_line(proc)
    assert line.startswith(
        "error: MNIST download failed: tried https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz "
        "and http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz: "
    )
    assert line.endswith(
        "Without network access, download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from https://ossci-datasets.s3.amazonaws.com/mnist/ "
        f"by hand and put them in {data / 'MNIST' / 'raw'}"
    )


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_download_failure_names_the_url_and_the_folder(monkeypatch, tmp_path, variant):
    seen = {}

    def unreachable(self, *args, **kwargs):
        seen["timeout"] = socket.getdefaulttimeout()
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    cls = getattr(torchvision.datasets, vision.CIFAR_LAYOUTS[variant]["torchvision"])
    monkeypatch.setattr(cls, "__init__", unreachable)
    with pytest.raises(DatasetNotFoundError) as info:
        vision.load_cifar(tmp_path, variant, download=True)
    folder = vision.CIFAR_LAYOUTS[variant]["folder"]
    assert str(info.value) == (
        f"{variant.upper()} download failed: tried {cls.url}: <urlopen error [Errno 101] Network is unreachable>. "
        f"Without network access, download {cls.url} by hand and unpack it in {tmp_path} (it holds the folder "
        f"{folder}/)"
    )
    # the download ran under a socket timeout (a dropped connection fails instead of hanging); restored after
    assert seen["timeout"] == vision.DOWNLOAD_TIMEOUT_S
    assert socket.getdefaulttimeout() is None


def test_mnist_download_failure_is_one_line(monkeypatch, tmp_path: Path):
    def every_mirror_failed(self, *args, **kwargs):
        raise RuntimeError(
            "Error downloading x.gz:\nTried a, got:\nboom\nTried b, got:\n<urlopen error timed out>\n"
        )

    monkeypatch.setattr(torchvision.datasets.MNIST, "__init__", every_mirror_failed)
    with pytest.raises(DatasetNotFoundError) as info:
        vision.load_mnist(tmp_path, download=True)
    assert "\n" not in str(info.value)
    assert ": <urlopen error timed out>. Without network access" in str(info.value)


@pytest.mark.parametrize("cost", ["energy_nvml", "latency_cuda"])
def test_ecc_cost_backend_this_machine_cannot_run_is_one_line_before_any_training(tmp_path, cost):
    out = tmp_path / "run"
    proc = run_cli(
        "method=ecc", "network=lenet5", "debug=fast", f"method.cost={cost}", f"hydra.run.dir={out}",
        cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    line = _one_error_line(proc)
    assert line.startswith(f"error: {cost}: ") and line.endswith(("use latency_cpu or macs", "use latency_cuda"))
    assert not (out / "dense").exists() and not (out / "results.json").exists()
