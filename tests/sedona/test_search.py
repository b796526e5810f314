"""SEDONA's search: relaxation limits, hypergradient vs finite differences, memory, ``method=sedona_search``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sedona.meta_search as meta_search
from launch.run import run
from sedona.heads import smoothed_cross_entropy
from sedona.meta_search import clipped_cosine
from sedona.network import DecoupledNet, sedona_init
from sedona.relaxation import (
    CANDIDATES,
    SearchNet,
    hypergradient,
    output_scales,
    relaxed_grads,
    sgd_momentum_update,
)
from sedona.weight_memory import WeightMemory, snapshot
from tests.conftest import Crash, crash_on_call

# 2 threads on 2 shared cores make the double backward 10x slower here
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(kind: str, seed: int = 0, candidates: tuple[str, ...] = CANDIDATES) -> SearchNet:
    """A float64 decoupled MLP (3 units, 6→8 features) or CNN (3 units on 1×8×8) with ``candidates`` at each cut."""
    torch.manual_seed(seed)
    if kind == "mlp":
        units = [
            nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()),
            nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
            nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
        ]
        head, shape = nn.Linear(8, 3), (6,)
    else:
        units = [
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh()),
        ]
        head, shape = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, 3)), (1, 8, 8)
    sedona_init(nn.ModuleList([*units, head]))
    net = DecoupledNet(units, head, 3, shape, aux="conv1").double()
    return SearchNet(net, candidates, feat_mult=1 / 64).double()


def batch(kind: str, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    if kind == "cnn":
        x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def alpha_for(p: float, n: int) -> torch.Tensor:
    """α rows whose cut probability is exactly representable as p (α_0 − α_1 = logit p)."""
    d = torch.logit(torch.tensor(p, dtype=torch.float64))
    return torch.stack([d / 2, -d / 2]).expand(n, 2).clone()


def relaxed_grad_dict(model, x, y, alpha, beta):
    params = dict(model.named_parameters())
    grads, loss, _ = relaxed_grads(model, params, {}, (x, y), alpha, beta, output_scales(alpha), False)
    return grads, loss


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_relaxation_at_p0_is_backprop(kind):
    model = tiny_net(kind)
    x, y = batch(kind)
    beta = torch.randn(2, 4, dtype=torch.float64)
    grads, loss = relaxed_grad_dict(model, x, y, alpha_for(1e-40, 2), beta)
    ref_loss = smoothed_cross_entropy(model(x), y, model.label_smoothing)
    names = [n for n in grads if not n.startswith("mixed.")]
    ref = torch.autograd.grad(ref_loss, [dict(model.named_parameters())[n] for n in names])
    assert torch.allclose(loss, ref_loss, rtol=1e-13, atol=0)
    for n, r in zip(names, ref, strict=True):
        torch.testing.assert_close(grads[n], r, rtol=1e-12, atol=1e-30)
    assert max(float(grads[n].abs().max()) for n in grads if n.startswith("mixed.")) < 1e-30


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_relaxation_at_p1_is_greedy_with_every_unit_a_block(kind):
    """p = 1 − 1e-7 (p = 1 is 0/0 in the rescaling): every unit trained by its own head only."""
    model = tiny_net(kind)
    x, y = batch(kind)
    beta = torch.randn(2, 4, dtype=torch.float64)
    alpha = alpha_for(1 - 1e-7, 2)
    grads, _ = relaxed_grad_dict(model, x, y, alpha, beta)
    scales, mix = output_scales(alpha), torch.softmax(beta, -1)
    h, ref = x, {}
    for i, unit in enumerate(model.units):
        h = unit(h.detach())
        if i < 2:
            loss = smoothed_cross_entropy(scales[i] * model.mixed[i](h / scales[i], mix[i]), y, 0.1)
            mods = [unit, model.mixed[i]]
            prefixes = [f"units.{i}.", f"mixed.{i}."]
        else:
            loss = smoothed_cross_entropy(model.classifier(h), y, 0.1)
            mods, prefixes = [unit, model.classifier], [f"units.{i}.", "classifier."]
        named = {
            pre + n: p for mod, pre in zip(mods, prefixes, strict=True) for n, p in mod.named_parameters()
        }
        ref.update(zip(named, torch.autograd.grad(loss, list(named.values())), strict=True))
    assert ref.keys() == grads.keys()
    for n in ref:
        # biases before BatchNorm have a zero gradient up to rounding: an absolute floor of 1e-14
        assert float((grads[n] - ref[n]).abs().max()) <= 1e-5 * float(ref[n].abs().max()) + 1e-14, n


def test_relaxation_at_half_mixes_local_and_backprop_signal():
    """p = ½: δ_l = ½∇ℓ_l + ½δ_{l+1}; for the first unit's params, ½ local + ¼ next local + ¼ classifier."""
    model = tiny_net("mlp")
    x, y = batch("mlp")
    beta = torch.randn(2, 4, dtype=torch.float64)
    alpha = torch.zeros(2, 2, dtype=torch.float64)
    grads, _ = relaxed_grad_dict(model, x, y, alpha, beta)
    scales, mix = output_scales(alpha), torch.softmax(beta, -1)
    h0 = model.units[0](x)
    h1 = model.units[1](h0)
    logits = model.classifier(model.units[2](h1))
    l0 = smoothed_cross_entropy(scales[0] * model.mixed[0](h0 / scales[0], mix[0]), y, 0.1)
    l1 = smoothed_cross_entropy(scales[1] * model.mixed[1](h1 / scales[1], mix[1]), y, 0.1)
    l2 = smoothed_cross_entropy(logits, y, 0.1)
    w = model.units[0][0].weight
    expect = torch.autograd.grad(0.5 * l0 + 0.25 * l1 + 0.25 * l2, w)[0]
    torch.testing.assert_close(grads["units.0.0.weight"], expect, rtol=1e-12, atol=1e-15)


def test_functional_sgd_equals_torch_sgd():
    torch.manual_seed(0)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.07, momentum=0.9, weight_decay=1e-3)
    params, momenta = {"w": w.detach().clone()}, None
    for _ in range(3):
        g = torch.randn(5, 3, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        params, momenta = sgd_momentum_update(params, {"w": g}, momenta, 0.07, 0.9, 1e-3)
    assert torch.allclose(params["w"], w.detach(), rtol=1e-14, atol=1e-15)
    assert torch.allclose(momenta["w"], opt.state[w]["momentum_buffer"], rtol=1e-14, atol=1e-15)


def _state(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    st = snapshot(model, None, 0, 0.0)
    st["momenta"] = {
        n: 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in st["params"].items()
    }
    return st


@pytest.mark.parametrize(
    ("kind", "objective", "steps"),
    [
        ("mlp", "train_last", 2),
        ("mlp", "train_last", 3),
        ("mlp", "val", 3),
        ("cnn", "train_last", 3),
        ("cnn", "val", 2),
    ],
)
def test_hypergradient_equals_central_differences(kind, objective, steps):
    model = tiny_net(kind)
    state = _state(model)
    batches = [batch(kind, seed=s) for s in range(steps)]
    val = batch(kind, n=12, seed=99)
    g = torch.Generator().manual_seed(3)
    alpha = torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_()
    beta = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    scales = output_scales(alpha)  # held fixed: a stop-gradient in the original (brief §4.3)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, objective=objective, val_batch=val, scales=scales)
    _, d_alpha, d_beta = hypergradient(model, state, batches, alpha, beta, **kw)

    def f(a, b):
        return float(hypergradient(model, state, batches, a.requires_grad_(), b.requires_grad_(), **kw)[0])

    eps = 1e-5
    for var, grad in ((alpha, d_alpha), (beta, d_beta)):
        fd = torch.zeros_like(var)
        for idx in range(var.numel()):
            plus, minus = var.detach().clone(), var.detach().clone()
            plus.view(-1)[idx] += eps
            minus.view(-1)[idx] -= eps
            if var is alpha:
                fd.view(-1)[idx] = (f(plus, beta.detach()) - f(minus, beta.detach())) / (2 * eps)
            else:
                fd.view(-1)[idx] = (f(alpha.detach(), plus) - f(alpha.detach(), minus)) / (2 * eps)
        assert float(fd.abs().max()) > 1e-6  # the check is not vacuous
        rel = float((grad - fd).norm() / fd.norm())
        assert rel < 1e-6, (objective, rel, grad, fd)


def test_memory_oldest_and_spread():
    old, spread = WeightMemory(3, "oldest"), WeightMemory(3, "spread")
    for step in range(1, 10):
        old.push({"step": step})
        spread.push({"step": step})
    assert old.steps() == [7, 8, 9]  # the original: the last `capacity` snapshots
    assert spread.steps()[-1] == 9 and spread.steps()[0] <= 3
    copy = WeightMemory()
    copy.load_state_dict(spread.state_dict())
    assert copy.steps() == spread.steps() and copy.keep == "spread"
    with pytest.raises(ValueError, match="keep"):
        WeightMemory(3, "worst")


def test_clipped_cosine():
    assert clipped_cosine(0, 0.1, 1e-3, 100) == pytest.approx(0.1)
    assert clipped_cosine(50, 0.1, 1e-3, 100) == pytest.approx((0.1 + 1e-3) / 2)
    assert clipped_cosine(500, 0.1, 1e-3, 100) == pytest.approx(1e-3)


SEARCH = (
    "method=sedona_search",
    "network=lenet5",
    "method.meta_iters=4",
    "method.inner_steps=2",
    "method.snapshot_every=1",
    "method.checkpoint_every=1",
)


def test_search_finishes_and_feeds_method_sedona(cfg_factory, tmp_path):
    results = run(cfg_factory(*SEARCH, "method.eval_blocks=4"))
    out = tmp_path / "run"
    dec = json.loads((out / "decoupling.json").read_text())
    assert dec["num_units"] == 4 and sorted(dec["splits"]) == ["2", "4"]
    assert torch.tensor(dec["alpha"]).shape == (3, 2) and torch.tensor(dec["beta"]).shape == (3, 4)
    assert dec["splits"]["4"] == {"block_ends": [0, 1, 2, 3], "heads": dec["splits"]["4"]["heads"]}
    assert (out / "cut_probabilities.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("memory.pt", "state.pt", "result.json"):
        assert (out / "search" / name).exists()
    assert results["num_blocks"] == 4 and "test_acc" in results
    # the searched decoupling moved away from α = 0
    assert any(abs(p - 0.5) > 1e-4 for p in dec["cut_probability"])
    greedy = run(
        cfg_factory(
            "method=sedona",
            "network=lenet5",
            "method.num_blocks=2",
            f"method.decoupling={out}/decoupling.json",
            name="g",
        )
    )
    used = json.loads((tmp_path / "g" / "decoupling.json").read_text())
    assert used == dec["splits"]["2"] and greedy["num_blocks"] == 2


@pytest.mark.parametrize(
    ("target", "at"), [("hypergradient", 3), pytest.param("snapshot", 2, marks=pytest.mark.slow)]
)
def test_search_resumes_after_crash(cfg_factory, tmp_path, monkeypatch, target, at):
    overrides = (*SEARCH, "method.eval_blocks=0", "method.objective=val")
    run(cfg_factory(*overrides, name="ref"))
    restore = crash_on_call(monkeypatch, meta_search, target, at=at)
    with pytest.raises(Crash):
        run(cfg_factory(*overrides, name="res"))
    restore()
    run(cfg_factory(*overrides, name="res"))
    a = json.loads((tmp_path / "ref" / "decoupling.json").read_text())
    b = json.loads((tmp_path / "res" / "decoupling.json").read_text())
    assert a["alpha"] == b["alpha"] and a["beta"] == b["beta"] and a["memory_steps"] == b["memory_steps"]
