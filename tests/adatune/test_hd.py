"""SGD-HD and Adam-HD: closed forms on a quadratic, finite differences, torch parity, state_dict lock-step."""

from __future__ import annotations

import copy

import pytest
import torch

from adatune import SGDHD, AdamHD

LAM = torch.linspace(0.1, 1.0, 10, dtype=torch.float64)


def f(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.sum(LAM * w * w)


def _step(opt, ws):
    opt.zero_grad()
    sum(f(w) for w in ws).backward()
    opt.step()


def test_sgdhd_first_increment_closed_form():
    """lr_0 is unchanged at step 0 (u_{−1} = 0); lr_1 = lr_0 + β⟨g_1, g_0⟩ = lr_0 + β Σ λ²(1 − lr_0 λ)."""
    lr0, beta = 0.01, 0.5
    w = torch.ones(10, dtype=torch.float64, requires_grad=True)
    opt = SGDHD([w], lr=lr0, hypergrad_lr=beta)
    _step(opt, [w])
    assert opt.param_groups[0]["lr"] == lr0
    _step(opt, [w])
    expected = lr0 + beta * float(torch.sum(LAM**2 * (1 - lr0 * LAM)))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-14)
    assert isinstance(opt.param_groups[0]["lr"], float)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGDHD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01, hypergrad_lr=1e-2),
        lambda p: AdamHD(p, lr=0.01, weight_decay=0.01, hypergrad_lr=1e-3),
    ],
)
def test_lr_increment_is_minus_derivative_of_loss_wrt_previous_lr(make):
    """α_t − α_{t−1} = −β ∂f(θ_{t−1} − α u_{t−1})/∂α at α_{t−1}, checked by a central difference (exact on a quadratic)."""
    w = torch.ones(10, dtype=torch.float64, requires_grad=True)
    opt = make([w])
    beta = opt.param_groups[0]["hypergrad_lr"]
    wd = opt.param_groups[0]["weight_decay"]

    def obj(v):  # the loss whose gradient the optimizer sees (coupled L2 included)
        return f(v) + 0.5 * wd * torch.sum(v * v)

    expected = None
    for _ in range(6):
        before = w.detach().clone()
        _step(opt, [w])
        lr_used = opt.param_groups[0]["lr"]  # HD sets the LR at the start of the step, then steps with it
        if expected is not None:
            # the LR this step used was set from ∇f(θ_t) and u_{t−1} at the start of the step
            assert lr_used == pytest.approx(expected, rel=1e-7)
        u = (before - w.detach()) / lr_used
        eps = 1e-6
        with torch.no_grad():
            d = (obj(before - (lr_used + eps) * u) - obj(before - (lr_used - eps) * u)) / (2 * eps)
        expected = lr_used - beta * float(d)


def test_sgdhd_raises_too_small_lr_on_noiseless_quadratic():
    w = torch.ones(10, dtype=torch.float64, requires_grad=True)
    opt = SGDHD([w], lr=1e-3, hypergrad_lr=1e-2)
    for _ in range(50):
        _step(opt, [w])
    assert opt.param_groups[0]["lr"] > 5e-3


def test_adamhd_raises_too_small_lr():
    w = torch.ones(10, dtype=torch.float64, requires_grad=True)
    opt = AdamHD([w], lr=1e-4, hypergrad_lr=1e-5)
    for _ in range(50):
        _step(opt, [w])
    assert opt.param_groups[0]["lr"] > 2e-4


@pytest.mark.parametrize(
    ("ours", "ref"),
    [
        (
            lambda p: SGDHD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01, hypergrad_lr=0.0),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        ),
        (
            lambda p: SGDHD(p, lr=0.05, momentum=0.9, nesterov=True, hypergrad_lr=0.0),
            lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        ),
        (
            lambda p: AdamHD(p, lr=0.05, weight_decay=0.01, hypergrad_lr=0.0),
            lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.01),
        ),
    ],
)
def test_zero_hypergrad_lr_is_the_base_optimizer(ours, ref):
    wa = torch.linspace(-1, 1, 10, dtype=torch.float64).requires_grad_()
    wb = wa.detach().clone().requires_grad_()
    oa, ob = ours([wa]), ref([wb])
    for _ in range(10):
        _step(oa, [wa])
        _step(ob, [wb])
    torch.testing.assert_close(wa, wb, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: SGDHD(p, lr=0.01, momentum=0.9, hypergrad_lr=1e-2),
        lambda p: AdamHD(p, lr=0.01, hypergrad_lr=1e-3),
        lambda p: SGDHD(p, lr=0.01, momentum=0.9, hypergrad_lr=1e-2, mode="paper"),
        lambda p: AdamHD(p, lr=0.01, hypergrad_lr=1e-3, mode="paper"),
    ],
)
def test_state_dict_lock_step(make):
    w = torch.linspace(-1, 1, 10, dtype=torch.float64).requires_grad_()
    opt = make([w])
    for _ in range(3):
        _step(opt, [w])
    w2 = w.detach().clone().requires_grad_()
    opt2 = make([w2])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(5):
        _step(opt, [w])
        _step(opt2, [w2])
        assert torch.equal(w, w2)
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_param_groups_tuned_separately_and_validation():
    a = torch.ones(5, dtype=torch.float64, requires_grad=True)
    b = torch.ones(5, dtype=torch.float64, requires_grad=True)
    opt = SGDHD([{"params": [a]}, {"params": [b], "lr": 0.02}], lr=0.01, hypergrad_lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (torch.sum(a * a) + 3 * torch.sum(b * b)).backward()
        opt.step()
    la, lb = (g["lr"] for g in opt.param_groups)
    assert la > 0.01 and lb > 0.02 and la != lb
    with pytest.raises(ValueError, match="one param group"):
        SGDHD([{"params": [a]}, {"params": [b]}], lr=0.1, mode="paper")
    with pytest.raises(ValueError, match="lr"):
        SGDHD([a], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        AdamHD([a], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="mode"):
        AdamHD([a], mode="x")


def test_paper_adamhd_updates_the_lr_per_tensor():
    """gbaydin #9: the second tensor's step already uses the LR raised by the first tensor's hypergradient."""
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = torch.ones(3, dtype=torch.float64, requires_grad=True)
    beta = 1e-2
    opt = AdamHD([a, b], lr=0.01, hypergrad_lr=beta, mode="paper")
    opt.zero_grad()
    (torch.sum(a * a) + 2 * torch.sum(b * b)).backward()
    opt.step()
    lr0 = opt.param_groups[0]["lr"]
    m_b, v_b = opt.state[b]["exp_avg"].clone(), opt.state[b]["exp_avg_sq"].clone()
    m_a, v_a = opt.state[a]["exp_avg"].clone(), opt.state[a]["exp_avg_sq"].clone()
    b_before = b.detach().clone()
    opt.zero_grad()
    (torch.sum(a * a) + 2 * torch.sum(b * b)).backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    opt.step()
    c = (1 - 0.999) ** 0.5 / (1 - 0.9)
    ha = float(torch.dot(ga, m_a / (v_a.sqrt() + 1e-8))) * c
    hb = float(torch.dot(gb, m_b / (v_b.sqrt() + 1e-8))) * c
    lr_a = lr0 + beta * ha
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_a + beta * hb, rel=1e-12)
    m2 = 0.9 * m_b + 0.1 * gb
    v2 = 0.999 * v_b + 0.001 * gb * gb
    step_b = (lr_a + beta * hb) * (1 - 0.999**2) ** 0.5 / (1 - 0.9**2) * m2 / (v2.sqrt() + 1e-8)
    torch.testing.assert_close(b.detach(), b_before - step_b, rtol=1e-12, atol=1e-14)


def _per_tensor_sgdhd(params, lr, momentum, dampening, nesterov, wd, beta, states):
    """The SGD-HD default rule one tensor at a time, written out here: the reference any faster form must match."""
    grads = [p.grad.add(p, alpha=wd) if wd else p.grad for p in params]
    dots = [torch.sum(g * states[i]["u"]) for i, g in enumerate(grads) if "u" in states[i]]
    h = float(torch.stack(dots).sum()) if dots else 0.0
    lr = max(0.0, lr + beta * h)
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g
        if momentum:
            if "buf" not in states[i]:
                states[i]["buf"] = g.clone()
            else:
                states[i]["buf"].mul_(momentum).add_(g, alpha=1 - dampening)
            d = g.add(states[i]["buf"], alpha=momentum) if nesterov else states[i]["buf"]
        states[i]["u"] = d.clone()
        p.add_(d, alpha=-lr)
    return lr


@pytest.mark.parametrize(
    ("momentum", "dampening", "nesterov", "wd"),
    [(0.0, 0.0, False, 0.0), (0.9, 0.0, False, 5e-4), (0.9, 0.1, False, 0.0), (0.9, 0.0, True, 1e-2)],
)
def test_sgdhd_step_is_the_per_tensor_rule(momentum, dampening, nesterov, wd):
    # several tensors of several shapes; the last one gets no gradient for its first two steps (fresh state
    # beside kept state in one step)
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (7,), (2, 3, 5), (1,)]
    ours = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    ref = [p.detach().clone() for p in ours]
    opt = SGDHD(ours, lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd,
                hypergrad_lr=1e-2)  # fmt: skip
    lr, states = 0.05, [{} for _ in shapes]
    for step in range(8):
        live = list(range(len(shapes))) if step >= 2 else list(range(len(shapes) - 1))
        grads = [torch.randn(shapes[i], generator=gen, dtype=torch.float64) + ref[i] for i in live]
        for p in ours:
            p.grad = None
        for i, g in zip(live, grads):
            ours[i].grad = g.clone()
        opt.step()
        with torch.no_grad():
            refs = [ref[i] for i in live]
            for p, g in zip(refs, grads):
                p.grad = g.clone()
            lr = _per_tensor_sgdhd(
                refs, lr, momentum, dampening, nesterov, wd, 1e-2, [states[i] for i in live]
            )
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12, abs=1e-15)
        for p, r in zip(ours, ref):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["lr"] != 0.05  # the hypergradient moved it
