"""Class-conditional Gaussian data of any shape, generated in memory."""

from __future__ import annotations

import math

import torch

from common.data.bundle import DataBundle
from common.data.context import BuildContext
from common.data.loaders import TensorSource
from common.data.seeds import derive_seed
from common.data.transforms import resize_images

_MEANS, _TRAIN, _VAL, _TEST = range(4)


def class_means(shape: tuple[int, ...], num_classes: int, signal: float, data_seed: int) -> torch.Tensor:
    """One fixed random mean pattern per class, (num_classes, *shape).

    Elements are N(0, 1) scaled by ``signal / sqrt(numel)``, so two class means lie about
    ``signal * sqrt(2)`` apart whatever the shape: with unit noise the classes overlap a
    little and each single element carries almost no signal, which keeps the task
    learnable but not trivial.
    """
    g = torch.Generator().manual_seed(derive_seed(data_seed, _MEANS))
    return torch.randn((num_classes, *shape), generator=g) * (signal / math.sqrt(math.prod(shape)))


def sample(means: torch.Tensor, size: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` samples with balanced shuffled labels: ``x = means[y] + noise * N(0, 1)``."""
    g = torch.Generator().manual_seed(seed)
    num_classes = len(means)
    y = (torch.arange(size) % num_classes)[torch.randperm(size, generator=g)]
    x = means[y] + noise * torch.randn((size, *means.shape[1:]), generator=g)
    return x, y


def build_synthetic(ctx: BuildContext) -> DataBundle:
    """Synthetic classification data, independent of the run seed.

    Config keys: ``shape`` ([C, H, W] square images or [seq_len, features] sequences),
    ``num_classes``, ``train_size``, ``val_size`` (0: no val split), ``test_size``,
    ``noise`` (1.0), ``signal`` (4.0), ``data_seed`` (0).
    """
    shape = tuple(int(s) for s in ctx.get("shape", [3, 32, 32]))
    if len(shape) == 3:
        if shape[1] != shape[2]:
            raise ValueError(f"synthetic image shape must be square, got {list(shape)}")
        kind = "image"
    elif len(shape) == 2:
        kind = "sequence"
    else:
        raise ValueError(f"synthetic shape must be [C, H, W] or [seq_len, features], got {list(shape)}")
    num_classes = int(ctx.get("num_classes", 10))
    noise = float(ctx.get("noise", 1.0))
    data_seed = int(ctx.get("data_seed", 0))
    means = class_means(shape, num_classes, float(ctx.get("signal", 4.0)), data_seed)

    sizes = {
        "train": int(ctx.get("train_size", 2048)),
        "val": int(ctx.get("val_size", 0)),
        "test": int(ctx.get("test_size", 512)),
    }
    streams = {"train": _TRAIN, "val": _VAL, "test": _TEST}
    sources = {}
    if sizes["train"] <= 0 or sizes["test"] <= 0:
        raise ValueError(f"synthetic train_size and test_size must be positive, got {sizes}")
    for split, size in sizes.items():
        if size <= 0:
            continue
        x, y = sample(means, size, noise, derive_seed(data_seed, streams[split]))
        if kind == "image" and ctx.image_size is not None:
            x = resize_images(x, int(ctx.image_size))
        sources[split] = TensorSource(x.to(ctx.device), y.to(ctx.device))

    x_train = sources["train"].x
    train, val, test = ctx.tensor_loaders(sources)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=shape[0] if kind == "image" else shape[1],
        image_size=int(x_train.shape[-1]) if kind == "image" else None,
        task="classification",
        name=str(ctx.cfg.get("name", "synthetic")),
        meta={"kind": kind, "shape": list(x_train.shape[1:]), "split_sizes": sizes},
    )
