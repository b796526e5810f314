"""Tests for `common.models`: every registered network builds, trains, decomposes into blocks, and has a config."""

from __future__ import annotations

import pathlib

import hydra.utils
import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from common.models import (
    NetworkInfo,
    available_models,
    build_model,
    builder_kwargs,
    count_parameters,
    network_info,
)

CONF_DIR = pathlib.Path(__file__).resolve().parents[2] / "conf" / "network"

ALL = available_models()
CONFIG_NAMES = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
IMAGE_NETS = [n for n in ALL if network_info(n).input_kind == "image"]
IMAGENET_NETS = [n for n in ALL if n.endswith("_imagenet")]

# The defaults of these two cost several GFLOPs per image; forward/backward tests use narrow variants and
# the default configuration is built (not run) in `test_parameter_counts_match_literature`.
FAST_KWARGS: dict[str, dict] = {
    "resnext29": {"cardinality": 2, "bottleneck_width": 4},
    "wrn28_10": {"depth": 10, "widen_factor": 2},
}
# ImageNet nets pool adaptively, so 64x64 is a valid (and much cheaper) input; one runs at full size.
RUN_SIZE = {n: 64 for n in IMAGENET_NETS} | {"resnet18_imagenet": 224}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # On a small, shared machine, intra-op threads that wait for each other while another process holds a
    # core make these many small forwards ~10x slower; one thread is fast and predictable either way.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _input(name: str, batch: int = 2, in_channels: int = 3, size: int | None = None) -> torch.Tensor:
    info = network_info(name)
    if info.input_kind == "sequence":
        return torch.randn(batch, info.default_input_size, in_channels)
    side = size or RUN_SIZE.get(name, info.default_input_size)
    return torch.randn(batch, in_channels, side, side)


def _build(name: str, num_classes: int = 10, in_channels: int = 3, size: int | None = None) -> nn.Module:
    info = network_info(name)
    side = size or RUN_SIZE.get(name, info.default_input_size)
    return build_model(name, num_classes, in_channels, image_size=side, **FAST_KWARGS.get(name, {}))


def test_network_info() -> None:
    info = network_info("resnet18")
    assert info == NetworkInfo("resnet18", "image", 32, 32)
    with pytest.raises(AttributeError):
        info.name = "other"  # type: ignore[misc]
    assert network_info("mlp").min_input_size is None
    assert network_info("lstm").input_kind == "sequence"
    assert network_info("resnet50_imagenet").default_input_size == 224
    for name in ALL:
        assert network_info(name).input_kind in ("image", "sequence")


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name: str) -> None:
    num_classes = 7
    model = _build(name, num_classes=num_classes)
    model.train()
    x = _input(name)
    out = model(x)
    assert out.shape == (2, num_classes)
    if network_info(name).input_kind == "sequence":
        loss = nn.functional.mse_loss(out, torch.randn_like(out))
    else:
        loss = nn.functional.cross_entropy(out, torch.tensor([0, num_classes - 1]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.requires_grad, pname
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_blocks_compose_to_forward(name: str) -> None:
    # Composition does not depend on the input size, so the ImageNet nets use their 32x32 minimum here.
    size = 32 if name in IMAGENET_NETS else None
    model = _build(name, size=size).eval()
    blocks = model.blocks()
    assert len(blocks) >= 2 and all(isinstance(b, nn.Module) for b in blocks)
    # Every parameter belongs to exactly one block: blocks cover the whole net without overlap.
    block_params = [id(p) for b in blocks for p in b.parameters()]
    assert len(block_params) == len(set(block_params))
    assert set(block_params) == {id(p) for p in model.parameters()}
    x = _input(name, size=size)
    with torch.no_grad():
        expected = model(x.clone())
        out = x.clone()
        for block in blocks:
            out = block(out)
    assert out.shape == expected.shape
    assert torch.equal(out, expected) or torch.allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_one_channel_hundred_classes(name: str) -> None:
    # 32x32 is every image net's minimum; the MLP uses its 28x28 default.
    size = None if name == "mlp" else 32
    model = _build(name, num_classes=100, in_channels=1, size=size).eval()
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        assert first_conv.in_channels == 1
    with torch.no_grad():
        out = model(_input(name, in_channels=1, size=size))
    assert out.shape == (2, 100)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="Unknown network 'foo'") as err:
        build_model("foo", 10, 3)
    message = str(err.value)
    assert "Valid networks:" in message
    assert all(name in message for name in ALL)
    with pytest.raises(ValueError, match="Unknown network"):
        network_info("foo")


def test_wrong_input_kind() -> None:
    with pytest.raises(ValueError, match="input_kind='sequence'"):
        build_model("resnet18", 10, 3, image_size=32, input_kind="sequence")
    with pytest.raises(ValueError, match="'sequence' inputs"):
        build_model("lstm", 1, 4, input_kind="image")


def test_image_size_below_minimum() -> None:
    with pytest.raises(ValueError, match=r"image_size=28 .*'lenet5'.* 32"):
        build_model("lenet5", 10, 1, image_size=28)
    with pytest.raises(ValueError, match="min_input_size=16"):
        build_model("vgg11", 10, 3, image_size=32, min_input_size=16)
    # Metadata that agrees with the registry is accepted.
    build_model("vgg11", 10, 3, image_size=32, input_kind="image", min_input_size=32)
    build_model("mlp", 10, 1, image_size=8, input_kind="image", min_input_size=None)


def test_unexpected_kwarg_is_named() -> None:
    with pytest.raises(TypeError, match="widht_mult"):
        build_model("vgg11", 10, 3, image_size=32, widht_mult=0.5)
    with pytest.raises(TypeError, match="hidden"):
        build_model("resnet18_imagenet", 10, 3, image_size=224, hidden=(3,))


def test_mlp_needs_image_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_model("mlp", 10, 1)


def test_builder_kwargs_take_effect() -> None:
    mlp = build_model("mlp", 10, 1, image_size=8, hidden=OmegaConf.create([32, 16]), dropout=0.1)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]
    assert mlp.blocks()[0][0].__class__ is nn.Flatten
    vgg = build_model("vgg16_bn", 10, 3, image_size=32, width_mult=0.25)
    assert vgg.head.fc.in_features == 128
    assert len(vgg.blocks()) == 13 + 1
    resnext = build_model("resnext29", 10, 3, image_size=32, cardinality=4, bottleneck_width=8)
    grouped = resnext.stage1[0].conv2
    assert grouped.groups == 4 and grouped.in_channels == 32
    wrn = build_model("wrn28_10", 10, 3, image_size=32, depth=16, widen_factor=4)
    assert len(wrn.blocks()) == 1 + 3 * 2 + 1
    lstm = build_model("lstm", 3, 5, hidden_size=8, num_layers=1)
    assert lstm(torch.randn(4, 11, 5)).shape == (4, 3)
    alex = build_model("alexnet_small", 10, 3, image_size=32)
    assert [c.out_channels for c in alex.modules() if isinstance(c, nn.Conv2d)] == [64, 192, 384, 256, 256]


def test_block_counts_follow_architecture() -> None:
    # stem + residual blocks + head
    assert len(build_model("resnet18", 10, 3).blocks()) == 1 + 8 + 1
    assert len(build_model("resnet34", 10, 3).blocks()) == 1 + 16 + 1
    # stem + 13 depthwise-separable blocks + head
    assert len(build_model("mobilenet_v1", 10, 3, width_mult=0.25).blocks()) == 15
    # stem, 3 dense blocks, 2 transitions, head
    assert len(build_model("densenet_bc100", 10, 3, depth=22).blocks()) == 7
    # 5 convs + 3 fc / 2 convs + 3 fc
    assert len(build_model("alexnet_small", 10, 3).blocks()) == 8
    assert len(build_model("lenet5", 10, 1).blocks()) == 5


def test_torchvision_wrappers_keep_torchvision_keys() -> None:
    model = build_model("resnet18_imagenet", 1000, 3, image_size=224)
    reference = torchvision.models.resnet18(weights=None)
    assert isinstance(model, torchvision.models.ResNet)
    model.blocks()  # must not register anything new
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())  # strict by default

    dense = build_model("densenet121_imagenet", 10, 1, image_size=32)
    assert isinstance(dense, torchvision.models.DenseNet)
    assert dense.features.conv0.in_channels == 1
    assert "features.conv0.weight" in dense.state_dict() and "classifier.weight" in dense.state_dict()


# Parameter counts (num_classes, exact count measured here, literature value it matches).
PARAMETER_COUNTS = {
    "resnet18": (10, 11_173_962),  # CIFAR ResNet-18: ~11.17M
    "resnet50_imagenet": (1000, 25_557_032),  # torchvision's documented count
    "mobilenet_v1_imagenet": (1000, 4_231_976),  # Howard et al.: 4.2M
    "densenet_bc100": (10, 769_162),  # Huang et al.: 0.8M
    "wrn28_10": (10, 36_479_194),  # Zagoruyko & Komodakis: 36.5M
    "resnext29": (10, 34_426_698),  # Xie et al., 8x64d: 34.4M
    "vgg16": (10, 14_719_818),  # CIFAR VGG-16 with a single linear classifier: ~14.7M
}


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_counts_match_literature(name: str) -> None:
    num_classes, expected = PARAMETER_COUNTS[name]
    model = build_model(name, num_classes, 3)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=True) == expected


def test_every_registered_network_has_a_config() -> None:
    assert ALL and CONFIG_NAMES
    missing = [name for name in ALL if not (CONF_DIR / f"{name}.yaml").exists()]
    assert not missing, f"registered networks without a conf/network/<name>.yaml: {missing}"


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_instantiates(name: str) -> None:
    # every config file names a registered network after its own file stem and matches its registry entry
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    assert cfg._target_ == "common.models.build_model"
    assert cfg.name == name
    assert name in ALL, f"conf/network/{name}.yaml names a network the registry does not have"
    info = network_info(name)
    assert cfg.input_kind == info.input_kind
    assert cfg.min_input_size == info.min_input_size
    # The builder's arguments are spelled out with their defaults.
    standard = {
        "_target_",
        "name",
        "num_classes",
        "in_channels",
        "image_size",
        "input_kind",
        "min_input_size",
    }
    extra = {k: v for k, v in OmegaConf.to_container(cfg).items() if k not in standard}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in builder_kwargs(name).items()}
    assert extra == defaults

    dataset = {"num_classes": 10, "in_channels": 3}
    if info.input_kind == "image":
        dataset["image_size"] = max(32, info.min_input_size or 0)
    root = OmegaConf.create({"dataset": dataset, "network": cfg})
    # Narrow the two expensive defaults so this test only checks the wiring.
    for key, value in FAST_KWARGS.get(name, {}).items():
        root.network[key] = value
    model = hydra.utils.instantiate(root.network)
    assert isinstance(model, nn.Module) and callable(model.blocks)
    if name in ("mlp", "lenet5", "densenet_bc100", "lstm"):
        with torch.no_grad():
            out = model.eval()(_input(name, size=32))
        assert out.shape == (2, 10)


def test_resnet_width_scales_every_stage():
    from common.models import build_model

    narrow = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, width=16)
    full = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    assert [narrow.stem.conv.out_channels, narrow.layer4[0].conv1.out_channels] == [16, 128]
    assert [full.stem.conv.out_channels, full.layer4[0].conv1.out_channels] == [64, 512]
    # the convolutions hold ~all weights: a quarter of the width is ~1/16 of the parameters
    ratio = sum(p.numel() for p in narrow.parameters()) / sum(p.numel() for p in full.parameters())
    assert 1 / 17 < ratio < 1 / 15
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18_imagenet", "resnet50_imagenet"])
def test_imagenet_resnets_start_each_residual_branch_at_zero_and_stay_finite_in_eval(name: str) -> None:
    # With torchvision's default init, three SGD steps at lr 0.1 (batch 8) leave eval-mode outputs that
    # overflow (validation loss 1.5e5 for ResNet-18, 6e23 for ResNet-50, nan for ResNet-101/152): a
    # debug=fast run of ECC then pruned a net of nans. Zero-init residual branches keep them finite.
    model = build_model(name, 10, 1, image_size=32)
    last_bns = [
        b.bn3 if hasattr(b, "bn3") else b.bn2 for layer in (model.layer1, model.layer4) for b in layer
    ]
    assert all(float(bn.weight.detach().abs().max()) == 0.0 for bn in last_bns)
    x, y = torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(3):
        loss = nn.functional.cross_entropy(model(x[step * 8 : step * 8 + 8]), y[step * 8 : step * 8 + 8])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        val_loss = nn.functional.cross_entropy(model.eval()(x), y)
    assert float(val_loss) < 20.0
    # the option turns it off: torchvision's own initialisation
    plain = build_model(name, 10, 1, image_size=32, zero_init_residual=False)
    assert float(plain.layer1[0].bn2.weight.detach().min()) == 1.0
