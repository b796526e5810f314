"""The arguments every data set builder receives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class BuildContext:
    """One `build_data` call: the dataset config plus the run's arguments.

    Attributes:
        cfg: The dataset config as a plain dict (extra keys are tolerated).
        data_dir: Root folder of all data sets.
        seed: The run seed (data order and augmentation).
        device: Where batches are delivered.
        image_size: Requested final image size, or None for the native size.
    """

    cfg: dict[str, Any]
    data_dir: Path
    seed: int
    device: torch.device
    image_size: int | None

    def get(self, key: str, default: Any = None) -> Any:
        """A config value; ``default`` also when the key is present but null."""
        value = self.cfg.get(key)
        return default if value is None else value

    @property
    def batch_size(self) -> int:
        return int(self.get("batch_size", 128))

    @property
    def eval_batch_size(self) -> int:
        return int(self.get("eval_batch_size", self.batch_size))

    @property
    def drop_last(self) -> bool:
        return bool(self.get("drop_last", False))

    @property
    def augment(self) -> bool:
        return bool(self.get("augment", False))

    @property
    def download(self) -> bool:
        return bool(self.get("download", False))

    @property
    def split_seed(self) -> int:
        # Fixed by default, independent of the run seed, so held-out sets match across runs.
        return int(self.get("split_seed", 0))
