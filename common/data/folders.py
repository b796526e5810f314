"""Tiny-ImageNet and ImageNet: JPEG folders read by DataLoader workers.

Augmentation draws come from a generator seeded per item from (seed, epoch, sample
index), so they do not depend on which worker loads the item or on worker seeding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common.data.bundle import DataBundle, DatasetNotFoundError
from common.data.context import BuildContext
from common.data.loaders import FolderLoader
from common.data.seeds import ITEM_AUG_STREAM, generator
from common.data.splits import holdout_split
from common.data.transforms import BatchImageTransform, pad_crop_flip_item, resized_crop_box

log = logging.getLogger(__name__)

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGENET_URL = "https://image-net.org/download-images.php"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# Standard ImageNet statistics, used when the config gives none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB (Tiny-ImageNet holds some greyscale JPEGs)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


class FixedResize:
    """Eval/no-augment transform for small square sets: decode, resize when needed."""

    def __init__(self, size: int | None) -> None:
        self.size = size

    def __call__(self, img: Image.Image, g: torch.Generator | None) -> torch.Tensor:
        if self.size is not None and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return TF.pil_to_tensor(img)


class PadCropFlip(FixedResize):
    """Train transform for small square sets: random crop with zero padding + flip."""

    def __init__(self, size: int | None, pad: int, flip: bool) -> None:
        super().__init__(size)
        self.pad, self.flip = pad, flip

    def __call__(self, img: Image.Image, g: torch.Generator | None) -> torch.Tensor:
        x = super().__call__(img, None)
        return x if g is None else pad_crop_flip_item(x, self.pad, self.flip, g)


class ResizeCenterCrop:
    """ImageNet eval transform: resize the shorter side, then centre crop."""

    def __init__(self, resize: int, size: int) -> None:
        self.resize, self.size = resize, size

    def __call__(self, img: Image.Image, g: torch.Generator | None) -> torch.Tensor:
        img = TF.resize(img, self.resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.pil_to_tensor(TF.center_crop(img, [self.size, self.size]))


class ResizedCropFlip:
    """ImageNet train transform: random-area, random-aspect crop resized to ``size``, + flip."""

    def __init__(self, size: int, scale: Sequence[float], flip: bool) -> None:
        self.size, self.scale, self.flip = size, (float(scale[0]), float(scale[1])), flip

    def __call__(self, img: Image.Image, g: torch.Generator | None) -> torch.Tensor:
        top, left, h, w = resized_crop_box(img.width, img.height, g, self.scale)
        img = TF.resized_crop(
            img,
            top,
            left,
            h,
            w,
            [self.size, self.size],
            interpolation=InterpolationMode.BILINEAR,
            antialias=True,
        )
        if self.flip and bool(torch.rand(1, generator=g) < 0.5):
            img = TF.hflip(img)
        return TF.pil_to_tensor(img)


class ImageFiles(Dataset):
    """Image files with labels; items are ``(uint8 (3, H, W) tensor, label)``.

    Keys are ``(index, epoch)`` (train, augmented) or plain indices. Paths are kept in a
    numpy array rather than a list of str, so forked workers do not copy them page by
    page through reference counting.

    Args:
        paths: File paths.
        labels: Class index per file.
        transform: ``transform(pil_image, generator_or_None) -> uint8 tensor``.
        seed: Run seed for the per-item augmentation generators.
        augment: Seed a generator per item (else the transform gets None).
    """

    def __init__(
        self, paths: Sequence[str], labels: Sequence[int], transform, *, seed: int, augment: bool
    ) -> None:
        self.paths = np.asarray(paths, dtype=np.str_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform, self.seed, self.augment = transform, int(seed), augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        g = generator(self.seed, epoch, index, ITEM_AUG_STREAM) if self.augment else None
        return self.transform(open_rgb(str(self.paths[index])), g), int(self.labels[index])


def _image_files(folder: Path) -> list[str]:
    return sorted(
        entry.path
        for entry in os.scandir(folder)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _require(path: Path, what: str, hint: str) -> None:
    if not path.exists():
        raise DatasetNotFoundError(f"{what} not found: expected {path}. {hint}")


def tiny_imagenet_files(
    root: Path,
) -> tuple[list[str], tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """Class ids (sorted) and (paths, labels) of the train folder and the labelled val folder."""
    hint = (
        f"Download {TINY_URL} and unzip it into data_dir, giving <data_dir>/tiny-imagenet-200/ with "
        "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt."
    )
    _require(root, "Tiny-ImageNet", hint)
    for part in ("wnids.txt", "train", "val/images", "val/val_annotations.txt"):
        _require(root / part, "Tiny-ImageNet", hint)
    wnids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    label_of = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        _require(folder, "Tiny-ImageNet", hint)
        files = _image_files(folder)
        train_paths += files
        train_labels += [label_of[wnid]] * len(files)
    test_paths, test_labels = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in label_of:
            raise ValueError(f"val_annotations.txt names {parts[1]!r}, which is not in wnids.txt")
        test_paths.append(str(root / "val" / "images" / parts[0]))
        test_labels.append(label_of[parts[1]])
    return wnids, (train_paths, train_labels), (test_paths, test_labels)


def imagenet_files(root: Path) -> tuple[list[str], tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """Class ids (sorted train sub-folders) and (paths, labels) of ``train/`` and ``val/``."""
    hint = (
        f"Get ILSVRC2012 (train and val archives) from {IMAGENET_URL} (needs an account) and unpack it as "
        "<data_dir>/imagenet/train/<wnid>/*.JPEG and <data_dir>/imagenet/val/<wnid>/*.JPEG (the val images "
        "sorted into one folder per class, as for torchvision's ImageFolder)."
    )
    for part in ("train", "val"):
        _require(root / part, "ImageNet", hint)
    wnids = sorted(entry.name for entry in os.scandir(root / "train") if entry.is_dir())
    if not wnids:
        raise DatasetNotFoundError(f"ImageNet: no class folders in {root / 'train'}. {hint}")
    label_of = {w: i for i, w in enumerate(wnids)}
    splits = []
    for part in ("train", "val"):
        paths, labels = [], []
        for wnid in sorted(entry.name for entry in os.scandir(root / part) if entry.is_dir()):
            if wnid not in label_of:
                raise ValueError(f"ImageNet: class folder {root / part / wnid} has no counterpart in train/")
            files = _image_files(root / part / wnid)
            paths += files
            labels += [label_of[wnid]] * len(files)
        splits.append((paths, labels))
    return wnids, splits[0], splits[1]


def _folder_bundle(
    ctx: BuildContext,
    *,
    wnids: list[str],
    train: tuple[list[str], list[int]],
    test: tuple[list[str], list[int]],
    train_transform,
    eval_transform,
    image_size: int,
) -> DataBundle:
    train_paths, train_labels = np.asarray(train[0], dtype=np.str_), np.asarray(train[1], dtype=np.int64)
    kept, held = holdout_split(train_labels, int(ctx.get("val_size", 0)), ctx.split_seed)
    mean = [float(v) for v in ctx.get("mean", IMAGENET_MEAN)]
    std = [float(v) for v in ctx.get("std", IMAGENET_STD)]
    normalise = BatchImageTransform(mean, std, input_scale=1 / 255, device=ctx.device)
    workers = int(ctx.get("num_workers", 4))
    eval_workers = int(ctx.get("eval_num_workers", workers))

    def loader(paths, labels, train_split: bool) -> FolderLoader:
        augment = train_split and ctx.augment
        dataset = ImageFiles(
            paths, labels, train_transform if augment else eval_transform, seed=ctx.seed, augment=augment
        )
        return FolderLoader(
            dataset,
            batch_size=ctx.batch_size if train_split else ctx.eval_batch_size,
            seed=ctx.seed,
            shuffle=train_split,
            device=ctx.device,
            num_workers=workers if train_split else eval_workers,
            transform=normalise,
            drop_last=ctx.drop_last if train_split else False,
            prefetch_factor=ctx.cfg.get("prefetch_factor"),
        )

    sizes = {"train": len(kept), "val": len(held), "test": len(test[0])}
    log.info("%s: %d classes, %s images, size %d", ctx.cfg.get("name"), len(wnids), sizes, image_size)
    return DataBundle(
        train=loader(train_paths[kept], train_labels[kept], True),
        val=loader(train_paths[held], train_labels[held], False) if len(held) else None,
        test=loader(test[0], test[1], False),
        num_classes=len(wnids),
        in_channels=3,
        image_size=image_size,
        task="classification",
        name=str(ctx.cfg.get("name")),
        meta={"classes": wnids, "mean": mean, "std": std, "split_sizes": sizes},
    )


def _no_download(ctx: BuildContext, name: str) -> None:
    if ctx.download:
        log.warning("%s cannot be downloaded automatically; dataset.download=true is ignored", name)


def build_tiny_imagenet(ctx: BuildContext) -> DataBundle:
    """Tiny-ImageNet: 64x64 RGB, 200 classes; the official val set is the test set.

    Train augmentation: random crop with zero padding (``crop_padding``, 4) + flip, the
    CIFAR-style recipe common for ResNets on this set. Val is carved from train
    (``val_size``, 10000).
    """
    _no_download(ctx, "Tiny-ImageNet")
    wnids, train, test = tiny_imagenet_files(ctx.data_dir / "tiny-imagenet-200")
    size = int(ctx.image_size or 64)
    resize = size if size != 64 else None
    return _folder_bundle(
        ctx,
        wnids=wnids,
        train=train,
        test=test,
        train_transform=PadCropFlip(resize, int(ctx.get("crop_padding", 4)), bool(ctx.get("hflip", True))),
        eval_transform=FixedResize(resize),
        image_size=size,
    )


def build_imagenet(ctx: BuildContext) -> DataBundle:
    """ImageNet (ILSVRC2012): the official val set is the test set; val carved from train.

    Train: random resized crop to ``crop_size`` (224; scale ``crop_scale`` [0.08, 1]) +
    flip. Eval: resize the shorter side to ``eval_resize`` (256), centre crop. A requested
    ``image_size`` replaces the crop size and scales the resize in proportion.
    """
    _no_download(ctx, "ImageNet")
    wnids, train, test = imagenet_files(ctx.data_dir / "imagenet")
    crop = int(ctx.get("crop_size", 224))
    resize = int(ctx.get("eval_resize", 256))
    if ctx.image_size is not None and int(ctx.image_size) != crop:
        resize = int(round(int(ctx.image_size) * resize / crop))
        crop = int(ctx.image_size)
    return _folder_bundle(
        ctx,
        wnids=wnids,
        train=train,
        test=test,
        train_transform=ResizedCropFlip(
            crop, ctx.get("crop_scale", (0.08, 1.0)), bool(ctx.get("hflip", True))
        ),
        eval_transform=ResizeCenterCrop(resize, crop),
        image_size=crop,
    )
