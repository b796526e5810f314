"""Data sets for the harness: deterministic, resumable loaders behind one call.

Example:
    >>> bundle = build_data({"name": "digits"}, data_dir="data", seed=0)
    >>> for x, y in bundle.train.epoch_iter(epoch=0):
    ...     pass

A data set of one's own is a builder ``(ctx: BuildContext) -> DataBundle``, given to `register_dataset` (or
named by the dataset config's ``builder`` key); `image_bundle` makes the bundle from in-memory image arrays.
See `common.data.loaders` for the loader protocol and its determinism guarantees.
"""

from common.data.bundle import DataBundle, DatasetNotFoundError
from common.data.context import BuildContext
from common.data.loaders import Loader, TensorLoader, TensorSource
from common.data.registry import available_datasets, build_data, register_dataset


def __getattr__(name: str):
    # image_bundle pulls in scikit-learn (the stratified splits): imported on first use, so that
    # `import common.data` stays light
    if name == "image_bundle":
        from common.data.images import image_bundle

        return image_bundle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BuildContext",
    "DataBundle",
    "DatasetNotFoundError",
    "Loader",
    "TensorLoader",
    "TensorSource",
    "available_datasets",
    "build_data",
    "image_bundle",
    "register_dataset",
]
