"""MobileNet v1 (Howard et al., 2017) with ImageNet or CIFAR strides."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from common.models.layers import BlockNet, classifier_head, conv_unit, init_weights, scale_width

# (output width, stride) of the 13 depthwise-separable blocks; the stride sits on the depthwise conv.
BLOCK_CONFIG = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Builds a depthwise-separable block: dw conv3x3-BN-ReLU then pw conv1x1-BN-ReLU.

    The children are flat and named (`dw`, `dw_bn`, `dw_relu`, `pw`, `pw_bn`, `pw_relu`) so pruning code can
    reach both convs directly.

    Args:
        in_channels: Input channels (also the depthwise conv's groups).
        out_channels: Output channels of the pointwise conv.
        stride: Stride of the depthwise conv.

    Returns:
        The block as an `nn.Sequential`.
    """
    return nn.Sequential(
        OrderedDict(
            dw=nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            dw_bn=nn.BatchNorm2d(in_channels),
            dw_relu=nn.ReLU(inplace=True),
            pw=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pw_bn=nn.BatchNorm2d(out_channels),
            pw_relu=nn.ReLU(inplace=True),
        )
    )


class MobileNetV1(BlockNet):
    """MobileNet v1: conv3x3(32)-BN-ReLU, 13 depthwise-separable blocks, global avg pool, fc.

    Units (`blocks()`): `stem`, each block of `features`, `head`. State-dict keys: `stem.conv.*`,
    `features.<i>.dw.*` / `features.<i>.pw.*`, `head.fc.*`.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        first_stride: Stride of the first conv: 2 for ImageNet (224 -> 7 at the head), 1 for CIFAR
            (32 -> 2 at the head).
        width_mult: Width multiplier (alpha) applied to every layer.
    """

    def __init__(
        self, in_channels: int, num_classes: int, first_stride: int = 2, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        prev = scale_width(32, width_mult)
        self.stem = conv_unit(in_channels, prev, 3, stride=first_stride)
        blocks = []
        for width, stride in BLOCK_CONFIG:
            out = scale_width(width, width_mult)
            blocks.append(depthwise_separable(prev, out, stride))
            prev = out
        self.features = nn.Sequential(*blocks)
        self.head = classifier_head(prev, num_classes)
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the stem, the 13 depthwise-separable blocks, and the head."""
        return [self.stem, *self.features, self.head]


def build_mobilenet_v1(num_classes: int, in_channels: int, width_mult: float = 1.0) -> MobileNetV1:
    """Builds MobileNet v1 with CIFAR strides (first conv stride 1).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        width_mult: Width multiplier.

    Returns:
        The network.
    """
    return MobileNetV1(in_channels, num_classes, first_stride=1, width_mult=float(width_mult))


def build_mobilenet_v1_imagenet(num_classes: int, in_channels: int, width_mult: float = 1.0) -> MobileNetV1:
    """Builds MobileNet v1 with ImageNet strides (first conv stride 2).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        width_mult: Width multiplier.

    Returns:
        The network.
    """
    return MobileNetV1(in_channels, num_classes, first_stride=2, width_mult=float(width_mult))
