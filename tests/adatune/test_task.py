"""``method=adatune``: every algorithm finishes under ``debug=fast``; a crashed run resumes to the same LR trajectory."""

from __future__ import annotations

import json

import pytest
import torch

import adatune.marthe as marthe_mod
import adatune.task as task_mod
from adatune.task import ValidationStream, lr_schedule_figure, save_figure, schedule_title
from common.checkpoint import load_verified
from launch.run import run
from tests.conftest import Crash, crash_on_call

TIME_KEYS = ("time_s", "train_time_s")


def _lrs(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["adatune/lr"], r.get("adatune/mu")) for r in lines if "adatune/lr" in r]


@pytest.mark.parametrize(
    "overrides",
    [
        ("method.algorithm=hd",),
        ("method.algorithm=hd", "optimizer=adam"),
        ("method.algorithm=hd_val",),
        ("method.algorithm=rtho", "optimizer=adamw"),
        ("method.algorithm=marthe", "method.mu=auto", "method.alpha=1e-3"),
        ("method.algorithm=marthe", "method.mode=paper", "optimizer=sgd_momentum"),
    ],
)
def test_algorithms_finish(cfg_factory, tmp_path, overrides):
    results = run(cfg_factory("method=adatune", *overrides))
    for key in ("test_acc", "test_loss", "val_acc", "train_loss", "final_lr"):
        assert key in results
    lrs = _lrs(tmp_path / "run")
    assert [s for s, _, _ in lrs] == [1, 2, 3]
    assert results["final_lr"] >= 0
    assert (tmp_path / "run" / "lr_schedule.csv").read_text().startswith("step,lr")
    assert (tmp_path / "run" / "lr_schedule.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("crash_at", [5, pytest.param(7, marks=pytest.mark.slow)])
def test_resume_equals_uninterrupted(cfg_factory, tmp_path, monkeypatch, crash_at):
    overrides = (
        "method=adatune",
        "method.algorithm=marthe",
        "method.mu=auto",
        "method.alpha=1e-3",
        "trainer.epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.checkpoint_every_steps=3",
    )
    reference = run(cfg_factory(*overrides, name="ref"))
    restore = crash_on_call(monkeypatch, marthe_mod.MARTHE, "step", at=crash_at)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="res"))
    restore()
    resumed = run(cfg_factory(*overrides, name="res"))
    drop = lambda r: {k: v for k, v in r.items() if k not in TIME_KEYS}  # noqa: E731
    assert drop(resumed) == drop(reference)
    assert _lrs(tmp_path / "res") == _lrs(tmp_path / "ref")
    assert len({lr for _, lr, _ in _lrs(tmp_path / "ref")}) > 1  # the LR did move
    a = load_verified(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_verified(tmp_path / "res" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_validation_stream_is_a_function_of_the_step(cfg_factory):
    from common.factory import make_data

    cfg = cfg_factory()
    data = make_data(cfg, torch.device("cpu"))
    stream = ValidationStream(data.val, 32, seed=0)
    again = ValidationStream(data.val, 32, seed=0)
    for step in (0, 3, 11, 40):
        assert torch.equal(stream(step)[0], again(step)[0])
    assert stream.direct and stream(0)[0].shape[0] == 32
    # a pass covers distinct samples; the next pass is reshuffled
    first_pass = torch.cat([stream(s)[1] for s in range(stream.per_pass)])
    assert first_pass.shape[0] == stream.per_pass * 32
    assert not torch.equal(stream(0)[0], stream(stream.per_pass)[0])


@pytest.mark.parametrize("experiment", ["marthe_cifar10_vgg11", "marthe_cifar100_resnet18"])
def test_paper_experiments_compose(cfg_factory, experiment):
    cfg = cfg_factory(f"experiment={experiment}", fast=False)
    assert cfg.method.name == "adatune" and cfg.trainer.epochs == 200
    assert "_target_" not in cfg.scheduler


def _lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines()]


def test_lr_schedule_figure_content(tmp_path):
    """Issue 15 item 13: titled, x in epochs (steps / steps per epoch), the LR and the adaptive μ as two lines."""
    spe = 10
    rows = [[s, 0.01 * (1 + s / 30), 0.5 + 0.4 * (s % 7) / 7, 1e-3, 0.1] for s in range(1, 31)]
    fig = lr_schedule_figure(rows, spe, "adatune: MARTHE (μ = auto)\nlenet5 on digits, SGD, momentum 0.9")
    ax = fig.axes[0]
    assert ax.get_title() == "adatune: MARTHE (μ = auto)\nlenet5 on digits, SGD, momentum 0.9"
    assert ax.get_xlabel() == "epoch (10 steps each)" and ax.get_ylabel() == "learning rate"
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "μ"
    lines = _lines(fig)
    assert [ln.get_label() for ln in lines] == ["learning rate", "μ (right axis)"]
    assert list(lines[0].get_xdata()) == pytest.approx([s / spe for s in range(1, 31)])
    assert list(lines[0].get_ydata()) == [r[1] for r in rows]
    assert ax.get_xlim() == (0.0, 3.0)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["learning rate", "μ (right axis)"]
    # saved separately, as a PNG
    path = save_figure(fig, tmp_path / "lr.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_lr_schedule_figure_lines_per_algorithm():
    # HD: no μ column, one line on one axis
    hd = lr_schedule_figure([[s, 0.1 - s * 1e-3, "", "", ""] for s in range(1, 6)], 5, "t")
    assert len(hd.axes) == 1 and len(_lines(hd)) == 1 and not hd.legends
    # a fixed μ is in the title, not drawn
    fixed = lr_schedule_figure([[s, 0.1, 0.99, 1e-3, 0.0] for s in range(1, 6)], 5, "t")
    assert len(_lines(fixed)) == 1
    # paper mode with momentum: the first step still reports the negative μ_init, which is not drawn
    rows = [[1, 0.1, -1.0, 1e-3, 0.0]] + [[s, 0.1, 0.1 * s, 1e-3, 0.1] for s in range(2, 6)]
    paper = lr_schedule_figure(rows, 5, "t")
    mu_line = _lines(paper)[1]
    assert list(mu_line.get_xdata()) == pytest.approx([0.4, 0.6, 0.8, 1.0]) and min(mu_line.get_ydata()) >= 0


def test_schedule_title_names_method_algorithm_network_dataset(cfg_factory):
    cfg = cfg_factory(
        "method=adatune", "method.algorithm=marthe", "method.mu=auto", "method.mode=paper", "network=lenet5"
    )
    title = schedule_title(cfg)
    assert title.splitlines() == [
        "adatune: MARTHE (μ = auto), paper mode",
        f"lenet5 on {cfg.dataset.name}, SGD, momentum 0.9",
    ]
    assert schedule_title(cfg_factory("method=adatune", "method.algorithm=hd", "optimizer=adam")).startswith(
        "adatune: HD on the training loss\n"
    )


def test_run_plots_the_schedule_against_the_epoch(cfg_factory, tmp_path, monkeypatch):
    figures = []

    def spy(*args, **kwargs):
        figures.append(lr_schedule_figure(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(task_mod, "lr_schedule_figure", spy)
    cfg = cfg_factory("method=adatune", "method.algorithm=marthe", "trainer.epochs=2")
    run(cfg)
    (fig,) = figures
    ax = fig.axes[0]
    assert ax.get_title() == schedule_title(cfg)
    assert ax.get_xlabel() == "epoch (3 steps each)"  # debug=fast: 3 batches per epoch
    assert list(ax.get_lines()[0].get_xdata()) == pytest.approx([s / 3 for s in range(1, 7)])
    assert (tmp_path / "run" / "lr_schedule.png").read_bytes()[:4] == b"\x89PNG"
