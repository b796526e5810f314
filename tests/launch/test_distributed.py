"""Data-parallel training (DDP, gloo on CPU) with 2 processes started by submitit equals one process."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import load_verified
from common.config import ConfigError
from common.distributed import DistContext
from launch.run import run
from tests.conftest import run_cli

# an even global batch split in equal halves (drop_last), no BatchNorm and no dropout: the same arithmetic
ARGS = ("debug=fast", "trainer.epochs=2", "trainer.limit_train_batches=10", "dataset.drop_last=true")


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    single = run_cli(*ARGS, f"hydra.run.dir={tmp_path / 'single'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(
        "launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "trainer.distributed=true", *ARGS,
        f"hydra.sweep.dir={tmp_path / 'ddp'}", cwd=tmp_path,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    job = tmp_path / "ddp" / "0"
    log = (job / "run.log").read_text()
    assert "rank 0 of 2" in log and "(gloo)" in log
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    two = json.loads((job / "results.json").read_text())
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    w1 = load_verified(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    w2 = load_verified(job / "checkpoints" / "last.pt")["model"]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)
    # only rank 0 wrote the metrics: one line per epoch, as the single process
    lines = (job / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())


def test_distributed_without_a_launcher_says_how(cfg_factory, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="tasks_per_node"):
        run(cfg_factory("trainer.distributed=true"))


def test_shard_splits_a_batch_into_rank_slices():
    x = torch.arange(10)
    parts = [DistContext(rank=r, world_size=3).shard(x) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert torch.equal(DistContext().shard(x), x)
