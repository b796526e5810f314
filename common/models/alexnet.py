"""AlexNet scaled for 32x32 inputs (CIFAR)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from torch import nn

from common.models.layers import BlockNet, as_int_tuple, conv_unit, init_weights

# AlexNet's five conv widths (as in torchvision's single-tower AlexNet) and its two hidden fc layers, the
# latter narrowed from 4096 because a 32x32 input carries far less information than 224x224.
DEFAULT_WIDTHS = (64, 192, 384, 256, 256)
DEFAULT_HIDDEN = (1024, 1024)
# Max-pools follow conv1, conv2 and conv5, as in AlexNet; 32x32 -> 4x4 at the classifier.
_POOL_AFTER = (True, True, False, False, True)


class AlexNetSmall(BlockNet):
    """CIFAR-size AlexNet: 5 conv layers (3x3, stride 1) + 3 fully connected layers.

    Units (`blocks()`): the five conv units `features.<i>` (conv + ReLU [+ 2x2 max-pool]), then `fc1`
    (4x4 adaptive avg pool + flatten + dropout + linear + ReLU), `fc2` (dropout + linear + ReLU) and
    `head` (linear). The convolutions are plain `nn.Conv2d` without BatchNorm, reachable as
    `features[i].conv`, so pruning methods can read and change their widths.

    Args:
        in_channels: Input channels.
        num_classes: Number of outputs.
        widths: Output channels of the five conv layers.
        hidden: Widths of the two hidden fully connected layers.
        dropout: Dropout probability before `fc1` and `fc2`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        hidden: tuple[int, ...] = DEFAULT_HIDDEN,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"alexnet_small needs 5 conv widths, got {list(widths)}")
        if len(hidden) != 2:
            raise ValueError(f"alexnet_small needs 2 hidden fc widths, got {list(hidden)}")
        units = []
        prev = in_channels
        for width, pool in zip(widths, _POOL_AFTER):
            units.append(conv_unit(prev, width, 3, batch_norm=False, pool=nn.MaxPool2d(2) if pool else None))
            prev = width
        self.features = nn.Sequential(*units)

        def fc_unit(layers: OrderedDict[str, nn.Module], fan_in: int, fan_out: int) -> nn.Sequential:
            if dropout > 0:
                layers["dropout"] = nn.Dropout(dropout)
            layers["fc"] = nn.Linear(fan_in, fan_out)
            layers["relu"] = nn.ReLU(inplace=True)
            return nn.Sequential(layers)

        # The adaptive pool is the identity at 32x32 and keeps fc1's width fixed for larger inputs.
        self.fc1 = fc_unit(
            OrderedDict(pool=nn.AdaptiveAvgPool2d(4), flatten=nn.Flatten(1)), prev * 16, hidden[0]
        )
        self.fc2 = fc_unit(OrderedDict(), hidden[0], hidden[1])
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(hidden[1], num_classes)))
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the five conv units, then `fc1`, `fc2` and `head`."""
        return [*self.features, self.fc1, self.fc2, self.head]


def build_alexnet_small(
    num_classes: int,
    in_channels: int,
    widths: Iterable[int] = DEFAULT_WIDTHS,
    hidden: Iterable[int] = DEFAULT_HIDDEN,
    dropout: float = 0.5,
) -> AlexNetSmall:
    """Builds the CIFAR-size AlexNet.

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        widths: Five conv widths.
        hidden: Two hidden fc widths.
        dropout: Dropout probability in the classifier.

    Returns:
        The network.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return AlexNetSmall(
        in_channels,
        num_classes,
        widths=as_int_tuple(widths, "widths"),
        hidden=as_int_tuple(hidden, "hidden"),
        dropout=dropout,
    )
