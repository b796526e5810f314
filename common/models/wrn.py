"""Wide ResNet (Zagoruyko & Komodakis, 2016): pre-activation residual network with widened stages."""

from __future__ import annotations

import torch
from torch import nn

from common.models.layers import BlockNet, classifier_head, init_weights


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 (stride) - BN-ReLU-[dropout]-conv3x3, plus shortcut.

    When the shape changes, the shortcut is a strided 1x1 conv applied to the pre-activated input (as in
    the reference WRN code); otherwise it is the identity on the raw input.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first conv (and of the projection shortcut).
        dropout: Dropout probability between the two convs (0 disables it).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block."""
        # bn1 returns a new tensor, so the in-place ReLU never touches x (needed by the identity shortcut).
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(BlockNet):
    """WRN-depth-k for CIFAR: 3x3 stem (16), three stages of widths 16k/32k/64k (strides 1/2/2).

    Units (`blocks()`): `stem` (a bare conv, since the blocks are pre-activation), every block of
    `stage1`..`stage3`, `head` (final BN + ReLU + global avg pool + flatten + fc).

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        depth: Network depth, `6n + 4` for `n` blocks per stage.
        widen_factor: Width multiplier k.
        dropout: Dropout probability inside each block.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4 with n >= 1 (e.g. 28), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        per_stage = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        prev = 16
        for s, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2))):
            blocks = []
            for i in range(per_stage):
                blocks.append(WideBasicBlock(prev, width * widen_factor, stride if i == 0 else 1, dropout))
                prev = width * widen_factor
            self.add_module(f"stage{s + 1}", nn.Sequential(*blocks))
        self.head = classifier_head(prev, num_classes, pre_activation=True)
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the stem conv, every residual block in order, and the head."""
        return [self.stem, *self.stage1, *self.stage2, *self.stage3, self.head]


def build_wrn28_10(
    num_classes: int, in_channels: int, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0
) -> WideResNet:
    """Builds a Wide-ResNet (default WRN-28-10 without dropout).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        depth: Network depth (`6n + 4`).
        widen_factor: Width multiplier.
        dropout: Dropout probability inside each block.

    Returns:
        The network.
    """
    return WideResNet(in_channels, num_classes, int(depth), int(widen_factor), float(dropout))
