"""sklearn's 8x8 handwritten digits: embedded, no download."""

from __future__ import annotations

import math

import numpy as np
from sklearn.datasets import load_digits

from common.data.bundle import DataBundle
from common.data.context import BuildContext
from common.data.images import image_bundle
from common.data.splits import holdout_split


def build_digits(ctx: BuildContext) -> DataBundle:
    """1797 images, 1 channel, 10 classes; fixed stratified split (1257/180/360 by default).

    Config keys: ``val_fraction`` (0.1), ``test_fraction`` (0.2), ``split_seed`` (0),
    plus the common loader keys. Pixels 0..16 are scaled to [0, 1] and standardised with
    the train split's mean and std.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]
    y = digits.target.astype(np.int64)
    n = len(y)
    n_test = math.ceil(float(ctx.get("test_fraction", 0.2)) * n)
    n_val = math.ceil(float(ctx.get("val_fraction", 0.1)) * n)
    rest, test = holdout_split(y, n_test, ctx.split_seed)
    kept, val = holdout_split(y[rest], n_val, ctx.split_seed)
    train, val = rest[kept], rest[val]
    return image_bundle(
        ctx,
        train=(x[train], y[train]),
        val=(x[val], y[val]) if len(val) else None,
        carve_val=False,
        test=(x[test], y[test]),
        num_classes=10,
        input_scale=1.0,
    )
