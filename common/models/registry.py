"""Name -> builder registry and the `build_model` entry point used by the Hydra network configs."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.models import (
    alexnet,
    densenet,
    lenet,
    lstm,
    mlp,
    mobilenet,
    resnet,
    resnext,
    torchvision_nets,
    vgg,
    wrn,
)

INPUT_KINDS = ("image", "sequence")

# Arguments every builder takes from build_model itself; the rest of a builder's signature is its kwargs.
_COMMON_ARGS = ("num_classes", "in_channels", "image_size")


@dataclass(frozen=True)
class NetworkInfo:
    """Static facts about a registered network.

    Attributes:
        name: Registry name.
        input_kind: "image" (input `(N, C, H, W)`) or "sequence" (input `(N, T, C)`).
        min_input_size: Smallest square image size the data pipeline should feed (it resizes smaller
            images up to this); None when any size works or the input is not an image.
        default_input_size: Size to use in tests and examples (image side, or sequence length).
    """

    name: str
    input_kind: str
    min_input_size: int | None
    default_input_size: int


@dataclass(frozen=True)
class _Entry:
    info: NetworkInfo
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, _Entry] = {}


def _register(
    name: str,
    builder: Callable[..., nn.Module],
    input_kind: str = "image",
    min_input_size: int | None = 32,
    default_input_size: int = 32,
) -> None:
    assert input_kind in INPUT_KINDS and name not in _REGISTRY
    _REGISTRY[name] = _Entry(NetworkInfo(name, input_kind, min_input_size, default_input_size), builder)


# min_input_size 32 for every conv net: LeNet-5 and VGG need it (unpadded 5x5 convs / five 2x2 pools);
# the others pool adaptively but are designed for >= 32x32, so small images (8x8 digits, 28x28 MNIST)
# are resized up to it by the data pipeline.
_register("mlp", mlp.build_mlp, min_input_size=None, default_input_size=28)
_register("lenet5", lenet.build_lenet5)
_register("alexnet_small", alexnet.build_alexnet_small)
_register("vgg11", vgg.build_vgg11)
_register("vgg11_bn", vgg.build_vgg11_bn)
_register("vgg16", vgg.build_vgg16)
_register("vgg16_bn", vgg.build_vgg16_bn)
_register("vgg19", vgg.build_vgg19)
_register("vgg19_bn", vgg.build_vgg19_bn)
_register("resnet18", resnet.build_resnet18)
_register("resnet34", resnet.build_resnet34)
_register("resnext29", resnext.build_resnext29)
_register("wrn28_10", wrn.build_wrn28_10)
_register("densenet_bc100", densenet.build_densenet_bc100)
_register("mobilenet_v1", mobilenet.build_mobilenet_v1)
_register("mobilenet_v1_imagenet", mobilenet.build_mobilenet_v1_imagenet, default_input_size=224)
_register("resnet18_imagenet", torchvision_nets.build_resnet18_imagenet, default_input_size=224)
_register("resnet34_imagenet", torchvision_nets.build_resnet34_imagenet, default_input_size=224)
_register("resnet50_imagenet", torchvision_nets.build_resnet50_imagenet, default_input_size=224)
_register("resnet101_imagenet", torchvision_nets.build_resnet101_imagenet, default_input_size=224)
_register("resnet152_imagenet", torchvision_nets.build_resnet152_imagenet, default_input_size=224)
_register("densenet121_imagenet", torchvision_nets.build_densenet121_imagenet, default_input_size=224)
_register("lstm", lstm.build_lstm, input_kind="sequence", min_input_size=None, default_input_size=16)


def available_models() -> list[str]:
    """Returns the registered network names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown network {name!r}. Valid networks: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def network_info(name: str) -> NetworkInfo:
    """Returns the static facts about a registered network.

    Args:
        name: Registry name.

    Returns:
        The network's `NetworkInfo`.

    Raises:
        ValueError: If the name is not registered.
    """
    return _entry(name).info


def builder_kwargs(name: str) -> dict[str, Any]:
    """Returns the extra keyword arguments a network's builder accepts, with their defaults.

    Args:
        name: Registry name.

    Returns:
        Mapping from argument name to default value (the network configs spell these out).

    Raises:
        ValueError: If the name is not registered.
    """
    params = inspect.signature(_entry(name).builder).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS}


def _check_positive_int(value: Any, what: str, name: str) -> None:
    # operator.index accepts int-like values (e.g. numpy integers) but rejects floats and strings.
    try:
        ok = not isinstance(value, bool) and operator.index(value) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{what} for network {name!r} must be a positive integer, got {value!r}")


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int | None = None,
    input_kind: str | None = None,
    min_input_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Builds a registered network.

    Args:
        name: Registry name (see `available_models()`).
        num_classes: Output width (classes, or regression targets for sequence models).
        in_channels: Input channels (features per time step for sequence models).
        image_size: Square spatial size of the input images. Required by `mlp` (it flattens) and used by
            `lenet5`; validated against the network's minimum input size; ignored otherwise.
        input_kind: Metadata from the network config; must match the registry when given.
        min_input_size: Metadata from the network config; must not be below the registry's minimum when
            given. Otherwise ignored (the data pipeline uses it to resize).
        **kwargs: Builder-specific arguments (e.g. `width_mult`, `hidden`, `depth`).

    Returns:
        The network, randomly initialised, in training mode.

    Raises:
        ValueError: On an unknown name, a mismatching `input_kind`, an `image_size` below the network's
            minimum, or an invalid argument value.
        TypeError: On a keyword argument the network's builder does not accept.
    """
    entry = _entry(name)
    info = entry.info
    _check_positive_int(num_classes, "num_classes", name)
    _check_positive_int(in_channels, "in_channels", name)
    if input_kind is not None and input_kind != info.input_kind:
        raise ValueError(
            f"Network {name!r} takes {info.input_kind!r} inputs, but the config says input_kind={input_kind!r}"
        )
    if (
        min_input_size is not None
        and info.min_input_size is not None
        and min_input_size < info.min_input_size
    ):
        raise ValueError(
            f"min_input_size={min_input_size} is below network {name!r}'s minimum input size "
            f"{info.min_input_size}"
        )
    if info.input_kind == "image" and image_size is not None:
        _check_positive_int(image_size, "image_size", name)
        if info.min_input_size is not None and image_size < info.min_input_size:
            raise ValueError(
                f"image_size={image_size} is smaller than network {name!r}'s minimum input size "
                f"{info.min_input_size}; resize the images to at least {info.min_input_size}"
            )

    params = inspect.signature(entry.builder).parameters
    accepted = [k for k in params if k not in _COMMON_ARGS]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise TypeError(
            f"Unexpected argument(s) {', '.join(unexpected)} for network {name!r}; "
            f"it accepts: {', '.join(accepted) or 'no extra arguments'}"
        )
    if "image_size" in params:
        kwargs["image_size"] = image_size
    return entry.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Counts a model's parameters (buffers such as BN running statistics are not counted).

    Args:
        model: The model.
        trainable_only: Count only parameters with `requires_grad`.

    Returns:
        The number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
