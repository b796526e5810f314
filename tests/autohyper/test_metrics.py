"""EVBMF and the low-rank metrics against closed forms and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from autohyper.metrics import (
    NetworkMetrics,
    conv_metrics,
    evb_shrinkage,
    evbmf,
    evbmf_from_singular_values,
    evbmf_objective,
    metric_weights,
    network_metrics,
    response_value,
    unfoldings,
)


def _planted(L: int, M: int, values: list[float], noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(L, len(values), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(M, len(values), generator=g, dtype=torch.float64))
    signal = U @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ V.T
    return signal + noise * torch.randn(L, M, generator=g, dtype=torch.float64)


def test_pure_noise_has_rank_zero_and_its_variance():
    g = torch.Generator().manual_seed(1)
    Y = 0.1 * torch.randn(40, 90, generator=g, dtype=torch.float64)
    r = evbmf(Y)
    assert r.rank == 0 and r.values.size == 0
    assert r.sigma2 == pytest.approx(0.01, rel=0.1)


def test_planted_low_rank_is_recovered_with_the_noise_variance():
    # noise singular values reach about sigma (sqrt(L) + sqrt(M)) = 0.1 (4.5 + 7.1) = 1.2: plant 3 well above
    Y = _planted(20, 50, [6.0, 4.0, 3.0], noise=0.1)
    r = evbmf(Y)
    assert r.rank == 3
    assert r.sigma2 == pytest.approx(0.01, rel=0.2)
    s = torch.linalg.svdvals(Y).numpy()[:3]
    assert np.all(r.values < s) and np.all(r.values > 0.8 * s)  # shrunk, not killed
    assert np.all(np.diff(r.values) < 0)


def test_shrinkage_against_a_hand_computation():
    # L=2, M=3, sigma2=1, s=10: q = 5/100 = 0.05, disc = 0.95^2 - 24/1e4 = 0.9001,
    # d = 5 (0.95 + sqrt(0.9001)) = 5 (0.95 + 0.9487360) = 9.493680
    assert evb_shrinkage(np.array([10.0]), 2, 3, 1.0)[0] == pytest.approx(9.493680, abs=1e-6)
    # L=3, M=3, sigma2=0.5, s=4: q = 3/16 = 0.1875, disc = 0.8125^2 - 4*9*0.25/256 = 0.66015625 - 0.03515625
    assert evb_shrinkage(np.array([4.0]), 3, 3, 0.5)[0] == pytest.approx(2.0 * (0.8125 + math.sqrt(0.625)))


def test_noise_variance_is_the_bounded_minimiser_of_the_objective():
    Y = _planted(12, 30, [5.0, 3.0], noise=0.2, seed=3)
    s = torch.linalg.svdvals(Y).numpy().astype(np.float32)
    r = evbmf_from_singular_values(s, 12, 30)
    # bounds as the original (VBMF.EVBMF): alpha = 0.4, x_bar from tau_bar = 2.5129 sqrt(alpha); k = ceil(12/1.4) - 2 = 7
    alpha = 12 / 30
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    s64 = s.astype(np.float64)
    upper = np.sum(s64**2) / (12 * 30)
    lower = max(s64[8] ** 2 / (30 * x_bar), np.mean(s64[8:] ** 2) / 30)
    grid = np.linspace(lower, upper, 20001)
    best = grid[np.argmin([evbmf_objective(v, s, 12, 30) for v in grid])]
    assert lower <= r.sigma2 <= upper
    assert abs(r.sigma2 - best) < 2e-4
    # the threshold sqrt(M sigma2 x_bar) separates the rank
    assert r.rank == int(np.sum(s64 > math.sqrt(30 * r.sigma2 * x_bar)))


def test_tall_matrix_is_transposed_not_crashed():
    Y = _planted(60, 15, [5.0, 4.0], noise=0.1, seed=5)
    tall, wide = evbmf(Y), evbmf(Y.T)
    assert tall.rank == wide.rank == 2
    assert tall.sigma2 == wide.sigma2
    # mode-4 of a 1x1 conv expanding 32 -> 128 is 128 x 32 (the original's failing case)
    m = conv_metrics(nn.Conv2d(32, 128, 1).weight)
    assert m.out_S == 0.0 and m.in_S == 0.0


def test_zero_matrix_has_rank_zero():
    assert evbmf(torch.zeros(4, 6)).rank == 0


def _structured_weight(seed: int = 0) -> torch.Tensor:
    # C_out=4, C_in=8, 3x3: the mode-4 unfolding (4 x 72) has two strong directions plus small noise
    Y = _planted(4, 72, [20.0, 10.0], noise=0.01, seed=seed)
    return Y.reshape(4, 8, 3, 3).float()


def test_metrics_of_a_hand_made_weight():
    W = _structured_weight()
    m1, m2 = conv_metrics(W, p=1), conv_metrics(W, p=2)
    d = evbmf(W.reshape(4, -1)).values
    assert len(d) == 2
    assert m1.out_rank == pytest.approx(2 / 4)
    assert m1.out_S == pytest.approx((1 + d[1] / d[0]) / 4, rel=1e-5)
    assert m2.out_S == pytest.approx((1 + (d[1] / d[0]) ** 2) / 4, rel=1e-5)
    assert m1.out_condition == pytest.approx(d[0] / d[1], rel=1e-5)
    assert m2.out_condition == pytest.approx(m1.out_condition**2, rel=1e-5)
    # a nonzero knowledge gain is at least 1/N (its first term is (d_1/d_1)^p / N)
    assert m1.out_S >= 1 / 4
    # mode-3 is 8 x 36 with the same two directions (rank is a property of the tensor's unfolding)
    din = evbmf(W.transpose(0, 1).reshape(8, -1)).values
    assert m1.in_rank == pytest.approx(len(din) / 8)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3)
        self.c2 = nn.Conv2d(16, 16, 3)
        self.c3 = nn.Conv2d(16, 32, 3)
        self.c4 = nn.Conv2d(32, 128, 1)
        self.fc = nn.Linear(128, 10)


def test_he_initialised_network_has_z_one():
    torch.manual_seed(0)
    net = _Net()
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight)
    history = [network_metrics(net), network_metrics(net)]
    assert len(history[0].in_S) == 4
    assert response_value(history) == 1.0


def test_batched_metrics_equal_per_layer_and_p_never_changes_z():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.c2.weight.copy_(_structured_weight().repeat(4, 2, 1, 1)[:16, :16])
    batched = network_metrics(net, p=2)
    for i, w in enumerate([net.c1.weight, net.c2.weight, net.c3.weight, net.c4.weight]):
        assert batched.layer(i) == pytest.approx(tuple(conv_metrics(w, p=2)), rel=1e-5)
    assert batched.out_S[1] > 0
    z1 = response_value([network_metrics(net, p=1)])
    z2 = response_value([batched])
    assert z1 == z2 and 0 < z1 < 1


def test_response_value_float16_and_concatenation():
    e0 = NetworkMetrics.from_dict(
        {f: [0.0] * 3 for f in NetworkMetrics.FIELDS} | {"in_S": [0.0, 0.5, 0.2], "out_S": [0.1, 0.0, 0.0]}
    )
    e1 = NetworkMetrics.from_dict(
        {f: [0.0] * 3 for f in NetworkMetrics.FIELDS} | {"in_S": [0.3, 0.5, 0.2], "out_S": [0.1, 0.0, 0.0]}
    )
    # epoch 0: 3 zeros of 6 = 0.5; epoch 1: 2 of 6 = 1/3, which float16 rounds to 0.333251953125
    assert response_value([e1]) == 0.333251953125
    assert response_value([e1], float16=False) == pytest.approx(1 / 3)
    assert response_value([e0, e1]) == float(np.float16((0.5 + 0.333251953125) / 2))
    with pytest.raises(ValueError):
        response_value([])


def test_exception_path_zero_then_previous():
    net = _Net()
    first = network_metrics(net)
    with torch.no_grad():
        net.c2.weight.copy_(_structured_weight().repeat(4, 2, 1, 1)[:16, :16])
    good = network_metrics(net, previous=first)
    with torch.no_grad():
        net.c2.weight[0, 0, 0, 0] = float("nan")
    assert network_metrics(net).layer(1) == (0.0,) * 6
    assert network_metrics(net, previous=good).layer(1) == good.layer(1)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="p must be"):
        conv_metrics(torch.zeros(2, 2, 1, 1), p=3)
    with pytest.raises(ValueError, match="4 dims and a Linear weight 2"):
        conv_metrics(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="non-finite"):
        evbmf(torch.full((2, 3), float("nan")))


# --- Linear weights (an MLP): read as 1x1 convs ---


def _rank_one_linear(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    # one strong direction (singular value 10) over noise of std 0.01 (singular values ~0.05)
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(out_features, generator=g), torch.randn(in_features, generator=g)
    return 10 * torch.outer(u / u.norm(), v / v.norm()) + 0.01 * torch.randn(
        out_features, in_features, generator=g
    )


def test_linear_weight_unfoldings_are_its_transpose_and_itself():
    W = torch.arange(6.0).reshape(2, 3)  # C_out = 2, C_in = 3
    mode3, mode4 = unfoldings(W)
    assert torch.equal(mode3, torch.tensor([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]))  # C_in x C_out
    assert torch.equal(mode4, W)
    # the same as the 1x1 conv it equals
    c3, c4 = unfoldings(W.reshape(2, 3, 1, 1))
    assert torch.equal(c3, mode3) and torch.equal(c4, mode4)


def test_metrics_of_a_rank_one_linear_weight_by_hand():
    # rank 1 on both unfoldings (W and W^T have the same singular values): S = (d_1/d_1)^p / N = 1/N, r/N = 1/N,
    # kappa = (d_1/d_1)^p = 1, with N = C_in = 6 for mode-3 and N = C_out = 4 for mode-4
    W = _rank_one_linear(4, 6)
    assert evbmf(W).rank == 1
    for p in (1, 2):
        m = conv_metrics(W, p=p)
        assert m == (1 / 6, 1 / 6, 1.0, 1 / 4, 1 / 4, 1.0)
    # pure noise: rank 0 on both sides, every value 0
    noise = 0.01 * torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    assert conv_metrics(noise) == (0.0,) * 6


def test_mlp_response_from_its_linear_weights():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        mlp[0].weight.copy_(_rank_one_linear(4, 6))
        mlp[2].weight.copy_(0.01 * torch.randn(4, 4))
        mlp[4].weight.copy_(0.01 * torch.randn(3, 4))
    assert [tuple(w.shape) for w in metric_weights(mlp)] == [(4, 6), (4, 4), (3, 4)]
    metrics = network_metrics(mlp)
    assert metrics.layer(0) == (1 / 6, 1 / 6, 1.0, 1 / 4, 1 / 4, 1.0)
    assert metrics.layer(1) == metrics.layer(2) == (0.0,) * 6
    # in_S ++ out_S = [1/6, 0, 0, 1/4, 0, 0]: 4 zeros of 6, Z = 2/3 (float16: 0.66650390625)
    assert response_value([metrics], float16=False) == pytest.approx(2 / 3)
    assert response_value([metrics]) == 0.66650390625


def test_a_conv_network_keeps_its_conv_weights_only():
    net = _Net()
    # the Linear classifier stays out, as in the original: Z of a conv net is unchanged
    assert [tuple(w.shape) for w in metric_weights(net)] == [
        tuple(c.weight.shape) for c in (net.c1, net.c2, net.c3, net.c4)
    ]
    assert len(network_metrics(net).in_S) == 4


def test_cpu_svds_run_on_one_thread_and_restore_the_count(monkeypatch):
    """The metrics' SVDs run single-threaded on the CPU (threaded LAPACK SVDs stall on a shared CPU, issue 15
    item 14); the caller's thread count is back afterwards, also when the SVD raises."""
    seen: list[int] = []
    real = torch.linalg.svdvals

    def recording(x, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svdvals", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3))
        network_metrics(net)
        evbmf(torch.randn(6, 20))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2

        def failing(x, *args, **kwargs):
            raise RuntimeError("svd failed")

        monkeypatch.setattr(torch.linalg, "svdvals", failing)
        with pytest.raises(RuntimeError, match="svd failed"):
            network_metrics(net)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
