"""ECC on a concatenating net: a small DenseNet-BC's slots read at offsets, exact MACs, slim == masked, ADMM."""

from __future__ import annotations

import pytest
import torch

from common.metrics import count_macs
from common.models import build_model
from ecc.admm import ECCState, ECCStep
from ecc.energy_model import BilinearEnergyModel
from ecc.prune import (
    CoupledSlot,
    group_scores,
    layer_macs,
    live_counts,
    slim,
    slim_masked,
    slim_to_widths,
    width_chain,
    width_edges,
    width_slots,
    zero_groups,
)
from tests.ecc.test_prune_cost import randomize_bn

DEPTH, GROWTH = 16, 4  # two bottleneck layers per dense block


def _densenet(seed=0, in_channels=3, num_classes=10):
    torch.manual_seed(seed)
    model = build_model(
        "densenet_bc100",
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=32,
        depth=DEPTH,
        growth_rate=GROWTH,
    )
    return randomize_bn(model)


def _macs_model(model, x):
    chain, edges = width_chain(model), width_edges(model)
    macs_model = BilinearEnergyModel(chain, edges)
    for i, j, macs in layer_macs(model, x):
        macs_model.a[edges.index((i, j))] += macs
    return macs_model


def test_slots_read_the_concatenation_at_offsets():
    model = _densenet()
    slots = width_slots(model)
    assert all(isinstance(s, CoupledSlot) for s in slots)
    # stem, per dense layer its bottleneck (4k) and its new channels (k), two transitions
    assert len(slots) == 1 + 3 * 2 * 2 + 2
    by_name = {s.name: s for s in slots}
    stem, new0, new1 = by_name["stem"], by_name["block1.0.conv2"], by_name["block1.1.conv2"]
    assert (stem.width, new0.width, new1.width, by_name["block1.0.conv1"].width) == (8, 4, 4, 16)
    # trans1.conv reads cat(stem, layer 0, layer 1): columns 0..7, 8..11, 12..15
    trans = model.trans1.conv
    assert {stem.offset(trans), new0.offset(trans), new1.offset(trans)} == {0, 8, 12}
    assert new0.offset(model.block1[1].conv1) == 8 and stem.offset(model.block1[1].conv1) == 0
    assert set(stem.consumers) == {model.block1[0].conv1, model.block1[1].conv1, trans}
    # every consumer's input channels are exactly the concatenation of the slots it reads
    spans = {}
    for s in slots:
        for c in s.consumers:
            spans.setdefault(c, []).append((s.offset(c), s.width))
    for c, parts in spans.items():
        parts.sort()
        starts = [sum(w for _, w in parts[:k]) for k in range(len(parts))]
        assert [o for o, _ in parts] == starts and sum(w for _, w in parts) == c.weight.shape[1]
    # edges: one term per input slot of a layer; the head fc reads trans2 and block 3's new channels
    edges = width_edges(model)
    fc_edges = [e for e in edges if e[1] == len(slots) + 1]
    assert len(fc_edges) == 3 and len(edges) == len(set(edges)) == 25


def test_group_c_of_a_slot_is_column_offset_plus_c():
    model = _densenet()
    new0 = next(s for s in width_slots(model) if s.name == "block1.0.conv2")
    dead = torch.tensor([False, True, False, True])
    zero_groups(new0, dead)
    for consumer in new0.consumers:
        w = consumer.weight.detach()
        off = new0.offset(consumer)
        assert bool((w[:, off + 1] == 0).all()) and bool((w[:, off + 3] == 0).all())
        assert int((w.flatten(2).abs().sum(dim=(0, 2)) == 0).sum()) == 2  # nothing else was zeroed
    assert group_scores(new0).gt(0).tolist() == [True, False, True, False]
    assert live_counts(model)[[s.name for s in width_slots(model)].index("block1.0.conv2")] == 2


def test_macs_are_exactly_bilinear_in_random_slim_widths():
    model = _densenet()
    x = torch.randn(1, 3, 32, 32)
    chain = width_chain(model)
    macs_model = _macs_model(model, x)
    dense = count_macs(model, x)
    assert macs_model.dense_cost() == pytest.approx(dense, rel=1e-12)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        widths = [int(torch.randint(1, w + 1, (1,), generator=g)) for w in chain[1:-1]]
        net = slim_to_widths(model, widths)
        assert width_chain(net)[1:-1] == widths
        predicted = float(macs_model.predict([chain[0], *widths, chain[-1]]))
        assert count_macs(net, x) == pytest.approx(predicted, rel=1e-9)


def test_slim_logits_equal_masked_logits():
    model = _densenet()
    x = torch.randn(3, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    for slot in width_slots(model):
        dead = torch.rand(slot.width, generator=g) < 0.5
        dead[0] = False
        zero_groups(slot, dead)
    slim_net, widths = slim_masked(model)
    assert widths == live_counts(model) == width_chain(slim_net)[1:-1]
    assert sum(widths) < sum(width_chain(model)[1:-1])
    torch.testing.assert_close(slim_net(x), model(x), atol=1e-5, rtol=0)
    # MACs of the slim net are the bilinear prediction
    chain = width_chain(model)
    macs_model = _macs_model(model, x)
    assert count_macs(slim_net, x[:1]) == pytest.approx(
        float(macs_model.predict([chain[0], *widths, chain[-1]])), rel=1e-9
    )
    # the slim state dict reloads into the dense net slimmed to the same widths
    again = slim(_densenet(), [torch.arange(w) for w in widths])
    again.load_state_dict(slim_net.state_dict())
    torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=0)


def test_admm_steps_on_densenet():
    model = _densenet(num_classes=4).train()
    chain = width_chain(model)
    em = BilinearEnergyModel(chain, width_edges(model))
    em.a.fill_(1.0)
    state = ECCState(torch.tensor(chain[1:-1], dtype=torch.float64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    budget = 0.5 * em.dense_cost()
    step = ECCStep(
        model, None, opt, em, budget, state, pslr=5.0, rho_y=1.0, distill=0.0, stop_at_budget=False
    )
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2,))
    for _ in range(3):
        step(x, y)
        assert live_counts(model) == [int(p) for p in step.phi]
        assert state.z >= 0 and bool((state.y >= 0).all()) and bool((state.s >= 1).all())
        assert all(p >= min(int(s), w) for p, s, w in zip(step.phi.tolist(), state.s.tolist(), chain[1:-1]))
    # the prox pruned groups, among them slots read at a non-zero offset (a dense layer's new channels)
    pruned = [u for u, (p, w) in enumerate(zip(step.phi.tolist(), chain[1:-1])) if p < w]
    assert any(width_slots(model)[u].offsets for u in pruned)
    model.eval()
    slim_net, widths = slim_masked(model)
    assert widths == live_counts(model) == width_chain(slim_net)[1:-1]
    torch.testing.assert_close(slim_net(x), model(x), atol=1e-5, rtol=1e-5)


def test_ecc_run_on_a_small_densenet_ends_under_budget(cfg_factory):
    from launch.run import run

    results = run(
        cfg_factory(
            "method=ecc",
            "network=densenet_bc100",
            f"network.depth={DEPTH}",
            f"network.growth_rate={GROWTH}",
            "method.cost=macs",
            "method.samples=60",
            "method.admm_epochs=30",
            "optimizer.lr=0.05",
            "trainer.epochs=1",
        )
    )
    assert results["budget_met"] == 1.0 and results["predicted_cost_ratio"] <= 0.5
    assert results["holdout_mrae"] < 1e-9  # MACs of a concatenating net are exactly bilinear over its edges
    assert results["measured_cost_ratio"] == pytest.approx(results["predicted_cost_ratio"], rel=1e-9)
    assert results["macs_ratio"] == pytest.approx(results["measured_cost_ratio"], rel=1e-9)
