"""Tests for common.data: loaders, determinism, and readers of the real on-disk formats.

Every real-format test writes a tiny data set in the original layout under tmp_path.
"""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from common.data import DataBundle, DatasetNotFoundError, available_datasets, build_data
from common.data.timeseries import COLUMNS, read_power_file

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "dataset"
ALL_NAMES = [
    "cifar10",
    "cifar100",
    "digits",
    "household_power",
    "imagenet",
    "mnist",
    "shapes",
    "synthetic",
    "tiny_imagenet",
]


def conf(name: str, **overrides) -> dict:
    """The shipped yaml of ``name`` as a dict, with overrides."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{name}.yaml"), resolve=True)
    cfg.update(overrides)
    return cfg


def collect(batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in batches]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype and torch.equal(xa, xb)
        assert torch.equal(ya, yb)


def assert_resumable(loader, epoch: int, start: int) -> None:
    full = collect(loader.epoch_iter(epoch))
    assert len(full) == len(loader)
    assert_same_batches(collect(loader.epoch_iter(epoch, start_batch=start)), full[start:])


def unnormalise(x: torch.Tensor, bundle: DataBundle) -> np.ndarray:
    """Normalised batch back to uint8 pixels."""
    mean = torch.tensor(bundle.meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(bundle.meta["std"]).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


# --------------------------------------------------------------------------- writers of real formats


def write_cifar(root: Path, variant: str, per_file: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR python-pickle batches; returns the images (N, 3, 32, 32) and labels written."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, files, key, classes = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "labels",
            10,
        )
        files += ["test_batch"]
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    folder.mkdir(parents=True)
    written: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for name in files:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, size=per_file).tolist()
        batch = {
            "batch_label": name,
            key: labels,
            "data": data,
            "filenames": [f"{i}.png" for i in range(per_file)],
        }
        if variant == "cifar100":
            batch["coarse_labels"] = [lab // 5 for lab in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        split = "test" if "test" in name else "train"
        written[f"{split}_x"].append(data.reshape(-1, 3, 32, 32))
        written[f"{split}_y"].append(np.asarray(labels))
    return {k: np.concatenate(v) for k, v in written.items()}


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(n_train) % 10,
        "test_x": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test) * 3) % 10,
    }
    write_idx(raw / "train-images-idx3-ubyte", arrays["train_x"], gz)
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train_y"], gz)
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["test_x"], gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["test_y"], gz)
    return arrays


CLASS_COLOURS = {"n01443537": (200, 40, 40), "n01629819": (40, 60, 200), "n02094433": (50, 180, 60)}


def write_jpeg(
    path: Path, colour: tuple[int, int, int], size: tuple[int, int], rng: np.random.Generator
) -> None:
    """A noisy image around ``colour`` (noise makes crops and flips visible)."""
    pixels = np.asarray(colour, dtype=np.int16) + rng.integers(-25, 26, size=(size[1], size[0], 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=95)


def write_tiny_imagenet(root: Path, per_class: int = 6) -> list[tuple[str, str]]:
    """Tiny-ImageNet layout with two wnids; returns the val annotations (file, wnid)."""
    rng = np.random.default_rng(2)
    base = root / "tiny-imagenet-200"
    wnids = ["n01629819", "n01443537"]  # deliberately unsorted in wnids.txt
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            write_jpeg(folder / f"{wnid}_{i}.JPEG", CLASS_COLOURS[wnid], (64, 64), rng)
    annotations = [(f"val_{i}.JPEG", wnids[i % 2]) for i in range(5)]
    for file, wnid in annotations:
        write_jpeg(base / "val" / "images" / file, CLASS_COLOURS[wnid], (64, 64), rng)
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in annotations)
    )
    return annotations


def write_imagenet(root: Path) -> None:
    rng = np.random.default_rng(3)
    for split, count in (("train", 4), ("val", 2)):
        for wnid, colour in CLASS_COLOURS.items():
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                write_jpeg(folder / f"{wnid}_{i}.JPEG", colour, (48, 40), rng)


POWER_HEADER = "Date;Time;" + ";".join(COLUMNS)


def write_power(root: Path, minutes: int = 3000, missing: tuple[int, ...] = (5, 6, 7, 1500)) -> np.ndarray:
    """The UCI text file; returns the written Global_active_power with missing rows forward filled."""
    start = np.datetime64("2006-12-16T17:24")
    lines = [POWER_HEADER]
    active = np.round(1.5 + np.sin(np.arange(minutes) / 37.0) + np.arange(minutes) / 3000.0, 3)
    filled = active.copy()
    for t in range(minutes):
        stamp = (start + np.timedelta64(t, "m")).astype(object)
        date, time = stamp.strftime("%d/%m/%Y"), stamp.strftime("%H:%M:%S")
        if t in missing:
            lines.append(f"{date};{time};?;?;?;?;?;?;")
            filled[t] = filled[t - 1]
            continue
        values = [active[t], 0.1 + (t % 7) / 100, 240 + (t % 11) / 10, 4 * active[t], 0, t % 3, 17 + t % 2]
        lines.append(f"{date};{time};" + ";".join(f"{v:.3f}" for v in values))
    (root / "household_power_consumption.txt").write_text("\n".join(lines) + "\n")
    return filled


# --------------------------------------------------------------------------- registry and configs


def test_available_datasets_and_configs():
    assert available_datasets() == ALL_NAMES
    assert sorted(p.stem for p in CONF_DIR.glob("*.yaml")) == ALL_NAMES
    for name in ALL_NAMES:
        cfg = conf(name)
        assert cfg["name"] == name
        assert cfg["kind"] in ("image", "sequence")
        for key in ("num_classes", "in_channels", "image_size", "batch_size", "eval_batch_size", "augment"):
            assert key in cfg, (name, key)
        assert (cfg["image_size"] is None) == (cfg["kind"] == "sequence")
        if name not in ("digits", "shapes", "synthetic"):
            assert cfg["download"] is False


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_data({"name": "nope"}, data_dir=".", seed=0)
    assert all(name in str(err.value) for name in ALL_NAMES)


@pytest.mark.parametrize(
    ("name", "expected", "how"),
    [
        ("mnist", "MNIST/raw", "download=true"),
        ("cifar10", "cifar-10-batches-py", "download=true"),
        ("cifar100", "cifar-100-python", "download=true"),
        ("tiny_imagenet", "tiny-imagenet-200", "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
        ("imagenet", "imagenet/train", "image-net.org"),
        ("household_power", "household_power_consumption.txt", "archive.ics.uci.edu"),
    ],
)
def test_missing_data_set_says_where_and_how(tmp_path, name, expected, how):
    with pytest.raises(DatasetNotFoundError) as err:
        build_data(conf(name), data_dir=tmp_path, seed=0)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / expected) in str(err.value)
    assert how in str(err.value)


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return build_data(OmegaConf.load(CONF_DIR / "digits.yaml"), data_dir="unused", seed=0)


def test_digits_sizes_shapes_and_standardisation(digits):
    assert (digits.train.num_samples, digits.val.num_samples, digits.test.num_samples) == (1257, 180, 360)
    assert (digits.num_classes, digits.in_channels, digits.image_size, digits.task) == (
        10,
        1,
        8,
        "classification",
    )
    assert len(digits.train) == 40 and digits.train.batch_size == 32 and digits.test.batch_size == 512
    batches = collect(digits.train.epoch_iter(0))
    assert [len(y) for _, y in batches] == [32] * 39 + [1257 - 39 * 32]  # last partial batch kept
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (1257, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert sorted(Counter(y.tolist())) == list(range(10))


def fingerprint(loader) -> Counter:
    return Counter(tuple(np.round(row, 4)) for x, _ in loader.epoch_iter(0) for row in x.flatten(1).tolist())


def test_digits_split_fixed_across_seeds_order_not(digits):
    other = build_data(conf("digits"), data_dir="unused", seed=1)
    for split in ("train", "val", "test"):
        assert fingerprint(getattr(digits, split)) == fingerprint(getattr(other, split))
    assert_same_batches(collect(digits.test.epoch_iter(0)), collect(other.test.epoch_iter(0)))
    y0 = torch.cat([y for _, y in digits.train.epoch_iter(0)])
    y1 = torch.cat([y for _, y in other.train.epoch_iter(0)])
    assert not torch.equal(y0, y1)
    assert not torch.equal(y0, torch.cat([y for _, y in digits.train.epoch_iter(1)]))
    same = build_data(conf("digits", my_own_key="tolerated"), data_dir="unused", seed=0)
    assert_same_batches(collect(same.train.epoch_iter(3)), collect(digits.train.epoch_iter(3)))


def test_digits_resize_drop_last_and_iteration_protocol(digits):
    big = build_data(conf("digits", drop_last=True), data_dir="unused", seed=0, image_size=32)
    assert big.image_size == 32 and len(big.train) == 1257 // 32
    x, _ = next(iter(big.test))
    assert x.shape == (360, 1, 32, 32)
    assert all(len(y) == 32 for _, y in big.train.epoch_iter(0))
    assert_same_batches(collect(iter(digits.train)), collect(digits.train.epoch_iter(0)))
    assert_same_batches(collect(digits.val.epoch_iter(0)), collect(digits.val.epoch_iter(7)))
    assert list(digits.train.epoch_iter(0, start_batch=len(digits.train))) == []
    with pytest.raises(ValueError):
        digits.train.epoch_iter(0, start_batch=-1)
    assert_resumable(digits.train, epoch=2, start=13)
    # dataset.image_size=16 asks for 16x16 digits itself (the engine's request, when any, wins)
    mid = build_data(conf("digits", image_size=16), data_dir="unused", seed=0)
    assert mid.image_size == 16 and next(iter(mid.test))[0].shape == (360, 1, 16, 16)
    assert (
        build_data(conf("digits", image_size=16), data_dir="unused", seed=0, image_size=32).image_size == 32
    )


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, variant):
    written = write_cifar(tmp_path, variant)
    n_train = len(written["train_y"])
    bundle = build_data(conf(variant, augment=False, val_size=10, batch_size=16), data_dir=tmp_path, seed=0)
    assert bundle.num_classes == int(variant.removeprefix("cifar"))
    assert (bundle.in_channels, bundle.image_size) == (3, 32)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (
        n_train - 10,
        10,
        20,
    )
    x, y = next(iter(bundle.test))
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_array_equal(unnormalise(x, bundle), written["test_x"])
    np.testing.assert_array_equal(y.numpy(), written["test_y"])
    # train + val hold exactly the written train images, each with its own label
    seen = Counter()
    for loader in (bundle.train, bundle.val):
        for xb, yb in loader.epoch_iter(0):
            seen.update((img.tobytes(), int(lab)) for img, lab in zip(unnormalise(xb, bundle), yb))
    assert seen == Counter(
        (img.tobytes(), int(lab)) for img, lab in zip(written["train_x"], written["train_y"])
    )


def test_cifar_augmentation_is_resumable_and_seeded(tmp_path):
    write_cifar(tmp_path, "cifar10")
    cfg = conf("cifar10", val_size=0, batch_size=16)
    bundle = build_data(cfg, data_dir=tmp_path, seed=3)
    assert bundle.val is None and len(bundle.train) == 7
    assert_resumable(bundle.train, epoch=1, start=3)
    assert_resumable(bundle.train, epoch=0, start=6)
    again = build_data(cfg, data_dir=tmp_path, seed=3)
    assert_same_batches(collect(again.train.epoch_iter(1)), collect(bundle.train.epoch_iter(1)))
    # same order without augmentation, so any difference comes from crops and flips
    plain = build_data(conf("cifar10", val_size=0, batch_size=16, augment=False), data_dir=tmp_path, seed=3)
    aug_x, aug_y = next(bundle.train.epoch_iter(1))
    plain_x, plain_y = next(plain.train.epoch_iter(1))
    assert torch.equal(aug_y, plain_y) and not torch.equal(aug_x, plain_x)
    assert aug_x.shape == plain_x.shape
    # zero padding shows up as pixels equal to the normalised value of 0
    zero = unnormalise(aug_x, bundle)
    assert (zero == 0).all(axis=1).any()
    # the eval loader is never augmented
    assert_same_batches(collect(bundle.test.epoch_iter(5)), collect(plain.test.epoch_iter(0)))


def test_resize_keeps_uint8_storage(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bundle = build_data(conf("cifar10", val_size=0), data_dir=tmp_path, seed=0, image_size=40)
    assert bundle.train.source.x.dtype == torch.uint8
    x, _ = next(iter(bundle.train))
    assert bundle.image_size == 40 and x.shape[1:] == (3, 40, 40)


# --------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trip(tmp_path, gz):
    written = write_mnist(tmp_path, gz)
    bundle = build_data(conf("mnist", val_size=5), data_dir=tmp_path, seed=0)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (25, 5, 10)
    x, y = next(iter(bundle.test))
    assert x.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(unnormalise(x, bundle)[:, 0], written["test_x"])
    np.testing.assert_array_equal(y.numpy(), written["test_y"])
    train_x = torch.cat([x for x, _ in bundle.train.epoch_iter(0)])
    assert abs(train_x.mean().item()) < 1e-4  # train statistics


def test_mnist_resize_no_val_and_bad_magic(tmp_path):
    write_mnist(tmp_path, gz=False)
    bundle = build_data(conf("mnist", val_size=0), data_dir=tmp_path, seed=0, image_size=32)
    assert bundle.val is None and bundle.image_size == 32
    assert next(iter(bundle.train))[0].shape[1:] == (1, 32, 32)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        build_data(conf("mnist"), data_dir=tmp_path, seed=0)


# --------------------------------------------------------------------------- folder sets


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("tiny")
    return root, write_tiny_imagenet(root)


def test_tiny_imagenet_layout_labels_and_pixels(tiny_root):
    root, annotations = tiny_root
    bundle = build_data(
        conf("tiny_imagenet", val_size=2, num_workers=0, batch_size=4, num_classes=2), data_dir=root, seed=0
    )
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (2, 3, 64)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (10, 2, 5)
    assert bundle.meta["classes"] == ["n01443537", "n01629819"]  # sorted wnids
    x, y = next(iter(bundle.test))
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    assert y.tolist() == [bundle.meta["classes"].index(wnid) for _, wnid in annotations]
    pixels = unnormalise(x, bundle).reshape(5, 3, -1).mean(axis=2)
    for mean_colour, (_, wnid) in zip(pixels, annotations):
        np.testing.assert_allclose(mean_colour, CLASS_COLOURS[wnid], atol=4)
    labels = Counter(int(lab) for _, yb in bundle.train.epoch_iter(0) for lab in yb)
    labels.update(int(lab) for _, yb in bundle.val.epoch_iter(0) for lab in yb)
    assert labels == {0: 6, 1: 6}


def test_tiny_imagenet_resume_and_workers(tiny_root):
    root, _ = tiny_root
    cfg = conf("tiny_imagenet", val_size=0, batch_size=3, num_workers=0)
    single = build_data(cfg, data_dir=root, seed=5)
    assert len(single.train) == 4
    assert_resumable(single.train, epoch=2, start=1)
    epoch2 = collect(single.train.epoch_iter(2))
    assert not torch.equal(epoch2[0][0], collect(single.train.epoch_iter(3))[0][0])
    workers = build_data({**cfg, "num_workers": 2}, data_dir=root, seed=5)
    assert_resumable(workers.train, epoch=2, start=1)
    assert_resumable(workers.train, epoch=2, start=3)
    # the batches do not depend on which process decoded and augmented them
    assert_same_batches(collect(workers.train.epoch_iter(2)), epoch2)


def test_tiny_imagenet_resize(tiny_root):
    root, _ = tiny_root
    bundle = build_data(
        conf("tiny_imagenet", val_size=0, num_workers=0), data_dir=root, seed=0, image_size=32
    )
    assert bundle.image_size == 32
    assert next(iter(bundle.train))[0].shape[1:] == (3, 32, 32)
    assert next(iter(bundle.test))[0].shape[1:] == (3, 32, 32)


def test_imagenet_folders(tmp_path):
    write_imagenet(tmp_path)
    cfg = conf("imagenet", val_size=3, num_workers=0, batch_size=4, num_classes=3)
    bundle = build_data(cfg, data_dir=tmp_path, seed=0, image_size=32)
    assert (bundle.num_classes, bundle.image_size) == (3, 32)
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (9, 3, 6)
    batches = collect(bundle.train.epoch_iter(0))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32), (4, 3, 32, 32), (1, 3, 32, 32)]
    assert_resumable(bundle.train, epoch=1, start=1)
    x, y = next(iter(bundle.test))
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    pixels = unnormalise(x, bundle).reshape(6, 3, -1).mean(axis=2)
    for mean_colour, label in zip(pixels, y.tolist()):
        np.testing.assert_allclose(mean_colour, list(CLASS_COLOURS.values())[label], atol=4)
    full = build_data({**cfg, "val_size": 0}, data_dir=tmp_path, seed=0)
    assert full.val is None and full.image_size == 224
    assert next(iter(full.test))[0].shape == (6, 3, 224, 224)


# --------------------------------------------------------------------------- global RNG


def test_loaders_leave_global_rngs_alone(tmp_path, tiny_root):
    write_cifar(tmp_path, "cifar10")
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    bundles = [
        build_data(conf("digits"), data_dir="unused", seed=0),
        build_data(conf("cifar10", val_size=10), data_dir=tmp_path, seed=0),
        build_data(conf("synthetic", train_size=64), data_dir="unused", seed=0),
        build_data(conf("tiny_imagenet", val_size=2, num_workers=0), data_dir=tiny_root[0], seed=0),
        build_data(conf("tiny_imagenet", val_size=2, num_workers=2), data_dir=tiny_root[0], seed=0),
    ]
    for bundle in bundles:
        for epoch in range(2):
            for _ in bundle.train.epoch_iter(epoch, start_batch=epoch):
                pass
        for _ in bundle.test:
            pass
    assert torch.equal(before[0], torch.get_rng_state())
    assert np.array_equal(before[1], np.random.get_state()[1])
    assert before[2] == random.getstate()


# --------------------------------------------------------------------------- household power


def test_household_power_per_minute_windows(tmp_path):
    filled = write_power(tmp_path)
    cfg = conf("household_power", resample=None, window=8, horizon=2, num_classes=2)
    bundle = build_data(cfg, data_dir=tmp_path, seed=0)
    assert (bundle.task, bundle.num_classes, bundle.in_channels, bundle.image_size) == (
        "regression",
        2,
        7,
        None,
    )
    # chronological 2100/300/600 steps -> steps - window - horizon + 1 windows
    assert (bundle.train.num_samples, bundle.val.num_samples, bundle.test.num_samples) == (2091, 291, 591)
    x, y = next(iter(bundle.test))
    assert x.shape == (512, 8, 7) and y.shape == (512, 2)
    assert x.dtype == y.dtype == torch.float32 and not torch.isnan(x).any()
    # y[j] continues the target column of window j, which is window j + 1's last step
    torch.testing.assert_close(y[:-1, 0], x[1:, -1, 0])
    scale, shift = bundle.meta["target_std"], bundle.meta["target_mean"]
    np.testing.assert_allclose(
        (y[:, 0] * scale + shift).numpy(), filled[2400 + 8 : 2400 + 8 + 512], atol=1e-4
    )
    np.testing.assert_allclose(shift, filled[:2100].mean(), atol=1e-4)  # train statistics
    train = collect(bundle.train.epoch_iter(0))
    assert_resumable(bundle.train, epoch=1, start=20)
    assert len(train) == len(bundle.train) == 33
    assert abs(torch.cat([xb[:, 0] for xb, _ in train]).mean().item()) < 0.05


def test_household_power_hourly_means(tmp_path):
    filled = write_power(tmp_path)
    frame = read_power_file(tmp_path / "household_power_consumption.txt", "hour")
    assert list(frame.columns) == COLUMNS and not frame.isna().any().any()
    assert frame.index[0] == np.datetime64("2006-12-16T17:00")
    np.testing.assert_allclose(frame["Global_active_power"].iloc[0], filled[:36].mean(), rtol=1e-5)
    np.testing.assert_allclose(frame["Global_active_power"].iloc[1], filled[36:96].mean(), rtol=1e-5)
    bundle = build_data(conf("household_power", window=4), data_dir=tmp_path, seed=0)
    x, y = next(iter(bundle.train))
    assert x.shape[1:] == (4, 7) and y.shape[1:] == (1,)
    assert bundle.meta["steps"] == len(frame)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_image_and_sequence_shapes():
    images = build_data(conf("synthetic", train_size=100, val_size=0), data_dir="unused", seed=0)
    assert (images.in_channels, images.image_size, images.num_classes, images.val) == (3, 32, 10, None)
    x, y = next(iter(images.train))
    assert x.shape == (64, 3, 32, 32) and y.max() < 10
    seq = build_data(conf("synthetic", shape=[12, 5], num_classes=4), data_dir="unused", seed=0)
    assert (seq.in_channels, seq.image_size, seq.num_classes) == (5, None, 4)
    x, y = next(iter(seq.val))
    assert x.shape == (512, 12, 5)
    with pytest.raises(ValueError, match="square"):
        build_data(conf("synthetic", shape=[3, 8, 9]), data_dir="unused", seed=0)


def test_synthetic_labels_match_class_patterns():
    cfg = conf("synthetic", shape=[2, 8, 8], noise=0.05, train_size=200, test_size=100)
    bundle = build_data(cfg, data_dir="unused", seed=0)
    x, y = map(torch.cat, zip(*bundle.train.epoch_iter(0)))
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    x_test, y_test = next(iter(bundle.test))
    predicted = torch.cdist(x_test.flatten(1), means.flatten(1)).argmin(1)
    assert torch.equal(predicted, y_test)
    # the data depend on data_seed only
    other = build_data(cfg, data_dir="unused", seed=9)
    assert_same_batches(collect(other.test.epoch_iter(0)), [(x_test, y_test)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_arrive_on_cuda(tmp_path, tiny_root):
    write_cifar(tmp_path, "cifar10")
    for bundle in (
        build_data(conf("cifar10", val_size=0), data_dir=tmp_path, seed=0, device="cuda"),
        build_data(
            conf("tiny_imagenet", val_size=0, num_workers=2), data_dir=tiny_root[0], seed=0, device="cuda"
        ),
    ):
        for loader in (bundle.train, bundle.test):
            x, y = next(iter(loader))
            assert x.is_cuda and y.is_cuda
        assert_resumable(bundle.train, epoch=1, start=1)
