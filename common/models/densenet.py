"""DenseNet-BC (Huang et al., 2017) for CIFAR: bottleneck layers and compressing transitions."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from common.models.layers import BlockNet, classifier_head, init_weights


class DenseLayer(nn.Module):
    """Bottleneck dense layer: BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to its input.

    Returning `cat([x, new])` (instead of keeping a list of features) makes a dense block a plain
    `nn.Sequential`, so the network stays a chain of units.

    Args:
        in_channels: Input channels.
        growth_rate: New channels produced (k).
    """

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        inner = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the input with `growth_rate` new channels appended."""
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


def transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """Builds a transition: BN-ReLU-conv1x1 (compression) - 2x2 average pool.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.

    Returns:
        The transition as an `nn.Sequential`.
    """
    return nn.Sequential(
        OrderedDict(
            bn=nn.BatchNorm2d(in_channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pool=nn.AvgPool2d(2),
        )
    )


class DenseNetBC(BlockNet):
    """DenseNet-BC for CIFAR with three dense blocks.

    Units (`blocks()`): `stem` (3x3 conv to `2k` channels), `block1`, `trans1`, `block2`, `trans2`,
    `block3`, `head` (final BN + ReLU + global avg pool + flatten + fc).

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        depth: Network depth, `6n + 4` for `n` bottleneck layers per dense block (100 gives 16).
        growth_rate: Channels added per dense layer (k).
        compression: Fraction of channels kept by each transition.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 100,
        growth_rate: int = 12,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4 with n >= 1 (e.g. 100), got {depth}")
        if growth_rate < 1:
            raise ValueError(f"growth_rate must be a positive integer, got {growth_rate}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        # Each bottleneck layer holds two convs, hence 6n + 4 rather than 3n + 4.
        per_block = (depth - 4) // 6
        channels = 2 * growth_rate
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        for b in range(1, 4):
            layers = []
            for _ in range(per_block):
                layers.append(DenseLayer(channels, growth_rate))
                channels += growth_rate
            self.add_module(f"block{b}", nn.Sequential(*layers))
            if b < 3:
                out = int(math.floor(channels * compression))
                self.add_module(f"trans{b}", transition(channels, out))
                channels = out
        self.head = classifier_head(channels, num_classes, pre_activation=True)
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the stem, the dense blocks and transitions in order, and the head."""
        return [self.stem, self.block1, self.trans1, self.block2, self.trans2, self.block3, self.head]


def build_densenet_bc100(
    num_classes: int, in_channels: int, depth: int = 100, growth_rate: int = 12, compression: float = 0.5
) -> DenseNetBC:
    """Builds DenseNet-BC (default depth 100, growth rate 12, compression 0.5).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        depth: Network depth (`6n + 4`).
        growth_rate: Channels added per dense layer.
        compression: Fraction of channels kept by each transition.

    Returns:
        The network.
    """
    return DenseNetBC(in_channels, num_classes, int(depth), int(growth_rate), float(compression))
