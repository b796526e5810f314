"""Data sets for the harness: deterministic, resumable loaders behind one call.

Example:
    >>> bundle = build_data({"name": "digits"}, data_dir="data", seed=0)
    >>> for x, y in bundle.train.epoch_iter(epoch=0):
    ...     pass

See `common.data.loaders` for the loader protocol and its determinism guarantees.
"""

from common.data.bundle import DataBundle, DatasetNotFoundError
from common.data.loaders import Loader
from common.data.registry import available_datasets, build_data

__all__ = ["DataBundle", "DatasetNotFoundError", "Loader", "available_datasets", "build_data"]
