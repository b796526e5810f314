"""Metrics: top-k accuracy counts, and parameter / FLOP counts from PyTorch's own FLOP counter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def topk_correct(
    logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k logits, for each k (tensors, no device sync).

    A k larger than the number of classes counts every sample as correct, as top-k accuracy should.
    """
    maxk = min(max(ks), logits.shape[-1])
    pred = logits.topk(maxk, dim=-1).indices  # (B, maxk)
    hits = pred.eq(target.view(-1, 1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward FLOPs for ``example_input`` as counted by ``torch.utils.flop_counter`` (2 per multiply-add).

    The model is run once in eval mode; its train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(example_input)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward multiply-accumulates (half the FLOP count of matmuls and convolutions)."""
    return count_flops(model, example_input) // 2
