"""What `build_data` returns, and the error raised when a data set is not on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.data.loaders import Loader


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing under ``data_dir``.

    The message names the folder or file that was expected and how to obtain it.
    """


@dataclass
class DataBundle:
    """The loaders and shape facts of one data set, ready for a training loop.

    Attributes:
        train: Shuffled, augmented loader (see `common.data.loaders.Loader`).
        val: Fixed-order loader, or None when the config asks for no validation split.
        test: Fixed-order loader.
        num_classes: Number of model outputs (classes, or targets for regression).
        in_channels: Image channels, or features per time step for sequences.
        image_size: Final spatial size of the square images; None for sequences.
        task: ``"classification"`` or ``"regression"``.
        name: The data set's registry name.
        meta: Extra facts (normalisation statistics, class names, split sizes, ...).
    """

    train: Loader
    val: Loader | None
    test: Loader
    num_classes: int
    in_channels: int
    image_size: int | None
    task: str
    name: str
    meta: dict[str, Any] = field(default_factory=dict)
