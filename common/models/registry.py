"""Name -> builder registry and the `build_model` entry point used by the Hydra network configs."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.config import ConfigError
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
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class UnexpectedArgumentError(ConfigError, TypeError):
    """A network config passes an argument its builder does not take (a TypeError, as Python would raise)."""


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


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """``a is b``, or the same module-level function defined anew (a module imported twice, or reloaded)."""
    if a is b:
        return True
    key_a = (getattr(a, "__module__", None), getattr(a, "__qualname__", None))
    key_b = (getattr(b, "__module__", None), getattr(b, "__qualname__", None))
    # lambdas and nested functions share qualified names: only the very same object is the same
    return None not in key_a and "<" not in str(key_a[1]) and key_a == key_b


def register_model(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    input_kind: str = "image",
    min_input_size: int | None = None,
    default_input_size: int = 32,
) -> Callable[..., nn.Module]:
    """Adds a network to the registry, so that `build_model(name, ...)` and `network_info(name)` know it.

    The builder is called as ``builder(num_classes=..., in_channels=..., **kwargs)``, plus ``image_size=`` when
    its signature names that argument; every other argument of its signature is a network-config key (see
    `builder_kwargs`). Registering the same function again under its name (a module imported twice) is a no-op.

    Example:
        >>> def build_tiny(num_classes: int, in_channels: int, hidden: int = 32) -> nn.Module:
        ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        >>> _ = register_model("tiny", build_tiny, default_input_size=8)
        >>> model = build_model("tiny", num_classes=10, in_channels=1)

    Args:
        name: Registry name (the ``name`` of the network config).
        builder: Function returning the network (an ``nn.Module``) for ``num_classes`` and ``in_channels``.
        input_kind: ``"image"`` (input ``(N, C, H, W)``) or ``"sequence"`` (input ``(N, T, C)``).
        min_input_size: Smallest square image size the network accepts; the data pipeline resizes smaller
            images up to it. None: any size.
        default_input_size: Input size for tests and examples (image side, or sequence length).

    Returns:
        ``builder`` itself, so that ``register_model`` also works inside a decorator.

    Raises:
        ValueError: On an empty or taken name (taken by another function), an unknown ``input_kind`` or a
            size that is not a positive integer.
        TypeError: When ``builder`` is not callable or does not take ``num_classes`` and ``in_channels``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"network name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise TypeError(f"builder of network {name!r} must be callable, got {type(builder).__name__}")
    if input_kind not in INPUT_KINDS:
        raise ValueError(
            f"input_kind of network {name!r} must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}"
        )
    if min_input_size is not None and not _is_positive_int(min_input_size):
        raise ValueError(
            f"min_input_size of network {name!r} must be None or a positive integer, got {min_input_size!r}"
        )
    if not _is_positive_int(default_input_size):
        raise ValueError(
            f"default_input_size of network {name!r} must be a positive integer, got {default_input_size!r}"
        )
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    lacking = [arg for arg in ("num_classes", "in_channels") if arg not in params and not takes_any]
    if lacking:
        raise TypeError(f"builder of network {name!r} must take {' and '.join(lacking)} (keyword arguments)")
    if name in _REGISTRY and not _same_function(_REGISTRY[name].builder, builder):
        raise ValueError(
            f"network {name!r} is already registered (to {_REGISTRY[name].builder.__module__}."
            f"{_REGISTRY[name].builder.__qualname__}); choose another name"
        )
    _REGISTRY[name] = _Entry(NetworkInfo(name, input_kind, min_input_size, default_input_size), builder)
    return builder


def registered_name(builder: Callable[..., Any]) -> str | None:
    """The registry name of ``builder`` (a function given to `register_model`), or None if it has none."""
    return next((name for name, entry in _REGISTRY.items() if _same_function(entry.builder, builder)), None)


# min_input_size 32 for every conv net: LeNet-5 and VGG need it (unpadded 5x5 convs / five 2x2 pools);
# the others pool adaptively but are designed for >= 32x32, so small images (8x8 digits, 28x28 MNIST)
# are resized up to it by the data pipeline.
_CONV = {"min_input_size": 32, "default_input_size": 32}
_IMAGENET = {"min_input_size": 32, "default_input_size": 224}
register_model("mlp", mlp.build_mlp, min_input_size=None, default_input_size=28)
register_model("lenet5", lenet.build_lenet5, **_CONV)
register_model("alexnet_small", alexnet.build_alexnet_small, **_CONV)
register_model("vgg11", vgg.build_vgg11, **_CONV)
register_model("vgg11_bn", vgg.build_vgg11_bn, **_CONV)
register_model("vgg16", vgg.build_vgg16, **_CONV)
register_model("vgg16_bn", vgg.build_vgg16_bn, **_CONV)
register_model("vgg19", vgg.build_vgg19, **_CONV)
register_model("vgg19_bn", vgg.build_vgg19_bn, **_CONV)
register_model("resnet18", resnet.build_resnet18, **_CONV)
register_model("resnet34", resnet.build_resnet34, **_CONV)
register_model("resnext29", resnext.build_resnext29, **_CONV)
register_model("wrn28_10", wrn.build_wrn28_10, **_CONV)
register_model("densenet_bc100", densenet.build_densenet_bc100, **_CONV)
register_model("mobilenet_v1", mobilenet.build_mobilenet_v1, **_CONV)
register_model("mobilenet_v1_imagenet", mobilenet.build_mobilenet_v1_imagenet, **_IMAGENET)
register_model("resnet18_imagenet", torchvision_nets.build_resnet18_imagenet, **_IMAGENET)
register_model("resnet34_imagenet", torchvision_nets.build_resnet34_imagenet, **_IMAGENET)
register_model("resnet50_imagenet", torchvision_nets.build_resnet50_imagenet, **_IMAGENET)
register_model("resnet101_imagenet", torchvision_nets.build_resnet101_imagenet, **_IMAGENET)
register_model("resnet152_imagenet", torchvision_nets.build_resnet152_imagenet, **_IMAGENET)
register_model("densenet121_imagenet", torchvision_nets.build_densenet121_imagenet, **_IMAGENET)
register_model("lstm", lstm.build_lstm, input_kind="sequence", min_input_size=None, default_input_size=16)


def available_models() -> list[str]:
    """Returns the registered network names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown network {name!r}. Valid networks: {', '.join(available_models())}")
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
    return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS and p.kind not in _VARIADIC}


def _check_positive_int(value: Any, what: str, name: str) -> None:
    # operator.index accepts int-like values (e.g. numpy integers) but rejects floats and strings.
    try:
        ok = not isinstance(value, bool) and operator.index(value) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{what} for network {name!r} must be a positive integer, got {value!r}")


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
        ConfigError: (a ValueError) On an unknown name (the message lists the valid ones), a mismatching
            `input_kind`, an `image_size` below the network's minimum, or an invalid argument value.
        TypeError: On a keyword argument the network's builder does not accept (also a ConfigError: one line
            from `python -m launch`), or a builder that returns no `nn.Module`.
    """
    entry = _entry(name)
    info = entry.info
    _check_positive_int(num_classes, "num_classes", name)
    _check_positive_int(in_channels, "in_channels", name)
    if input_kind is not None and input_kind != info.input_kind:
        raise ConfigError(
            f"Network {name!r} takes {info.input_kind!r} inputs, but the config says input_kind={input_kind!r}"
        )
    if (
        min_input_size is not None
        and info.min_input_size is not None
        and min_input_size < info.min_input_size
    ):
        raise ConfigError(
            f"min_input_size={min_input_size} is below network {name!r}'s minimum input size "
            f"{info.min_input_size}"
        )
    if info.input_kind == "image" and image_size is not None:
        _check_positive_int(image_size, "image_size", name)
        if info.min_input_size is not None and image_size < info.min_input_size:
            raise ConfigError(
                f"image_size={image_size} is smaller than network {name!r}'s minimum input size "
                f"{info.min_input_size}; resize the images to at least {info.min_input_size}"
            )

    params = inspect.signature(entry.builder).parameters
    accepted = [k for k, p in params.items() if k not in _COMMON_ARGS and p.kind not in _VARIADIC]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise UnexpectedArgumentError(
            f"Unexpected argument(s) {', '.join(unexpected)} for network {name!r}; "
            f"it accepts: {', '.join(accepted) or 'no extra arguments'}"
        )
    if "image_size" in params:
        kwargs["image_size"] = image_size
    model = entry.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"the builder of network {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Counts a model's parameters (buffers such as BN running statistics are not counted).

    Args:
        model: The model.
        trainable_only: Count only parameters with `requires_grad`.

    Returns:
        The number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
