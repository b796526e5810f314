"""Fixtures of the ECCO tests: real digits minibatches in float64, in a fixed order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digits_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """40 standardised minibatches of 32 digits (float64), drawn by numpy so no torch RNG moves them."""
    x, y = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    order = np.random.RandomState(0).permutation(len(x))
    xt, yt = torch.tensor(x[order], dtype=torch.float64), torch.tensor(y[order])
    return [(xt[i : i + 32], yt[i : i + 32]) for i in range(0, 40 * 32, 32)]
