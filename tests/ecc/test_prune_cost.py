"""Slim equals masked for every supported network; the cost backends; the random-width data set."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from common.metrics import count_macs, count_parameters
from common.models import build_model
from ecc.cost import CostBackendUnavailable, collect_cost_data, make_backend, sample_widths
from ecc.energy_model import BilinearEnergyModel
from ecc.prune import (
    CoupledSlot,
    layer_macs,
    live_counts,
    slim,
    slim_masked,
    width_chain,
    width_edges,
    width_slots,
    zero_groups,
)

NETS = {
    "mlp": dict(hidden=[20, 24, 16]),
    "lenet5": {},
    "alexnet_small": dict(widths=[8, 12, 16, 12, 10], hidden=[20, 24], dropout=0.0),
    "vgg11": dict(width_mult=0.125),
    "vgg11_bn": dict(width_mult=0.125),
    "mobilenet_v1": dict(width_mult=0.125),
    "mobilenet_v1_imagenet": dict(width_mult=0.125),
}


def randomize_bn(model):
    """Non-trivial BN statistics and affine terms, so a wrong slice or offset shows; returns the model in eval."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    return model.eval()


def _net(name, in_channels=3):
    torch.manual_seed(0)
    return randomize_bn(
        build_model(name, num_classes=10, in_channels=in_channels, image_size=32, **NETS.get(name, {}))
    )


@pytest.mark.parametrize("name", sorted(NETS))
def test_slim_logits_equal_masked_logits(name):
    model = _net(name)
    g = torch.Generator().manual_seed(1)
    for slot in width_slots(model):
        dead = torch.rand(slot.width, generator=g) < 0.5
        dead[0] = False
        zero_groups(slot, dead)
    x = torch.randn(3, 3, 32, 32)
    slim_net, widths = slim_masked(model)
    assert widths == live_counts(model) == width_chain(slim_net)[1:-1]
    torch.testing.assert_close(slim_net(x), model(x), atol=1e-5, rtol=0)
    assert count_parameters(slim_net) < count_parameters(model)
    # the slim net is a normal module: its state dict loads into a net slimmed to the same widths
    again = slim(_net(name), [torch.arange(w) for w in widths])
    again.load_state_dict(slim_net.state_dict())
    torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=0)


def test_dense_cost_is_the_median_of_checks_spread_over_the_run_not_the_warm_up():
    from ecc.cost import DENSE_CHECKS, MacsCost

    class ColdStart(MacsCost):
        """MACs, but the first two measurements (all-ones, then dense) are 1.5x slow, as a cold process is."""

        calls = 0

        def measure(self, model, example):
            ColdStart.calls += 1
            return super().measure(model, example) * (1.5 if ColdStart.calls <= 2 else 1.0)

    model = _net("alexnet_small")
    x = torch.randn(1, 3, 32, 32)
    _, _, meta = collect_cost_data(model, x, ColdStart(), 25, show_progress=False)
    dense = count_macs(model, x)
    assert meta["dense_cost"] == dense and meta["dense_cost_first"] == 1.5 * dense
    assert len(meta["dense_cost_checks"]) == DENSE_CHECKS


def test_alexnet_macs_are_exactly_bilinear_in_the_widths():
    model = _net("alexnet_small")
    backend = make_backend("macs")
    chains, costs, meta = collect_cost_data(
        model, torch.randn(1, 3, 32, 32), backend, 30, show_progress=False
    )
    assert chains.shape == (30, 9) and meta["dense_cost"] == count_macs(model, torch.randn(1, 3, 32, 32))
    fit = BilinearEnergyModel(meta["width_upper_bounds"]).fit(chains, costs)
    assert fit.mrae(chains, costs) < 1e-9  # conv and fc MACs are w_j w_{j+1} k^2 HW: no residual
    assert float(fit.b) == pytest.approx(0.0, abs=1e-6 * meta["dense_cost"])
    assert fit.dense_cost() == pytest.approx(meta["dense_cost"], rel=1e-9)


def test_sample_widths_are_uniform_in_range_and_seeded():
    w = sample_widths([4, 7], 2000, seed=1)
    assert w.min() == 1 and w[:, 0].max() == 4 and w[:, 1].max() == 7
    assert np.array_equal(w, sample_widths([4, 7], 2000, seed=1))
    assert abs(w[:, 1].mean() - 4.0) < 0.2


def test_cpu_latency_is_positive_and_repeatable():
    model = _net("alexnet_small")
    backend = make_backend("latency_cpu", repeats=15, warmup=3)
    x = torch.randn(1, 3, 32, 32)
    t1, t2 = backend.measure(model, x), backend.measure(model, x)
    assert t1 > 0 and t2 > 0
    assert 0.33 < t1 / t2 < 3.0  # shared 2-core machine: repeatable within noise


@pytest.mark.parametrize("name", ["latency_cuda", "energy_nvml", "energy_rapl"])
def test_unavailable_backends_say_why_in_one_line(name):
    try:
        make_backend(name)
    except CostBackendUnavailable as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.startswith(name) and ("latency_cpu" in msg or "latency_cuda" in msg)
    else:  # runs here: nothing to check on this machine
        pytest.skip(f"{name} is available on this machine")


def test_unknown_backend():
    with pytest.raises(ValueError, match="latency_cpu"):
        make_backend("joules")


def test_resnet18_coupled_slots_slim_equals_masked_and_macs_shrink_as_predicted():
    model = _net("resnet18")
    slots = width_slots(model)
    assert all(isinstance(s, CoupledSlot) for s in slots) and len(slots) == 12
    # the residual stream of stage 1 is one slot: stem, both conv2 of layer1 (and their BNs) are coupled
    stream = slots[0]
    assert {model.layer1[0].conv2, model.layer1[1].conv2} <= set(stream.producers)
    assert {model.layer1[0].conv1, model.layer1[1].conv1, model.layer2[0].conv1} <= set(stream.consumers)
    x = torch.randn(3, 3, 32, 32)
    chain = width_chain(model)
    edges = width_edges(model)
    # the exact MACs model: one bilinear term per edge, a_e = the dense MACs of its layers, b = 0
    macs_model = BilinearEnergyModel(chain, edges)
    for i, j, macs in layer_macs(model, x):
        macs_model.a[edges.index((i, j))] += macs
    dense_macs = count_macs(model, x[:1])
    assert macs_model.dense_cost() == pytest.approx(dense_macs, rel=1e-12)

    g = torch.Generator().manual_seed(1)
    for slot in slots:
        dead = torch.rand(slot.width, generator=g) < 0.5
        dead[0] = False
        zero_groups(slot, dead)
    slim_net, widths = slim_masked(model)
    assert widths == live_counts(model) == width_chain(slim_net)[1:-1]
    torch.testing.assert_close(slim_net(x), model(x), atol=1e-5, rtol=0)
    predicted = float(macs_model.predict([chain[0], *widths, chain[-1]])) / dense_macs
    assert count_macs(slim_net, x[:1]) / dense_macs == pytest.approx(predicted, rel=1e-12)
    assert predicted < 0.5
    # the slim state dict reloads into the dense net slimmed to the same widths
    again = slim(_net("resnet18"), [torch.arange(w) for w in widths])
    again.load_state_dict(slim_net.state_dict())
    torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=0)
    # the edge model survives save / load
    restored = BilinearEnergyModel.from_state(macs_model.to_state())
    assert restored.edges.tolist() == [list(e) for e in edges]


def test_concatenating_network_has_coupled_slots_read_at_offsets():
    # DenseNet is supported since its consumers read slots at offsets (more in tests/ecc/test_densenet.py)
    model = build_model("densenet_bc100", num_classes=10, in_channels=3, image_size=32, depth=10)
    slots = width_slots(model)
    assert all(isinstance(s, CoupledSlot) for s in slots) and len(slots) == 1 + 3 * 2 + 2
    assert any(s.offsets for s in slots)


def test_mlp_hidden_widths_are_slots_and_its_macs_are_exactly_bilinear():
    model = _net("mlp")  # 3x32x32 flattened -> 20 -> 24 -> 16 -> 10
    slots = width_slots(model)
    assert [s.name for s in slots] == ["layers.0.fc", "layers.1.fc", "layers.2.fc"]
    edges = width_edges(model)
    assert width_chain(model) == [3 * 32 * 32, 20, 24, 16, 10] and edges == [(0, 1), (1, 2), (2, 3), (3, 4)]
    x = torch.randn(1, 3, 32, 32)
    chains, costs, meta = collect_cost_data(model, x, make_backend("macs"), 20, show_progress=False)
    fit = BilinearEnergyModel(meta["width_upper_bounds"]).fit(chains, costs)
    assert fit.mrae(chains, costs) < 1e-9  # the MACs of a linear layer are w_in w_out
    # the exact MACs model of the chain: a_j = the dense MACs of layer j; a slim net's MACs are its prediction
    exact = BilinearEnergyModel(width_chain(model))
    for i, j, macs in layer_macs(model, x):
        exact.a[edges.index((i, j))] += macs
    assert exact.dense_cost() == count_macs(model, x)
    slim_net = slim(model, [torch.tensor([0, 3, 7]), torch.arange(24)[::5], torch.tensor([15])])
    assert width_chain(slim_net) == [3 * 32 * 32, 3, 5, 1, 10]
    assert count_macs(slim_net, x) == pytest.approx(float(exact.predict(width_chain(slim_net))), rel=1e-12)


def test_coupled_nets_are_traced_at_the_data_shape_and_copies_keep_it(monkeypatch):
    import torch_pruning as tp

    from ecc.prune import set_input_shape, slim_to_widths

    shapes = []
    build = tp.DependencyGraph.build_dependency

    def spy(self, model, example_inputs, *args, **kwargs):
        shapes.append(tuple(example_inputs.shape))
        return build(self, model, example_inputs, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", spy)
    torch.manual_seed(0)
    model = build_model(
        "wrn28_10", num_classes=10, in_channels=1, image_size=40, depth=10, widen_factor=1
    ).eval()
    set_input_shape(model, (1, 40, 40))
    chain = width_chain(model)
    twin = copy.deepcopy(model)  # what phase_admm's student is
    width_slots(twin)
    small = slim_to_widths(model, [max(1, w // 2) for w in chain[1:-1]])
    width_slots(small)
    # the net, its deep copy, slim's copy and the slim net: each traced once, at the recorded shape
    assert shapes == [(1, 1, 40, 40)] * 4
    assert small(torch.randn(2, 1, 40, 40)).shape == (2, 10)


def test_the_task_tells_the_net_its_data_shape(cfg_factory, monkeypatch):
    import torch_pruning as tp

    from common.factory import make_data
    from ecc.task import build_net

    shapes = []
    build = tp.DependencyGraph.build_dependency
    monkeypatch.setattr(
        tp.DependencyGraph,
        "build_dependency",
        lambda self, model, example_inputs, **kw: (
            shapes.append(tuple(example_inputs.shape)) or build(self, model, example_inputs, **kw)
        ),
    )
    # digits resized to 40 px (the net's minimum input size), one channel
    cfg = cfg_factory(
        "method=ecc",
        "network=wrn28_10",
        "network.depth=10",
        "network.widen_factor=1",
        "network.min_input_size=40",
    )
    data = make_data(cfg, torch.device("cpu"))
    width_chain(build_net(cfg, data, torch.device("cpu")))
    assert shapes == [(1, 1, 40, 40)]
