"""VGG (Simonyan & Zisserman, 2015) in the CIFAR style: 3x3 convs, five max-pools, one linear classifier."""

from __future__ import annotations

from torch import nn

from common.models.layers import BlockNet, classifier_head, conv_unit, init_weights, scale_width

# Standard VGG configurations: conv output widths, "M" = 2x2 max-pool.
CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ),
}  # fmt: skip


class VGG(BlockNet):
    """CIFAR-style VGG.

    Units (`blocks()`): one per conv layer (conv [+ BN] + ReLU, with the following max-pool folded in),
    then the head (global avg pool + flatten + `Linear(512 * width_mult, num_classes)`). State-dict keys:
    `features.<i>.conv.*`, `features.<i>.bn.*`, `head.fc.*`.

    Args:
        config: Conv widths and "M" pool markers (see `CONFIGS`).
        in_channels: Input channels.
        num_classes: Number of outputs.
        batch_norm: Add BatchNorm after every conv (the conv then has no bias).
        width_mult: Multiplier applied to every conv width.
    """

    def __init__(
        self,
        config: tuple[int | str, ...],
        in_channels: int,
        num_classes: int,
        batch_norm: bool = False,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        units: list[nn.Sequential] = []
        prev = in_channels
        for item in config:
            if item == "M":
                # Fold the pool into the preceding conv unit so each unit is one conv layer.
                units[-1].add_module("pool", nn.MaxPool2d(2))
                continue
            width = scale_width(int(item), width_mult)
            units.append(conv_unit(prev, width, 3, batch_norm=batch_norm))
            prev = width
        self.features = nn.Sequential(*units)
        self.head = classifier_head(prev, num_classes)
        init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """Returns the conv units followed by the head."""
        return [*self.features, self.head]


def _make_builder(depth: int, batch_norm: bool):
    def build(num_classes: int, in_channels: int, width_mult: float = 1.0) -> VGG:
        return VGG(CONFIGS[depth], in_channels, num_classes, batch_norm=batch_norm, width_mult=width_mult)

    build.__name__ = f"build_vgg{depth}{'_bn' if batch_norm else ''}"
    build.__doc__ = f"""Builds VGG-{depth}{" with BatchNorm" if batch_norm else ""} (CIFAR style).

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels.
        width_mult: Multiplier applied to every conv width.

    Returns:
        The network.
    """
    return build


build_vgg11 = _make_builder(11, False)
build_vgg11_bn = _make_builder(11, True)
build_vgg16 = _make_builder(16, False)
build_vgg16_bn = _make_builder(16, True)
build_vgg19 = _make_builder(19, False)
build_vgg19_bn = _make_builder(19, True)
