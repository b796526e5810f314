"""Seeded hold-out splits."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)


def holdout_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (kept, held out) with ``holdout`` samples held out.

    Stratified by label when every class can give at least one sample to each side,
    otherwise a plain random split. Both index arrays are sorted, so the kept samples
    keep their original order.

    Args:
        labels: Class label per sample.
        holdout: Number of samples to hold out (0 holds out nothing).
        seed: Split seed.

    Returns:
        ``(kept_indices, holdout_indices)`` as int64 arrays.
    """
    labels = np.asarray(labels)
    n = len(labels)
    indices = np.arange(n, dtype=np.int64)
    if holdout <= 0:
        return indices, indices[:0]
    if holdout >= n:
        raise ValueError(f"cannot hold out {holdout} of {n} samples")
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if counts.min() >= 2 and len(counts) <= min(holdout, n - holdout) else None
    if stratify is None:
        log.debug("split of %d samples is not stratified (too few per class)", n)
    kept, held = train_test_split(indices, test_size=holdout, random_state=seed, stratify=stratify)
    return np.sort(kept), np.sort(held)
