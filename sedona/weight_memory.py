"""SEDONA's weight memory: the training states of the pretraining that the meta-search starts its steps from.

The search does not unroll from one network state but from states sampled out of a bounded memory filled during
the pretraining (the original's ``init_memory.py``, brief §1.5); each meta-step pops a state, and the state,
advanced by one ordinary step, is pushed back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WeightMemory:
    """A bounded list of training states (params, buffers, momenta, step, error) to start meta-steps from.

    Args:
        capacity: the most states kept (50 in the original).
        keep: which states survive when it is full: ``oldest`` evicts the oldest (what the original does, so the
            memory ends up holding the last ``capacity`` snapshots; brief §4.5) or ``spread`` evicts the state
            whose removal leaves the most even spacing of steps over training (the newest is always kept).
    """

    def __init__(self, capacity: int = 50, keep: str = "oldest") -> None:
        if keep not in ("oldest", "spread"):
            raise ValueError(f"keep must be oldest or spread, got {keep!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.keep = keep
        self.entries: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, entry: dict[str, Any]) -> None:
        """Add a state, evicting one first if full."""
        if len(self.entries) >= self.capacity:
            self.entries.pop(self._victim())
        self.entries.append(entry)

    def _victim(self) -> int:
        if self.keep == "oldest":
            return 0
        steps = [int(e["step"]) for e in self.entries]
        # drop i whose neighbours are closest together (the gap left behind is the smallest)
        gaps = [steps[i + 1] - (steps[i - 1] if i > 0 else 0) for i in range(len(steps) - 1)]
        return min(range(len(gaps)), key=gaps.__getitem__)

    def pop(self, index: int) -> dict[str, Any]:
        """Remove and return a state (the original's ``sample`` pops; the advanced state is pushed back)."""
        return self.entries.pop(index)

    def steps(self) -> list[int]:
        return [int(e["step"]) for e in self.entries]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "keep": self.keep, "entries": list(self.entries)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.keep = int(state["capacity"]), str(state["keep"])
        self.entries = list(state["entries"])


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int, error: float) -> dict:
    """A memory entry from a live model and its ``torch.optim.SGD`` (momentum buffers by parameter name)."""
    momenta = {}
    if optimizer is not None:
        for n, p in model.named_parameters():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                momenta[n] = buf.detach().clone()
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "momenta": momenta,
        "step": int(step),
        "error": float(error),
    }


__all__ = ["WeightMemory", "snapshot"]
