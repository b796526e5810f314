"""``method=sedona`` under ``debug=fast``: finishes, K = 1 equals ``method=train`` bit for bit, resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

import sedona.greedy_training as greedy_training
from common.checkpoint import load_verified
from launch.run import run
from tests.conftest import Crash, crash_on_call

TIME_KEYS = ("time_s", "train_time_s")


def _drop(r):
    return {k: v for k, v in r.items() if k not in TIME_KEYS}


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("network=lenet5", "method.aux=predsim", "method.num_blocks=3", "method.backward=joint"),
        ("network=lenet5", "method.aux=conv2", "method.num_blocks=4", "method.ensemble=2"),
        pytest.param(
            ("network=vgg19", "method.decoupling=found", "method.num_blocks=4", "method.feat_mult=0.25"),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_sedona_finishes(cfg_factory, tmp_path, overrides):
    results = run(cfg_factory("method=sedona", *overrides))
    for key in ("test_acc", "test_loss", "val_acc", "train_loss"):
        assert key in results
    dec = json.loads((tmp_path / "run" / "decoupling.json").read_text())
    assert len(dec["block_ends"]) == results["num_blocks"]
    if "method.ensemble=2" in overrides:
        assert "test_acc_ensemble" in results


def test_found_decoupling_on_vgg19(cfg_factory, tmp_path):
    cfg = cfg_factory(
        "method=sedona",
        "network=vgg19",
        "method.decoupling=found",
        "method.num_blocks=4",
        "method.feat_mult=0.25",
        "trainer.limit_train_batches=1",
    )
    run(cfg)
    dec = json.loads((tmp_path / "run" / "decoupling.json").read_text())
    assert dec == {"block_ends": [5, 12, 13, 15], "heads": ["conv4", "conv1", "conv1"]}


def test_k1_equals_plain_training(cfg_factory, tmp_path):
    common = ("network=lenet5", "trainer.epochs=2", "trainer.limit_train_batches=3")
    plain = run(cfg_factory("method=train", *common, name="plain"))
    greedy = run(
        cfg_factory(
            "method=sedona",
            "method.num_blocks=1",
            "method.lr_schedule=config",
            "method.label_smoothing=0",
            *common,
            name="k1",
        )
    )
    for key in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert greedy[key] == plain[key], key
    a = load_verified(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    b = load_verified(tmp_path / "k1" / "checkpoints" / "last.pt")["model"]
    assert len(a) == len(b)
    for va, vb in zip(a.values(), b.values(), strict=True):
        assert torch.equal(va, vb)


@pytest.mark.parametrize("backward", ["per_block", "joint"])
def test_resume_equals_uninterrupted(cfg_factory, tmp_path, monkeypatch, backward):
    overrides = (
        "method=sedona",
        "network=lenet5",
        "method.num_blocks=3",
        f"method.backward={backward}",
        "trainer.epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.checkpoint_every_steps=3",
    )
    reference = run(cfg_factory(*overrides, name="ref"))
    restore = crash_on_call(monkeypatch, greedy_training.BlockSchedulers, "step", at=5)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="res"))
    restore()
    resumed = run(cfg_factory(*overrides, name="res"))
    assert _drop(resumed) == _drop(reference)
    a = load_verified(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_verified(tmp_path / "res" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lrs = [g["lr"] for g in a["optimizer"]["blocks"][0]["param_groups"]]
    assert lrs[0] < 0.1  # the per-iteration cosine moved


def test_amp_bfloat16_on_cpu(cfg_factory):
    # the autocast path of the greedy step (fp16 + GradScaler needs CUDA: test_amp_fp16_on_cuda)
    results = run(
        cfg_factory(
            "method=sedona",
            "network=lenet5",
            "method.num_blocks=3",
            "trainer.amp=true",
            "trainer.amp_dtype=bfloat16",
        )
    )
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["test_loss"])


@pytest.mark.gpu
def test_amp_fp16_on_cuda(cfg_factory, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    results = run(
        cfg_factory(
            "method=sedona",
            "network=lenet5",
            "method.num_blocks=3",
            "trainer.amp=true",
            "trainer.device=cuda",
        )
    )
    assert math.isfinite(results["test_loss"])
    state = load_verified(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["extra"]["block_scaler"]["scale"] > 0  # one GradScaler shared by the blocks, checkpointed
