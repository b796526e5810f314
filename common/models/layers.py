"""Building blocks shared by the model families.

Every network defined in this package is a plain chain of units: `blocks()` returns them in order and
`forward` is their sequential composition. `BlockNet` implements `forward` from `blocks()`, so the two can
never drift apart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn


class BlockNet(nn.Module):
    """Base class for networks that are a sequential chain of units.

    Subclasses implement `blocks()`; `forward` feeds the input through those units in order, which makes
    "composing `blocks()` equals `forward`" true by construction.
    """

    def blocks(self) -> list[nn.Module]:
        """Returns the ordered units whose sequential composition is `forward`.

        Returns:
            The units, the classifier/regression head last.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the input through every unit of `blocks()` in order.

        Args:
            x: The input batch.

        Returns:
            The network output.
        """
        for block in self.blocks():
            x = block(x)
        return x


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """A post-activation residual block's shortcut: the identity, or a strided 1x1 conv + BN when the shape changes.

    The projection's children are ``0`` (conv) and ``1`` (BN), the layout of the usual ResNet checkpoints.
    """
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def conv_unit(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    batch_norm: bool = True,
    pool: nn.Module | None = None,
) -> nn.Sequential:
    """Builds a `conv -> [BN] -> ReLU -> [pool]` unit with named children.

    The children are named (`conv`, `bn`, `relu`, `pool`) so code that inspects or prunes widths can reach
    the plain `nn.Conv2d` as `unit.conv`.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; padding keeps the spatial size at stride 1.
        stride: Convolution stride.
        groups: Convolution groups (``groups == in_channels`` gives a depthwise conv).
        batch_norm: Whether to add BatchNorm; the conv has a bias only without it (a bias before BN is
            redundant).
        pool: Optional pooling module appended after the ReLU.

    Returns:
        The unit as an `nn.Sequential`.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=not batch_norm,
    )
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(out_channels)
    layers["relu"] = nn.ReLU(inplace=True)
    if pool is not None:
        layers["pool"] = pool
    return nn.Sequential(layers)


def classifier_head(
    in_features: int, num_classes: int, pre_activation: bool = False, dropout: float = 0.0
) -> nn.Sequential:
    """Builds the classifier head `[BN -> ReLU] -> global avg pool -> flatten -> [dropout] -> fc`.

    Args:
        in_features: Channels of the incoming feature map.
        num_classes: Output size of the final linear layer.
        pre_activation: Add the final BN + ReLU that pre-activation networks apply before pooling.
        dropout: Dropout probability before the linear layer (0 disables it).

    Returns:
        The head as an `nn.Sequential` with named children (the linear layer is `head.fc`).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if pre_activation:
        layers["bn"] = nn.BatchNorm2d(in_features)
        layers["relu"] = nn.ReLU(inplace=True)
    # Adaptive pooling lets 32x32 and larger inputs share one classifier.
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten(1)
    if dropout > 0:
        layers["dropout"] = nn.Dropout(dropout)
    layers["fc"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


def init_weights(model: nn.Module) -> None:
    """Applies the standard initialisation in place.

    Convolutions get Kaiming-normal weights (fan-out, ReLU gain) and zero bias; BatchNorm gets weight 1 and
    bias 0; linear layers keep PyTorch's default initialisation.

    Args:
        model: The module to initialise.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def scale_width(channels: int, width_mult: float) -> int:
    """Scales a channel count by a width multiplier, keeping at least one channel.

    Args:
        channels: The channel count at width multiplier 1.
        width_mult: The multiplier; must be positive.

    Returns:
        The rounded, scaled channel count.

    Raises:
        ValueError: If `width_mult` is not positive.
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    return max(1, int(round(channels * width_mult)))


def as_int_tuple(value: int | Iterable[int], name: str) -> tuple[int, ...]:
    """Converts an int or a sequence (including Hydra's `ListConfig`) to a tuple of ints.

    Args:
        value: A single int or an iterable of ints.
        name: The argument name, used in the error message.

    Returns:
        The values as a tuple of ints.

    Raises:
        ValueError: If any value is not a positive integer.
    """
    values = (value,) if isinstance(value, int) else tuple(value)
    out = []
    for v in values:
        if isinstance(v, bool) or int(v) != v or int(v) <= 0:
            raise ValueError(f"{name} must contain positive integers, got {list(values)}")
        out.append(int(v))
    return tuple(out)
