"""The end-of-run check: a run that did not learn says so in one line, and results.json records it."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from launch.health import learning_warning
from launch.run import run


def _cfg(lr=0.1, limit=None, num_classes=10):
    return OmegaConf.create(
        {
            "trainer": {"limit_train_batches": limit},
            "optimizer": {"lr": lr},
            "dataset": {"num_classes": num_classes, "task": "classification"},
        }
    )


def _metrics(tmp_path, losses):
    lines = [json.dumps({"step": i, "epoch": i + 1, "train_loss": v}) for i, v in enumerate(losses)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_chance_accuracy_with_a_rising_loss_names_divergence_and_a_smaller_lr(tmp_path):
    _metrics(tmp_path, [2.3, 5.0, 7.1])
    warning = learning_warning({"test_acc": 0.1}, _cfg(), tmp_path)
    assert warning == (
        "test accuracy 0.100 is within noise of chance (0.100): the training loss diverged (2.3 -> 7.1); "
        "try a smaller learning rate (optimizer.lr=0.01), or more epochs (trainer.epochs)"
    )


def test_thresholds(tmp_path):
    _metrics(tmp_path, [2.3, 2.0])
    assert learning_warning({"test_acc": 0.145}, _cfg(), tmp_path).startswith("test accuracy 0.145")
    assert learning_warning({"test_acc": 0.146}, _cfg(), tmp_path) is None  # ~3 binomial std on 360 samples
    assert learning_warning({"test_acc": 0.63}, _cfg(num_classes=2), tmp_path) is None
    assert "did not fit the training set" in learning_warning(
        {"test_acc": 0.62}, _cfg(num_classes=2), tmp_path
    )
    assert learning_warning({"test_acc": 0.1}, _cfg(limit=3), tmp_path) is None  # debug runs are not judged
    _metrics(tmp_path, [1.0, 1.2])
    assert learning_warning({"test_acc": 0.9}, _cfg(), tmp_path).startswith(
        "the training loss rose over the run (1 -> 1.2)"
    )


def test_a_run_at_lr_0_warns_and_records_it(cfg_factory, tmp_path, capsys):
    cfg = cfg_factory("optimizer.lr=0", "trainer.epochs=2", fast=False)
    results = run(cfg)
    out = capsys.readouterr().out
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["warning"] == results["warning"]
    assert "within noise of chance" in results["warning"]
    assert f"warning: {results['warning']}" in out
    assert "| warning" not in out and "warning  " not in out.split("warning:")[0]  # not a row of the table
