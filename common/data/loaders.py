"""Batch loaders with deterministic, resumable epochs.

Two loader classes share one protocol (`Loader`):

* `TensorLoader` serves a split that lives as tensors on the device: no DataLoader and
  no worker processes; batches are gathered and augmented with vectorised tensor ops.
* `FolderLoader` wraps a `torch.utils.data.DataLoader` with worker processes for sets
  read from image files.

For train loaders the sample order of an epoch is a pure function of (seed, epoch), and
augmentation randomness is a pure function of (seed, epoch, batch index) for tensor sets
or (seed, epoch, sample index) for folder sets. Hence ``epoch_iter(e, start_batch=k)``
yields exactly the batches k, k+1, ... of an uninterrupted epoch ``e``, bitwise. No
global RNG is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.data.seeds import BATCH_AUG_STREAM, epoch_permutation, generator

Batch = tuple[torch.Tensor, torch.Tensor]
BatchTransform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


class Loader(Protocol):
    """What the training engine relies on."""

    batch_size: int

    @property
    def num_samples(self) -> int: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def epoch_iter(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]: ...


def num_batches(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch."""
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)


def _check_start(start_batch: int) -> None:
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")


class TensorSource:
    """Samples stored as two tensors: ``x[i]``, ``y[i]``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def fetch(self, idx: torch.Tensor) -> Batch:
        # index_select is much faster than advanced indexing on CPU
        return self.x.index_select(0, idx), self.y.index_select(0, idx)


class WindowSource:
    """Sliding windows over a multivariate series, built per batch from one stored series.

    Sample ``i`` is ``x = series[i : i + window]`` (window, features) and
    ``y = target[i + window : i + window + horizon]`` (horizon,). Storing the series
    once instead of every window keeps minute-resolution data small.
    """

    def __init__(self, series: torch.Tensor, target: torch.Tensor, window: int, horizon: int) -> None:
        self.series, self.target = series, target
        self.window, self.horizon = int(window), int(horizon)
        self._steps = torch.arange(self.window, device=series.device)
        self._ahead = torch.arange(self.horizon, device=series.device) + self.window

    def __len__(self) -> int:
        return max(len(self.series) - self.window - self.horizon + 1, 0)

    @property
    def device(self) -> torch.device:
        return self.series.device

    def fetch(self, idx: torch.Tensor) -> Batch:
        steps = (idx[:, None] + self._steps).flatten()
        ahead = (idx[:, None] + self._ahead).flatten()
        x = self.series.index_select(0, steps).view(len(idx), self.window, -1)
        return x, self.target.index_select(0, ahead).view(len(idx), self.horizon)


class TensorLoader:
    """Loader over a split held in memory on the target device.

    Args:
        source: A `TensorSource` or `WindowSource` whose tensors are on the device.
        batch_size: Samples per batch.
        seed: Run seed (order and augmentation).
        shuffle: Shuffle per epoch (train loaders); otherwise fixed order and ``epoch`` ignored.
        transform: Per-batch ``transform(x, generator)``; the generator is None for
            non-augmented batches.
        augment: Pass a per-batch generator to ``transform`` (train loaders only).
        drop_last: Drop the last partial batch.
    """

    def __init__(
        self,
        source: TensorSource | WindowSource,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        transform: BatchTransform | None = None,
        augment: bool = False,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.transform = transform
        self.augment = augment and transform is not None
        self.drop_last = drop_last
        self.device = source.device

    @property
    def num_samples(self) -> int:
        return len(self.source)

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch_iter(0)

    def epoch_iter(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` from batch ``start_batch`` on, already on the device."""
        _check_start(start_batch)
        if self.shuffle:
            order = epoch_permutation(self.num_samples, self.seed, epoch).to(self.device)
        else:
            epoch = 0
            order = torch.arange(self.num_samples, device=self.device)
        return self._batches(order, epoch, start_batch)

    def _batches(self, order: torch.Tensor, epoch: int, start_batch: int) -> Iterator[Batch]:
        for b in range(start_batch, len(self)):
            x, y = self.source.fetch(order[b * self.batch_size : (b + 1) * self.batch_size])
            if self.transform is not None:
                g = generator(self.seed, epoch, b, BATCH_AUG_STREAM) if self.augment else None
                x = self.transform(x, g)
            yield x, y


class EpochSampler(Sampler):
    """Yields ``(sample index, epoch)`` keys for one epoch, from a batch offset on.

    The epoch travels with each key so that worker processes (persistent or not) can
    seed per-item augmentation without shared state. Position is set in the main
    process before each DataLoader iterator is created.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool, batch_size: int) -> None:
        self.num_samples, self.seed, self.shuffle, self.batch_size = num_samples, seed, shuffle, batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch = epoch if self.shuffle else 0
        self.start = min(start_batch * self.batch_size, self.num_samples)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = epoch_permutation(self.num_samples, self.seed, self.epoch)[self.start :]
        else:
            order = torch.arange(self.start, self.num_samples)
        epoch = self.epoch
        return iter([(i, epoch) for i in order.tolist()])


class FolderLoader:
    """Loader over a file-backed dataset, read by DataLoader worker processes.

    The dataset is indexed by ``(sample index, epoch)`` keys (see `EpochSampler`) and
    returns ``(uint8 image tensor, label)``; batches are moved to the device
    (non-blocking, from pinned memory on CUDA) and normalised there by ``transform``.

    Args:
        dataset: Map-style dataset accepting ``(index, epoch)`` keys.
        batch_size: Samples per batch.
        seed: Run seed (order; the dataset seeds its own augmentation).
        shuffle: Shuffle per epoch (train loaders).
        device: Where batches are delivered.
        num_workers: DataLoader worker processes (0: load in the main process).
        transform: Per-batch ``transform(x, None)`` on the device (normalisation).
        drop_last: Drop the last partial batch.
        prefetch_factor: Batches prefetched per worker (None: DataLoader's default).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        device: torch.device,
        num_workers: int = 0,
        transform: BatchTransform | None = None,
        drop_last: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.device = torch.device(device)
        self.num_workers = int(num_workers)
        self.transform = transform
        self.drop_last = drop_last
        self.prefetch_factor = prefetch_factor
        self._sampler = EpochSampler(len(dataset), self.seed, shuffle, self.batch_size)
        self._loader: DataLoader | None = None

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return num_batches(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch_iter(0)

    def _dataloader(self, sampler: EpochSampler) -> DataLoader:
        extra: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            extra["prefetch_factor"] = self.prefetch_factor
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            drop_last=self.drop_last,
            # A private generator: otherwise each new iterator draws its base seed from
            # the global torch RNG.
            generator=torch.Generator(),
            **extra,
        )

    def epoch_iter(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` from batch ``start_batch`` on, already on the device.

        With worker processes (kept alive between epochs) only one iterator per loader
        can be active: starting a new one abandons the previous one.
        """
        _check_start(start_batch)
        if start_batch >= len(self):
            return iter(())
        if self.num_workers == 0:
            # In-process loading is cheap to set up, and a fresh sampler per call keeps
            # interleaved iterators independent (the sampler is read lazily here).
            sampler = EpochSampler(self.num_samples, self.seed, self.shuffle, self.batch_size)
            sampler.set_position(epoch, start_batch)
            return self._batches(iter(self._dataloader(sampler)))
        if self._loader is None:
            self._loader = self._dataloader(self._sampler)
        self._sampler.set_position(epoch, start_batch)
        # Workers prefetch as soon as the iterator exists, so the position is read now.
        return self._batches(iter(self._loader))

    def _batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for x, y in batches:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.transform is not None:
                x = self.transform(x, None)
            yield x, y
