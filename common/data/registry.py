"""Data set registry and the `build_data` entry point."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from common.data.bundle import DataBundle
from common.data.context import BuildContext

log = logging.getLogger(__name__)

# name -> "module:builder"; imported on demand so that `import common.data` stays light.
_BUILDERS = {
    "digits": "common.data.digits:build_digits",
    "synthetic": "common.data.synthetic:build_synthetic",
    "mnist": "common.data.vision:build_mnist",
    "cifar10": "common.data.vision:build_cifar10",
    "cifar100": "common.data.vision:build_cifar100",
    "tiny_imagenet": "common.data.folders:build_tiny_imagenet",
    "imagenet": "common.data.folders:build_imagenet",
    "household_power": "common.data.timeseries:build_household_power",
}


def available_datasets() -> list[str]:
    """Names accepted as the dataset config's ``name``."""
    return sorted(_BUILDERS)


def _as_dict(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is optional for callers passing plain dicts
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"dataset config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def build_data(
    cfg_dataset: Mapping[str, Any],
    *,
    data_dir: str | Path,
    seed: int,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
) -> DataBundle:
    """Build the train/val/test loaders of one data set.

    Args:
        cfg_dataset: The contents of one ``conf/dataset/<name>.yaml`` (DictConfig or
            mapping); keys a builder does not use are ignored.
        data_dir: Root folder of all data sets.
        seed: Run seed: drives the train order and augmentation (held-out splits use
            the config's fixed ``split_seed``).
        device: Where batches are delivered (in-memory sets are stored there).
        image_size: Final image size; images of another native size are resized
            (bilinear). Ignored for sequence sets.

    Returns:
        The `DataBundle`.

    Raises:
        ValueError: Unknown data set name (the message lists the valid ones).
        DatasetNotFoundError: The data set's files are missing under ``data_dir``.
    """
    cfg = _as_dict(cfg_dataset)
    name = cfg.get("name")
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}")
    module, function = _BUILDERS[name].split(":")
    builder = getattr(importlib.import_module(module), function)
    ctx = BuildContext(
        cfg=cfg,
        data_dir=Path(data_dir).expanduser(),
        seed=int(seed),
        device=torch.device(device),
        image_size=None if image_size is None else int(image_size),
    )
    bundle = builder(ctx)
    declared = cfg.get("num_classes")
    if declared is not None and int(declared) != bundle.num_classes:
        log.warning("%s: config says num_classes=%s but the data give %d", name, declared, bundle.num_classes)
    return bundle
