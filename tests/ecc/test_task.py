"""``method=ecc`` under debug=fast: finishes under budget, every phase resumes, paper mode, bad budgets."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import load_verified
from ecc.admm import ECCStep
from launch.run import run
from tests.conftest import Crash, crash_on_call

TINY = (
    "method=ecc",
    "network=alexnet_small",
    "network.widths=[16,32,32,32,32]",
    "network.hidden=[64,64]",
    "network.dropout=0.0",
    "method.cost=macs",
    "method.samples=30",
    "method.admm_epochs=30",
    "optimizer.lr=0.05",
)


def test_ecc_finishes_under_budget_and_resumes_every_phase(cfg_factory, tmp_path, monkeypatch):
    overrides = (*TINY, "trainer.epochs=2")
    ref = run(cfg_factory(*overrides, name="ref"))
    assert ref["budget_met"] == 1.0 and ref["predicted_cost_ratio"] <= 0.5
    # MACs of a chain are exactly bilinear: the slim net's measured MACs are the prediction
    assert ref["measured_cost_ratio"] == pytest.approx(ref["predicted_cost_ratio"], rel=1e-9)
    assert ref["macs_ratio"] == pytest.approx(ref["measured_cost_ratio"], rel=1e-9)
    assert ref["holdout_mrae"] < 1e-9 and 0 < ref["params_ratio"] < 1
    out = tmp_path / "ref"
    summary = json.loads((out / "ecc_summary.json").read_text())
    assert all(1 <= w <= d for w, d in zip(summary["widths"], summary["dense_widths"]))
    assert (out / "slim" / "model.pt").exists() and (out / "cost" / "fit.json").exists()

    # killed inside the ADMM phase, then inside fine-tuning: the rerun equals the uninterrupted run
    restore = crash_on_call(monkeypatch, ECCStep, "__call__", at=4)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="resumed"))
    restore()
    assert (tmp_path / "resumed" / "cost" / "energy_model.pt").exists()
    resumed = run(cfg_factory(*overrides, name="resumed"))
    assert resumed == ref
    w_ref = load_verified(out / "finetune" / "model.pt")["model"]
    w_res = load_verified(tmp_path / "resumed" / "finetune" / "model.pt")["model"]
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


def test_paper_mode_stops_at_budget_without_finetuning(cfg_factory, tmp_path):
    results = run(cfg_factory(*TINY, "method.mode=paper", "method.budget=0.7", name="paper"))
    assert results["budget_met"] == 1.0 and results["predicted_cost_ratio"] <= 0.7
    assert not (tmp_path / "paper" / "finetune").exists()
    # no fine-tuning: the slim net is the masked net, so their accuracies agree
    assert results["test_acc"] == pytest.approx(results["masked_test_acc"], abs=1e-9)


def test_infeasible_budget_is_refused(cfg_factory):
    with pytest.raises(ValueError, match="infeasible"):
        run(cfg_factory(*TINY, "method.budget=1e-6"))


@pytest.mark.slow
def test_digits_half_budget_keeps_dense_accuracy(cfg_factory):
    results = run(
        cfg_factory(*TINY, "trainer.epochs=15", "trainer.progress=false", name="digits", fast=False)
    )
    assert results["budget_met"] == 1.0 and results["measured_cost_ratio"] <= 0.5
    assert results["test_acc"] >= results["dense_test_acc"] - 0.015


def test_cost_data_stage_alone_fits_the_bilinear_model(cfg_factory, tmp_path):
    results = run(
        cfg_factory(
            "method=ecc_cost_data", "network=alexnet_small", "method.cost=macs", "method.samples=30",
            "network.widths=[8,16,16,16,16]", "network.hidden=[32,32]",
        )
    )  # fmt: skip
    out = tmp_path / "run" / "cost"
    assert {"data.npz", "meta.json", "energy_model.pt", "fit.json"} <= {p.name for p in out.iterdir()}
    assert results["holdout_mrae"] < 1e-9  # MACs are exactly bilinear in the widths
    assert results["dense_cost"] > 0
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
