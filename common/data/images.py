"""Assembly of an in-memory image data set into tensor loaders."""

from __future__ import annotations

import logging

import numpy as np
import torch

from common.data.bundle import DataBundle
from common.data.context import BuildContext
from common.data.loaders import TensorSource
from common.data.splits import holdout_split
from common.data.transforms import BatchImageTransform, channel_stats, resize_images

log = logging.getLogger(__name__)


def image_bundle(
    ctx: BuildContext,
    *,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    carve_val: bool = True,
    num_classes: int,
    input_scale: float,
    default_pad: int = 0,
    default_flip: bool = False,
) -> DataBundle:
    """Tensor loaders for an image set held in memory.

    Carves the validation split from ``train`` (config ``val_size``, seeded by
    ``split_seed``) when ``carve_val``, resizes once to ``ctx.image_size`` when that
    differs from the native size, normalises per channel with the config's ``mean``/``std``
    or the train split's statistics, and moves every split to the device.

    Args:
        ctx: Build context.
        train: Train images (N, C, H, W) and labels (N,).
        test: Test images and labels.
        val: Validation images and labels, already split off (None: no val split).
        carve_val: Carve the validation split from ``train`` instead.
        num_classes: Number of classes.
        input_scale: Scale from stored values to [0, 1] (1/255 for uint8).
        default_pad: Crop padding when the config has no ``crop_padding``.
        default_flip: Horizontal flips when the config has no ``hflip``.

    Returns:
        The data bundle (task "classification").
    """
    x_train, y_train = train
    if carve_val:
        kept, held = holdout_split(y_train, int(ctx.get("val_size", 0)), ctx.split_seed)
        if len(held):
            val = (x_train[held], y_train[held])
        x_train, y_train = x_train[kept], y_train[kept]

    # the engine's request (a network's minimum input size) wins; else the config's image_size, so that
    # dataset.image_size=32 on digits gives 32x32 images (a no-op at the native size)
    target = ctx.image_size if ctx.image_size is not None else ctx.cfg.get("image_size")

    def to_device(x: np.ndarray, y: np.ndarray) -> TensorSource:
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(ctx.device)
        if target is not None:
            xt = resize_images(xt, int(target))
        return TensorSource(xt, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(ctx.device))

    sources = {"train": to_device(x_train, y_train), "test": to_device(*test)}
    if val is not None:
        sources["val"] = to_device(*val)
    size = int(sources["train"].x.shape[-1])
    channels = int(sources["train"].x.shape[1])

    if ctx.cfg.get("mean") is not None and ctx.cfg.get("std") is not None:
        mean, std = list(ctx.cfg["mean"]), list(ctx.cfg["std"])
    else:
        mean, std = channel_stats(sources["train"].x, input_scale)
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    transform = BatchImageTransform(
        mean,
        std,
        input_scale=input_scale,
        pad=int(ctx.get("crop_padding", default_pad)),
        flip=bool(ctx.get("hflip", default_flip)),
        device=ctx.device,
    )

    sizes = {split: len(source) for split, source in sources.items()}
    log.info(
        "%s: %s samples, %dx%dx%d, mean %s std %s",
        ctx.cfg.get("name"),
        sizes,
        channels,
        size,
        size,
        mean,
        std,
    )
    train, val, test = ctx.tensor_loaders(sources, transform)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=int(num_classes),
        in_channels=channels,
        image_size=size,
        task="classification",
        name=str(ctx.cfg.get("name")),
        meta={"mean": mean, "std": std, "split_sizes": sizes},
    )
