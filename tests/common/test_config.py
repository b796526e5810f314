"""Every option of every config group composes under debug=fast, every _target_ instantiates, bad values fail clearly."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from common.config import CONF_DIR, ConfigError, validate
from tests.conftest import compose_config

GROUPS = ["network", "dataset", "optimizer", "scheduler", "trainer", "logger", "paths", "method", "launcher"]
GROUPS += ["experiment", "debug"]

NAMES_OTHER_ISSUES_RELY_ON = {
    "network": "mlp lenet5 alexnet_small vgg11 vgg11_bn vgg16_bn vgg19 vgg19_bn resnet18 resnet34 resnext29 wrn28_10 "
    "densenet_bc100 mobilenet_v1 resnet18_imagenet resnet50_imagenet resnet101_imagenet resnet152_imagenet "
    "densenet121_imagenet lstm",
    "dataset": "digits synthetic mnist cifar10 cifar100 tiny_imagenet imagenet household_power",
    "optimizer": "sgd sgd_momentum adam adamw adagrad rmsprop",
    "scheduler": "none step multistep exponential cosine cosine_restarts",
    "method": "train",
    "launcher": "local",
    "debug": "fast",
    "logger": "none wandb",
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def all_group_options() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group", sorted(NAMES_OTHER_ISSUES_RELY_ON))
def test_required_option_names_exist(group):
    missing = set(NAMES_OTHER_ISSUES_RELY_ON[group].split()) - set(options(group))
    assert not missing, f"conf/{group}/ lacks {sorted(missing)}"


def _matching_dataset(network: str) -> list[str]:
    kind = OmegaConf.load(CONF_DIR / "network" / f"{network}.yaml").get("input_kind", "image")
    return ["dataset=household_power"] if kind == "sequence" else []


@pytest.mark.parametrize(("group", "option"), all_group_options())
def test_every_option_composes_and_resolves(group, option, tmp_path):
    extra = _matching_dataset(option) if group == "network" else []
    if (
        group == "dataset"
        and OmegaConf.load(CONF_DIR / "dataset" / f"{option}.yaml").get("kind") == "sequence"
    ):
        extra = ["network=lstm"]
    cfg = compose_config(f"{group}={option}", *extra, output_dir=tmp_path)
    # everything outside the hydra node resolves (no dangling interpolation)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["trainer"]["epochs"] >= 1
    validate(cfg)


@pytest.mark.parametrize("network", options("network"))
def test_network_target_instantiates(network, tmp_path):
    cfg = compose_config(f"network={network}", *_matching_dataset(network), output_dir=tmp_path)
    size = cfg.dataset.image_size
    if cfg.network.get("min_input_size") and size is not None:
        size = max(size, cfg.network.min_input_size)
    model = instantiate(cfg.network, image_size=size)
    assert isinstance(model, torch.nn.Module)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_targets_instantiate(optimizer, scheduler, tmp_path):
    from common.optim import build_optimizer, build_scheduler

    cfg = compose_config(
        f"optimizer={optimizer}", f"scheduler={scheduler}", "trainer.epochs=12", output_dir=tmp_path
    )
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = build_optimizer(cfg.optimizer, params)
    start_lr = opt.param_groups[0]["lr"]
    if "lr" in cfg.optimizer:
        assert start_lr == cfg.optimizer.lr
    sched = build_scheduler(cfg.scheduler, opt)
    if scheduler == "none":
        assert sched is None
    else:
        params[0].grad = torch.ones(3)
        for _ in range(12):
            opt.step()
            sched.step()
        # every schedule except the restart one ends below its start at the horizon
        if scheduler not in ("cosine_restarts",):
            assert opt.param_groups[0]["lr"] < start_lr


def test_multistep_milestones_follow_epochs(tmp_path):
    cfg = compose_config("scheduler=multistep", "trainer.epochs=200", output_dir=tmp_path)
    assert list(cfg.scheduler.milestones) == [100, 150]


def test_unknown_option_lists_valid_choices(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        compose_config("network=resnet9000", output_dir=tmp_path)
    assert "resnet18" in str(err.value) and "mlp" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.epochs=abc", "trainer.epochs"),
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.amp=maybe", "trainer.amp"),
        ("trainer.device=tpu", "trainer.device"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("seed=1.5", "seed"),
    ],
)
def test_wrong_value_types_name_the_key(override, key, tmp_path):
    cfg = compose_config(override, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_impossible_combination_lstm_on_images(tmp_path):
    cfg = compose_config("network=lstm", "dataset=digits", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="network=lstm takes sequence inputs"):
        validate(cfg)


def test_experiment_overrides_groups(tmp_path):
    cfg = compose_config("experiment=digits_lenet5", output_dir=tmp_path)
    assert cfg.network.name == "lenet5" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.lr == 0.05
