"""`register_model` / `register_dataset`: the public way to add a network or a data set, and its checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import common.data.registry as data_registry
import common.models.registry as model_registry
from common.config import ConfigError
from common.data import (
    BuildContext,
    DataBundle,
    available_datasets,
    build_data,
    image_bundle,
    register_dataset,
)
from common.models import available_models, build_model, builder_kwargs, network_info, register_model


@pytest.fixture(autouse=True)
def registries(monkeypatch):
    """Copies of the registries for each test: the names registered here do not leak into other tests."""
    monkeypatch.setattr(model_registry, "_REGISTRY", dict(model_registry._REGISTRY))
    monkeypatch.setattr(data_registry, "_BUILDERS", dict(data_registry._BUILDERS))


def build_linear(num_classes: int, in_channels: int, image_size: int, bias: bool = True) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes, bias=bias))


def build_linear_again(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Linear(in_channels, num_classes)


def build_any(num_classes: int, **options) -> nn.Module:
    return nn.Linear(options["in_channels"], num_classes, bias=options.get("bias", True))


def build_checker(ctx: BuildContext) -> DataBundle:
    x = np.zeros((40, 1, 4, 4), dtype=np.float32)
    y = np.arange(40) % 2
    x[y == 1, 0, ::2, ::2] = 1.0
    return image_bundle(ctx, train=(x[:30], y[:30]), test=(x[30:], y[30:]), num_classes=2, input_scale=1.0)


def test_the_shipped_networks_and_data_sets_are_registered_through_the_public_functions():
    # the same names and facts as before the registries became public
    assert {"mlp", "lenet5", "resnet18", "resnet50_imagenet", "lstm"} <= set(available_models())
    assert network_info("lenet5").min_input_size == 32 and network_info("mlp").min_input_size is None
    assert network_info("resnet50_imagenet").default_input_size == 224
    assert network_info("lstm").input_kind == "sequence"
    assert set(available_datasets()) >= {"digits", "synthetic", "mnist", "cifar10", "household_power"}


def test_register_model_then_build_by_name():
    assert register_model("linear_net", build_linear, min_input_size=4, default_input_size=6) is build_linear
    info = network_info("linear_net")
    assert (info.name, info.input_kind, info.min_input_size, info.default_input_size) == (
        "linear_net",
        "image",
        4,
        6,
    )
    assert "linear_net" in available_models()
    assert builder_kwargs("linear_net") == {"bias": True}
    model = build_model("linear_net", num_classes=3, in_channels=2, image_size=5, bias=False)
    assert model(torch.zeros(1, 2, 5, 5)).shape == (1, 3) and model[1].bias is None
    with pytest.raises(ConfigError, match="image_size=3 is smaller than network 'linear_net'"):
        build_model("linear_net", num_classes=3, in_channels=2, image_size=3)
    with pytest.raises(
        TypeError, match=r"Unexpected argument\(s\) widht for network 'linear_net'; it accepts: bias"
    ):
        build_model("linear_net", num_classes=3, in_channels=2, image_size=5, widht=3)


def test_a_builder_with_keyword_options_gets_them_all():
    register_model("any_net", build_any)
    assert builder_kwargs("any_net") == {}
    assert build_model("any_net", num_classes=2, in_channels=3, bias=False).bias is None


def test_register_model_refuses_what_cannot_work():
    register_model("linear_net", build_linear)
    register_model("linear_net", build_linear)  # the same function again (a module imported twice): no-op
    with pytest.raises(ValueError, match=r"network 'linear_net' is already registered \(to .*build_linear\)"):
        register_model("linear_net", build_linear_again)
    with pytest.raises(
        ValueError, match="input_kind of network 'x' must be one of image, sequence, got 'video'"
    ):
        register_model("x", build_linear, input_kind="video")
    with pytest.raises(ValueError, match="min_input_size of network 'x' must be None or a positive integer"):
        register_model("x", build_linear, min_input_size=0)
    with pytest.raises(ValueError, match="default_input_size of network 'x' must be a positive integer"):
        register_model("x", build_linear, default_input_size=2.5)
    with pytest.raises(TypeError, match="builder of network 'x' must take in_channels"):
        register_model("x", lambda num_classes: nn.Linear(1, num_classes))
    with pytest.raises(TypeError, match="must be callable"):
        register_model("x", "not a function")
    with pytest.raises(ValueError, match="non-empty string"):
        register_model("", build_linear)
    assert "x" not in available_models()


def test_a_builder_that_returns_no_module_is_refused():
    register_model("not_a_net", lambda num_classes, in_channels: "a string")
    with pytest.raises(TypeError, match="returned str, not a torch.nn.Module"):
        build_model("not_a_net", num_classes=2, in_channels=1)


def test_unknown_network_lists_the_registered_ones_too():
    register_model("linear_net", build_linear)
    with pytest.raises(ConfigError, match=r"Unknown network 'foo'\. Valid networks: .*linear_net"):
        build_model("foo", 10, 3)


def test_register_dataset_then_build_by_name():
    register_dataset("checker", build_checker)
    assert "checker" in available_datasets()
    bundle = build_data({"name": "checker", "val_size": 10, "batch_size": 5}, data_dir="unused", seed=0)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size, bundle.name) == (2, 1, 4, "checker")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (4, 2, 2)  # eval batch = batch 5
    # the network's minimum input size reaches the builder as ctx.image_size: image_bundle resizes
    assert build_data({"name": "checker"}, data_dir="unused", seed=0, image_size=8).image_size == 8


def test_register_dataset_by_import_path_is_imported_when_first_built():
    register_dataset("checker_lazy", f"{__name__}:build_checker")
    assert build_data({"name": "checker_lazy"}, data_dir="unused", seed=0).num_classes == 2


def test_a_dataset_config_can_name_its_builder_without_registering():
    bundle = build_data(
        {"name": "whatever", "builder": f"{__name__}.build_checker"}, data_dir="unused", seed=0
    )
    assert bundle.num_classes == 2 and "whatever" not in available_datasets()


def test_register_dataset_refuses_what_cannot_work():
    register_dataset("checker", build_checker)
    register_dataset("checker", build_checker)  # again: no-op
    with pytest.raises(ValueError, match=r"dataset 'checker' is already registered \(to .*:build_checker\)"):
        register_dataset("checker", build_linear)
    with pytest.raises(ValueError, match="dataset 'digits' is already registered"):
        register_dataset("digits", build_checker)
    with pytest.raises(TypeError, match="must be a function or 'module:function'"):
        register_dataset("y", "no_colon_here")
    with pytest.raises(TypeError, match="must be callable"):
        register_dataset("y", 3)


def test_a_dataset_builder_that_returns_no_bundle_is_refused():
    register_dataset("not_data", lambda ctx: (1, 2))
    with pytest.raises(TypeError, match="builder of dataset 'not_data' returned tuple, not a DataBundle"):
        build_data({"name": "not_data"}, data_dir="unused", seed=0)


def test_unknown_dataset_is_one_line_listing_names_and_how_to_add_one():
    with pytest.raises(ConfigError) as info:
        build_data({"name": "nope"}, data_dir="unused", seed=0)
    message = str(info.value)
    assert message.startswith("unknown dataset 'nope'; valid names: cifar10, cifar100, digits")
    assert "common.data.register_dataset" in message and "\n" not in message


def test_two_lambdas_are_two_builders():
    register_model("lambda_net", lambda num_classes, in_channels: nn.Linear(in_channels, num_classes))
    with pytest.raises(ValueError, match="already registered"):
        register_model("lambda_net", lambda num_classes, in_channels: nn.Linear(1, num_classes))
    register_dataset("lambda_data", lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("lambda_data", lambda ctx: None)
