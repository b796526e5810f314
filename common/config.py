"""Config helpers: the OmegaConf resolvers of ``conf/``, the schema of ``cfg.trainer``, config validation.

The resolvers are registered when this module is imported (``launch`` and the test fixtures import it), so
``${lt.repo_root:}`` and friends resolve in every composed config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


class ConfigError(ValueError):
    """A config value has the wrong type or the combination cannot run; the message names the key."""


def _int_mul(value: Any, factor: Any) -> int:
    # used for schedule milestones given as fractions of the number of epochs
    return int(math.floor(float(value) * float(factor)))


def register_resolvers() -> None:
    """Register the ``lt.*`` resolvers (idempotent)."""
    for name, fn in {
        "lt.repo_root": lambda: str(REPO_ROOT),
        "lt.int_mul": _int_mul,
        "lt.max": lambda a, b: max(a, b),
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as exc:  # an interpolation that does not resolve, a missing value
        raise ConfigError(f"{key}: {exc}") from None


def _check_int(key: str, value: Any, minimum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    # numbers.Integral: numpy integers too, for callers of the Python API
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{key} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _check_number(key: str, value: Any, minimum: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        allowed = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _setting(
    default: Any = dataclasses.MISSING, *, ge: float | None = None, choices: tuple[str, ...] = ()
) -> Any:
    """A settings field with its lower bound (``ge``) or its allowed values (``choices``)."""
    meta: dict[str, Any] = {}
    if ge is not None:
        meta["ge"] = ge
    if choices:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


def _check_fields(obj: Any, prefix: str) -> None:
    """Check every field of the dataclass ``obj`` against its type and its ``_setting`` metadata."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value, hint = f"{prefix}.{f.name}", getattr(obj, f.name), hints[f.name]
        optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
        base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
        if base is bool:
            _check_bool(key, value)
        elif base is int:
            _check_int(key, value, f.metadata.get("ge"), optional)
        elif base is float:
            _check_number(key, value, f.metadata.get("ge"), optional)
        elif "choices" in f.metadata:
            _check_choice(key, value, f.metadata["choices"])


@dataclass(frozen=True, kw_only=True)
class TrainerOptions:
    """The settings of one :class:`common.engine.Trainer` phase (the ``conf/trainer`` keys its loop reads).

    Built from the config with :meth:`from_config` (``TrainerOptions.from_config(cfg.trainer)``) or by hand
    (``TrainerOptions(epochs=3)``: the defaults below are the Trainer's, not ``conf/trainer``'s); a changed
    copy with :meth:`replace`. A value of the wrong type or out of range raises :class:`ConfigError` naming
    ``trainer.<key>``.

    Attributes:
        epochs: number of epochs of the phase.
        amp: mixed precision (fp16 + GradScaler or bf16 on CUDA; bf16 on CPU).
        amp_dtype: ``float16`` or ``bfloat16``.
        grad_clip: clip the global gradient norm to this value; None: no clipping.
        label_smoothing: of the default cross-entropy loss (a method's own ``loss_fn`` ignores it).
        log_every_steps: log the running training loss every this many steps.
        checkpoint_every_min: checkpoint inside an epoch every this many minutes (0: never by time).
        checkpoint_every_steps: checkpoint inside an epoch every this many steps; None: never by steps.
        checkpoint_min_interval_s: skip an epoch-end checkpoint when the last one is younger (the last epoch
            always saves).
        limit_train_batches: train on at most this many batches per epoch; None: whole epochs.
        limit_eval_batches: evaluate on at most this many batches; None: whole splits.
        eval_every_epochs: validate every this many epochs (and after the last).
        resume: continue from the phase's checkpoint when the output folder holds one.
        select: which weights are tested at the end: ``last`` (the final ones) or ``best_val`` (those of the
            epoch with the best validation accuracy, or the lowest validation loss for regression).
    """

    epochs: int = _setting(ge=0)
    amp: bool = False
    amp_dtype: str = _setting("float16", choices=("float16", "bfloat16"))
    grad_clip: float | None = _setting(None, ge=0)
    label_smoothing: float = _setting(0.0, ge=0)
    log_every_steps: int = _setting(50, ge=1)
    checkpoint_every_min: float = _setting(10.0, ge=0)
    checkpoint_every_steps: int | None = _setting(None, ge=1)
    checkpoint_min_interval_s: float = _setting(0.0, ge=0)
    limit_train_batches: int | None = _setting(None, ge=1)
    limit_eval_batches: int | None = _setting(None, ge=1)
    eval_every_epochs: int = _setting(1, ge=1)
    resume: bool = True
    select: str = _setting("last", choices=("last", "best_val"))

    def __post_init__(self) -> None:
        _check_fields(self, "trainer")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, trainer: Mapping[str, Any], **overrides: Any) -> TrainerOptions:
        """The options in ``trainer`` (``cfg.trainer``; other keys are ignored), ``overrides`` replacing some.

        A key ``trainer`` lacks keeps its default here (``epochs`` has none). An override that is not an
        option raises :class:`TypeError` naming it.
        """
        cls._check_names(overrides)
        values = {name: trainer[name] for name in cls.names() if name in trainer}
        return cls(**{**values, **overrides})

    def replace(self, **overrides: Any) -> TrainerOptions:
        """A copy with ``overrides`` (option names) changed; an unknown name raises :class:`TypeError`."""
        self._check_names(overrides)
        return dataclasses.replace(self, **overrides)

    @classmethod
    def _check_names(cls, overrides: Mapping[str, Any]) -> None:
        unknown = [k for k in overrides if k not in cls.names()]
        if unknown:
            raise TypeError(f"{cls.__name__} has no option {unknown[0]!r}; options: {', '.join(cls.names())}")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(TrainerOptions):
    """The schema of ``cfg.trainer`` (``conf/trainer/*.yaml``): the Trainer's options and the run's settings.

    The values live in the yaml; :func:`validate` checks them and refuses a key the schema lacks (a misspelt
    ``+trainer.epoch=5``).

    Attributes:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        distributed: data-parallel over the processes the launcher starts (DDP).
        deterministic: ``torch.use_deterministic_algorithms`` and deterministic cuDNN.
        threads: CPU threads for torch; None: torch's default.
        progress: progress bars (only ever shown on a terminal).
    """

    # no defaults: the values are written once, in the yaml
    device: str = _setting()
    distributed: bool = _setting()
    deterministic: bool = _setting()
    threads: int | None = _setting(ge=1)
    progress: bool = _setting()

    def __post_init__(self) -> None:
        super().__post_init__()
        device = str(self.device)
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(f"trainer.device must be auto, cpu, cuda or cuda:N, got {device!r}")


def _validate_trainer(cfg: DictConfig) -> None:
    trainer = _get(cfg, "trainer")
    names = [f.name for f in dataclasses.fields(TrainerConfig)]
    for key in trainer if isinstance(trainer, Mapping) else ():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(f"trainer.{key} is not a trainer setting{hint}; see conf/trainer/default.yaml")
    TrainerConfig(**{name: _get(cfg, f"trainer.{name}") for name in names})


def validate(cfg: DictConfig) -> None:
    """Check the keys every method reads; raise :class:`ConfigError` naming the first bad key.

    Hydra already rejects unknown group options (with the list of valid ones); this catches keys that
    ``cfg.trainer`` does not have (``+trainer.epoch=5``), wrong value types (``trainer.epochs=abc``) and
    combinations that cannot run (an LSTM on images). ``cfg.method`` is checked by its plugin's schema
    (:func:`common.method.configure_method`).
    """
    _check_int("seed", _get(cfg, "seed"))
    _validate_trainer(cfg)
    _check_int("dataset.batch_size", _get(cfg, "dataset.batch_size"), minimum=1)
    _check_int("dataset.eval_batch_size", _get(cfg, "dataset.eval_batch_size"), minimum=1)
    if "lr" in cfg.optimizer:
        _check_number("optimizer.lr", _get(cfg, "optimizer.lr"), minimum=0)
    net_kind = _get(cfg, "network.input_kind")
    data_kind = _get(cfg, "dataset.kind")
    if net_kind is not None and data_kind is not None and net_kind != data_kind:
        raise ConfigError(
            f"network={cfg.network.name} takes {net_kind} inputs but dataset={cfg.dataset.name} "
            f"holds {data_kind} data: pick a matching network or dataset"
        )
    backend = _get(cfg, "logger.backend")
    if backend not in ("none", "wandb"):
        raise ConfigError(f"logger.backend must be none or wandb, got {backend!r}")
