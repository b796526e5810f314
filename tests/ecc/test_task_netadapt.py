"""``method=ecc method.algorithm=netadapt`` under debug=fast: under budget, resumes after NetAdapt, paper mode."""

from __future__ import annotations

import json

import pytest
import torch

import ecc.task
from common.checkpoint import load_verified
from common.config import ConfigError
from common.engine import Trainer
from launch.run import run
from tests.conftest import Crash, crash_on_call
from tests.ecc.test_task import TINY as ECC_TINY

# test_task.py's tiny ECC run, with NetAdapt instead of ADMM
TINY = (*ECC_TINY, "method.algorithm=netadapt", "method.netadapt.iterations=3", "method.netadapt.batches=2")


def test_netadapt_ends_under_budget_and_a_rerun_skips_it(cfg_factory, tmp_path, monkeypatch):
    overrides = (*TINY, "trainer.epochs=2")
    ref = run(cfg_factory(*overrides, name="ref"))
    assert ref["budget_met"] == 1.0 and ref["budget_ratio"] == pytest.approx(0.5)
    assert ref["predicted_cost_ratio"] <= 0.5
    # MACs of a chain are exactly bilinear: the slim net's measured MACs are the prediction
    assert ref["measured_cost_ratio"] == pytest.approx(ref["predicted_cost_ratio"], rel=1e-9)
    assert ref["macs_ratio"] == pytest.approx(ref["measured_cost_ratio"], rel=1e-9)
    assert 1 <= ref["netadapt_iterations"] <= 3 and 0 < ref["params_ratio"] < 1
    assert "admm_steps" not in ref and "fallback_used" not in ref
    out = tmp_path / "ref"
    summary = json.loads((out / "ecc_summary.json").read_text())
    assert summary["algorithm"] == "netadapt"
    assert all(1 <= w <= d for w, d in zip(summary["widths"], summary["dense_widths"], strict=True))
    assert [ref[f"width_{u + 1}"] for u in range(7)] == summary["widths"]
    stored = load_verified(out / "netadapt" / "result.pt")
    assert (
        stored["widths"] == summary["widths"]
        and len(stored["result"]["history"]) == ref["netadapt_iterations"]
    )
    assert not (out / "admm").exists() and (out / "slim" / "model.pt").exists()
    assert (out / "finetune" / "model.pt").exists()

    # killed at the end of the second fine-tune epoch (2 pretrain epochs come first): the rerun resumes
    # fine-tuning without running NetAdapt again and equals the uninterrupted run
    restore = crash_on_call(monkeypatch, Trainer, "_end_epoch", at=4)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="resumed"))
    restore()
    assert (tmp_path / "resumed" / "netadapt" / "result.pt").exists()
    assert not (tmp_path / "resumed" / "finetune").exists()
    assert load_verified(tmp_path / "resumed" / "checkpoints" / "last.pt")["phase"] == "finetune"

    def rerun(*args, **kwargs):
        raise AssertionError("NetAdapt ran again")

    monkeypatch.setattr(ecc.task, "netadapt", rerun)
    resumed = run(cfg_factory(*overrides, name="resumed"))
    assert resumed == ref
    w_ref = load_verified(out / "finetune" / "model.pt")["model"]
    w_res = load_verified(tmp_path / "resumed" / "finetune" / "model.pt")["model"]
    assert all(torch.equal(w_ref[k], w_res[k]) for k in w_ref)


def test_netadapt_paper_mode_on_a_non_macs_model_has_no_long_finetune(cfg_factory, tmp_path):
    # the authors' TX2 model (fc-heavy, not MACs): the budget is on its prediction; paper mode: no fine-tune
    r = run(
        cfg_factory(
            *TINY, "method.cost=tx2_alexnet", "method.cost_repeats=3", "method.mode=paper", "method.budget=0.6",
            name="paper",
        )
    )  # fmt: skip
    assert r["budget_met"] == 1.0 and r["predicted_cost_ratio"] <= 0.6
    assert not (tmp_path / "paper" / "finetune").exists()
    assert r["test_acc"] == pytest.approx(r["masked_test_acc"], abs=1e-9)  # the adapted net, unchanged


def test_unknown_algorithm_is_refused_naming_the_valid_ones(cfg_factory):
    with pytest.raises(ConfigError, match="method.algorithm must be one of ecc, netadapt; got 'admm'"):
        run(cfg_factory(*TINY, "method.algorithm=admm"))


def test_netadapt_halves_a_step_no_single_slot_can_take():
    from common.metrics import count_macs
    from common.models import build_model
    from ecc.netadapt import netadapt
    from ecc.prune import slim_to_widths

    torch.manual_seed(0)
    net = build_model("alexnet_small", num_classes=10, in_channels=1, image_size=32,
                      widths=[16, 32, 32, 32, 32], hidden=[64, 64], dropout=0.0).eval()  # fmt: skip
    x1 = torch.zeros(1, 1, 32, 32)

    def cost(widths):
        return float(count_macs(slim_to_widths(net, widths), x1))

    # one iteration: the first target is the budget itself, which no slot alone reaches at 0.3 of the MACs
    budget = 0.3 * cost([16, 32, 32, 32, 32, 64, 64])
    res = netadapt(net, cost, budget, iterations=1, short_term=lambda m, it: None, score=lambda m: 0.0)
    assert res.cost <= budget and len(res.history) > 1
    assert res.history[0]["target"] > budget and res.history[-1]["cost"] == res.cost
