"""``method=adatune``'s typed options: every bad value is a one-line ConfigError before data or the run folder."""

from __future__ import annotations

import pytest

import adatune.task as task_mod
from common.config import ConfigError
from common.method import configure_method
from launch.run import run
from tests.conftest import run_cli

BAD = [
    # (overrides, the key the one-line error names)
    (("method.algorithm=foo",), "method.algorithm"),
    (("method.hyper_lr=-1e-4",), "method.hyper_lr"),
    (("method.mu=2",), "method.mu"),
    (("method.mu=-0.5",), "method.mu"),
    (("method.mu=fast",), "method.mu"),
    (("method.mu=true",), "method.mu"),
    (("method.mu_init=1.5",), "method.mu_init"),
    (("method.alpha=-1e-3",), "method.alpha"),
    (("method.beta_rule=foo",), "method.beta_rule"),
    (("method.mu_rule=foo",), "method.mu_rule"),
    (("method.clip_lr=maybe",), "method.clip_lr"),
    (("method.max_lr_change=0",), "method.max_lr_change"),
    (("method.grad_clipping=-1",), "method.grad_clipping"),
    (("method.first_order=sometimes",), "method.first_order"),
    (("method.mode=fast",), "method.mode"),
    (("method.val_fraction=0",), "method.val_fraction"),
    (("method.val_fraction=1",), "method.val_fraction"),
    (("method.val_batch_size=0",), "method.val_batch_size"),
    (("method.val_bn_eval=off-ish",), "method.val_bn_eval"),
    (("method.log_every=0",), "method.log_every"),
    (("+method.hyper_lrr=1e-3",), "method.hyper_lrr"),
    # what the tuners cannot do: paper mode is MuSGD's (brief B3) and has no LR cap; HD and MARTHE wrap
    # torch SGD/Adam(W) only
    (("method.mode=paper", "optimizer=adam"), "method.mode=paper"),
    (("method.mode=paper", "method.max_lr_change=0.1"), "method.max_lr_change"),
    (("method.algorithm=hd", "optimizer=adamw"), "method.algorithm=hd"),
    (("method.algorithm=hd", "optimizer=rmsprop"), "method.algorithm=hd"),
    (("method.algorithm=rtho", "optimizer=adagrad"), "method.algorithm=rtho"),
    (("optimizer=adam", "+optimizer.amsgrad=true"), "optimizer.amsgrad"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_option_is_refused_before_data_and_folder(cfg_factory, tmp_path, monkeypatch, overrides, key):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the options were checked")

    monkeypatch.setattr(task_mod, "make_data", no_data)
    with pytest.raises(ConfigError) as info:
        run(cfg_factory("method=adatune", *overrides))
    message = str(info.value)
    assert key in message and "\n" not in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ("method.mu=auto",),
        ("method.mu=0",),
        ("method.mu=1",),
        ("method.mu=0.5", "method.val_fraction=0.2", "method.max_lr_change=0.5", "method.grad_clipping=1"),
        ("method.algorithm=hd", "optimizer=adam", "method.mode=paper"),
        ("method.algorithm=hd", "optimizer=sgd_nesterov"),
        ("method.algorithm=marthe", "optimizer=adamw"),
        ("method.mode=paper", "optimizer=sgd"),
        ("experiment=marthe_cifar10_vgg11",),
        ("experiment=marthe_cifar100_resnet18",),
    ],
)
def test_good_options_pass_typed(cfg_factory, overrides):
    cfg = cfg_factory("method=adatune", *overrides)
    method = configure_method(cfg)
    assert method is task_mod.METHOD
    m = cfg.method
    assert m.mu == "auto" or isinstance(m.mu, int | float) and 0 <= m.mu <= 1
    # typed: a float option given as an int on the command line is a float, an absent key cannot be added
    assert isinstance(m.hyper_lr, float) and isinstance(m.log_every, int)
    with pytest.raises(Exception, match="hyper_lrr"):
        m.hyper_lrr = 1.0


@pytest.mark.parametrize(
    "override", ["method.mu=2", pytest.param("method.algorithm=foo", marks=pytest.mark.slow)]
)
def test_cli_bad_option_exits_2_with_one_line(tmp_path, override):
    proc = run_cli("method=adatune", "debug=fast", override, f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and override.split("=")[0] in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "results.json").exists()
