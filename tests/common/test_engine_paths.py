"""The engine on every kind of job: regression (LSTM on the UCI file), conv nets, AMP on CPU, wandb offline."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import common.engine as engine
from launch.run import run
from tests.common.test_data import write_power
from tests.conftest import crash_on_call


def test_lstm_regression_on_household_power(cfg_factory, tmp_path):
    write_power(tmp_path)
    cfg = cfg_factory(
        "network=lstm", "dataset=household_power", f"paths.data_dir={tmp_path}", "dataset.resample=null",
        "dataset.window=8", "dataset.horizon=2", "optimizer=adam", "trainer.limit_train_batches=null", "dataset.batch_size=32",
    )  # fmt: skip
    assert cfg.dataset.num_classes == 2  # follows the horizon
    results = run(cfg)
    for key in ("test_loss", "test_mae", "val_loss", "train_loss"):
        assert math.isfinite(results[key]), key
    assert "test_acc" not in results
    assert results["test_mae"] ** 2 <= results["test_loss"] + 1e-9  # MAE^2 <= MSE (Jensen)


def test_conv_net_on_synthetic_images(cfg_factory):
    cfg = cfg_factory(
        "network=resnet18", "dataset=synthetic", "dataset.batch_size=16", "dataset.eval_batch_size=64"
    )
    results = run(cfg)
    assert results["params"] == 11_173_962
    assert 0.0 <= results["test_acc"] <= 1.0 and math.isfinite(results["test_loss"])


def test_small_images_are_resized_for_conv_nets(cfg_factory):
    results = run(cfg_factory("network=lenet5"))  # digits are 8x8, LeNet-5 needs 32x32
    assert results["params"] == 61_706


def test_amp_on_cpu_uses_bfloat16_and_trains(cfg_factory, monkeypatch):
    seen = []
    real_step = engine.Trainer.default_step

    def spy(self, x, y):
        with engine.autocast(self.device, self.amp, self.amp_dtype):
            seen.append(self.model(x).dtype)
        return real_step(self, x, y)

    monkeypatch.setattr(engine.Trainer, "default_step", spy)
    results = run(cfg_factory("trainer.amp=true", "network=lenet5"))
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert math.isfinite(results["test_loss"])


def test_grad_clip_and_label_smoothing_run(cfg_factory):
    results = run(cfg_factory("trainer.grad_clip=0.5", "trainer.label_smoothing=0.1"))
    assert math.isfinite(results["train_loss"])


def test_wandb_offline_keeps_one_run_across_resume(cfg_factory, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = ("logger=wandb", "logger.mode=offline", "trainer.epochs=2", "trainer.limit_train_batches=2")
    restore = crash_on_call(monkeypatch, engine.Trainer, "default_step", at=3, exc=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_factory(*overrides))
    out = tmp_path / "run"
    run_id = (out / "wandb_run_id").read_text().strip()
    # wandb names a run's folder offline-run-<date>_<time>-<run id>, and appends -1, -2, ... when a folder of
    # that name exists: a resume that starts within the same second as the first attempt (seen under load)
    folder = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?")
    runs_before = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert runs_before and all(folder.fullmatch(name) for name in runs_before), runs_before
    restore()
    run(cfg_factory(*overrides))
    assert (out / "wandb_run_id").read_text().strip() == run_id
    runs_after = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs_after) > len(runs_before), runs_after  # the resume is a new attempt of the same run
    assert all(folder.fullmatch(name) for name in runs_after), runs_after
    assert json.loads((out / "results.json").read_text())["epochs"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_cuda_with_amp_trains_and_resumes(cfg_factory, tmp_path, monkeypatch, amp_dtype):
    overrides = (
        "trainer.device=auto",
        "trainer.amp=true",
        f"trainer.amp_dtype={amp_dtype}",
        "network=lenet5",
    )
    overrides += ("trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.checkpoint_every_steps=3")
    reference = run(cfg_factory(*overrides, name="ref"))
    assert math.isfinite(reference["test_loss"])
    meta = json.loads((tmp_path / "ref" / "meta.json").read_text())
    assert meta["gpus"], "trainer.device=auto did not pick the GPU"
    restore = crash_on_call(monkeypatch, engine.Trainer, "default_step", at=5, exc=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_factory(*overrides, name="resumed"))
    restore()
    resumed = run(cfg_factory(*overrides, name="resumed"))
    # cuDNN kernels need not be bitwise deterministic: equal to float tolerance
    assert resumed["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-3)
