"""Build the pieces every method needs from a composed config: data, model, optimizer, scheduler."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from common.data import DataBundle, build_data
from common.optim import build_optimizer, build_scheduler

__all__ = ["make_data", "make_model", "build_optimizer", "build_scheduler"]


def input_size_for(cfg: DictConfig) -> int | None:
    """The image size the network will see: the data set's, enlarged to the network's minimum if smaller.

    E.g. digits (8x8) and MNIST (28x28) are resized to 32x32 for LeNet-5 and the CIFAR-style conv nets.
    """
    native = cfg.dataset.get("image_size")
    minimum = cfg.network.get("min_input_size")
    if native is None or minimum is None or native >= minimum:
        return None
    return int(minimum)


def make_data(cfg: DictConfig, device: torch.device) -> DataBundle:
    """The train/val/test loaders of ``cfg.dataset``, on ``device``, seeded by ``cfg.seed``."""
    return build_data(
        cfg.dataset, data_dir=cfg.paths.data_dir, seed=cfg.seed, device=device, image_size=input_size_for(cfg)
    )


def make_model(cfg: DictConfig, data: DataBundle, device: torch.device | None = None) -> nn.Module:
    """Instantiate ``cfg.network`` for ``data`` (classes, channels and the final image size come from it)."""
    model = instantiate(
        cfg.network, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
    )
    return model.to(device) if device is not None else model
