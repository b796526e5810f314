"""The method plugin contract: what ``launch`` needs from a method, and the typed check of its options.

A method package exports one :class:`Method` from its ``task.py``; ``conf/method/<name>.yaml`` names it with
``plugin: <module>:<attribute>`` and holds the option values (the defaults a user sees and overrides). The
plugin's ``schema`` is a dataclass deriving from :class:`MethodConfig`: it gives each option its type, its
allowed values or range (:func:`option`), and the checks between options (:meth:`MethodConfig.check`). Types,
allowed values and ranges are written once there; values once in the yaml.

``launch`` imports no method package: :func:`load_method` imports the module the config names, and
:func:`configure_method` checks ``cfg.method`` against the schema before the run folder is touched or any data
is loaded, raising the one-line :class:`~common.config.ConfigError` on the first bad key. A sixth method is one
package, one ``conf/method/*.yaml`` and one test folder; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from common.config import CONF_DIR, ConfigError

if TYPE_CHECKING:
    from common.engine import RunContext

__all__ = [
    "Method",
    "MethodConfig",
    "option",
    "load_method",
    "configure_method",
    "network_names",
]


def option(
    default: Any = MISSING,
    *,
    choices: Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A schema field with its allowed values (``choices``) or its range (``ge``/``gt``/``le``/``lt``).

    The value itself comes from the method's yaml; ``default`` is only for options a yaml may leave out.
    ``None`` passes the range and choice checks when the field's type is Optional (``int | None``).
    """
    meta = {k: v for k, v in dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _describe_range(meta: Mapping[str, Any]) -> str:
    lo = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}" if "gt" in meta else "(-inf"
    hi = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})" if "lt" in meta else "inf)"
    return f"in {lo}, {hi}"


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    if "choices" in meta:
        # a list option (e.g. ecco_robustness's optimizers) has its choices per element
        items = value if isinstance(value, list | tuple) else [value]
        bad = [v for v in items if v not in meta["choices"]]
        if bad:
            allowed = ", ".join(str(c) for c in meta["choices"])
            raise ConfigError(f"{key} must be one of {allowed}; got {bad[0]!r}")
    bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt") if k in meta}
    if not bounds:
        return
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            raise ConfigError(f"{key} must be a number {_describe_range(bounds)}; got {value!r}")
        ok = (
            ("ge" not in bounds or v >= bounds["ge"])
            and ("gt" not in bounds or v > bounds["gt"])
            and ("le" not in bounds or v <= bounds["le"])
            and ("lt" not in bounds or v < bounds["lt"])
        )
        if not ok:
            raise ConfigError(f"{key} must be {_describe_range(bounds)}; got {value!r}")


@dataclass
class MethodConfig:
    """The keys every method's config has. A method's schema derives from this and adds its options.

    Attributes:
        name: the method's name (``method=<name>`` on the command line; the yaml's file name).
        plugin: ``<module>:<attribute>`` of the :class:`Method` object, e.g. ``ecc.task:METHOD``.
    """

    name: str = MISSING
    plugin: str = MISSING

    def check(self, cfg: DictConfig) -> None:
        """Checks that involve several options (or the rest of ``cfg``); raise :class:`ConfigError`.

        Called after every field passed its own type, choice and range check. The default checks nothing.
        """


@dataclass(frozen=True)
class Method:
    """A method plugin.

    Attributes:
        name: the method's name, as in ``conf/method/<name>.yaml``.
        schema: the dataclass (a :class:`MethodConfig`) that types and bounds ``cfg.method``.
        run: ``run(cfg, ctx) -> dict`` of final metrics; ``cfg.method`` has been checked against ``schema``.
        supports: ``supports(network_name) -> bool``; None: every network. A network it refuses is a
            one-line config error listing the ones it accepts.
        supports_doc: what ``supports`` accepts, in words, for that error line (e.g. "nets with channels").
        sweep_artifacts: ``sweep_artifacts(sweep_dir) -> list[Path]``, files drawn from a finished sweep that
            holds runs of this method (plots, tables); None: none.
    """

    name: str
    schema: type[MethodConfig]
    run: Callable[[DictConfig, RunContext], Mapping[str, Any]]
    supports: Callable[[str], bool] | None = None
    supports_doc: str = ""
    sweep_artifacts: Callable[[Path], list[Path]] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.schema, type) and issubclass(self.schema, MethodConfig)):
            raise TypeError(f"Method {self.name!r}: schema must be a dataclass deriving from MethodConfig")


def network_names() -> list[str]:
    """The ``network=`` choices: the stems of ``conf/network/*.yaml``."""
    return sorted(p.stem for p in (CONF_DIR / "network").glob("*.yaml"))


def network_input_kind(network: str) -> str | None:
    """``input_kind`` of ``conf/network/<network>.yaml`` ("image" or "sequence"); None for a name without one.

    The yaml is what ``network=`` composes, and ``build_model`` checks it against the registry, so the methods'
    ``supports`` read it here rather than each keeping its own list.
    """
    path = CONF_DIR / "network" / f"{network}.yaml"
    if not path.is_file():
        return None
    kind = OmegaConf.load(path).get("input_kind")
    return None if kind is None else str(kind)


def is_image_network(network: str) -> bool:
    """Whether ``network`` takes images ``(N, C, H, W)`` (every network here but the sequence nets)."""
    return network_input_kind(network) == "image"


def load_method(plugin: str) -> Method:
    """Import ``<module>:<attribute>`` and return the :class:`Method` it names.

    A module that does not exist is a :class:`ConfigError` (a typo in the yaml); any other error raised while
    importing it is a bug in the method and propagates with its traceback.
    """
    module_name, sep, attr = str(plugin).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"method.plugin must be <module>:<attribute>, e.g. ecc.task:METHOD; got {plugin!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the plugin's own module (or a parent package) missing is the user's error
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"method.plugin: no module named {exc.name!r} (from {plugin!r})") from None
        raise
    method = getattr(module, attr, None)
    if not isinstance(method, Method):
        raise ConfigError(f"method.plugin: {module_name} has no Method named {attr!r}")
    return method


def _one_line(exc: OmegaConfBaseException) -> str:
    msg = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    return msg.strip()


def _checked_fields(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata:
            _check_value(f"{prefix}.{f.name}", value, f.metadata)
        if dataclasses.is_dataclass(value):
            _checked_fields(value, f"{prefix}.{f.name}")


def _strict_bools(schema: type, values: Any, prefix: str) -> None:
    """OmegaConf turns any int into a bool (``2`` -> True); a bool option must be given as true or false."""
    if not isinstance(values, dict):
        return
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in values:
            continue
        raw, hint = values[f.name], hints.get(f.name)
        if hint is bool and not (isinstance(raw, bool) or str(raw).lower() in ("true", "false")):
            raise ConfigError(f"{prefix}.{f.name} must be true or false; got {raw!r}")
        if dataclasses.is_dataclass(hint):
            _strict_bools(hint, raw, f"{prefix}.{f.name}")  # type: ignore[arg-type]


def configure_method(cfg: DictConfig) -> Method:
    """Find ``cfg.method``'s plugin, check ``cfg.method`` against its schema, return the plugin.

    On success ``cfg.method`` is replaced by the typed node (types converted: ``"3"`` for an int option becomes
    ``3``; interpolations kept), so a method reads typed options. Raises :class:`ConfigError` with one line naming
    the key: an unknown key (a misspelt ``+method.x``), a wrong type, a value outside its choices or range,
    a combination the schema's ``check`` refuses, or a network the method does not support.
    """
    if "method" not in cfg or not isinstance(cfg.method, DictConfig):
        raise ConfigError("method: no method selected (method=train, method=ecc, ...)")
    method = load_method(OmegaConf.select(cfg, "method.plugin", default=""))
    try:
        values = OmegaConf.to_container(cfg.method, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"method.{getattr(exc, 'key', '')}: {_one_line(exc)}") from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(method.schema), values)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
        raise ConfigError(f"method.{key}: {_one_line(exc)} (method={method.name})") from None
    _strict_bools(method.schema, values, "method")
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"method.{missing[0]} has no value (method={method.name}); set it in the yaml")
    obj = OmegaConf.to_object(merged)
    _checked_fields(obj, "method")
    obj.check(cfg)  # type: ignore[union-attr]
    network = OmegaConf.select(cfg, "network.name", default=None)
    if method.supports is not None and network is not None and not method.supports(str(network)):
        accepted = [n for n in network_names() if method.supports(n)]
        what = f" ({method.supports_doc})" if method.supports_doc else ""
        raise ConfigError(
            f"method={method.name} does not work with network={network}{what}; supported: {', '.join(accepted)}"
        )
    # cfg.method becomes the typed node; interpolations (``${trainer.epochs}``) are kept, so that the folder's
    # record shows where a value came from and a key derived from another follows it
    typed = OmegaConf.merge(OmegaConf.structured(method.schema), OmegaConf.to_container(cfg.method))
    with open_dict(cfg):
        cfg.method = typed
    return method
