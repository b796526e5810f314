"""NetAdapt baseline (``ecc.netadapt``): per-slot proposals, largest-norm filters kept, the loop, determinism."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from common.factory import make_data, make_model
from common.metrics import count_macs
from ecc.netadapt import keep_largest, layer_proposal, netadapt, short_term_finetune, shrink_slot
from ecc.prune import slim_to_widths, width_chain, width_slots
from launch.run import run
from tests.ecc.test_task import TINY  # the tiny alexnet_small ECC run


def chain_cost(widths):
    """Bilinear chain [1, w_1, ..., w_L, 1] with unit coefficients: sum of w_j w_{j+1}."""
    chain = [1, *widths, 1]
    return float(sum(a * b for a, b in itertools.pairwise(chain)))


def test_layer_proposal_hand_case():
    # [1, 4, 4, 1]: 4 + 16 + 4 = 24; slot 0 at w: 5w + 4 <= 15 -> w = 2 (2.2 rounded down)
    assert chain_cost([4, 4]) == 24
    assert layer_proposal([4, 4], 0, 15.0, chain_cost) == 2
    assert layer_proposal([4, 4], 1, 15.0, chain_cost) == 2
    assert layer_proposal([4, 4], 0, 14.0, chain_cost) == 2  # exactly on the target counts
    assert layer_proposal([4, 4], 0, 13.9, chain_cost) == 1
    assert layer_proposal([4, 4], 0, 8.0, chain_cost) is None  # even one channel costs 9
    assert layer_proposal([4, 4], 0, 24.0, chain_cost) == 4  # already there: nothing removed


def test_layer_proposal_is_the_fewest_channels_removed():
    rng = random.Random(0)
    for _ in range(200):
        widths = [rng.randint(1, 20) for _ in range(rng.randint(1, 5))]
        u = rng.randrange(len(widths))
        target = rng.uniform(0, chain_cost(widths))
        ok = [w for w in range(1, widths[u] + 1) if chain_cost([*widths[:u], w, *widths[u + 1 :]]) <= target]
        assert layer_proposal(widths, u, target, chain_cost) == (max(ok) if ok else None)


def tiny_alexnet():
    torch.manual_seed(0)
    from common.models import build_model

    return build_model(
        "alexnet_small",
        num_classes=10,
        in_channels=1,
        image_size=32,
        widths=[16, 32, 32, 32, 32],
        hidden=[64, 64],
    ).eval()


def test_kept_filters_are_the_largest_norm_ones():
    model = tiny_alexnet()
    slot = width_slots(model)[1]  # features.1.conv, 32 filters
    scale = torch.tensor([float((7 * c) % 32 + 1) for c in range(32)])  # a permutation of 1..32
    with torch.no_grad():
        slot.producer.weight.copy_(torch.ones_like(slot.producer.weight) * scale.view(-1, 1, 1, 1))
    keep = keep_largest(slot, 5)
    assert keep.tolist() == sorted(scale.argsort(descending=True)[:5].tolist())
    slim_net = shrink_slot(model, 1, 5)
    assert width_chain(slim_net) == [1, 16, 5, 32, 32, 32, 64, 64, 10]
    kept = width_slots(slim_net)[1].producer.weight
    assert torch.equal(kept, slot.producer.weight[keep])
    assert sorted(kept.flatten(1)[:, 0].tolist()) == [28.0, 29.0, 30.0, 31.0, 32.0]


def tiny_netadapt(cfg, budget=0.5, seed=0):
    device = torch.device("cpu")
    data = make_data(cfg, device)
    torch.manual_seed(0)
    model = make_model(cfg, data, device)
    x1 = next(iter(data.test.epoch_iter(0)))[0][:1]
    dense = count_macs(model, x1)

    def cost(widths):
        return float(count_macs(slim_to_widths(model, widths), x1))

    def short_term(net, it):
        short_term_finetune(net, itertools.islice(data.train.epoch_iter(it), 2), lr=0.05)

    def score(net):
        return sum(int((net(x).argmax(1) == y).sum()) for x, y in data.val.epoch_iter(0))

    res = netadapt(model, cost, budget * dense, iterations=3, short_term=short_term, score=score, seed=seed)
    return res, cost, dense, x1


def test_netadapt_ends_under_budget_with_exact_macs_and_is_deterministic(cfg_factory):
    cfg = cfg_factory(*TINY, name="na")
    res, cost, dense, x1 = tiny_netadapt(cfg)
    assert res.cost <= 0.5 * dense and 1 <= len(res.history) <= 3  # constant step: at most `iterations`
    assert width_chain(res.model)[1:-1] == res.widths
    assert count_macs(res.model, x1) == pytest.approx(cost(res.widths), rel=1e-12)
    assert [h["cost"] for h in res.history] == sorted((h["cost"] for h in res.history), reverse=True)
    assert all(h["cost"] <= h["target"] for h in res.history)
    again, *_ = tiny_netadapt(cfg)
    assert again.widths == res.widths and again.history == res.history
    state, state2 = res.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_bench_netadapt_job_runs_through_launch(cfg_factory, monkeypatch):
    import bench.ecc

    monkeypatch.setattr(bench.ecc, "NETADAPT_ITERATIONS", 3)
    monkeypatch.setattr(bench.ecc, "NETADAPT_BATCHES", 2)
    overrides = (*TINY, "method.budget=0.5", "trainer.epochs=1", "method.plugin=bench.ecc:NETADAPT_FT")
    r = run(cfg_factory(*overrides, name="job"))
    assert r["macs_ratio"] <= 0.5 and 0.0 <= r["test_acc"] <= 1.0
    assert 1 <= r["netadapt_iterations"] <= 3
