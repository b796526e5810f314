"""The check at the end of a run: did it learn at all?

A run whose test accuracy is within noise of chance, or whose training loss ended above where it started, gets
one warning line naming the likely cause and the override to try; the line is also stored in ``results.json``
under ``warning``. Debug runs (``trainer.limit_train_batches`` set) are not judged: they train on a few batches.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# a test accuracy at most chance + CHANCE_MARGIN * chance * (1 - chance) is "within noise of chance": 0.145 for 10
# classes (on digits' 360 test samples, 2.9 binomial standard deviations above chance), 0.625 for 2, 0.015 for 100
CHANCE_MARGIN = 0.5


def _epoch_losses(output_dir: Path) -> list[float]:
    path = output_dir / "metrics.jsonl"
    losses: list[float] = []
    if not path.exists():
        return losses
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "epoch" in rec and isinstance(rec.get("train_loss"), int | float):
            losses.append(float(rec["train_loss"]))
    return losses


def learning_warning(results: dict[str, Any], cfg: DictConfig, output_dir: Path) -> str | None:
    """One line saying why this run looks like it did not learn, with the override to try; None if it did."""
    if cfg.trainer.get("limit_train_batches") is not None:
        return None
    lr = cfg.optimizer.get("lr")
    try_lr = f"a smaller learning rate (optimizer.lr={float(lr) / 10:g})" if lr else "a smaller learning rate"
    losses = _epoch_losses(output_dir)
    num_classes = cfg.dataset.get("num_classes")
    acc = results.get("test_acc")
    task = cfg.dataset.get("task", "classification")
    if task != "regression" and isinstance(acc, int | float) and num_classes:
        chance = 1.0 / float(num_classes)
        if acc <= chance + CHANCE_MARGIN * chance * (1 - chance):
            cause = (
                f"the training loss diverged ({losses[0]:.3g} -> {losses[-1]:.3g})"
                if len(losses) > 1 and (not math.isfinite(losses[-1]) or losses[-1] > losses[0])
                else "it did not fit the training set"
            )
            return (
                f"test accuracy {acc:.3f} is within noise of chance ({chance:.3f}): {cause}; try {try_lr}, "
                "or more epochs (trainer.epochs)"
            )
    if len(losses) > 1 and losses[-1] > losses[0]:
        return (
            f"the training loss rose over the run ({losses[0]:.3g} -> {losses[-1]:.3g}): the learning rate is "
            f"likely too high; try {try_lr}"
        )
    return None
