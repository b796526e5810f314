"""``method=ecc`` under debug=fast: finishes under budget, every phase resumes, paper mode, bad budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.checkpoint import load_verified
from common.config import ConfigError
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


# the default mode's ADMM hyperparameters, given explicitly: paper mode would otherwise take the original's
DEFAULT_HP = ("method.primal=adam", "method.plr=1e-3", "method.l2wd=1e-4", "method.pslr=3.0",
              "method.psgrad_mask=true", "method.psgrad_clip=1.0", "method.rho_z=10", "method.rho_y=10")  # fmt: skip


def test_paper_mode_stops_at_budget_without_finetuning(cfg_factory, tmp_path):
    results = run(cfg_factory(*TINY, *DEFAULT_HP, "method.mode=paper", "method.budget=0.7", name="paper"))
    assert results["budget_met"] == 1.0 and results["predicted_cost_ratio"] <= 0.7
    assert not (tmp_path / "paper" / "finetune").exists()
    # no fine-tuning: the slim net is the masked net, so their accuracies agree
    assert results["test_acc"] == pytest.approx(results["masked_test_acc"], abs=1e-9)


def test_fallback_enforces_the_budget_when_admm_ends_above_it(cfg_factory, tmp_path):
    # s barely moves in one epoch: ADMM cannot reach 0.4 of the dense MACs, the greedy projection does
    results = run(
        cfg_factory(*TINY, "method.admm_epochs=1", "method.pslr=1e-6", "method.budget=0.4", name="fb")
    )
    admm = json.loads((tmp_path / "fb" / "admm" / "result.json").read_text())
    assert not admm["admm_budget_met"] and admm["fallback_groups"] > 0
    assert results["fallback_used"] == 1.0 and results["budget_met"] == 1.0
    assert results["predicted_cost_ratio"] <= 0.4
    assert results["measured_cost_ratio"] == pytest.approx(results["predicted_cost_ratio"], rel=1e-9)
    assert (tmp_path / "fb" / "finetune" / "model.pt").exists()


def test_ecc_prunes_the_hidden_widths_of_the_default_mlp(cfg_factory, tmp_path):
    # network=mlp (the default): its hidden widths are the slots, w_0 the flattened 8x8 digits
    results = run(
        cfg_factory("method=ecc", "network.hidden=[32,32]", "method.cost=macs", "method.samples=20")
    )
    assert results["budget_met"] == 1.0 and results["predicted_cost_ratio"] <= 0.5
    assert results["measured_cost_ratio"] == pytest.approx(results["predicted_cost_ratio"], rel=1e-9)
    assert results["macs_ratio"] == pytest.approx(results["measured_cost_ratio"], rel=1e-9)
    summary = json.loads((tmp_path / "run" / "ecc_summary.json").read_text())
    assert summary["dense_widths"] == [32, 32] and all(1 <= w <= 32 for w in summary["widths"])


def tiny_alexnet(seed: int, widths: list[int], hidden: list[int]):
    """A small alexnet_small, the same weights for the same seed (the fallback tests prune two copies)."""
    from common.models import build_model

    torch.manual_seed(seed)
    return build_model("alexnet_small", num_classes=10, in_channels=3, image_size=32,
                       widths=widths, hidden=hidden, dropout=0.0)  # fmt: skip


def test_projection_to_budget_is_greedy_and_deterministic():
    from ecc.admm import project_to_budget
    from ecc.energy_model import BilinearEnergyModel
    from ecc.prune import live_counts, width_chain

    def net():
        return tiny_alexnet(0, [8, 8, 8, 8, 8], [16, 16])

    chain = width_chain(net())
    em = BilinearEnergyModel(chain)
    em.a.copy_(torch.tensor([1.0, 1, 1, 1, 5, 1, 1, 1], dtype=torch.float64))  # slot 5 (conv5 -> fc1) is dear
    a, b = net(), net()
    widths, removed = project_to_budget(a, em, 0.7 * em.dense_cost())
    assert (widths, removed) == project_to_budget(b, em, 0.7 * em.dense_cost())
    assert widths == live_counts(a) and removed == sum(chain[1:-1]) - sum(widths)
    assert float(em.predict([chain[0], *widths, chain[-1]])) <= 0.7 * em.dense_cost()
    assert widths[4] == min(widths)  # the dearest width goes first


def test_projection_to_budget_matches_the_greedy_rule_one_prediction_at_a_time():
    # the batched search (one prediction per removal, cached candidates) against the rule written plainly
    from ecc.admm import project_to_budget
    from ecc.energy_model import BilinearEnergyModel
    from ecc.prune import group_scores, width_chain, width_slots

    def net():
        return tiny_alexnet(3, [6, 9, 7, 8, 5], [12, 10])

    chain = width_chain(net())
    em = BilinearEnergyModel(chain)
    torch.manual_seed(4)
    em.a.copy_(torch.rand(em.a.shape, dtype=torch.float64) * 3)
    budget = 0.35 * em.dense_cost()
    reference = net()
    slots = width_slots(reference)
    scores = [group_scores(slot).clone() for slot in slots]
    alive = [sc > 0 for sc in scores]
    phi = [int(a.sum()) for a in alive]
    order = []
    while float(em.predict([chain[0], *phi, chain[-1]])) > budget:
        current = float(em.predict([chain[0], *phi, chain[-1]]))
        best = None
        for u in range(len(slots)):
            if phi[u] <= 1:
                continue
            live = alive[u].nonzero().flatten()
            c = int(live[torch.argmin(scores[u][live])])
            saved = current - float(em.predict([chain[0], *phi[:u], phi[u] - 1, *phi[u + 1 :], chain[-1]]))
            ratio = saved / max(float(scores[u][c]), 1e-30)
            if saved > 0 and (best is None or ratio > best[0]):
                best = (ratio, u, c)
        _, u, c = best
        alive[u][c] = False
        phi[u] -= 1
        order.append((u, c))
    fast = net()
    widths, removed = project_to_budget(fast, em, budget)
    assert widths == phi and removed == len(order) > 5
    for u, slot in enumerate(width_slots(fast)):
        assert torch.equal(group_scores(slot) > 0, alive[u])


def small_net(name):
    """A small ``name`` network: admm_hparams reads only its structure (MobileNet-style or not)."""
    from common.models import build_model

    kwargs = {"alexnet_small": {"widths": [4, 4, 4, 4, 4], "hidden": [8, 8]}}.get(name, {"width_mult": 0.125})
    return build_model(name, num_classes=10, in_channels=3, image_size=32, **kwargs)


def hparams(cfg):
    """``admm_hparams`` of the checked ``cfg`` and its network."""
    from common.method import configure_method
    from ecc.task import admm_hparams

    configure_method(cfg)
    return admm_hparams(cfg, small_net(cfg.network.name))


def test_paper_mode_takes_the_original_hyperparameters_unless_overridden(cfg_factory):
    from ecc.task import DEFAULT_HP as DEFAULTS
    from ecc.task import PAPER_HP, PAPER_HP_MOBILENET

    assert hparams(cfg_factory(*TINY)) == DEFAULTS
    paper = hparams(cfg_factory(*TINY, "method.mode=paper"))
    assert paper == {**PAPER_HP, "psgrad_clip": None}
    assert (
        paper["primal"] == "sgd" and paper["plr"] == 1e-5 and paper["pslr"] == 0.01 and paper["rho_z"] == 1.0
    )
    mobile = hparams(cfg_factory("method=ecc", "network=mobilenet_v1", "method.mode=paper"))
    assert mobile == PAPER_HP_MOBILENET and mobile["primal"] == "adam" and mobile["rho_y"] == 10.0
    # a value the user gives wins in both modes
    assert hparams(cfg_factory(*TINY, "method.mode=paper", "method.plr=0.1"))["plr"] == 0.1
    assert hparams(cfg_factory(*TINY, "method.pslr=0.5"))["pslr"] == 0.5
    assert hparams(cfg_factory(*TINY, "method.psgrad_clip=0"))["psgrad_clip"] is None


@pytest.mark.parametrize("experiment", ["ecc_cifar10_alexnet", "ecc_cifar10_mobilenet"])
def test_paper_experiments_compose(cfg_factory, experiment):
    cfg = cfg_factory(f"experiment={experiment}", fast=False)
    assert cfg.method.name == "ecc" and cfg.dataset.name == "cifar10" and cfg.dataset.batch_size == 128
    assert cfg.method.mode == "paper" and cfg.method.admm_epochs == 1000 and cfg.method.budget == 0.5
    hp = hparams(cfg)
    if experiment.endswith("alexnet"):
        assert cfg.network.name == "alexnet_small" and cfg.network.dropout == 0.0
        assert cfg.method.cost == "tx2_alexnet" and hp["primal"] == "sgd" and hp["pslr"] == 0.01
    else:
        assert cfg.network.name == "mobilenet_v1" and cfg.method.cost == "energy_nvml"
        assert hp["primal"] == "adam" and hp["plr"] == 1e-5 and hp["rho_z"] == 10.0


def test_infeasible_budget_is_refused(cfg_factory):
    with pytest.raises(ConfigError, match="infeasible"):
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


def test_relative_budget_is_relative_to_the_measured_dense_cost():
    from omegaconf import OmegaConf

    from ecc.cost import sample_widths
    from ecc.energy_model import BilinearEnergyModel
    from ecc.task import energy_budget

    ub = [3, 16, 24, 32, 10]
    inner = sample_widths(ub[1:-1], 50, seed=0)
    chains = np.concatenate([np.full((50, 1), ub[0]), inner, np.full((50, 1), ub[-1])], axis=1)
    x = chains / np.array(ub, dtype=float)
    costs = (x[:, :-1] * x[:, 1:]).sum(1) + 0.5  # a = 1, b = 0.5: the model's dense cost is 4.5
    em = BilinearEnergyModel(ub).fit(chains, costs)
    m = OmegaConf.create({"budget": 0.5, "budget_absolute": False, "budget_reference": "measured"})
    # the dense net measured 4.0 (the fit misses its corner): "half the dense cost" means 2.0
    assert energy_budget(m, em, ub, {"dense_measured": 4.0}) == pytest.approx((2.0, 4.0))
    assert energy_budget(
        OmegaConf.merge(m, {"budget_reference": "model"}), em, ub, {"dense_measured": 4.0}
    ) == (pytest.approx((2.25, 4.5)))
    assert energy_budget(m, em, ub, {}) == pytest.approx((2.25, 4.5))  # nothing measured (tx2_alexnet)
    with pytest.raises(ConfigError, match="method.budget.*infeasible"):
        energy_budget(OmegaConf.merge(m, {"budget": 0.05}), em, ub, {"dense_measured": 4.0})
