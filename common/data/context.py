"""The arguments every data set builder receives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.data.loaders import BatchTransform, TensorLoader, TensorSource, WindowSource


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

    def tensor_loader(
        self, source: TensorSource | WindowSource, train: bool, transform: BatchTransform | None = None
    ) -> TensorLoader:
        """The loader of one in-memory split: shuffled, augmented and ``drop_last`` only for the train split."""
        return TensorLoader(
            source,
            batch_size=self.batch_size if train else self.eval_batch_size,
            seed=self.seed,
            shuffle=train,
            transform=transform,
            augment=train and self.augment,
            drop_last=self.drop_last if train else False,
        )

    def tensor_loaders(
        self, sources: Mapping[str, TensorSource | WindowSource], transform: BatchTransform | None = None
    ) -> tuple[TensorLoader, TensorLoader | None, TensorLoader]:
        """(train, val or None, test) loaders of the in-memory splits in ``sources``."""
        return (
            self.tensor_loader(sources["train"], True, transform),
            self.tensor_loader(sources["val"], False, transform) if "val" in sources else None,
            self.tensor_loader(sources["test"], False, transform),
        )
