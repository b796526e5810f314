"""Image transforms: vectorised per-batch ops for in-memory sets, per-item ops for folder sets.

Every random op takes an explicit CPU `torch.Generator`, so its draws are a pure function
of how that generator was seeded and never touch the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class BatchImageTransform:
    """Per-batch image pipeline on the data's device.

    Optionally random-crops with zero padding and flips horizontally (train batches only,
    when a generator is passed), then scales and normalises per channel:
    ``(x * input_scale - mean) / std``.

    Args:
        mean: Per-channel mean, in units after ``input_scale``.
        std: Per-channel standard deviation, same units.
        input_scale: Factor applied to the stored values first (1/255 for uint8 pixels).
        pad: Zero padding for the random crop (0: no crop).
        flip: Random horizontal flip with probability 1/2.
        device: Device of the batches.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        input_scale: float = 1.0,
        pad: int = 0,
        flip: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # One multiply-add per batch instead of scale, subtract, divide.
        self.scale = (input_scale / std_t).to(device)
        self.shift = (-mean_t / std_t).to(device)
        self.pad = int(pad)
        self.flip = bool(flip)

    @property
    def augments(self) -> bool:
        return self.pad > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None and self.augments:
            x = random_crop_flip(x, self.pad, self.flip, generator)
        return torch.addcmul(self.shift, x.float(), self.scale)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the original size from the zero-padded batch, plus horizontal flip.

    One gather per axis handles the crop offsets and the flips of the whole batch.

    Args:
        x: Batch (B, C, H, W), any dtype.
        pad: Zero padding on each side (0: no crop).
        flip: Flip each image with probability 1/2.
        generator: CPU generator for the draws (offsets y, offsets x, flips, in this order).

    Returns:
        The augmented batch, same shape and dtype.
    """
    b, c, h, w = x.shape
    offsets_y = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    offsets_x = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    rows = offsets_y[:, None] + torch.arange(h)
    forward = torch.arange(w)
    cols = offsets_x[:, None] + torch.where(flips[:, None], forward.flip(0), forward)
    rows, cols = rows.to(x.device), cols.to(x.device)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, x.shape[3]))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def resize_images(x: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Bilinear resize of a whole (N, C, H, W) image tensor to ``size`` x ``size``.

    Done in chunks to bound the float working memory; uint8 input gives rounded uint8
    output, so the stored set stays compact. Antialiased when shrinking.
    """
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < max(x.shape[-2:])
    out = []
    for part in x.split(chunk):
        resized = F.interpolate(
            part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
        if x.dtype == torch.uint8:
            resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        out.append(resized)
    return torch.cat(out)


def channel_stats(x: torch.Tensor, scale: float = 1.0, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of an (N, C, H, W) tensor after multiplying by ``scale``.

    Accumulated in float64 over chunks: exact enough and light on memory for uint8 sets.
    """
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for part in x.split(chunk):
        part = part.to(device="cpu", dtype=torch.float64) * scale
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def pad_crop_flip_item(img: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """`random_crop_flip` for a single (C, H, W) image."""
    return random_crop_flip(img[None], pad, flip, generator)[0]


def resized_crop_box(
    width: int,
    height: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random crop box of random area and aspect ratio (the Inception-style crop).

    Tries ten draws of (area fraction, log-uniform aspect ratio) and falls back to the
    largest central box with a clamped aspect ratio.

    Returns:
        ``(top, left, crop_height, crop_width)``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, int(round(height * ratio[1]))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w
