"""``method=ecco_robustness``'s typed options: each range and choice refused in one line, before any data."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import ecco.task as task
from common.config import ConfigError
from ecco.draws import RANGES, draw
from ecco.task import OPTIMIZERS, make_optimizer
from launch.run import run
from tests.conftest import run_cli

# (override, the key the one-line error must name): every option with a range or choices, and the checks
# between options
BAD_OPTIONS = [
    ("method.trials=0", "method.trials"),
    ("method.optimizers=[ecco,lbfgs]", "method.optimizers"),
    ("method.optimizers=[]", "method.optimizers"),
    ("method.optimizers=[adam,ecco,adam]", "method.optimizers"),
    ("method.ranges=uniform", "method.ranges"),
    ("method.epochs=0", "method.epochs"),
    ("method.ecco.mode=fast", "method.ecco.mode"),
    ("method.ecco.limit_activations=all", "method.ecco.limit_activations"),
    ("method.ecco.dt_max=0", "method.ecco.dt_max"),
    ("method.ecco.dt_max=inf", "method.ecco.dt_max"),
    ("method.ecco.limit_floor=-1e-6", "method.ecco.limit_floor"),
    ("method.ecco.dt_min=-0.1", "method.ecco.dt_min"),
    ("method.ecco.dt_min=0.6", "method.ecco.dt_min"),  # above dt_max=0.5
    ("method.ecco.fused=true method.ecco.mode=paper", "method.ecco.fused"),
    ("method.executor=ray", "method.executor"),
    ("method.job.timeout_min=0", "method.job.timeout_min"),
    ("method.job.gpus_per_node=-1", "method.job.gpus_per_node"),
    ("method.job.cpus_per_task=0", "method.job.cpus_per_task"),
    ("method.job.mem_gb=0", "method.job.mem_gb"),
    ("method.job.array_parallelism=0", "method.job.array_parallelism"),
    ("method.trials=two", "method.trials"),
    ("+method.ecco.eta=0.1", "method.ecco.eta"),  # eta is drawn, not an option
]


@pytest.mark.parametrize(("override", "key"), BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_config_error_before_any_data(
    cfg_factory, tmp_path, monkeypatch, override, key
):
    loaded = []
    monkeypatch.setattr(task, "make_data", lambda *a, **k: loaded.append(a) or pytest.fail("data loaded"))
    cfg = cfg_factory("method=ecco_robustness", *override.split())
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not loaded and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override", ["method.epochs=null", "method.epochs=1", "method.ecco.fused=true", "method.executor=local"]
)
def test_edge_values_are_accepted(cfg_factory, monkeypatch, override):
    class Loaded(Exception):
        pass

    def make_data(*args, **kwargs):
        raise Loaded

    # the study reaches its data: the options passed the schema
    monkeypatch.setattr(task, "make_data", make_data)
    with pytest.raises(Loaded):
        run(cfg_factory("method=ecco_robustness", override))


def test_cli_bad_option_exits_2_with_one_line(tmp_path):
    out = tmp_path / "x"
    proc = run_cli(
        "method=ecco_robustness", "method.trials=0", f"hydra.run.dir={out}", cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "method.trials" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # refused before the run began: no config, no meta, no trials
    assert not any((out / name).exists() for name in ("config_resolved.yaml", "meta.json", "trials"))


@pytest.mark.parametrize("ranges", RANGES)
def test_every_schema_optimizer_draws_and_builds(ranges):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ecco_options = dict(mode="improved", limit_activations="auto", dt_max=0.5)
    for name in OPTIMIZERS:
        hp = draw(name, 0, ranges=ranges, epochs=3)
        optimizer, scheduler = make_optimizer(name, hp, model, ecco_options)
        assert isinstance(optimizer, torch.optim.Optimizer)
        lr_key = "eta" if name == "ecco" else "lr"
        assert optimizer.param_groups[0][lr_key] == hp[lr_key]  # the draw reached the optimizer
        assert (scheduler is None) == ("t_max" not in hp)
        if hasattr(optimizer, "remove_hooks"):
            optimizer.remove_hooks()
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", {"lr": 0.1}, model, {})
    with pytest.raises(ValueError, match="no ranges for optimizer 'sgd'"):
        draw("sgd", 0, ranges=ranges)
