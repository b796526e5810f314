"""MARTHE/RTHO against the math: finite differences of the validation loss w.r.t. the per-step learning rates."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from adatune import MARTHE, RTHO, SGDHD


@pytest.fixture(autouse=True)
def _float64():
    # tiny problems in float64 so that central differences are accurate to ~1e-9
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


T = 5
EPS = 1e-5


def _data(seed: int = 0, n_batches: int = T):
    g = torch.Generator().manual_seed(seed)
    train = [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n_batches)
    ]
    val = [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    return train, val


def _model(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "sgdm_wd_damp": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, dampening=0.1, weight_decay=1e-2),
    "nesterov_wd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.8, nesterov=True, weight_decay=1e-2),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-3),
    "adam_l2": lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-3, weight_decay=1e-2),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr, eps=1e-3, weight_decay=1e-1),
}
LR0 = {"sgd": 0.3, "sgdm_wd_damp": 0.1, "nesterov_wd": 0.1, "adam": 0.02, "adam_l2": 0.02, "adamw": 0.02}

loss_fn = nn.functional.cross_entropy


def _val_loss(model, val, t):
    x, y = val[t % len(val)]
    return loss_fn(model(x), y)


def _run_schedule(make_opt, lrs, train, val) -> float:
    """E_val(w_{t+1}) after len(lrs) steps of the plain torch optimizer with per-step LRs ``lrs``."""
    model = _model()
    opt = make_opt(model.parameters(), lrs[0])
    for s, lr in enumerate(lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        x, y = train[s]
        loss_fn(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(_val_loss(model, val, len(lrs) - 1))


def _run_tuner(make_opt, lr0, train, val, steps=T, **kw):
    model = _model()
    tuner = MARTHE(make_opt(model.parameters(), lr0), **kw)
    infos = []
    for t in range(steps):
        x, y = train[t]
        infos.append(tuner.step(loss_fn(model(x), y), lambda t=t: _val_loss(model, val, t)))
    return model, tuner, infos


def _fd(make_opt, lrs_used, t, mu, train, val, start=0):
    v = [mu ** (t - s) if s >= start else 0.0 for s in range(t + 1)]
    plus = [lr + EPS * d for lr, d in zip(lrs_used[: t + 1], v)]
    minus = [lr - EPS * d for lr, d in zip(lrs_used[: t + 1], v)]
    return (_run_schedule(make_opt, plus, train, val) - _run_schedule(make_opt, minus, train, val)) / (
        2 * EPS
    )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0])
def test_hypergradient_equals_finite_difference(name, mu):
    train, val = _data()
    make_opt = OPTIMIZERS[name]
    _, _, infos = _run_tuner(make_opt, LR0[name], train, val, hyper_lr=0.0, mu=mu)
    lrs = [i.lr for i in infos]
    for t in (0, 2, 4):
        fd = _fd(make_opt, lrs, t, mu, train, val)
        assert infos[t].hypergradient == pytest.approx(fd, rel=1e-6, abs=1e-10), (
            t,
            infos[t].hypergradient,
            fd,
        )


@pytest.mark.parametrize("name", ["sgdm_wd_damp", "adamw"])
def test_open_loop_hypergradient_along_the_recorded_schedule(name):
    """With β > 0 the tangent uses the LR actually applied at each step (the original's stale η0 does not)."""
    train, val = _data()
    make_opt = OPTIMIZERS[name]
    mu = 0.7
    beta = 0.05 if name.startswith("sgd") else 1e-3
    _, _, infos = _run_tuner(make_opt, LR0[name], train, val, hyper_lr=beta, mu=mu)
    lrs = [i.lr for i in infos]
    assert len(set(lrs)) == T  # the LR did move
    for t in (1, 4):
        fd = _fd(make_opt, lrs, t, mu, train, val)
        assert infos[t].hypergradient == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_paper_mode_momentum_drops_the_first_step():
    """Brief B11: the original's SGDM tangent equals the derivative along (μ^{t−s})_{s≥1}, not s ≥ 0."""
    train, val = _data()
    make_opt = lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)  # noqa: E731
    mu = 0.5
    _, _, infos = _run_tuner(make_opt, 0.1, train, val, hyper_lr=0.0, mu=mu, mode="paper", grad_clipping=1e9)
    lrs = [i.lr for i in infos]
    assert infos[0].hypergradient == 0.0
    for t in (2, 4):
        with_0 = _fd(make_opt, lrs, t, mu, train, val)
        without_0 = _fd(make_opt, lrs, t, mu, train, val, start=1)
        assert infos[t].hypergradient == pytest.approx(without_0, rel=1e-6)
        assert infos[t].hypergradient != pytest.approx(with_0, rel=1e-3)


def test_first_hypergradient_closed_form():
    """hg_0 = −⟨∇E(w_1), g_0⟩ and hg > 0 lowers η by β·hg (brief §5, signs)."""
    train, val = _data()
    model = _model()
    ref = copy.deepcopy(model)
    tuner = MARTHE(torch.optim.SGD(model.parameters(), lr=0.3), hyper_lr=0.01, mu=0.9)
    x, y = train[0]
    info = tuner.step(loss_fn(model(x), y), lambda: _val_loss(model, val, 0))
    g0 = torch.autograd.grad(loss_fn(ref(x), y), list(ref.parameters()))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), g0):
            p -= 0.3 * g
    gv = torch.autograd.grad(_val_loss(ref, val, 0), list(ref.parameters()))
    expected = -sum(float(torch.sum(a * b)) for a, b in zip(gv, g0))
    assert info.hypergradient == pytest.approx(expected, rel=1e-12)
    assert info.next_lr == pytest.approx(0.3 - 0.01 * expected, rel=1e-12)


def _quadratic(w):
    lam = torch.linspace(0.1, 1.0, 10)
    return 0.5 * torch.sum(lam * w * w)


def test_mu_zero_on_full_batch_training_loss_is_sgdhd():
    w_a = torch.ones(10, requires_grad=True)
    w_b = torch.ones(10, requires_grad=True)
    tuner = MARTHE(torch.optim.SGD([w_a], lr=0.01), hyper_lr=0.01, mu=0.0)
    hd = SGDHD([w_b], lr=0.01, hypergrad_lr=0.01)
    lrs_a, lrs_b = [], []
    for _ in range(30):
        lrs_a.append(tuner.step(_quadratic(w_a), lambda: _quadratic(w_a)).lr)
        hd.zero_grad()
        _quadratic(w_b).backward()
        hd.step()
        lrs_b.append(hd.param_groups[0]["lr"])
    assert lrs_a == pytest.approx(lrs_b, rel=1e-12)
    assert lrs_a[-1] > 0.05  # raised from a too-small LR
    assert torch.allclose(w_a, w_b, rtol=1e-12)


def test_rtho_climbs_further_than_hd_on_the_quadratic():
    """Brief §5.6: HD's increments ∝ ⟨g_t, g_{t−1}⟩ vanish; RTHO keeps raising η and reaches a lower loss."""
    out = {}
    for name, mu in (("hd", 0.0), ("marthe", 0.9), ("rtho", 1.0)):
        w = torch.ones(10, requires_grad=True)
        tuner = MARTHE(torch.optim.SGD([w], lr=0.01), hyper_lr=0.01, mu=mu)
        infos = [tuner.step(_quadratic(w), lambda w=w: _quadratic(w)) for _ in range(100)]
        out[name] = (infos[-1].next_lr, float(_quadratic(w.detach())), infos[2].next_lr - infos[1].next_lr)
    assert out["rtho"][0] > 2 * out["hd"][0] and out["rtho"][1] < 0.1 * out["hd"][1]
    # early increments grow with μ
    assert out["hd"][2] < out["marthe"][2] < out["rtho"][2]


@pytest.mark.parametrize("name", ["sgdm_wd_damp", "nesterov_wd", "adam", "adamw"])
@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_zero_hyper_lr_leaves_training_identical(name, mu):
    train, val = _data()
    make_opt = OPTIMIZERS[name]
    model_t, _, infos = _run_tuner(make_opt, LR0[name], train, val, hyper_lr=0.0, mu=mu)
    model = _model()
    opt = make_opt(model.parameters(), LR0[name])
    for t in range(T):
        opt.zero_grad()
        loss_fn(model(train[t][0]), train[t][1]).backward()
        opt.step()
    for a, b in zip(model_t.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert all(i.hypergradient != 0.0 for i in infos)


def test_lr_never_negative_in_default_mode_but_can_be_in_paper_mode():
    train, val = _data(n_batches=20)
    make_opt = lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5)  # noqa: E731
    _, _, infos = _run_tuner(make_opt, 0.05, train, val, steps=20, hyper_lr=5.0, mu=0.9)
    assert min(i.next_lr for i in infos) == 0.0
    assert all(i.lr >= 0 for i in infos)
    _, _, paper = _run_tuner(make_opt, 0.05, train, val, steps=20, hyper_lr=5.0, mu=0.9, mode="paper")
    assert min(i.next_lr for i in paper) < 0.0
    # the original keeps η in float32; with momentum its first step has no hyper-step, so the first two
    # training steps use the user's η_0 (0.05, not a float32 number) and the float32 values start after
    assert paper[0].lr == paper[1].lr == paper[0].next_lr == 0.05
    assert 0.05 != float(torch.tensor(0.05, dtype=torch.float32))
    assert all(i.next_lr == float(torch.tensor(i.next_lr, dtype=torch.float32)) for i in paper[1:])


def test_max_lr_change_caps_the_lr_step_relative_to_the_lr():
    train, val = _data(n_batches=20)
    make_opt = lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.5)  # noqa: E731
    kw = dict(steps=20, hyper_lr=5.0, mu=0.9)  # the setting that drives the uncapped LR to 0 (test above)
    _, _, free = _run_tuner(make_opt, 0.05, train, val, **kw)
    _, tuner, capped = _run_tuner(make_opt, 0.05, train, val, max_lr_change=0.2, **kw)
    assert min(i.next_lr for i in free) == 0.0
    n_capped = 0
    for i in capped:
        step = i.lr - i.next_lr
        assert abs(step) <= 0.2 * i.lr * (1 + 1e-12)
        if abs(i.hyper_lr * i.hypergradient) > 0.2 * i.lr:  # capped: the step has the hypergradient's sign
            n_capped += 1
            assert step == pytest.approx(math.copysign(0.2 * i.lr, i.hypergradient), rel=1e-12)
        else:
            assert step == pytest.approx(i.hyper_lr * i.hypergradient, rel=1e-12)
    assert n_capped == tuner.capped > 0
    assert min(i.next_lr for i in capped) >= 0.05 * 0.8**20 > 0  # never collapses to 0
    # the counter survives a state_dict round trip; paper mode refuses the cap
    again = MARTHE(make_opt(_model().parameters(), 0.05), hyper_lr=5.0, mu=0.9, max_lr_change=0.2)
    again.load_state_dict(tuner.state_dict())
    assert again.capped == tuner.capped
    with pytest.raises(ValueError, match="no cap"):
        MARTHE(make_opt(_model().parameters(), 0.05), mode="paper", max_lr_change=0.2)
    # a cap never reached changes nothing
    _, _, loose = _run_tuner(make_opt, 0.01, train, val, steps=5, hyper_lr=1e-3, mu=0.9, max_lr_change=1e6)
    _, _, plain = _run_tuner(make_opt, 0.01, train, val, steps=5, hyper_lr=1e-3, mu=0.9)
    assert [i.next_lr for i in loose] == [i.next_lr for i in plain]


def test_adaptive_mu_rules():
    train, val = _data(n_batches=10)
    for rule in ("tf", "adatune"):
        _, _, infos = _run_tuner(
            OPTIMIZERS["sgd"], 0.3, train, val, steps=10, hyper_lr=1e-3, mu="auto", mu_rule=rule
        )
        assert all(0.0 <= i.mu <= 1.0 for i in infos)
    # the original with μ_init = −1: the first exponent is 1/0, so μ_1 = 0 unless q ≥ 1
    _, tuner, infos = _run_tuner(
        OPTIMIZERS["sgd"], 0.3, train, val, steps=1, hyper_lr=1e-3, mu=-1.0, mode="paper"
    )
    assert infos[0].mu in (0.0, 1.0) and tuner.c == -1.0


def test_paper_mode_momentum_first_step_has_no_hyper_step():
    """Issue 15 item 6: with momentum the original's first step touches neither η, β, μ nor c, and is not clipped.

    Before the fix the μ rule ran on that step (with hg = 0), so μ and c were one update ahead of the original for
    the whole run (0.6–0.8 % apart in the LR over 200 steps), and the step trained on the clipped gradient.
    """
    train, val = _data()
    make_opt = lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)  # noqa: E731
    kw = dict(hyper_lr=1e-2, mu=-1.0, alpha=1e-3, mode="paper")
    model, tuner, infos = _run_tuner(make_opt, 0.1, train, val, steps=1, **kw)
    assert (tuner.mu, tuner.c, tuner.beta, tuner.eta) == (-1.0, 0.0, 1e-2, 0.1)
    assert (infos[0].lr, infos[0].hypergradient, infos[0].next_lr) == (0.1, 0.0, 0.1)
    assert all(z is None for z in tuner.z["w"])
    tuner.step(loss_fn(model(train[1][0]), train[1][1]), lambda: _val_loss(model, val, 1))
    assert tuner.c == -1.0 and tuner.mu in (0.0, 1.0)  # the μ rule's first update, one step later
    # the first step trains on the raw gradient (the clip is not applied before the momentum buffer exists)
    clip = 1e-3
    model, tuner, _ = _run_tuner(make_opt, 0.1, train, val, steps=1, grad_clipping=clip, **kw)
    plain = _model()
    opt = make_opt(plain.parameters(), 0.1)
    loss_fn(plain(train[0][0]), train[0][1]).backward()
    assert max(float(p.grad.abs().max()) for p in plain.parameters()) > clip  # the clip would have fired
    opt.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_beta_rules():
    train, val = _data(n_batches=10)
    _, _, infos = _run_tuner(
        OPTIMIZERS["sgd"], 0.01, train, val, steps=10, hyper_lr=1e-2, alpha=1e-2, beta_rule="hd"
    )
    hgs = [i.hypergradient for i in infos]
    for t in range(1, 10):
        expected_up = hgs[t] * hgs[t - 1] > 0
        assert (infos[t].hyper_lr > infos[t - 1].hyper_lr) == expected_up
    _, _, infos = _run_tuner(
        OPTIMIZERS["sgd"], 0.01, train, val, steps=10, hyper_lr=1e-2, alpha=1e-2, beta_rule="adatune"
    )
    for t in range(1, 10):
        if infos[t].hypergradient < 0:  # η rising: the adatune rule lowers β
            assert infos[t].hyper_lr <= infos[t - 1].hyper_lr


def test_non_finite_hypergradient_is_skipped():
    train, val = _data()
    model = _model()
    tuner = MARTHE(torch.optim.SGD(model.parameters(), lr=0.1), hyper_lr=1e-2, mu=0.9)
    x, y = train[0]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        info = tuner.step(loss_fn(model(x), y), lambda: _val_loss(model, val, 0) * float("nan"))
    assert info.skipped and tuner.eta == 0.1 and tuner.skipped == 1


@pytest.mark.parametrize("name", ["nesterov_wd", "adamw"])
def test_state_dict_round_trip_continues_identically(name):
    train, val = _data(n_batches=10)
    make_opt = OPTIMIZERS[name]
    kw = dict(hyper_lr=1e-3, mu="auto", alpha=1e-3)

    def build():
        model = _model()
        return model, MARTHE(make_opt(model.parameters(), LR0[name]), **kw)

    def go(model, tuner, ts):
        return [
            tuner.step(loss_fn(model(train[t][0]), train[t][1]), lambda t=t: _val_loss(model, val, t))
            for t in ts
        ]

    model, tuner = build()
    go(model, tuner, range(5))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "tuner": tuner.state_dict()}, buf)
    rest = go(model, tuner, range(5, 10))
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2, tuner2 = build()
    model2.load_state_dict(saved["model"])
    tuner2.load_state_dict(saved["tuner"])
    rest2 = go(model2, tuner2, range(5, 10))
    assert rest == rest2
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rtho_is_mu_one_and_validation():
    model = _model()
    assert RTHO(torch.optim.SGD(model.parameters(), lr=0.1)).mu == 1.0
    with pytest.raises(ValueError, match="B3"):
        MARTHE(torch.optim.Adam(model.parameters()), mode="paper")
    with pytest.raises(ValueError, match="one learning rate"):
        MARTHE(
            torch.optim.SGD(
                [{"params": [model[0].weight], "lr": 0.1}, {"params": [model[2].weight], "lr": 0.2}]
            )
        )
    with pytest.raises(ValueError, match="amsgrad"):
        MARTHE(torch.optim.Adam(model.parameters(), amsgrad=True))
    assert math.isfinite(MARTHE(torch.optim.SGD(model.parameters(), lr=0.1)).eta)


@pytest.mark.parametrize(
    "make_opt,kw",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=False), {}),
        (
            lambda p: torch.optim.SGD(
                p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-2, foreach=False
            ),
            dict(grad_clipping=1e-3),
        ),
        (
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=False),
            dict(mode="paper", grad_clipping=0.05),
        ),
        (lambda p: torch.optim.Adam(p, lr=0.02, eps=1e-3, weight_decay=1e-2, foreach=False), {}),
        (
            lambda p: torch.optim.AdamW(p, lr=0.02, eps=1e-3, weight_decay=1e-1, foreach=False),
            dict(mu="auto"),
        ),
    ],
    ids=["sgdm_wd", "nesterov_wd_clip", "paper_sgdm_clip", "adam_l2", "adamw_auto"],
)
def test_steps_without_torch_private_foreach_ops(monkeypatch, make_opt, kw):
    # torch releases differ in their torch._foreach_* ops (torch 2.11 has no _foreach_clone: issue 14). MARTHE takes
    # them where they exist (on an accelerator; forced here on CPU) and plain per-tensor ops otherwise: same numbers
    import adatune.marthe as marthe_module

    monkeypatch.setattr(marthe_module, "FOREACH_ON_CPU", True)
    train, val = _data(n_batches=4)
    kw = {"hyper_lr": 1e-3, "mu": 0.9, "alpha": 1e-3, **kw}

    def steps():
        model = _model()
        tuner = MARTHE(make_opt(model.parameters()), **kw)
        infos = [
            tuner.step(loss_fn(model(x), y), lambda t=t: _val_loss(model, val, t))
            for t, (x, y) in enumerate(train)
        ]
        return model, infos

    model, infos = steps()
    monkeypatch.delattr(torch, "_foreach_clone", raising=False)
    for name in [n for n in dir(torch) if n.startswith("_foreach_")]:
        monkeypatch.delattr(torch, name)
    assert not hasattr(torch, "_foreach_clone") and not hasattr(torch, "_foreach_mul")
    model2, infos2 = steps()
    assert infos2 == infos and any(i.hypergradient != 0.0 for i in infos)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
