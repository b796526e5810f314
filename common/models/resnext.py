"""ResNeXt-29 (Xie et al., 2017) for CIFAR: three stages of grouped-conv bottleneck blocks."""

from __future__ import annotations

import torch
from torch import nn

from common.models.layers import BlockNet, classifier_head, conv_unit, init_weights, shortcut

STAGE_OUT = (256, 512, 1024)
STAGE_STRIDES = (1, 2, 2)


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 (stride) -> 1x1, each with BN, plus shortcut, then ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the grouped 3x3 conv (and of the projection shortcut).
        cardinality: Number of groups of the 3x3 conv.
        group_width: Channels per group, so the inner width is `cardinality * group_width`.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, cardinality: int, group_width: int
    ) -> None:
        super().__init__()
        inner = cardinality * group_width
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNeXt29(BlockNet):
    """CIFAR ResNeXt: 3x3 stem (64), three stages (outputs 256/512/1024, strides 1/2/2), head.

    The inner (grouped) width of stage `s` is `cardinality * bottleneck_width * 2**s`, so "8x64d" means
    cardinality 8 and 64 channels per group in the first stage, as in the paper's CIFAR models.

    Units (`blocks()`): `stem`, every bottleneck block of `stage1`..`stage3`, `head`.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        depth: Network depth, `9 * n + 2` for `n` blocks per stage (29 gives 3).
        cardinality: Groups of every 3x3 conv.
        bottleneck_width: Channels per group in the first stage.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 29,
        cardinality: int = 8,
        bottleneck_width: int = 64,
    ) -> None:
        super().__init__()
        if depth < 11 or (depth - 2) % 9 != 0:
            raise ValueError(f"ResNeXt depth must be 9n + 2 with n >= 1 (e.g. 29), got {depth}")
        if cardinality < 1 or bottleneck_width < 1:
            raise ValueError(
                f"cardinality and bottleneck_width must be positive, got {cardinality}, {bottleneck_width}"
            )
        per_stage = (depth - 2) // 9
        self.stem = conv_unit(in_channels, 64, 3)
        prev = 64
        for s, (out, stride) in enumerate(zip(STAGE_OUT, STAGE_STRIDES)):
            blocks = []
            for i in range(per_stage):
                blocks.append(
                    ResNeXtBlock(prev, out, stride if i == 0 else 1, cardinality, bottleneck_width * 2**s)
                )
                prev = out
            self.add_module(f"stage{s + 1}", nn.Sequential(*blocks))
        self.head = classifier_head(prev, num_classes)
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the stem, every bottleneck block in order, and the head."""
        return [self.stem, *self.stage1, *self.stage2, *self.stage3, self.head]


def build_resnext29(
    num_classes: int, in_channels: int, depth: int = 29, cardinality: int = 8, bottleneck_width: int = 64
) -> ResNeXt29:
    """Builds the CIFAR ResNeXt (default ResNeXt-29 8x64d).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        depth: Network depth (`9n + 2`).
        cardinality: Groups of every 3x3 conv.
        bottleneck_width: Channels per group in the first stage.

    Returns:
        The network.
    """
    return ResNeXt29(in_channels, num_classes, depth, int(cardinality), int(bottleneck_width))
