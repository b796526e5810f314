"""ECCO-DNN optimizer against hand-computed cases, closed forms and SGD; limiting; conformance."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

from common.models import build_model
from ecco import ECCO, build, find_limitable_layers

D = torch.float64


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def _two_tensors():
    p = nn.Parameter(torch.zeros(3, dtype=D))
    q = nn.Parameter(torch.zeros(1, dtype=D))
    return p, q


def _step(opt, params, grads):
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    return [p.detach() - b for p, b in zip(params, before, strict=True)]


# ------------------------------------------------------------------ hand-computed (brief §5)
@pytest.mark.parametrize("mode", ["paper", "improved"])
@pytest.mark.parametrize("eta", [1e-3, 0.3, 50.0])
def test_first_step_is_gradient_descent_with_alpha_0(mode, eta):
    p = nn.Parameter(torch.zeros(3, dtype=D))
    opt = ECCO([p], eta=eta, alpha_0=0.1, mode=mode)
    (upd,) = _step(opt, [p], [_vec(0.2, -0.1, 0.0)])
    assert torch.allclose(upd, _vec(-0.02, 0.01, 0.0), rtol=0, atol=1e-17)


@pytest.mark.parametrize("mode", ["paper", "improved"])
@pytest.mark.parametrize(("eta", "dt"), [(0.01, 0.01 * 2 / 0.3), (1.0, 0.5), (0.0375, 0.25)])
def test_second_step_lte_rule_and_cap(mode, eta, dt):
    p = nn.Parameter(torch.zeros(3, dtype=D))
    opt = ECCO([p], eta=eta, alpha_0=0.1, mode=mode)
    _step(opt, [p], [_vec(0.2, -0.1, 0.0)])
    # a = 0.1: s = g2*(g2-g1)/a = [-0.1, 0.2, 0.9] <= 1 so zeta == 1; max|g2 - g1| = 0.3
    g2 = _vec(0.1, 0.1, -0.3)
    (upd,) = _step(opt, [p], [g2])
    assert torch.allclose(upd, -dt * g2, rtol=1e-12, atol=0)
    assert float(opt.state[p]["alpha"]) == pytest.approx(dt, rel=1e-12)
    if dt < 0.5:  # the LTE bound is met with equality: (dt/2)·max|Δθ̇| = η
        assert float(opt.state[p]["alpha"]) / 2 * 0.3 == pytest.approx(eta, rel=1e-12)


def test_zeta_carry_over_tells_the_modes_apart():
    g1, g2 = [_vec(0.2, -0.1, 0.0), _vec(1.0)], [_vec(0.1, 0.1, -0.3), _vec(2.0)]
    results = {}
    for mode in ("paper", "improved"):
        p, q = _two_tensors()
        opt = ECCO([p, q], eta=0.01, alpha_0=0.1, mode=mode)
        _step(opt, [p, q], g1)
        results[mode] = (_step(opt, [p, q], g2), opt, q)
    dt_p = 0.02 / 0.3
    # paper: q's a is p's dt: s = 2·(2−1)/dt_p = 30, ζ⁻¹ = √30, Δθ̇ = 2√30 − 1, dt = 0.02/Δθ̇
    zeta = 30**0.5
    dt_q = 0.02 / (2 * zeta - 1)
    (_, upd_q), opt, q = results["paper"]
    assert upd_q.item() == pytest.approx(-dt_q * zeta * 2, rel=1e-12)
    assert upd_q.item() == pytest.approx(-0.02201, abs=1e-5)
    assert float(opt.state[q]["alpha"]) == pytest.approx(2.009e-3, rel=1e-3)  # tensor 0's a at step 3
    # improved: q's own a = α₀: s = 20
    zeta = 20**0.5
    (_, upd_q), _, _ = results["improved"]
    assert upd_q.item() == pytest.approx(-0.02 / (2 * zeta - 1) * zeta * 2, rel=1e-12)
    assert upd_q.item() == pytest.approx(-0.02252, abs=1e-5)
    assert dt_p > 0


def test_zeta_fires_where_gradient_grows_fast_closed_form():
    # g1 = 1, g2 = 3, a = α₀ = 0.5: s = 3·2/0.5 = 12, ζ⁻¹ = √12; Δθ̇ = 3√12 − 1
    p = nn.Parameter(torch.zeros(1, dtype=D))
    opt = ECCO([p], eta=0.1, alpha_0=0.5)
    _step(opt, [p], [_vec(1.0)])
    (upd,) = _step(opt, [p], [_vec(3.0)])
    zeta = 12**0.5
    assert upd.item() == pytest.approx(-(0.2 / (3 * zeta - 1)) * 3 * zeta, rel=1e-12)


def test_lte_invariant_every_uncapped_step(digits_batches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).double()
    opt = ECCO(model.parameters(), eta=1e-3, alpha_0=0.05)
    uncapped = 0
    for k, (x, y) in enumerate(digits_batches[:10]):
        prev = {p: opt.state[p]["dtheta_prev"].clone() for p in model.parameters()} if k else None
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if prev is None:
            continue
        for p in model.parameters():
            dt = float(opt.state[p]["alpha"])
            change = (prev[p] - opt.state[p]["dtheta_prev"]).abs().max().item()
            if dt < 0.5:
                uncapped += 1
                assert dt / 2 * change == pytest.approx(1e-3, rel=1e-10)
            else:
                assert change <= 4e-3 * (1 + 1e-12)
    assert uncapped > 10


# ------------------------------------------------------------------ reduction to SGD
@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_large_eta_equals_sgd_at_half_bit_for_bit(mode, digits_batches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    twin = copy.deepcopy(model)
    alpha_0 = 0.125  # a power of two: step 1 is exact in both
    opt = ECCO(model.parameters(), eta=1e6, alpha_0=alpha_0, mode=mode)
    sgd = torch.optim.SGD(twin.parameters(), lr=alpha_0, foreach=True)
    for k, (x, y) in enumerate(digits_batches[:15]):
        x, y = x.float(), y
        for m, o in ((model, opt), (twin, sgd)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        if k == 0:
            sgd.param_groups[0]["lr"] = 0.5
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.equal(a, b), f"step {k + 1}"
    assert opt.capped_fraction() == 1.0


# ------------------------------------------------------------------ activation limiting
def test_limit_delta_hand_computed():
    layer = nn.Linear(1, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        layer.bias.copy_(torch.tensor([0.5, 0.5]))
    x = torch.tensor([[1.0], [2.0]], dtype=D)
    dw, db = torch.tensor([[-2.0], [0.0]], dtype=D), torch.zeros(2, dtype=D)
    for mode in ("paper", "improved"):
        opt = ECCO(layer.parameters(), mode=mode, limit_activations=[layer])
        layer(x)
        pair = opt._pairs[id(layer.weight)]
        # a = [[1.5, -0.5], [2.5, -1.5]], Δa = [[-2, 0], [-4, 0]]: min ratio -1.6 -> δ = 0.625
        delta = opt._limit_delta(opt.param_groups[0], pair, dw, db)
        assert delta.item() == pytest.approx(0.625, rel=1e-15)
        a_new = nn.functional.linear(x, layer.weight + delta * dw, layer.bias + delta * db)
        assert a_new[1, 0].item() == pytest.approx(0.0, abs=1e-15)
        opt.remove_hooks()


def _one_unit_layer(weight: float, bias: float) -> nn.Linear:
    layer = nn.Linear(1, 1).double()
    with torch.no_grad():
        layer.weight.fill_(weight)
        layer.bias.fill_(bias)
    return layer


@pytest.mark.parametrize(
    ("a", "da", "paper", "improved"),
    [(1.0, 3.0, 1 / 3, 1.0), (1.0, -4.0, 0.25, 0.25), (1.0, -0.5, 1.0, 1.0), (0.0, 0.0, float("nan"), 1.0)],
)
def test_limit_delta_quirks_paper_vs_improved(a, da, paper, improved):
    layer = _one_unit_layer(0.0, a)
    x = torch.ones(1, 1, dtype=D)
    dw, db = torch.zeros(1, 1, dtype=D), torch.full((1,), da, dtype=D)
    for mode, expected in (("paper", paper), ("improved", improved)):
        opt = ECCO(layer.parameters(), mode=mode, limit_activations=[layer])
        layer(x)
        delta = opt._limit_delta(opt.param_groups[0], opt._pairs[id(layer.weight)], dw, db).item()
        if expected != expected:
            assert delta != delta
        else:
            assert delta == pytest.approx(expected, rel=1e-15)
            assert 0 < delta <= 1


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_improved_never_nan_where_the_original_is(mode):
    # one unit with zero weight row, zero bias and zero gradient: a = Δa = 0 -> the original's 0/0
    layer = nn.Linear(2, 2).double()
    head = nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.weight[1].zero_()
        layer.bias[1] = 0.0
    opt = ECCO(layer.parameters(), eta=1e-2, alpha_0=0.1, mode=mode, limit_activations=[layer])
    x = torch.randn(4, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.zero_grad()
        head(torch.relu(layer(x))).sum().backward()
        layer.weight.grad[1].zero_()
        layer.bias.grad[1] = 0.0
        opt.step()
    finite = all(torch.isfinite(p).all() for p in layer.parameters())
    assert finite is (mode == "improved")
    opt.remove_hooks()


@pytest.mark.parametrize("mode", ["paper", "improved"])
@pytest.mark.parametrize("kind", ["linear", "bn"])
def test_limited_step_switches_no_preactivation_sign(mode, kind, digits_batches):
    torch.manual_seed(1)
    if kind == "linear":
        layer = nn.Linear(64, 32)
        model = nn.Sequential(layer, nn.ReLU(), nn.Linear(32, 10)).double()
    else:
        layer = nn.BatchNorm1d(32)
        model = nn.Sequential(nn.Linear(64, 32), layer, nn.ReLU(), nn.Linear(32, 10)).double()
    opt = ECCO(
        model.parameters(), eta=10.0, alpha_0=0.05, mode=mode, limit_floor=0.0, limit_activations=[layer]
    )
    # only the limited layer moves, so its input on this batch is the same before and after the step
    for p in model.parameters():
        p.requires_grad_(p is layer.weight or p is layer.bias)
    shrunk = 0
    for k, (x, y) in enumerate(digits_batches[:12]):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        x_in = opt._recorder.inputs[0].clone()
        eps = 1e-5 if mode == "paper" else getattr(layer, "eps", 1e-5)
        pre = _pre(layer, x_in, eps)
        opt.step()
        post = _pre(layer, x_in, eps)
        if k == 0:
            continue
        switched = (pre * post < 0) & (post.abs() > 1e-12)
        assert not switched.any(), f"step {k + 1}: {int(switched.sum())} pre-activations changed sign"
        shrunk += float(opt.state[layer.weight]["alpha"]) < 0.5
    assert shrunk > 0
    opt.remove_hooks()


def _pre(layer, x, eps):
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, layer.weight, layer.bias)
        return nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.0, eps)


def test_limiting_slows_training_versus_no_limiting(digits_batches):
    losses = {}
    for limited in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
        ).double()
        opt = ECCO(model.parameters(), limit_activations=model if limited else None)
        for x, y in digits_batches:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses[limited] = sum(nn.functional.cross_entropy(model(x), y).item() for x, y in digits_batches)
    assert losses[True] > losses[False]


def test_find_limitable_layers_mlp_resnet_and_untraceable():
    mlp = build_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=(16, 16))
    found = find_limitable_layers(mlp)
    assert found == [mlp.layers[0].fc, mlp.layers[1].fc]
    resnet = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    found = find_limitable_layers(resnet)
    # the stem BN and the first BN of each of the 8 BasicBlocks (brief §1.5)
    assert len(found) == 9
    assert all(isinstance(m, nn.BatchNorm2d) for m in found)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return x

    with pytest.raises(ValueError, match="Branchy"):
        ECCO(Branchy().parameters(), limit_activations=Branchy())


def test_hooks_removed_when_optimizer_deleted():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = ECCO(model.parameters(), limit_activations=model)
    assert len(model[0]._forward_hooks) == 1
    del opt
    gc.collect()
    assert len(model[0]._forward_hooks) == 0


def test_step_without_recorded_input_raises():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = ECCO(model.parameters(), limit_activations=model)
    x = torch.randn(3, 4)
    for _ in range(2):
        model(x).sum().backward()
        opt.step()
    with pytest.raises(RuntimeError, match="no input of Linear"):
        opt.step()


# ------------------------------------------------------------------ fast path vs reference, state, API
@pytest.mark.parametrize("limited", [False, True])
@pytest.mark.parametrize("zeta", [True, False])
def test_foreach_equals_reference_loop(limited, zeta, digits_batches):
    runs = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
        opt = ECCO(
            model.parameters(),
            eta=0.01,
            alpha_0=0.5,
            foreach=foreach,
            zeta=zeta,
            limit_activations=model if limited else None,
        )
        for x, y in digits_batches[:10]:
            opt.zero_grad()
            (10 * nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
        runs.append(model)
    for a, b in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("zeta", [True, False])
def test_foreach_buffer_reuse_equals_reference_float32_in_place_grads(zeta, digits_batches):
    # the fast path reuses its two state buffers in place (they swap roles): gradients zeroed in place
    # (set_to_none=False), float32, dt_min, a tensor whose gradient never changes (Δθ̇ = 0: a +inf raw
    # step, so the cap) and a frozen tensor must all give the reference loop's parameters and state
    runs = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        still = nn.Parameter(torch.ones(4))
        frozen = nn.Parameter(torch.ones(2))
        opt = ECCO(
            [{"params": [*model.parameters(), still, frozen]}],
            eta=0.01,
            alpha_0=0.5,
            dt_min=1e-3,
            foreach=foreach,
            zeta=zeta,
        )
        for x, y in digits_batches[:8]:
            opt.zero_grad(set_to_none=False)
            frozen.grad = None
            (10 * nn.functional.cross_entropy(model(x.float()), y) + still.sum()).backward()
            opt.step()
        runs.append((model, still, opt))
    (m1, s1, o1), (m2, s2, o2) = runs
    for a, b in zip([*m1.parameters(), s1], [*m2.parameters(), s2], strict=True):
        assert torch.equal(a, b)
        for key in ("grad_prev", "dtheta_prev", "alpha"):
            if key in o2.state[b]:
                assert torch.equal(torch.as_tensor(o1.state[a][key]), torch.as_tensor(o2.state[b][key])), key
    assert float(o1.state[s1]["alpha"]) == 0.5


def test_abs_max_is_exact_without_sync():
    from ecco.optimizer import _abs_max

    out = _abs_max([_vec(1.0, -3.0, 2.0), _vec(-0.0, -0.0), torch.zeros(0, dtype=D), _vec(1.0, float("nan"))])
    assert out[:3].tolist() == [3.0, 0.0, 0.0]
    assert torch.isnan(out[3])
    assert torch.equal(1 / out[1:2], _vec(float("inf")))  # +0, never −0: the step must be capped, not −inf


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_state_dict_round_trip_continues_identically(mode, digits_batches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    opt = ECCO(model.parameters(), eta=0.01, alpha_0=0.3, mode=mode, limit_activations=model)

    def train(m, o, batches):
        for x, y in batches:
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()

    train(model, opt, digits_batches[:5])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, digits_batches[5:12])
    clone = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
    clone.load_state_dict(saved_model)
    opt2 = ECCO(clone.parameters(), mode=mode, limit_activations=clone)
    opt2.load_state_dict(saved_opt)
    assert opt2.param_groups[0]["eta"] == 0.01
    train(clone, opt2, digits_batches[5:12])
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


def test_closure_groups_and_params_without_grad():
    a = nn.Parameter(torch.ones(2, dtype=D))
    b = nn.Parameter(torch.ones(2, dtype=D))
    frozen = nn.Parameter(torch.ones(2, dtype=D))
    opt = ECCO([{"params": [a], "eta": 1e-3}, {"params": [b, frozen], "alpha_0": 0.2}], eta=0.3, alpha_0=0.1)
    assert [g["eta"] for g in opt.param_groups] == [1e-3, 0.3]
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]

    def closure():
        opt.zero_grad()
        loss = (a**2).sum() + (b**3).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(4.0)
    assert torch.allclose(a, torch.full((2,), 1 - 0.1 * 2, dtype=D))
    assert torch.allclose(b, torch.full((2,), 1 - 0.2 * 3, dtype=D))
    assert torch.equal(frozen, torch.ones(2, dtype=D)) and frozen not in opt.state


def test_scheduler_scales_the_cap():
    p = nn.Parameter(torch.zeros(1, dtype=D))
    opt = ECCO([p], eta=100.0, alpha_0=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _step(opt, [p], [_vec(1.0)])
    sched.step()
    (upd,) = _step(opt, [p], [_vec(1.0)])
    assert upd.item() == pytest.approx(-0.25)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"eta": 0.0}, "eta"),
        ({"alpha_0": 0}, "alpha_0"),
        ({"dt_max": -1.0}, "dt_max"),
        ({"mode": "x"}, "mode"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ECCO([nn.Parameter(torch.zeros(1))], **kwargs)


def test_build_from_model_and_auto_needs_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = build(model, eta=0.1, limit_activations="auto")
    assert opt.limited_layers == [model[0]]
    assert build(model.parameters(), limit_activations="none").limited_layers == []
    with pytest.raises(ValueError, match="needs the model"):
        build(model.parameters(), limit_activations="auto")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["paper", "improved", "improved_fused"])
def test_cpu_and_cuda_agree(mode, digits_batches):
    results = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).double()
        model.to(device)
        opt = ECCO(
            model.parameters(), eta=0.01, alpha_0=0.3, mode=mode.removesuffix("_fused"),
            fused=mode.endswith("_fused"), limit_activations=model,
        )  # fmt: skip
        for x, y in digits_batches[:10]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


class _HostRead(AssertionError):
    pass


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every Python-level read of a tensor's value (what forces a host sync on CUDA) raise.

    ``.item()``, ``float()``/``int()``/``bool()`` of a tensor, ``.tolist()`` and ``.numpy()``: on a GPU each one
    waits for the device to finish the work queued so far. torch's own C++ code does not go through these, so
    what raises is a read in our Python code. Returns a context manager that arms the check."""
    import contextlib

    @contextlib.contextmanager
    def armed():
        with monkeypatch.context() as m:
            for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy"):

                def read(self, *a, _name=name, **k):
                    raise _HostRead(f"host read of a tensor: Tensor.{_name}")

                m.setattr(torch.Tensor, name, read)
            yield

    return armed


@pytest.mark.parametrize("limited", [False, True])
def test_the_improved_step_reads_no_tensor_on_the_host(no_host_reads, limited):
    # the README's claim: the foreach path runs without a host sync (the capped-fraction log after 100 steps is
    # the one read, once); steps 1 and 2 may set up state, steps 3-6 must not read
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = ECCO(model.parameters(), limit_activations=model if limited else None)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for i in range(6):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if i < 2:
            opt.step()
        else:
            with no_host_reads():
                opt.step()
    # the guard is real: the same check catches a read
    with no_host_reads(), pytest.raises(_HostRead, match="item"):
        torch.ones(1).item()
