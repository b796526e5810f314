"""The typed options of ``method=sedona`` and ``method=sedona_search``: every bad value is one line, before any work."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

import sedona.greedy_training as greedy_training
import sedona.meta_search as meta_search
from common.config import CONF_DIR, ConfigError
from common.method import configure_method, network_names
from launch.run import run
from sedona.heads import HEAD_KINDS
from sedona.options import GreedyOptions, SedonaConfig
from sedona.task import METHOD, SEARCH_METHOD
from tests.conftest import compose_config, run_cli


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """A refused option must stop the run before any data is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(greedy_training, "make_data", refuse)
    monkeypatch.setattr(meta_search, "make_data", refuse)


HEADS = ", ".join(HEAD_KINDS)
GREEDY = [
    ("method.aux=foo", f"method.aux must be one of {HEADS}; got 'foo'"),
    ("method.arch=timm", "method.arch must be one of original, common"),
    ("method.feat_mult=0", r"method.feat_mult must be in \(0, inf\); got 0"),
    ("method.backward=both", "method.backward must be one of per_block, joint"),
    ("method.queue_size=0", r"method.queue_size must be in \[1, inf\)"),
    ("method.label_smoothing=1.0", r"method.label_smoothing must be in \[0, 1\); got 1.0"),
    ("method.label_smoothing=-0.1", r"method.label_smoothing must be in \[0, 1\)"),
    ("method.lr_schedule=step", "method.lr_schedule must be one of iter_cosine, config"),
    ("method.lr_min=-1", r"method.lr_min must be in \[0, inf\)"),
    ("method.ensemble=0", r"method.ensemble must be in \[1, inf\)"),
    ("method.devices=[cpu]", "method.devices must be null or >= 2 devices"),
    ("method.devices=[cpu,gpu]", "method.devices: 'gpu' is not a device"),
]
SEDONA = [
    *GREEDY,
    ("method.num_blocks=0", r"method.num_blocks must be in \[1, inf\); got 0"),
    ("method.num_blocks=two", "method.num_blocks"),
    ("method.balance_by=peak", "method.balance_by must be one of auto, saved, allocator"),
    ("+method.blocks=4", "method.blocks"),
    (
        "method.decoupling=even",
        "method.decoupling='even': not uniform, balanced, found or an existing JSON file",
    ),
    ("method.decoupling=found", "method.decoupling=found needs network=vgg19"),
    (("network=vgg19", "method.decoupling=found", "method.num_blocks=3"), "K in 1, 2, 4, 8"),
]
SEARCH = [
    *GREEDY,
    ("method.candidates=[conv1,foo]", f"method.candidates must be one of {HEADS}; got 'foo'"),
    ("method.candidates=[]", "method.candidates is empty"),
    ("method.head_feat_mult=-1", r"method.head_feat_mult must be in \(0, inf\)"),
    ("method.search_beta=maybe", "method.search_beta"),
    (
        ("method.search_beta=false", "method.fixed_head=predsim"),
        "method.fixed_head must be one of mlp_sr, conv1",
    ),
    ("method.pretrain_epochs=-1", r"method.pretrain_epochs must be in \[0, inf\)"),
    ("method.lr=0", r"method.lr must be in \(0, inf\)"),
    ("method.momentum=1.0", r"method.momentum must be in \[0, 1\)"),
    ("method.weight_decay=-1e-4", r"method.weight_decay must be in \[0, inf\)"),
    ("method.cosine_iters=0", r"method.cosine_iters must be in \[1, inf\)"),
    ("method.snapshot_every=0", r"method.snapshot_every must be in \[1, inf\)"),
    ("method.memory_size=0", r"method.memory_size must be in \[1, inf\)"),
    ("method.memory_keep=newest", "method.memory_keep must be one of oldest, spread"),
    ("method.meta_iters=0", r"method.meta_iters must be in \[1, inf\)"),
    ("method.inner_steps=0", r"method.inner_steps must be in \[1, inf\)"),
    ("method.objective=test", "method.objective must be one of train_last, val"),
    ("method.meta_lr=0", r"method.meta_lr must be in \(0, inf\)"),
    ("method.meta_betas=[0.5,1.0]", r"method.meta_betas must be in \[0, 1\)"),
    ("method.meta_betas=[0.5]", "method.meta_betas must be two numbers"),
    ("method.meta_weight_decay=-1", r"method.meta_weight_decay must be in \[0, inf\)"),
    ("method.checkpoint_every=0", r"method.checkpoint_every must be in \[1, inf\)"),
    ("method.log_every=0", r"method.log_every must be in \[1, inf\)"),
    ("method.eval_blocks=3", "method.eval_blocks must be one of 0, 2, 4, 8, 16; got 3"),
    ("method.eval_mode=relaxed", "method.eval_mode must be one of discrete, continuous"),
    ("+method.num_blocks=4", "method.num_blocks"),  # K of the evaluation is eval_blocks
]


@pytest.fixture(scope="module")
def base_configs(tmp_path_factory):
    """Each method's composed config, once: a case applies its overrides to a copy (composing is the slow part)."""
    out = tmp_path_factory.mktemp("base")
    return {m: compose_config(f"method={m}", output_dir=out / m) for m in ("sedona", "sedona_search")}


def _with(base, overrides, output_dir):
    """``base`` with command-line style overrides (``key=value``, ``+key=value``) and another output folder."""
    cfg = copy.deepcopy(base)
    OmegaConf.set_struct(cfg, False)
    dotlist = [o.removeprefix("+") for o in overrides if not o.startswith("network=")]
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    cfg.paths.output_dir = str(output_dir)
    return cfg


def _refused(cfg, tmp_path, match):
    with pytest.raises(ConfigError, match=match) as info:
        run(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.parametrize(("overrides", "match"), SEDONA)
def test_bad_sedona_options_are_refused(base_configs, cfg_factory, tmp_path, overrides, match):
    overrides = (overrides,) if isinstance(overrides, str) else overrides
    if any(o.startswith("network=") for o in overrides):  # another network: compose it
        cfg = cfg_factory("method=sedona", *overrides)
    else:
        cfg = _with(base_configs["sedona"], overrides, tmp_path / "run")
    _refused(cfg, tmp_path, match)


@pytest.mark.parametrize(("overrides", "match"), SEARCH)
def test_bad_sedona_search_options_are_refused(base_configs, tmp_path, overrides, match):
    overrides = (overrides,) if isinstance(overrides, str) else overrides
    _refused(_with(base_configs["sedona_search"], overrides, tmp_path / "run"), tmp_path, match)


def test_every_ranged_option_is_refused_by_a_test():
    """Each option with choices or a range has a case above (for both methods)."""
    for method, cases in ((METHOD, SEDONA), (SEARCH_METHOD, SEARCH)):
        bounded = {f.name for f in dataclasses.fields(method.schema) if f.metadata}
        tested = {
            o.split("=")[0].removeprefix("method.")
            for c in cases
            for o in ((c[0],) if isinstance(c[0], str) else c[0])
        }
        assert bounded <= tested, (method.name, bounded - tested)


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_a_decoupling_file_without_the_requested_k_is_refused(base_configs, tmp_path):
    search = {"splits": {"2": {"block_ends": [1, 3], "heads": ["conv1"]}, "4": {"block_ends": [0, 1, 2, 3]}}}
    path = _write(tmp_path / "search.json", search)
    one = _write(tmp_path / "one.json", {"block_ends": [1, 3], "heads": [None]})
    bad = tmp_path / "bad.json"
    bad.write_text("{block_ends")
    for overrides, match in [
        (
            (f"method.decoupling={path}", "method.num_blocks=3"),
            f"{path} holds decouplings for K in 2, 4, not K=3",
        ),
        (
            (f"method.decoupling={one}", "method.num_blocks=4"),
            f"{one} holds one decoupling with K=2, not K=4",
        ),
        ((f"method.decoupling={bad}",), "not a readable JSON file"),
    ]:
        _refused(_with(base_configs["sedona"], overrides, tmp_path / "run"), tmp_path, match)
    # the K it holds is accepted (K = 1 is backprop whatever the file)
    for k in (2, 4, 1):
        cfg = _with(base_configs["sedona"], (f"method.decoupling={path}", f"method.num_blocks={k}"), tmp_path)
        configure_method(cfg)
        assert cfg.method.num_blocks == k


def test_cli_refuses_a_bad_option_in_one_line(tmp_path):
    proc = run_cli(
        "method=sedona", "method.aux=foo", "debug=fast", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "method.aux must be one of" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_supported_networks():
    """Every image net of conf/network is supported; the LSTM regressor (one unit, regression) is refused."""
    names = network_names()
    images = [n for n in names if OmegaConf.load(CONF_DIR / "network" / f"{n}.yaml").input_kind == "image"]
    assert "lstm" in names and "lstm" not in images and {"mlp", "lenet5", "vgg19"} <= set(images)
    for method in (METHOD, SEARCH_METHOD):
        assert [n for n in names if method.supports(n)] == images
    cfg = compose_config("method=sedona", "network=lstm", "dataset=household_power")
    with pytest.raises(ConfigError, match="method=sedona does not work with network=lstm") as info:
        configure_method(cfg)
    assert "vgg19" in str(info.value) and "lstm" not in str(info.value).split("supported:")[1]


def test_the_evaluation_config_is_method_sedona(cfg_factory):
    """sedona_search evaluates with a method=sedona config built from its schema and the search's options."""
    cfg = cfg_factory(
        "method=sedona_search", "method.aux=predsim", "method.devices=[cpu,cpu]", "method.ensemble=2"
    )
    configure_method(cfg)
    sub = SedonaConfig.for_evaluation(cfg.method, 4, "/runs/x/decoupling.json")
    assert OmegaConf.get_type(sub) is SedonaConfig
    assert sub.name == "sedona" and sub.plugin == "sedona.task:METHOD"
    assert (sub.num_blocks, sub.decoupling) == (4, "/runs/x/decoupling.json")
    shared = [f.name for f in dataclasses.fields(GreedyOptions) if f.name not in ("name", "plugin")]
    assert all(sub[k] == cfg.method[k] for k in shared)
    assert (sub.aux, list(sub.devices), sub.ensemble) == ("predsim", ["cpu", "cpu"], 2)
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        sub.meta_iters = 3  # a search option is not one of method=sedona's
