"""The Trainer's Python API: options from the config with keyword overrides; the asynchronous pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointManager, load_verified
from common.config import ConfigError
from common.engine import RunContext, StepPipeline, Trainer, TrainerOptions
from common.factory import build_optimizer, make_data, make_model
from common.logging import RunLogger
from common.seeding import seed_everything
from tests.conftest import Crash, crash_on_call

OVERRIDES = ("trainer.epochs=2", "trainer.limit_train_batches=4", "trainer.limit_eval_batches=2")


def _parts(cfg, folder: Path):
    """Data, a freshly seeded model, its optimizer and a run context writing into ``folder``."""
    device = torch.device("cpu")
    data = make_data(cfg, device)
    seed_everything(cfg.seed)
    model = make_model(cfg, data, device)
    ctx = RunContext(
        cfg=cfg,
        output_dir=folder,
        device=device,
        logger=RunLogger.null(),
        checkpoints=CheckpointManager(folder),
        progress=False,
    )
    return model, build_optimizer(cfg.optimizer, model), data, ctx


def _comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in ("time_s", "train_time_s")}


def test_from_config_takes_cfg_trainer_and_keyword_overrides(cfg_factory, tmp_path):
    cfg = cfg_factory(*OVERRIDES, "trainer.grad_clip=0.5", "trainer.label_smoothing=0.1")
    model, opt, data, ctx = _parts(cfg, tmp_path / "a")
    trainer = Trainer.from_config(cfg, model, opt, data, ctx, epochs=3, limit_train_batches=1, phase="p")
    assert trainer.options == TrainerOptions.from_config(cfg.trainer).replace(epochs=3, limit_train_batches=1)
    assert (trainer.epochs, trainer.limit_train_batches, trainer.grad_clip, trainer.phase) == (3, 1, 0.5, "p")
    # the default loss is the cross-entropy with cfg.trainer.label_smoothing
    out, y = torch.randn(5, 10), torch.arange(5)
    assert torch.equal(trainer.loss_fn(out, y), F.cross_entropy(out, y, label_smoothing=0.1))


@pytest.mark.parametrize("name", ["epoch", "pipelines", "label_smothing"])
def test_from_config_refuses_an_unknown_keyword(cfg_factory, tmp_path, name):
    cfg = cfg_factory(*OVERRIDES)
    with pytest.raises(TypeError, match=f"'{name}'"):
        Trainer.from_config(cfg, *_parts(cfg, tmp_path / "a"), **{name: 1})


def test_from_config_refuses_a_bad_option_value(cfg_factory, tmp_path):
    cfg = cfg_factory(*OVERRIDES)
    with pytest.raises(ConfigError, match=r"trainer\.eval_every_epochs must be >= 1"):
        Trainer.from_config(cfg, *_parts(cfg, tmp_path / "a"), eval_every_epochs=0)


def test_direct_construction_equals_from_config(cfg_factory, tmp_path):
    cfg = cfg_factory(*OVERRIDES)
    via_cfg = Trainer.from_config(cfg, *_parts(cfg, tmp_path / "a")).fit()
    direct = Trainer(*_parts(cfg, tmp_path / "b"), TrainerOptions.from_config(cfg.trainer)).fit()
    assert _comparable(direct) == _comparable(via_cfg)


class LaggingPipeline:
    """Steps each batch when it is submitted but returns its result one poll late, as an asynchronous
    pipeline does (the Trainer must take its sums from the results, and drain before checkpoints)."""

    def __init__(self) -> None:
        self.step = None
        self.pending: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def submit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss, out = self.step(x, y)
        self.pending.append((loss, out, y))

    def poll(self):
        done, self.pending = self.pending[:-1], self.pending[-1:]
        return done

    def drain(self):
        done, self.pending = self.pending, []
        return done


def _pipelined(cfg, folder: Path) -> Trainer:
    pipe = LaggingPipeline()
    assert isinstance(pipe, StepPipeline)
    trainer = Trainer.from_config(cfg, *_parts(cfg, folder), pipeline=pipe)
    pipe.step = trainer.default_step
    return trainer


def test_pipeline_results_equal_the_synchronous_step(cfg_factory, tmp_path):
    cfg = cfg_factory(*OVERRIDES)
    plain = Trainer.from_config(cfg, *_parts(cfg, tmp_path / "plain"))
    reference = plain.fit()
    piped = _pipelined(cfg, tmp_path / "piped")
    results = piped.fit()
    assert _comparable(results) == _comparable(reference)
    assert [_comparable(h) for h in piped.history] == [_comparable(h) for h in plain.history]
    assert results["steps"] == 8 and piped.pipeline.pending == []


def test_pipeline_is_drained_before_a_checkpoint_and_resumes_exactly(cfg_factory, tmp_path, monkeypatch):
    cfg = cfg_factory(*OVERRIDES, "trainer.checkpoint_every_steps=3")
    reference = Trainer.from_config(cfg, *_parts(cfg, tmp_path / "ref")).fit()
    restore = crash_on_call(monkeypatch, LaggingPipeline, "submit", at=7)  # epoch 2, batch 3
    with pytest.raises(Crash):
        _pipelined(cfg, tmp_path / "run").fit()
    restore()
    state = load_verified(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["global_step"]) == (1, 2, 6)  # saved at step 6
    # the sums hold every step counted so far (the lagging result was drained in, not lost)
    assert state["epoch_sums"]["seen"] == state["batch"] * cfg.dataset.batch_size
    resumed = _pipelined(cfg, tmp_path / "run").fit()
    assert _comparable(resumed) == _comparable(reference)


def test_steps_skipped_by_the_fp16_loss_scaler_are_counted_and_logged(cfg_factory, tmp_path, caplog):
    """GradScaler (fp16 on CUDA) skips a step whose scaled gradients overflow: the Trainer counts them per epoch.

    On the CPU the Trainer never enables the scaler, so the test puts in an enabled CPU scaler at the largest
    power-of-two scale and a loss 100 times larger: the scaled gradients overflow, and the scale halves after each
    skipped step until they are finite again.
    """
    cfg = cfg_factory("trainer.epochs=2", "trainer.limit_train_batches=6", "trainer.limit_eval_batches=1")
    model, opt, data, ctx = _parts(cfg, tmp_path / "a")
    trainer = Trainer.from_config(cfg, model, opt, data, ctx)
    assert not trainer.scaler.is_enabled()  # fp32 on the CPU: nothing to count, no key
    loss_fn = trainer.loss_fn
    trainer.loss_fn = lambda out, y: 100.0 * loss_fn(out, y)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, backoff_factor=0.5, enabled=True)
    trainer._scale = trainer.scaler.get_scale()
    before = [p.detach().clone() for p in model.parameters()]
    skipped = []
    real_step = opt.step

    def spy_step(*args, **kwargs):
        skipped.append(False)
        return real_step(*args, **kwargs)

    opt.step = spy_step
    with caplog.at_level("WARNING", logger="common.engine"):
        trainer.fit()
    first, second = trainer.history
    ran = len(skipped)  # GradScaler calls optimizer.step only for the steps it does not skip
    total = first["amp_skipped_steps"] + second["amp_skipped_steps"]
    assert 0 < total == 12 - ran < 12
    # no growth within 12 steps (growth_interval 2000): the scale halved once per skipped step, exactly
    assert trainer.scaler.get_scale() == 2.0**127 * 0.5**total
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert any("were skipped" in r.getMessage() and "bfloat16" in r.getMessage() for r in caplog.records)
