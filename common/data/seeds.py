"""Seed derivation: each random stream of the data pipeline is a pure function of its keys.

Nothing here touches the global torch, numpy or python RNGs.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream tags keep the shuffling and augmentation streams independent of each other.
ORDER_STREAM = 0x0DE7
BATCH_AUG_STREAM = 0xBA7C
ITEM_AUG_STREAM = 0x17E3

_MASK64 = (1 << 64) - 1
_MASK63 = (1 << 63) - 1


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from any number of integer keys (negative ones allowed)."""
    state = np.random.SeedSequence([int(k) & _MASK64 for k in keys]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & _MASK63


def generator(*keys: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded from ``keys``.

    CPU generators give the same draws whatever device the data lives on.
    """
    return torch.Generator().manual_seed(derive_seed(*keys))


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch (CPU int64 tensor)."""
    return torch.randperm(num_samples, generator=generator(seed, epoch, ORDER_STREAM))
