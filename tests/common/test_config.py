"""Every option of every config group composes under debug=fast, every _target_ instantiates, bad values fail clearly."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from common.config import CONF_DIR, REPO_ROOT, ConfigError, TrainerConfig, TrainerOptions, validate
from tests.conftest import compose_config, run_cli

GROUPS = ["network", "dataset", "optimizer", "scheduler", "trainer", "logger", "paths", "method", "launcher"]
GROUPS += ["experiment", "debug"]

DOC_FILES = [REPO_ROOT / "README.md", *REPO_ROOT.glob("*/README.md"), *CONF_DIR.rglob("*.yaml")]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def all_group_options() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS for o in options(g)]


def documented_choices() -> set[tuple[str, str, str]]:
    """(file, group, option) of every group choice the docs and configs name.

    The ``python -m launch ...`` commands of the READMEs and of the config comments, and the ``override
    /group: option`` lines of the experiments: what users copy and what other configs build on. A choice
    whose file the same document writes out (the README's ``# conf/method/mymethod.yaml``) is left out.
    """
    found = set()
    for path in DOC_FILES:
        text = path.read_text()
        shown = set(re.findall(r"^#\s*conf/(\w+)/(\w+)\.yaml\s*$", text, flags=re.MULTILINE))
        for line in text.splitlines():
            if "python -m launch" in line:
                command = line.split("python -m launch", 1)[1].split("#")[0].split("`")[0]
                for group, values in re.findall(r"(?<![\w.+/])(\w+)=([\w,]+)", command):
                    if group in GROUPS:
                        found.update(
                            (path.name, group, v) for v in values.split(",") if (group, v) not in shown
                        )
            override = re.match(r"\s*-\s*override\s+/(\w+):\s*(\w+)", line)
            if override:
                found.add((path.name, override[1], override[2]))
    return found


def test_documented_choices_exist():
    found = documented_choices()
    # the scan sees the commands (a broken pattern would pass vacuously)
    assert {("README.md", "method", "ecc"), ("sedona_cifar10_vgg19.yaml", "network", "vgg19")} <= found
    missing = sorted((f, g, o) for f, g, o in found if o not in options(g))
    assert not missing, f"documented group choices without a conf/<group>/<option>.yaml: {missing}"


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
        if callable(getattr(opt, "train", None)):  # Schedule-Free: steps only in its training mode
            opt.train()
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
    ("override", "message"),
    [
        ("trainer.epochs=abc", "trainer.epochs must be an integer, got 'abc' (str)"),
        ("trainer.epochs=-1", "trainer.epochs must be >= 0, got -1"),
        ("trainer.amp=maybe", "trainer.amp must be true or false, got 'maybe'"),
        ("trainer.device=tpu", "trainer.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ("trainer.amp_dtype=half", "trainer.amp_dtype must be float16 or bfloat16, got 'half'"),
        ("trainer.select=best", "trainer.select must be last or best_val, got 'best'"),
        ("trainer.threads=0", "trainer.threads must be >= 1, got 0"),
        ("trainer.grad_clip=-0.5", "trainer.grad_clip must be >= 0, got -0.5"),
        (
            "trainer.checkpoint_every_min=soon",
            "trainer.checkpoint_every_min must be a number, got 'soon' (str)",
        ),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches must be >= 1, got 0"),
        ("dataset.batch_size=0", "dataset.batch_size must be >= 1, got 0"),
        ("optimizer.lr=fast", "optimizer.lr must be a number, got 'fast' (str)"),
        ("seed=1.5", "seed must be an integer, got 1.5 (float)"),
    ],
)
def test_wrong_value_types_name_the_key(override, message, tmp_path):
    cfg = compose_config(override, output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == message


def test_trainer_schema_is_the_yaml():
    # every key of conf/trainer has a type and range in the schema, and the schema has no key the yaml lacks
    keys = set(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml"))
    assert {f.name for f in dataclasses.fields(TrainerConfig)} == keys
    # the Trainer's options are config keys, with the same types
    hints, config_hints = typing.get_type_hints(TrainerOptions), typing.get_type_hints(TrainerConfig)
    assert set(TrainerOptions.names()) < keys
    assert all(hints[name] == config_hints[name] for name in TrainerOptions.names())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.epoch=5", "trainer.epoch is not a trainer setting (did you mean trainer.epochs?)"),
        (
            "+trainer.gradclip=1",
            "trainer.gradclip is not a trainer setting (did you mean trainer.grad_clip?)",
        ),
        ("+trainer.zzz=1", "trainer.zzz is not a trainer setting;"),
    ],
)
def test_unknown_trainer_key_is_refused(override, message, tmp_path):
    cfg = compose_config(override, output_dir=tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cli_unknown_trainer_key_is_one_line(tmp_path):
    out = tmp_path / "x"
    proc = run_cli("debug=fast", "+trainer.epoch=5", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.epoch is not a trainer setting" in errors[0]
    assert "Traceback" not in proc.stderr
    # refused before the run started: no config copy, no checkpoint, no results
    assert not (out / "config_resolved.yaml").exists() and not (out / "results.json").exists()


def test_trainer_options_from_config_and_replace(tmp_path):
    cfg = compose_config("trainer.epochs=4", "trainer.select=best_val", output_dir=tmp_path)
    options = TrainerOptions.from_config(cfg.trainer)
    assert options == TrainerOptions(**{name: cfg.trainer[name] for name in TrainerOptions.names()})
    assert options.epochs == 4 and options.select == "best_val" and options.limit_train_batches == 3
    assert TrainerOptions.from_config(cfg.trainer, epochs=2).epochs == 2
    changed = options.replace(epochs=7, grad_clip=1.0)
    assert (changed.epochs, changed.grad_clip, options.epochs, options.grad_clip) == (7, 1.0, 4, None)
    with pytest.raises(TypeError, match="'epoch'"):
        options.replace(epoch=3)
    with pytest.raises(TypeError, match="'epoch'"):
        TrainerOptions.from_config(cfg.trainer, epoch=3)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"epochs": -1}, "trainer.epochs"),
        ({"epochs": 2.5}, "trainer.epochs"),
        ({"epochs": 1, "select": "best"}, "trainer.select"),
        ({"epochs": 1, "log_every_steps": 0}, "trainer.log_every_steps"),
        ({"epochs": 1, "amp": "yes"}, "trainer.amp"),
    ],
)
def test_trainer_options_refuse_bad_values(kwargs, key):
    # the Python API (no Hydra) gets the same checks, as a ValueError naming the key
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TrainerOptions(**kwargs)


def test_impossible_combination_lstm_on_images(tmp_path):
    cfg = compose_config("network=lstm", "dataset=digits", output_dir=tmp_path)
    with pytest.raises(ConfigError, match="network=lstm takes sequence inputs"):
        validate(cfg)


def test_experiment_overrides_groups(tmp_path):
    cfg = compose_config("experiment=digits_lenet5", output_dir=tmp_path)
    assert cfg.network.name == "lenet5" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.lr == 0.05
