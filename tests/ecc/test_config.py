"""The typed options of ``method=ecc`` / ``method=ecc_cost_data``: every range and choice is refused in one line
before the run folder or any data is touched; the networks ECC accepts are the ones it can prune."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import ecc.task
from common.config import ConfigError
from common.method import configure_method, network_names
from ecc.cost import BACKENDS
from ecc.prune import slim_masked, width_slots, zero_groups
from ecc.task import COST_DATA_METHOD, METHOD, supports
from launch.run import run
from tests.conftest import compose_config, run_cli

# (override, the key the one-line error names): every option with a range or choices, outside it
BAD = [
    ("method.algorithm=admm", "method.algorithm must be one of ecc, netadapt"),
    ("method.mode=fast", "method.mode must be one of default, paper"),
    ("method.budget=1.5", r"method.budget must be in \(0, 1\].*budget_absolute"),
    ("method.budget=0", r"method.budget must be in \(0, inf\)"),
    ("method.budget=-0.5", r"method.budget must be in \(0, inf\)"),
    ("method.budget_reference=dense", "method.budget_reference must be one of measured, model"),
    ("method.cost=joules", "method.cost must be one of .*tx2_alexnet"),
    ("method.samples=1", r"method.samples must be in \[2, inf\)"),
    ("method.cost_batch=0", r"method.cost_batch must be in \[1, inf\)"),
    ("method.cost_repeats=0", r"method.cost_repeats must be in \[1, inf\)"),
    ("method.cost_passes=0", r"method.cost_passes must be in \[1, inf\)"),
    ("method.cost_rounds=0", r"method.cost_rounds must be in \[1, inf\)"),
    ("method.fit=ridge", "method.fit must be one of lstsq, paper, adam"),
    ("method.holdout=0", r"method.holdout must be in \(0, 1\)"),
    ("method.holdout=1", r"method.holdout must be in \(0, 1\)"),
    ("method.pretrain_epochs=-1", r"method.pretrain_epochs must be in \[0, inf\)"),
    ("method.admm_epochs=-1", r"method.admm_epochs must be in \[0, inf\)"),
    ("method.primal=rmsprop", "method.primal must be one of adam, sgd"),
    ("method.plr=0", r"method.plr must be in \(0, inf\)"),
    ("method.padam_beta=[0.9,1.0]", r"method.padam_beta must be in \[0, 1\)"),
    ("method.padam_beta=[0.9]", r"method.padam_beta must be two numbers"),
    ("method.momentum=-0.1", r"method.momentum must be in \[0, inf\)"),
    ("method.l2wd=-1e-4", r"method.l2wd must be in \[0, inf\)"),
    ("method.pslr=0", r"method.pslr must be in \(0, inf\)"),
    ("method.s_int=0", r"method.s_int must be in \[1, inf\)"),
    ("method.slb=0", r"method.slb must be in \(0, inf\)"),
    ("method.rho_z=0", r"method.rho_z must be in \(0, inf\)"),
    ("method.rho_y=-1", r"method.rho_y must be in \(0, inf\)"),
    ("method.zinit=-1", r"method.zinit must be in \[0, inf\)"),
    ("method.yinit=-1", r"method.yinit must be in \[0, inf\)"),
    ("method.distill=1.5", r"method.distill must be in \[0, 1\]"),
    ("method.finetune_epochs=-1", r"method.finetune_epochs must be in \[0, inf\)"),
    ("method.netadapt.iterations=0", r"method.netadapt.iterations must be in \[1, inf\)"),
    ("method.netadapt.batches=0", r"method.netadapt.batches must be in \[1, inf\)"),
    ("method.netadapt.lr=0", r"method.netadapt.lr must be in \(0, inf\)"),
    ("method.netadapt.momentum=-1", r"method.netadapt.momentum must be in \[0, inf\)"),
    ("method.budget=half", "method.budget: .*Float"),
    ("+method.budjet=0.5", "method.budjet: Key 'budjet' not in"),
]


@pytest.fixture(scope="module")
def ecc_cfg() -> DictConfig:
    """``method=ecc`` composed once (composing per case would cost a second each)."""
    return compose_config("method=ecc")


def with_override(cfg: DictConfig, override: str, output_dir) -> DictConfig:
    """A copy of ``cfg`` with the command-line style ``override`` (``[+]key=value``) merged in."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.merge_with(OmegaConf.from_dotlist([override.lstrip("+")]))
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_every_bad_option_is_refused_in_one_line_before_any_work(
    ecc_cfg, tmp_path, monkeypatch, override, message
):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(ecc.task, "make_data", no_data)
    with pytest.raises(ConfigError, match=message) as err:
        run(with_override(ecc_cfg, override, tmp_path / "run"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # the run folder was never created


def test_a_network_ecc_cannot_prune_is_refused_naming_those_it_can(cfg_factory, tmp_path):
    with pytest.raises(
        ConfigError, match="method=ecc does not work with network=resnext29.*supported: .*mlp"
    ):
        run(cfg_factory("method=ecc", "network=resnext29"))
    assert not (tmp_path / "run").exists()


def test_cost_data_shares_the_schema(cfg_factory):
    with pytest.raises(ConfigError, match=r"method.samples must be in \[2, inf\)"):
        run(cfg_factory("method=ecc_cost_data", "method.samples=1"))
    assert COST_DATA_METHOD.schema is METHOD.schema


def test_valid_values_pass_and_become_typed(ecc_cfg, tmp_path):
    cfg = with_override(ecc_cfg, "method.budget=1.5", tmp_path)
    cfg = with_override(cfg, "method.budget_absolute=true", tmp_path)
    cfg = with_override(cfg, "method.samples='7'", tmp_path)
    assert configure_method(cfg) is METHOD
    assert cfg.method.budget == 1.5 and cfg.method.samples == 7 and cfg.method.netadapt.iterations >= 1
    assert isinstance(cfg.method.pretrain_epochs, int)  # ${trainer.epochs}, resolved
    # every backend of ecc.cost's registry is a method.cost, and so is the shipped TX2 model
    for cost in (*BACKENDS, "tx2_alexnet"):
        configure_method(with_override(ecc_cfg, f"method.cost={cost}", tmp_path))


def test_bad_budget_exits_2_with_one_line_before_the_run(tmp_path):
    out = tmp_path / "job"
    proc = run_cli("method=ecc", "method.budget=1.5", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "method.budget" in errors[0] and "budget_absolute" in errors[0]
    assert "Traceback" not in proc.stderr
    # Hydra wrote its own .hydra/ and log; the run wrote nothing (no provenance, no phase artifact)
    written = {p.name for p in out.iterdir()} if out.exists() else set()
    assert not written & {"meta.json", "config_resolved.yaml", "dense", "cost", "checkpoints", "results.json"}


def _prunable(name: str) -> bool:
    """Whether ECC finds the width slots of a small ``name`` and its slim net computes the masked one's logits."""
    from common.models import build_model, builder_kwargs, network_info

    info = network_info(name)
    if info.input_kind != "image":
        return False
    small = {
        "width_mult": 0.125,
        "hidden": [12, 10],
        "widths": [4, 6, 6, 6, 6],
        "hidden_size": 8,
        "num_layers": 1,
    }
    small.update(
        {"densenet_bc100": {"depth": 10}, "resnext29": {"depth": 11, "cardinality": 2, "bottleneck_width": 4},
         "wrn28_10": {"depth": 10, "widen_factor": 1}}.get(name, {})
    )  # fmt: skip
    kwargs = {k: v for k, v in small.items() if k in builder_kwargs(name)}
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, in_channels=3, image_size=32, **kwargs).eval()
    try:
        slots = width_slots(model)
    except NotImplementedError:
        return False
    for slot in slots:
        dead = torch.arange(slot.width) % 2 == 1
        zero_groups(slot, dead)
    x = torch.randn(2, 3, 32, 32)
    slim_net, _ = slim_masked(model)
    return torch.allclose(slim_net(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "alexnet_small", "wrn28_10", "resnext29", "lstm"])
def test_supports_is_what_ecc_can_prune(name):
    assert supports(name) == _prunable(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", network_names())
def test_supports_is_what_ecc_can_prune_for_every_network(name):
    assert supports(name) == _prunable(name)
