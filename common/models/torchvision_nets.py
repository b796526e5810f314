"""ImageNet networks taken from torchvision, with `blocks()` added.

The networks are built by torchvision's own builders (`torchvision.models.resnet50(weights=None, ...)`;
weights are never downloaded) and then re-tagged as a subclass that only adds `blocks()`. Nothing else
changes: the object is still an instance of `torchvision.models.ResNet` / `DenseNet`, `forward` is
torchvision's, and the state-dict keys are exactly torchvision's (`conv1.weight`, `layer1.0.bn1.weight`,
`fc.weight`, `features.conv0.weight`, `classifier.weight`, ...), so torchvision checkpoints load directly.

`blocks()` groups torchvision's own modules into `nn.Sequential` wrappers created on each call. The
wrappers are not attributes of the network, so they add no state-dict entries; their `parameters()` are
the network's own parameter tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn

_tvm = torchvision.models


class TorchvisionResNet(_tvm.ResNet):
    """torchvision ResNet plus `blocks()`; instances come from `from_torchvision`, never `__init__`.

    Units (`blocks()`): stem (`conv1, bn1, relu, maxpool`), every residual block of `layer1`..`layer4`,
    head (`avgpool`, flatten, `fc`).
    """

    @classmethod
    def from_torchvision(cls, model: _tvm.ResNet) -> TorchvisionResNet:
        """Re-tags a freshly built torchvision ResNet in place as this class.

        Args:
            model: A `torchvision.models.ResNet` instance.

        Returns:
            The same object, now of this class.
        """
        if type(model) is not _tvm.ResNet:
            raise TypeError(f"expected a torchvision ResNet, got {type(model).__name__}")
        # Same instance layout, only a method added: re-tagging keeps torchvision's modules, keys and
        # forward untouched instead of re-implementing or double-registering them.
        model.__class__ = cls
        return model

    def blocks(self) -> list[nn.Module]:
        """Returns the stem, every residual block in order, and the head."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        head = nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)
        return [stem, *self.layer1, *self.layer2, *self.layer3, *self.layer4, head]


class TorchvisionDenseNet(_tvm.DenseNet):
    """torchvision DenseNet plus `blocks()`; instances come from `from_torchvision`, never `__init__`.

    Units (`blocks()`): stem (`features.conv0, norm0, relu0, pool0`), each `denseblock<i>` and
    `transition<i>` in order, head (`features.norm5`, ReLU, global avg pool, flatten, `classifier`).
    """

    @classmethod
    def from_torchvision(cls, model: _tvm.DenseNet) -> TorchvisionDenseNet:
        """Re-tags a freshly built torchvision DenseNet in place as this class.

        Args:
            model: A `torchvision.models.DenseNet` instance.

        Returns:
            The same object, now of this class.
        """
        if type(model) is not _tvm.DenseNet:
            raise TypeError(f"expected a torchvision DenseNet, got {type(model).__name__}")
        model.__class__ = cls
        return model

    def blocks(self) -> list[nn.Module]:
        """Returns the stem, the dense blocks and transitions in order, and the head."""
        children = dict(self.features.named_children())
        stem = nn.Sequential(*(children[k] for k in ("conv0", "norm0", "relu0", "pool0")))
        middle = [m for k, m in children.items() if k.startswith(("denseblock", "transition"))]
        # Mirrors torchvision's forward: ReLU and pooling after `features` are functional calls there.
        head = nn.Sequential(
            children["norm5"], nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), self.classifier
        )
        return [stem, *middle, head]


def _replace_first_conv(conv: nn.Conv2d, in_channels: int, init: Callable[[nn.Conv2d], None]) -> nn.Conv2d:
    """Returns a copy of `conv`'s configuration with `in_channels` input channels, freshly initialised."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    init(new)
    return new


def _init_resnet_conv(conv: nn.Conv2d) -> None:
    # The same initialisation torchvision's ResNet gives its convs.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def _init_densenet_conv(conv: nn.Conv2d) -> None:
    # The same initialisation torchvision's DenseNet gives its convs.
    nn.init.kaiming_normal_(conv.weight)


def _make_resnet_builder(tv_name: str) -> Callable[..., TorchvisionResNet]:
    def build(num_classes: int, in_channels: int, zero_init_residual: bool = True) -> TorchvisionResNet:
        model = getattr(_tvm, tv_name)(
            weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
        )
        if in_channels != 3:
            model.conv1 = _replace_first_conv(model.conv1, in_channels, _init_resnet_conv)
        return TorchvisionResNet.from_torchvision(model)

    build.__name__ = f"build_{tv_name}_imagenet"
    build.__doc__ = f"""Builds torchvision's `{tv_name}` (random init) with `blocks()`.

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels; `conv1` is replaced when it is not 3.
        zero_init_residual: Start the last BatchNorm scale of every residual branch at 0 (torchvision's
            option; Goyal et al. 2017), so each block starts as the identity. Without it (torchvision's
            default) a deep net's activations grow block by block, and after a few steps at lr 0.1 its
            eval-mode outputs can overflow. Only the initialisation differs; keys and forward are torchvision's.

    Returns:
        The network (a `torchvision.models.ResNet`).
    """
    return build


build_resnet18_imagenet = _make_resnet_builder("resnet18")
build_resnet34_imagenet = _make_resnet_builder("resnet34")
build_resnet50_imagenet = _make_resnet_builder("resnet50")
build_resnet101_imagenet = _make_resnet_builder("resnet101")
build_resnet152_imagenet = _make_resnet_builder("resnet152")


def build_densenet121_imagenet(num_classes: int, in_channels: int) -> TorchvisionDenseNet:
    """Builds torchvision's `densenet121` (random init) with `blocks()`.

    Args:
        num_classes: Number of outputs.
        in_channels: Input channels; `features.conv0` is replaced when it is not 3.

    Returns:
        The network (a `torchvision.models.DenseNet`).
    """
    model = _tvm.densenet121(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.features.conv0 = _replace_first_conv(model.features.conv0, in_channels, _init_densenet_conv)
    return TorchvisionDenseNet.from_torchvision(model)
