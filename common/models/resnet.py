"""ResNet (He et al., 2016) for CIFAR-size inputs: 3x3 stem, no max-pool, BasicBlocks."""

from __future__ import annotations

import torch
from torch import nn

from common.models.layers import BlockNet, classifier_head, conv_unit, init_weights, shortcut

STAGE_WIDTHS = (64, 128, 256, 512)  # at width=64, the paper net
STAGE_STRIDES = (1, 2, 2, 2)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU.

    The shortcut is a strided 1x1 conv + BN when the shape changes, the identity otherwise.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(BlockNet):
    """CIFAR-style ResNet with BasicBlocks.

    Units (`blocks()`): `stem` (conv3x3 + BN + ReLU), every residual block of `layer1`..`layer4`, `head`
    (global avg pool + flatten + fc). State-dict keys: `stem.conv.*`, `layer<k>.<i>.conv1.*`, `head.fc.*`.

    Args:
        num_blocks: Residual blocks per stage (four stages).
        in_channels: Input channels.
        num_classes: Number of outputs.
        width: Channels of the stem and first stage (64: the paper net); the stages double it, as at 64.
    """

    def __init__(
        self, num_blocks: tuple[int, int, int, int], in_channels: int, num_classes: int, width: int = 64
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"ResNet width must be >= 1, got {width}")
        widths = [w * width // STAGE_WIDTHS[0] for w in STAGE_WIDTHS]
        self.stem = conv_unit(in_channels, widths[0], 3)
        prev = widths[0]
        for stage, (n, stage_width, stride) in enumerate(zip(num_blocks, widths, STAGE_STRIDES), start=1):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(prev, stage_width, stride if i == 0 else 1))
                prev = stage_width
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.head = classifier_head(prev, num_classes)
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the stem, every residual block in order, and the head."""
        return [self.stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4, self.head]


def build_resnet18(num_classes: int, in_channels: int, width: int = 64) -> CifarResNet:
    """Builds the CIFAR ResNet-18 (BasicBlocks [2, 2, 2, 2]).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        width: Channels of the first stage (64: the paper net; 16: a narrow net for CPUs).

    Returns:
        The network.
    """
    return CifarResNet((2, 2, 2, 2), in_channels, num_classes, width)


def build_resnet34(num_classes: int, in_channels: int, width: int = 64) -> CifarResNet:
    """Builds the CIFAR ResNet-34 (BasicBlocks [3, 4, 6, 3]).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        width: Channels of the first stage (64: the paper net; 16: a narrow net for CPUs).

    Returns:
        The network.
    """
    return CifarResNet((3, 4, 6, 3), in_channels, num_classes, width)
