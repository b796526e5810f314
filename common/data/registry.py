"""Data set registry and the `build_data` entry point."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from common.config import ConfigError
from common.data.bundle import DataBundle
from common.data.context import BuildContext

log = logging.getLogger(__name__)

Builder = Callable[[BuildContext], DataBundle]

# name -> builder, or "module:function" imported on demand so that `import common.data` stays light
_BUILDERS: dict[str, Builder | str] = {}


def register_dataset(name: str, builder: Builder | str) -> None:
    """Adds a data set, so that a dataset config with ``name: <name>`` builds with ``builder``.

    The builder receives a :class:`~common.data.BuildContext` (the dataset config as ``ctx.cfg``, ``data_dir``,
    the run ``seed``, the ``device`` and the requested ``image_size``) and returns a
    :class:`~common.data.DataBundle`; :func:`~common.data.image_bundle` makes one from in-memory image arrays.
    Registering the same builder again (a module imported twice) is a no-op. From the command line a dataset
    config can name its builder instead (``builder: package.module.function``), see :func:`build_data`.

    Args:
        name: The dataset config's ``name``.
        builder: The builder function, or its import path ``"package.module:function"`` (imported when the data
            set is first built).

    Raises:
        ValueError: On an empty name, or a name taken by another builder.
        TypeError: When ``builder`` is neither callable nor a ``"module:function"`` string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if isinstance(builder, str):
        module, sep, function = builder.partition(":")
        if not (module and sep and function):
            raise TypeError(
                f"builder of dataset {name!r} must be a function or 'module:function', got {builder!r}"
            )
    elif not callable(builder):
        raise TypeError(f"builder of dataset {name!r} must be callable, got {type(builder).__name__}")
    old = _BUILDERS.get(name)
    if old is not None and not _same_builder(old, builder):
        raise ValueError(f"dataset {name!r} is already registered (to {_path_of(old)}); choose another name")
    _BUILDERS[name] = builder


def _same_builder(a: Builder | str, b: Builder | str) -> bool:
    # the same object, or the same module-level function defined anew (a module imported twice); lambdas and
    # nested functions share qualified names, so for them only the very same object counts
    return a is b or (_path_of(a) == _path_of(b) and "<" not in _path_of(a))


def _path_of(builder: Builder | str) -> str:
    if isinstance(builder, str):
        return builder
    return f"{getattr(builder, '__module__', '?')}:{getattr(builder, '__qualname__', repr(builder))}"


register_dataset("digits", "common.data.digits:build_digits")
register_dataset("synthetic", "common.data.synthetic:build_synthetic")
register_dataset("shapes", "common.data.shapes:build_shapes")
register_dataset("mnist", "common.data.vision:build_mnist")
register_dataset("cifar10", "common.data.vision:build_cifar10")
register_dataset("cifar100", "common.data.vision:build_cifar100")
register_dataset("tiny_imagenet", "common.data.folders:build_tiny_imagenet")
register_dataset("imagenet", "common.data.folders:build_imagenet")
register_dataset("household_power", "common.data.timeseries:build_household_power")


def available_datasets() -> list[str]:
    """Names accepted as the dataset config's ``name``."""
    return sorted(_BUILDERS)


def _import_builder(path: str, key: str) -> Builder:
    """The function at ``package.module:function`` or ``package.module.function``."""
    module, sep, function = path.partition(":")
    if not sep:
        module, _, function = path.rpartition(".")
    if not module or not function:
        raise ConfigError(f"{key}={path}: expected package.module.function")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise ConfigError(
                f"{key}={path}: no module {exc.name!r} found; is its package on PYTHONPATH (or installed)?"
            ) from None
        raise  # the module exists but an import inside it failed: a bug, keep the traceback
    if not callable(getattr(loaded, function, None)):
        raise ConfigError(f"{key}={path}: {module} has no function {function!r}")
    return getattr(loaded, function)


def _as_dict(cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is optional for callers passing plain dicts
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"dataset config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def build_data(
    cfg_dataset: Mapping[str, Any],
    *,
    data_dir: str | Path,
    seed: int,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
) -> DataBundle:
    """Build the train/val/test loaders of one data set.

    Args:
        cfg_dataset: The contents of one ``conf/dataset/<name>.yaml`` (DictConfig or
            mapping); keys a builder does not use are ignored. Its ``name`` selects a registered
            builder (:func:`register_dataset`), unless it has a ``builder`` key: the import path of the
            builder function (``package.module.function``), which is then used under any name.
        data_dir: Root folder of all data sets.
        seed: Run seed: drives the train order and augmentation (held-out splits use
            the config's fixed ``split_seed``).
        device: Where batches are delivered (in-memory sets are stored there).
        image_size: Final image size; images of another native size are resized
            (bilinear). Ignored for sequence sets.

    Returns:
        The `DataBundle`.

    Raises:
        ConfigError: Unknown data set name (the message lists the valid ones), or a ``builder`` that
            cannot be imported.
        DatasetNotFoundError: The data set's files are missing under ``data_dir``.
    """
    cfg = _as_dict(cfg_dataset)
    name = cfg.get("name")
    if cfg.get("builder") is not None:
        builder = _import_builder(str(cfg["builder"]), "dataset.builder")
    elif name in _BUILDERS:
        entry = _BUILDERS[name]
        builder = _import_builder(entry, f"dataset {name!r}") if isinstance(entry, str) else entry
    else:
        raise ConfigError(
            f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())} (a data set of one's own: "
            "common.data.register_dataset, or the key builder: package.module.function in its dataset config)"
        )
    ctx = BuildContext(
        cfg=cfg,
        data_dir=Path(data_dir).expanduser(),
        seed=int(seed),
        device=torch.device(device),
        image_size=None if image_size is None else int(image_size),
    )
    bundle = builder(ctx)
    if not isinstance(bundle, DataBundle):
        raise TypeError(f"the builder of dataset {name!r} returned {type(bundle).__name__}, not a DataBundle")
    declared = cfg.get("num_classes")
    if declared is not None and int(declared) != bundle.num_classes:
        log.warning("%s: config says num_classes=%s but the data give %d", name, declared, bundle.num_classes)
    return bundle
