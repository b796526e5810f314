"""MNIST and CIFAR-10/100 from their original on-disk formats, served from memory.

The readers parse the files directly (torchvision's dataset classes verify checksums,
which any copy but the official one fails); torchvision is used only to download.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from common.data.bundle import DataBundle, DatasetNotFoundError
from common.data.context import BuildContext
from common.data.images import image_bundle

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

CIFAR_LAYOUTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "labels": "labels",
        "classes": 10,
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "labels": "fine_labels",
        "classes": 100,
        "torchvision": "CIFAR100",
    },
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Header: two zero bytes, a type code, the number of dimensions, then each dimension
    as a big-endian int32; the data follow in row-major order.

    Raises:
        ValueError: On a bad magic number or a size that does not match the header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} but holds {len(raw) - offset} data bytes")
    return (
        np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


# seconds a download may wait on one socket operation: without a network (or behind a firewall that drops
# packets) a download fails within this instead of hanging
DOWNLOAD_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(exc: BaseException) -> str:
    """The cause of a failed download in one line (torchvision's MNIST error lists every mirror it tried)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else type(exc).__name__


def _download(fetch: Callable[[], object], failed: Callable[[str], str]) -> None:
    """Run ``fetch`` (a torchvision download); on failure raise `DatasetNotFoundError` with ``failed(reason)``."""
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            fetch()
    # URLError, timeouts and refused connections are OSErrors; torchvision raises RuntimeError when every mirror
    # failed or a file does not match its checksum
    except (OSError, RuntimeError) as exc:
        raise DatasetNotFoundError(failed(_reason(exc))) from exc


def _mnist_file(raw_dir: Path, name: str) -> Path | None:
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(data_dir: Path, download: bool = False) -> dict[str, np.ndarray]:
    """The four MNIST arrays from ``<data_dir>/MNIST/raw/`` (raw or ``.gz`` files).

    Raises:
        DatasetNotFoundError: When a file is missing and ``download`` is false.
    """
    raw_dir = data_dir / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES.values() if _mnist_file(raw_dir, name) is None]
    if missing and download:
        import torchvision

        log.info("downloading MNIST to %s", data_dir)
        mirrors = torchvision.datasets.MNIST.mirrors
        files = [name for name, _ in torchvision.datasets.MNIST.resources]
        _download(
            lambda: torchvision.datasets.MNIST(root=str(data_dir), train=True, download=True),
            lambda reason: (
                f"MNIST download failed: tried {' and '.join(m + files[0] for m in mirrors)}: {reason}. "
                f"Without network access, download {', '.join(files)} from {mirrors[0]} by hand "
                f"and put them in {raw_dir}"
            ),
        )
        missing = [name for name in MNIST_FILES.values() if _mnist_file(raw_dir, name) is None]
    if missing:
        raise DatasetNotFoundError(
            f"MNIST not found: expected {', '.join(missing)} (or the same names with .gz) in folder "
            f"{raw_dir} (i.e. <data_dir>/MNIST/raw/). Set dataset.download=true to fetch it with "
            "torchvision, or copy the four IDX files there."
        )
    return {key: read_idx(_mnist_file(raw_dir, name)) for key, name in MNIST_FILES.items()}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    # Python 2 pickles decode to str keys under latin1; tolerate bytes keys as well.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def load_cifar(data_dir: Path, variant: str, download: bool = False) -> dict[str, np.ndarray]:
    """CIFAR-10 or CIFAR-100 arrays from the python-pickle batches.

    Returns:
        ``train_images``/``test_images`` uint8 (N, 3, 32, 32) and ``train_labels``/
        ``test_labels`` int64 (fine labels for CIFAR-100).

    Raises:
        DatasetNotFoundError: When a file is missing and ``download`` is false.
    """
    layout = CIFAR_LAYOUTS[variant]
    folder = data_dir / layout["folder"]

    def missing() -> list[str]:
        return [name for name in layout["train"] + layout["test"] if not (folder / name).is_file()]

    if missing() and download:
        import torchvision

        log.info("downloading %s to %s", variant, data_dir)
        dataset = getattr(torchvision.datasets, layout["torchvision"])
        _download(
            lambda: dataset(root=str(data_dir), train=True, download=True),
            lambda reason: (
                f"{variant.upper()} download failed: tried {dataset.url}: {reason}. Without network access, "
                f"download {dataset.url} by hand and unpack it in {data_dir} (it holds the folder {layout['folder']}/)"
            ),
        )
    if missing():
        raise DatasetNotFoundError(
            f"{variant.upper()} not found: expected {', '.join(missing())} in folder {folder} "
            f"(i.e. <data_dir>/{layout['folder']}/). Set dataset.download=true to fetch it with torchvision, "
            "or unpack the python version of the archive there."
        )
    arrays = {}
    for split in ("train", "test"):
        batches = [_unpickle(folder / name) for name in layout[split]]
        images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        arrays[f"{split}_images"] = images.reshape(-1, 3, 32, 32)
        arrays[f"{split}_labels"] = np.concatenate(
            [np.asarray(b[layout["labels"]], dtype=np.int64) for b in batches]
        )
    return arrays


def build_mnist(ctx: BuildContext) -> DataBundle:
    """MNIST: 28x28 grey digits, 10 classes; val carved from train (``val_size``, 5000)."""
    arrays = load_mnist(ctx.data_dir, ctx.download)
    return image_bundle(
        ctx,
        train=(arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64)),
        test=(arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64)),
        num_classes=10,
        input_scale=1 / 255,
    )


def _build_cifar(ctx: BuildContext, variant: str) -> DataBundle:
    arrays = load_cifar(ctx.data_dir, variant, ctx.download)
    return image_bundle(
        ctx,
        train=(arrays["train_images"], arrays["train_labels"]),
        test=(arrays["test_images"], arrays["test_labels"]),
        num_classes=CIFAR_LAYOUTS[variant]["classes"],
        input_scale=1 / 255,
        default_pad=4,
        default_flip=True,
    )


def build_cifar10(ctx: BuildContext) -> DataBundle:
    """CIFAR-10: 32x32 RGB, 10 classes; random crop (pad 4) + flip; val from train (5000)."""
    return _build_cifar(ctx, "cifar10")


def build_cifar100(ctx: BuildContext) -> DataBundle:
    """CIFAR-100 (fine labels): as CIFAR-10 with 100 classes."""
    return _build_cifar(ctx, "cifar100")
