"""LeNet-5 (LeCun et al., 1998) with ReLU activations and max pooling."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from common.models.layers import BlockNet, init_weights


class LeNet5(BlockNet):
    """LeNet-5: conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc(num_classes).

    Units (`blocks()`): `conv1`, `conv2` (each conv + ReLU + 2x2 max-pool), `fc1` (flatten + linear + ReLU),
    `fc2` (linear + ReLU), `head` (linear). The convolutions are unpadded, as in the original, so a 32x32
    input reaches the classifier as 16x5x5.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        image_size: Square input size; sets the input width of `fc1` (32 gives the classic 400).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(in_channels, 6, 5), relu=nn.ReLU(inplace=True), pool=nn.MaxPool2d(2))
        )
        self.conv2 = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(6, 16, 5), relu=nn.ReLU(inplace=True), pool=nn.MaxPool2d(2))
        )
        spatial = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(1), fc=nn.Linear(16 * spatial * spatial, 120), relu=nn.ReLU(inplace=True)
            )
        )
        self.fc2 = nn.Sequential(OrderedDict(fc=nn.Linear(120, 84), relu=nn.ReLU(inplace=True)))
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(84, num_classes)))
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the units `conv1, conv2, fc1, fc2, head`."""
        return [self.conv1, self.conv2, self.fc1, self.fc2, self.head]


def build_lenet5(num_classes: int, in_channels: int, image_size: int | None = None) -> LeNet5:
    """Builds LeNet-5.

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        image_size: Square input size (default 32, the minimum).

    Returns:
        The network.
    """
    return LeNet5(in_channels, num_classes, image_size=32 if image_size is None else image_size)
