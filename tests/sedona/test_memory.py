"""``sedona.memory``: the saved-activation meter, per-block costs and the memory-balanced split."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sedona import build_decoupled, uniform_split
from sedona.memory import SavedActivationMeter, balanced_split, block_costs
from sedona.network import Decoupling


def test_meter_counts_each_storage_once_and_leaves_out_parameters():
    x = torch.randn(4, requires_grad=True)  # 16 bytes
    meter = SavedActivationMeter()
    with meter.hooks():
        y = x * x  # saves x twice: one storage
        assert meter.live == 16
        z = y.sin()  # saves y
        assert meter.live == 32
    z.sum().backward()
    assert meter.peak == 32 and meter.live == 0
    lin = nn.Linear(3, 2).double()
    meter = SavedActivationMeter(lin.parameters())
    with meter.hooks():
        out = lin(torch.randn(5, 3, dtype=torch.float64))  # saves its input (120 bytes) and the weight
    assert meter.live == 5 * 3 * 8
    del out
    assert meter.live == 0


def test_meter_releases_a_dropped_graph_with_in_place_saved_outputs():
    # an in-place ReLU saves its output; holding it with its grad_fn would keep the graph alive
    head = nn.Sequential(
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 3)
    )
    meter = SavedActivationMeter(head.parameters())
    with meter.hooks():
        loss = head(torch.randn(2, 4, 4, 4)).sum()
        assert meter.live > 0
        del loss
    assert meter.live == 0 and meter.refs == {}


def _additive(units: list[float]) -> torch.Tensor:
    L = len(units)
    c = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(i, L):
            c[i, j] = sum(units[i : j + 1])
    return c


def test_balanced_split_hand_cases():
    costs = _additive([4, 1, 1, 1, 1])
    assert balanced_split(costs, 1) == (4,)
    assert balanced_split(costs, 2) == (0, 4)  # {0} | {1..4}: both 4
    assert balanced_split(costs, 3) == (0, 1, 4)  # max 4 either way, same sum: earliest cuts
    assert balanced_split(costs, 5) == (0, 1, 2, 3, 4)
    # equal units: the balanced split is the uniform one
    assert balanced_split(_additive([1.0] * 8), 4) == uniform_split(8, 4).block_ends == (1, 3, 5, 7)
    # a heavy last unit pulls the cuts to the end
    assert balanced_split(_additive([1, 1, 1, 1, 1, 1, 6]), 3) == (2, 5, 6)


def test_block_costs_equal_the_measured_per_block_peak_and_touch_nothing():
    torch.manual_seed(0)
    net = build_decoupled("vgg19", 10, 3, image_size=32, feat_mult=0.25, aux="mlp_sr", heads=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    rng = torch.get_rng_state()
    costs = block_costs(net, x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(net.aux) == 0 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    uniform = uniform_split(net.num_units, 4)
    balanced = Decoupling(balanced_split(costs, 4))

    def heaviest(ends):
        starts = (0, *(e + 1 for e in ends[:-1]))
        return max(float(costs[s, e]) for s, e in zip(starts, ends))

    assert heaviest(balanced.block_ends) < 0.75 * heaviest(uniform.block_ends)
    for dec in (uniform, balanced):
        net.set_decoupling(dec)
        meter = SavedActivationMeter(net.parameters())
        with meter.hooks():
            for loss, _ in net.block_outputs(x, y, dec):
                loss.backward()
                del loss
        # the probe's figure is the peak a real per-block step reaches (BN in train mode, same batch)
        assert meter.peak == heaviest(dec.block_ends)


def _balanced_run(cfg_factory, tmp_path, *extra: str):
    """``method=sedona`` with the balanced split of SEDONA's VGG-19 (fm 0.25) into 4 blocks, one step."""
    from launch.run import run

    cfg = cfg_factory(
        "method=sedona",
        "network=vgg19",
        "method.decoupling=balanced",
        "method.num_blocks=4",
        "method.feat_mult=0.25",
        "trainer.limit_train_batches=1",
        *extra,
    )
    results = run(cfg)
    assert results["num_blocks"] == 4
    return cfg, json.loads((tmp_path / "run" / "decoupling.json").read_text())


def test_method_sedona_with_the_balanced_split(cfg_factory, tmp_path):
    _, dec = _balanced_run(cfg_factory, tmp_path)
    # the split the probe chooses for this net (heads = method.aux), not the uniform (3, 7, 11, 15)
    torch.manual_seed(0)
    net = build_decoupled("vgg19", 10, 1, image_size=32, feat_mult=0.25, aux="mlp_sr", heads=False)
    x, y = torch.randn(4, 1, 32, 32), torch.arange(4)
    assert tuple(dec["block_ends"]) == balanced_split(block_costs(net, x, y), 4) != (3, 7, 11, 15)
    assert dec["heads"] == [None] * 3  # the net's aux (mlp_sr), as for the uniform split


class _Workspace(torch.autograd.Function):
    """Identity whose backward needs a large scratch buffer, as a cuDNN convolution's backward does: the
    allocator sees it, the saved-tensor meter cannot."""

    @staticmethod
    def forward(ctx, x, nbytes):
        ctx.nbytes = nbytes
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        scratch = torch.empty(ctx.nbytes, dtype=torch.uint8).fill_(1)
        out = g * scratch[:1].float()  # the result depends on the scratch: it is held while computed
        del scratch
        return out, None


class _Unit(nn.Module):
    def __init__(self, channels: int, workspace: int = 0):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.workspace = workspace

    def forward(self, x):
        h = torch.relu(x * self.scale)
        return _Workspace.apply(h, self.workspace) if self.workspace else h


class _WorkspaceNet(nn.Module):
    """Six units of equal activation bytes; the third one's backward needs a scratch of ten activations."""

    def __init__(self, channels=16, size=32, batch=16):
        super().__init__()
        act = batch * channels * size * size * 4
        self.units = nn.ModuleList([_Unit(channels, 10 * act if u == 2 else 0) for u in range(6)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def blocks(self):
        return [*self.units, self.head]

    def forward(self, x):
        for unit in self.units:
            x = unit(x)
        return self.head(x)


def test_balancing_the_allocator_peak_cuts_around_a_workspace_the_saved_bytes_cannot_see():
    from common.memory import peak_bytes
    from sedona.memory import balanced_decoupling, block_peaks

    torch.manual_seed(0)
    x, y = torch.randn(16, 16, 32, 32), torch.randint(0, 10, (16,))
    net = build_decoupled(_WorkspaceNet(), 10, 16, input_shape=(16, 32, 32), aux="mlp_sr", heads=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    peaks = block_peaks(net, x, y)
    assert len(net.aux) == 0 and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    saved = block_costs(net, x, y)
    # the allocator sees what autograd saves, and the scratch of unit 2's backward in every block holding it
    act = 16 * 16 * 32 * 32 * 4
    assert bool((peaks >= saved).all())
    holds = [(i, j) for i in range(6) for j in range(i, 6) if i <= 2 <= j]
    assert all(peaks[i, j] >= 10 * act for i, j in holds)
    assert all(peaks[i, j] < 10 * act for i in range(6) for j in range(i, 6) if (i, j) not in holds)
    # the scratch is needed while the saved tensors of the units before unit 2 in its block are still held: the
    # block that starts at unit 2 peaks lowest
    assert peaks[2, 5] < peaks[1, 5] < peaks[0, 5]
    by_saved = balanced_decoupling(net, 2, x, y, measure="saved")
    by_allocator = balanced_decoupling(net, 2, x, y, measure="allocator")
    assert by_saved.block_ends == (2, 5)  # equal units: three and three
    assert by_allocator.block_ends == (1, 5)  # unit 2 opens the second block

    def step_peak(dec):  # the real per-block step, as greedy training runs it
        net.set_decoupling(dec)
        net.zero_grad(set_to_none=True)

        def step():
            for loss, _ in net.block_outputs(x, y, dec):
                loss.backward()
                del loss

        step()  # warm-up
        net.zero_grad(set_to_none=True)
        return peak_bytes(step, "cpu")

    real = {dec.block_ends: step_peak(dec) for dec in (by_saved, by_allocator)}
    assert real[(1, 5)] < real[(2, 5)] - 0.5 * act
    for ends, peak in real.items():
        # the probe's heaviest block is the real step's peak, less what a step also holds across blocks (the
        # previous block's output handed on, its gradients): at most about one activation here
        starts = (0, *(e + 1 for e in ends[:-1]))
        heaviest = max(float(peaks[s, e]) for s, e in zip(starts, ends))
        assert heaviest <= peak <= heaviest + 1.25 * act


def test_balance_by_auto_is_the_allocator_on_cuda_and_the_saved_bytes_elsewhere():
    from sedona.greedy_training import balance_measure
    from sedona.memory import balanced_decoupling

    assert balance_measure("auto", torch.device("cuda:0")) == "allocator"
    assert balance_measure("auto", torch.device("cpu")) == "saved"
    assert balance_measure("allocator", torch.device("cpu")) == "allocator"
    net = build_decoupled(_WorkspaceNet(), 10, 16, input_shape=(16, 32, 32), heads=False)
    with pytest.raises(ValueError, match="saved, allocator"):
        balanced_decoupling(net, 2, torch.randn(2, 16, 32, 32), torch.arange(2), measure="peak")


def test_method_sedona_balanced_by_the_allocator_peak(cfg_factory, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="sedona")
    cfg, dec = _balanced_run(cfg_factory, tmp_path, "method.balance_by=allocator")
    assert len(dec["block_ends"]) == 4 and dec["block_ends"][-1] == 15
    log = caplog.text
    batch = int(cfg.dataset.batch_size)  # the probe is a batch of the training size, not 4 samples
    assert (
        f"balanced split by the cpu allocator step peak (probe batch {batch}): ends {tuple(dec['block_ends'])}"
        in log
    )


def test_greedy_blocks_train_a_larger_batch_than_backprop_under_the_same_cap(one_thread):
    # the cap: what backprop's step needs at batch 16 (parameters + the CPU allocator's step peak, the batch
    # allocated inside); backprop's largest batch under it is then 16, give or take the allocator's rounding,
    # and K = 4 balanced by the allocator's peak trains a clearly larger one (measured: 16 against 29; the first
    # unit alone, the 32-px convolutions, bounds it)
    from sedona.memory import balanced_decoupling, largest_batch_under_cap, step_footprint

    torch.manual_seed(0)
    net = build_decoupled("vgg19", 10, 3, image_size=32, feat_mult=0.125, aux="mlp_sr", heads=False)
    backprop = uniform_split(net.num_units, 1)
    rng = torch.get_rng_state()
    cap = step_footprint(net, backprop, 16, (3, 32, 32))
    b1, tries = largest_batch_under_cap(net, backprop, cap, (3, 32, 32), start=4, limit=256)
    assert 16 <= b1 < 20 and tries <= 8
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    k4 = balanced_decoupling(net, 4, x, y, measure="allocator")
    b4, _ = largest_batch_under_cap(net, k4, cap, (3, 32, 32), start=4, limit=256)
    assert b4 >= 1.5 * b1
    assert all(p.grad is None for p in net.parameters())  # nothing left behind


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_backprop_fits_its_own_footprint_and_k4_a_larger_batch():
    # each tried step really runs under set_per_process_memory_fraction; the footprint is the reserved peak
    from sedona.memory import balanced_decoupling, largest_batch_under_cap, step_footprint

    torch.manual_seed(0)
    net = build_decoupled("vgg19", 10, 3, image_size=32, feat_mult=0.25, aux="mlp_sr", heads=False).cuda()
    backprop = uniform_split(net.num_units, 1)
    cap = step_footprint(net, backprop, 256, (3, 32, 32))
    b1, _ = largest_batch_under_cap(net, backprop, cap, (3, 32, 32), start=8, limit=4096, multiple=8)
    assert 0.9 * 256 <= b1 < 2 * 256
    x, y = torch.randn(256, 3, 32, 32, device="cuda"), torch.randint(0, 10, (256,), device="cuda")
    k4 = balanced_decoupling(net, 4, x, y, measure="allocator")
    del x, y
    b4, _ = largest_batch_under_cap(net, k4, cap, (3, 32, 32), start=8, limit=4096, multiple=8)
    assert b4 > b1
    torch.ones(1, device="cuda")  # the cap is lifted: nothing raises
