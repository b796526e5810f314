"""Build the pieces every method needs from a composed config: data, model, optimizer, scheduler."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.config import ConfigError
from common.data import DataBundle, build_data
from common.models import NetworkInfo, build_model, network_info, registered_name
from common.optim import build_optimizer, build_scheduler

__all__ = ["make_data", "make_model", "build_optimizer", "build_scheduler"]

# keys of a network config that describe the network for the harness (titles, method checks, the data
# pipeline's resize) and are not arguments of a builder of one's own
_NETWORK_META = ("name", "input_kind", "min_input_size", "default_input_size")
# the arguments make_model passes itself
_DATA_ARGS = ("num_classes", "in_channels", "image_size")


def _locate(path: str) -> Any:
    """The object at the dotted ``path`` (``package.module.function``), importing its module.

    A path whose module or attribute does not exist is a :class:`ConfigError` (a typo in the yaml, or a package
    not on ``PYTHONPATH``); an error raised while importing an existing module is a bug and propagates.
    """
    parts = str(path).split(".")
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ConfigError(f"network._target_={path}: {obj.__name__} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(
        f"network._target_={path}: no module {parts[0]!r} found; is its package on PYTHONPATH (or installed)?"
    )


def _builder(cfg_network: DictConfig) -> Callable[..., Any] | None:
    target = cfg_network.get("_target_")
    return None if target is None else _locate(str(target))


def _network_info(cfg_network: DictConfig) -> NetworkInfo | None:
    """The registry's facts about the network of ``cfg_network``, if it is a registered one."""
    builder = _builder(cfg_network)
    if builder is build_model:
        return network_info(str(cfg_network.name))
    name = None if builder is None else registered_name(builder)
    return None if name is None else network_info(name)


def input_size_for(cfg: DictConfig) -> int | None:
    """The image size the network will see: the data set's, enlarged to the network's minimum if smaller.

    E.g. digits (8x8) and MNIST (28x28) are resized to 32x32 for LeNet-5 and the CIFAR-style conv nets. The
    minimum is the network config's ``min_input_size``, else the registry's (a network of one's own that was
    given to :func:`common.models.register_model`).
    """
    native = cfg.dataset.get("image_size")
    if "min_input_size" in cfg.network:
        minimum = cfg.network.get("min_input_size")
    else:
        info = _network_info(cfg.network)
        minimum = None if info is None else info.min_input_size
    if native is None or minimum is None or native >= minimum:
        return None
    return int(minimum)


def make_data(cfg: DictConfig, device: torch.device) -> DataBundle:
    """The train/val/test loaders of ``cfg.dataset``, on ``device``, seeded by ``cfg.seed``."""
    return build_data(
        cfg.dataset, data_dir=cfg.paths.data_dir, seed=cfg.seed, device=device, image_size=input_size_for(cfg)
    )


def _own_network(cfg_network: DictConfig, builder: Callable[..., Any], data: DataBundle) -> nn.Module:
    """A network whose config's ``_target_`` is a builder of one's own (not ``common.models.build_model``).

    The builder gets ``num_classes`` and ``in_channels`` (and ``image_size`` when its signature takes it) from
    the data, plus the config's other keys except the harness's metadata (``name``, ``input_kind``,
    ``min_input_size``, ``default_input_size``). A builder given to ``register_model`` goes through
    :func:`common.models.build_model`, so the registry's checks (input kind, minimum size) apply.
    """
    values = OmegaConf.to_container(cfg_network, resolve=True)
    assert isinstance(values, dict)
    meta = {k: values.pop(k, None) for k in _NETWORK_META}
    for key in _DATA_ARGS:
        values.pop(key, None)
    name = registered_name(builder)
    if name is not None:
        values.pop("_target_")
        return build_model(
            name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
            input_kind=meta["input_kind"],
            min_input_size=meta["min_input_size"],
            **values,
        )
    params = inspect.signature(builder).parameters if callable(builder) else {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    sizes = {"image_size": data.image_size} if "image_size" in params or takes_any else {}
    model = instantiate(values, num_classes=data.num_classes, in_channels=data.in_channels, **sizes)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"network._target_={cfg_network._target_} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def make_model(cfg: DictConfig, data: DataBundle, device: torch.device | None = None) -> nn.Module:
    """Instantiate ``cfg.network`` for ``data`` (classes, channels and the final image size come from it).

    ``cfg.network._target_`` is ``common.models.build_model`` for the shipped networks (and for any network
    given to :func:`common.models.register_model`, selected by ``name``), or a builder function of one's own
    (see :func:`_own_network` and the README's "Your own model or data set").
    """
    builder = _builder(cfg.network)
    if builder is None:
        raise ConfigError("network._target_ is not set: the network config must name its builder function")
    if builder is build_model:
        model = instantiate(
            cfg.network,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            image_size=data.image_size,
        )
    else:
        model = _own_network(cfg.network, builder, data)
    return model.to(device) if device is not None else model
