"""The method plugin contract (common.method): loading a plugin, the schema's type/choice/range checks."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from common.config import ConfigError
from common.method import (
    Method,
    MethodConfig,
    configure_method,
    is_image_network,
    load_method,
    network_input_kind,
    network_names,
    option,
)
from common.models import available_models, network_info


def _run(cfg, ctx):  # pragma: no cover - never run here
    return {}


def _cfg(**method):
    base = {
        "name": "toy",
        "plugin": "tests.common.test_method:TOY",
        "rate": 0.5,
        "kind": "x",
        "names": ["a"],
        "cap": None,
    }
    base.update(method)
    return OmegaConf.create({"method": base, "network": {"name": "mlp"}})


@dataclass
class FlatConfig(MethodConfig):
    rate: float = option(gt=0, lt=1)
    kind: str = option(choices=("x", "y"))
    names: list[str] = option(choices=("a", "b"))
    cap: int | None = option(ge=0, le=5)
    flag: bool = option(default=False)

    def check(self, cfg):
        if self.kind == "y" and self.cap is None:
            raise ConfigError("method.kind=y needs method.cap")


TOY = Method(
    name="toy", schema=FlatConfig, run=_run, supports=lambda n: n.startswith("m"), supports_doc="m-nets"
)


def test_valid_options_are_typed_and_replace_cfg_method():
    cfg = _cfg(rate="0.25", cap="3")  # strings from the command line are converted to the field's type
    assert configure_method(cfg) is TOY
    assert cfg.method.rate == 0.25 and cfg.method.cap == 3 and isinstance(cfg.method.cap, int)
    with pytest.raises(Exception):  # noqa: B017 - a structured config refuses unknown keys afterwards too
        cfg.method.extra = 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rate": 1.0}, "method.rate must be in (0, 1); got 1.0"),
        ({"rate": 0}, "method.rate must be in (0, 1); got 0.0"),
        ({"kind": "z"}, "method.kind must be one of x, y; got 'z'"),
        ({"names": ["a", "c"]}, "method.names must be one of a, b; got 'c'"),
        ({"cap": 6}, "method.cap must be in [0, 5]; got 6"),
        (
            {"cap": "many"},
            "method.cap: Value 'many' of type 'str' could not be converted to Integer (method=toy)",
        ),
        ({"typo": 1}, "method.typo: Key 'typo' not in 'FlatConfig' (method=toy)"),
        ({"kind": "y"}, "method.kind=y needs method.cap"),
        ({"rate": "???"}, "method.rate has no value (method=toy); set it in the yaml"),
        ({"flag": 2}, "method.flag must be true or false; got 2"),
    ],
)
def test_bad_options_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as info:
        configure_method(_cfg(**override))
    assert str(info.value) == message and "\n" not in str(info.value)


def test_a_network_the_method_does_not_support_lists_the_ones_it_does():
    cfg = _cfg()
    cfg.network.name = "lenet5"
    with pytest.raises(ConfigError) as info:
        configure_method(cfg)
    accepted = [n for n in network_names() if n.startswith("m")]
    assert (
        str(info.value)
        == f"method=toy does not work with network=lenet5 (m-nets); supported: {', '.join(accepted)}"
    )
    assert accepted and "mlp" in accepted


def test_load_method_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="must be <module>:<attribute>"):
        load_method("tests.common.test_method")
    with pytest.raises(ConfigError, match="no module named 'no_such_pkg'"):
        load_method("no_such_pkg.task:METHOD")
    with pytest.raises(ConfigError, match="has no Method named 'NOPE'"):
        load_method("tests.common.test_method:NOPE")
    # a bug inside a method's module is not a config error: its own exception and traceback come through
    pkg = tmp_path / "buggy_method"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text("import no_such_dependency_xyz\n")
    (pkg / "other.py").write_text("raise RuntimeError('bug at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_method("buggy_method.task:METHOD")
    with pytest.raises(RuntimeError, match="bug at import"):
        load_method("buggy_method.other:METHOD")
    for name in ("buggy_method", "buggy_method.task", "buggy_method.other"):
        sys.modules.pop(name, None)


def test_a_schema_must_derive_from_method_config():
    @dataclass
    class NotASchema:
        x: int = 1

    with pytest.raises(TypeError, match="deriving from MethodConfig"):
        Method(name="bad", schema=NotASchema, run=_run)  # type: ignore[arg-type]


def test_every_method_yaml_passes_its_schema(tmp_path):
    """Each conf/method/*.yaml names a plugin whose schema accepts the yaml's own values, on a network it supports."""
    from common.config import CONF_DIR
    from tests.conftest import compose_config

    names = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    assert "train" in names
    for name in names:
        cfg = compose_config(f"method={name}", output_dir=tmp_path / name)
        method = load_method(cfg.method.plugin)
        assert method.name == name == cfg.method.name
        supported = [n for n in network_names() if method.supports is None or method.supports(n)]
        assert supported, name
        if cfg.network.name not in supported:
            cfg = compose_config(f"method={name}", f"network={supported[0]}", output_dir=tmp_path / name)
        assert configure_method(cfg) is method


def test_network_input_kind_reads_the_yaml_and_agrees_with_the_registry():
    kinds = {name: network_input_kind(name) for name in network_names()}
    assert set(kinds.values()) == {"image", "sequence"}
    for name, kind in kinds.items():
        if name in available_models():
            assert kind == network_info(name).input_kind, name
        assert is_image_network(name) == (kind == "image")
    assert network_input_kind("no_such_net") is None and not is_image_network("no_such_net")
