"""MARTHE against references written out step by step.

* The list-op tangent updates against the per-tensor loop they replaced (:class:`LoopMARTHE`).
* ``mode="paper"`` against the original MuSGD's arithmetic (:class:`OriginalMuSGD`), 200 steps on digits in
  float64: LR, hypergradient, μ and β to 1e-10 (relative), for SGD and SGD-momentum, fixed and adaptive μ
  (issue 15 item 6).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from adatune import MARTHE


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class LoopMARTHE(MARTHE):
    """MARTHE with the previous per-parameter tangent loops and clipping (the arithmetic the foreach code keeps)."""

    def _clip(self, tensors: list[Tensor]) -> list[Tensor]:
        c = self.grad_clipping
        if c is None:
            return tensors
        if self.mode == "default":
            self.clip_count += int(sum(bool((t.abs() > c).any()) for t in tensors))
        return [t.clamp(-c, c) for t in tensors]

    def _pre(self, pre, i):
        return {
            "g": pre["g"][i],
            "w": None if pre["w"] is None else pre["w"][i],
            "buf": None if pre["buf"] is None else pre["buf"][i],
            "buf_existed": None if pre["buf_existed"] is None else pre["buf_existed"][i],
        }

    def _tangent_sgd(self, pre, hvp, eta):
        mu = self._mu_tangent
        for i, p in enumerate(self.params):
            q = self._pre(pre, i)
            group = self._group_of[i]
            m, d, wd, nest = group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"]
            gp = q["g"] + wd * q["w"] if wd else q["g"]
            if m == 0:
                direction = gp
            else:
                buf = self.optimizer.state[p]["momentum_buffer"]
                direction = gp + m * buf if nest else buf
            b_w = -direction
            self._b[i] = b_w
            zw = self.z["w"][i]
            if hvp is None or mu == 0 or zw is None:
                self.z["w"][i] = b_w.clone()
                self.z["buf"][i] = None
                continue
            h = hvp[i] + wd * zw if wd else hvp[i]
            if m == 0:
                self.z["w"][i] = mu * (zw - eta * h) + b_w
                continue
            zb = self.z["buf"][i]
            if not q["buf_existed"]:
                az_buf = h
            else:
                az_buf = (1 - d) * h if zb is None else m * zb + (1 - d) * h
            az_dir = h + m * az_buf if nest else az_buf
            self.z["w"][i] = mu * (zw - eta * az_dir) + b_w
            self.z["buf"][i] = mu * az_buf

    def _tangent_adam(self, pre, hvp, eta):
        mu = self._mu_tangent
        for i, p in enumerate(self.params):
            q = self._pre(pre, i)
            group = self._group_of[i]
            beta1, beta2 = group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            decoupled = self._decoupled(group)
            state = self.optimizer.state[p]
            k = float(state["step"])
            bc1, bc2 = 1 - beta1**k, 1 - beta2**k
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m_hat = m / bc1
            sv = v.sqrt() / math.sqrt(bc2)
            den = sv + eps
            b_w = -m_hat / den
            if decoupled and wd:
                b_w = b_w - wd * q["w"]
            self._b[i] = b_w
            zw = self.z["w"][i]
            if hvp is None or mu == 0 or zw is None:
                self.z["w"][i] = b_w
                self.z["m"][i] = self.z["v"][i] = None
                continue
            coupled_wd = wd if (wd and not decoupled) else 0.0
            gp = q["g"] + coupled_wd * q["w"] if coupled_wd else q["g"]
            h = hvp[i] + coupled_wd * zw if coupled_wd else hvp[i]
            zm, zv = self.z["m"][i], self.z["v"][i]
            az_m = (1 - beta1) * h if zm is None else beta1 * zm + (1 - beta1) * h
            az_v = 2 * (1 - beta2) * gp * h
            if zv is not None:
                az_v = az_v + beta2 * zv
            safe_sv = torch.where(sv > 0, sv, torch.ones_like(sv))
            dv_term = torch.where(
                sv > 0, m_hat * az_v / (2 * safe_sv * bc2 * den * den), torch.zeros_like(sv)
            )
            d_update = az_m / (bc1 * den) - dv_term
            az_w = zw - eta * d_update
            if decoupled and wd:
                az_w = az_w - eta * wd * zw
            self.z["w"][i] = mu * az_w + b_w
            self.z["m"][i] = mu * az_m
            self.z["v"][i] = mu * az_v

    def _tangent_paper(self, pre, hvp, momentum):
        mu, eta0 = self.mu, self.eta0
        first_order = self.first_order
        for i, _p in enumerate(self.params):
            q = self._pre(pre, i)
            m = self._group_of[i]["momentum"]
            g = q["g"]
            zw = self.z["w"][i]
            if not momentum:
                if zw is None or first_order or hvp is None:
                    self.z["w"][i] = -g
                else:
                    self.z["w"][i] = mu * (zw - eta0 * hvp[i]) - g
                continue
            buf = q["buf"]
            if buf is None:
                continue
            direction = m * buf + g
            if zw is None or first_order or hvp is None:
                self.z["w"][i] = -direction
                self.z["buf"][i] = torch.zeros_like(g)
                continue
            zb = self.z["buf"][i]
            self.z["w"][i] = mu * (zw - eta0 * hvp[i] - eta0 * m * zb) - direction
            self.z["buf"][i] = mu * (hvp[i] + m * zb)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _groups(model, lr, a, b):
    """Two param groups with the same LR and different settings (blocks per group)."""
    return [{"params": list(model[0].parameters()), **a}, {"params": list(model[2].parameters()), **b}]


OPTS = {
    "sgd": lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr),
    "sgdm": lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
    "sgdm_wd_damp": lambda m, lr: torch.optim.SGD(
        m.parameters(), lr=lr, momentum=0.9, dampening=0.1, weight_decay=1e-2
    ),
    "nesterov_wd": lambda m, lr: torch.optim.SGD(
        m.parameters(), lr=lr, momentum=0.8, nesterov=True, weight_decay=1e-2
    ),
    "sgd_mixed_groups": lambda m, lr: torch.optim.SGD(
        _groups(m, lr, {"momentum": 0.0}, {"momentum": 0.9, "weight_decay": 1e-2, "nesterov": True}), lr=lr
    ),
    "adam": lambda m, lr: torch.optim.Adam(m.parameters(), lr=lr, eps=1e-3),
    "adam_l2": lambda m, lr: torch.optim.Adam(m.parameters(), lr=lr, eps=1e-3, weight_decay=1e-2),
    "adamw": lambda m, lr: torch.optim.AdamW(m.parameters(), lr=lr, eps=1e-3, weight_decay=1e-1),
    "adam_mixed_groups": lambda m, lr: torch.optim.Adam(
        _groups(m, lr, {"weight_decay": 1e-2}, {"betas": (0.8, 0.99)}), lr=lr, eps=1e-3
    ),
}
LR = {"adam": 0.02, "adam_l2": 0.02, "adamw": 0.02, "adam_mixed_groups": 0.02}


def _run(cls, make_opt, lr, kw, steps=6, dead_input=False):
    g = torch.Generator().manual_seed(0)
    model = _model()
    tuner = cls(make_opt(model, lr), **kw)
    out = []
    for _ in range(steps):
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        xv, yv = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
        if dead_input:  # input feature 0 always 0: its first-layer weights get exact zero gradients (√v̂ = 0)
            x[:, 0] = 0.0
        loss = nn.functional.cross_entropy(model(x), y)
        info = tuner.step(loss, lambda xv=xv, yv=yv: nn.functional.cross_entropy(model(xv), yv))
        out.append((info.lr, info.hypergradient, info.mu, info.hyper_lr, info.next_lr))
    return model, tuner, out


def _assert_same(a, b):
    (ma, ta, ia), (mb, tb, ib) = a, b
    assert len(ia) == len(ib)
    for x, y in zip(ia, ib):
        assert x == pytest.approx(y, rel=1e-10, abs=1e-14)
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-14)
    for key in ta.z:
        for za, zb in zip(ta.z[key], tb.z[key]):
            assert (za is None) == (zb is None)
            if za is not None:
                torch.testing.assert_close(za, zb, rtol=1e-10, atol=1e-14)
    assert ta.clip_count == tb.clip_count


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("mu", [0.0, 0.6, 1.0, "auto"])
def test_foreach_tangent_matches_the_loop(name, mu):
    kw = dict(hyper_lr=1e-2 if name.startswith("sgd") else 1e-4, mu=mu, alpha=1e-3)
    lr = LR.get(name, 0.1)
    adam = name.startswith("adam")
    a = _run(MARTHE, OPTS[name], lr, kw, dead_input=adam)
    b = _run(LoopMARTHE, OPTS[name], lr, kw, dead_input=adam)
    _assert_same(a, b)
    assert any(i[1] != 0.0 for i in a[2])


@pytest.mark.parametrize(
    "name,kw",
    [
        ("sgd", dict(mode="paper")),
        ("sgdm", dict(mode="paper", grad_clipping=0.05)),  # the clip fires on grads and HVPs
        ("sgd_mixed_groups", dict(mode="paper")),  # Z stays 0 for the group without a momentum buffer
        ("sgdm", dict(mode="paper", first_order=True)),
        ("sgdm_wd_damp", dict(grad_clipping=1e-3)),  # default mode: clipped HVP/val grads, clip_count
        ("adamw", dict(first_order=True)),
    ],
)
def test_foreach_tangent_matches_the_loop_paper_and_clipping(name, kw):
    kw = dict(hyper_lr=1e-2, mu=0.8, **kw)
    a = _run(MARTHE, OPTS[name], 0.1, kw)
    b = _run(LoopMARTHE, OPTS[name], 0.1, kw)
    _assert_same(a, b)
    if kw.get("grad_clipping", 1.0) < 1e-2 and kw.get("mode") != "paper":
        assert a[1].clip_count > 0


# ---------------------------------------------------------------------- paper mode against the original's arithmetic
# A reference written from the brief's description of the original MuSGD (brief §1.2, §1.4, §1.5), its own code:
# flat float64 vectors, η a float32 0-d tensor stepped by torch.optim.SGD(lr=β), the loop of rtho.py (training
# gradient with create_graph → tangent → p.grad = the gradients → optimizer.step() → validation gradient at w_{t+1}
# → hyper-step). With momentum, "iteration 1 does nothing" (brief §1.2, B11) taken literally: no clipping (that
# step trains on the raw gradient), no tangent, no b, and no hyper-step (there is no tangent to take it with), so
# η, β, μ and c are untouched by it. The training steps use the user's η0 until the first hyper-step writes the
# float32 η into the param groups.


def _flat(xs) -> Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


class OriginalMuSGD:
    """The original MuSGD, step by step, on one param group of a torch.optim.SGD."""

    def __init__(self, optimizer, hyper_lr, mu, alpha, grad_clipping=100.0, first_order=False):
        self.opt = optimizer
        self.params = list(optimizer.param_groups[0]["params"])
        self.eta0 = optimizer.param_groups[0]["lr"]
        self.m = optimizer.param_groups[0]["momentum"]
        self.eta = torch.tensor(self.eta0, dtype=torch.float32, requires_grad=True)
        self.eta_opt = torch.optim.SGD([self.eta], lr=hyper_lr)
        self.clip = grad_clipping
        self.first_order = first_order
        self.mu = float(mu)
        self.adaptive = self.mu < 0
        self.alpha = alpha
        self.c = 0.0
        self.zw = self.zv = self.b = None
        self.started = False
        self.trace = []  # (lr used, hg, μ, β, η_next) per step

    def _buf(self) -> Tensor:
        return _flat([self.opt.state[p]["momentum_buffer"] for p in self.params])

    def before_step(self, grads):
        """The tangent (compute_hg); returns the gradients the training step uses."""
        if self.m > 0 and not self.started:
            self.started = True
            return [x.detach() for x in grads]
        c = self.clip
        grads = [x.clamp(-c, c) for x in grads]
        g = _flat(grads)
        m, mu, eta0 = self.m, self.mu, self.eta0
        if self.first_order or self.zw is None:
            if m > 0:
                self.zw = -(m * self._buf() + g.detach())
                self.zv = torch.zeros_like(self.zw)
            else:
                self.zw = -g.detach()
        else:
            h = _flat(torch.autograd.grad(g @ self.zw, self.params)).clamp(-c, c)
            if m > 0:
                direction = m * self._buf() + g.detach()
                zw = mu * (self.zw - eta0 * h - eta0 * m * self.zv) - direction
                self.zv = mu * (h + m * self.zv)
                self.zw = zw
            else:
                self.zw = mu * (self.zw - eta0 * h) - g.detach()
        self.b = g.detach()
        return [x.detach() for x in grads]

    def hyper_step(self, val_grads, lr_used):
        """η, β, μ from the validation gradient at w_{t+1} (hyper_step); nothing while there is no tangent."""
        beta = self.eta_opt.param_groups[0]["lr"]
        if self.zw is None:
            self.trace.append((lr_used, 0.0, self.mu, beta, lr_used))
            return
        gv = _flat(val_grads).clamp(-self.clip, self.clip)
        hg = float(gv @ self.zw)
        self.eta.grad = torch.tensor(hg, dtype=torch.float32)
        self.eta_opt.step()
        new_lr = float(self.eta.detach())
        for group in self.opt.param_groups:
            group["lr"] = new_lr
        beta = max(beta + self.alpha * hg * new_lr, 0.0)
        self.eta_opt.param_groups[0]["lr"] = beta
        if self.adaptive:
            q = new_lr / float(gv @ self.b)
            z = np.float64(min(max(q, 0.0), 1.0))
            self.c = self.c * float(np.sign(self.mu)) + self.mu
            with np.errstate(divide="ignore"):
                self.mu = float(np.power(z, np.float64(1.0) / np.float64(self.c + 1.0)))
        self.trace.append((lr_used, hg, self.mu, beta, new_lr))


PAPER_STEPS = 200


@functools.cache
def _digits_problem():
    """The brief's setup (a): digits standardised, train 1000 / val 400, MLP 64-32(tanh)-10, batches of 50."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    train_x, train_y, val_x, val_y = x[:1000], y[:1000], x[1000:1400], y[1000:1400]
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    g = torch.Generator().manual_seed(1)
    batches = []
    while len(batches) < PAPER_STEPS:
        order = torch.randperm(1000, generator=g)
        batches += [(train_x[order[i : i + 50]], train_y[order[i : i + 50]]) for i in range(0, 1000, 50)]
    val = [(val_x[i : i + 100], val_y[i : i + 100]) for i in range(0, 400, 100)]
    return batches[:PAPER_STEPS], val


def _digits_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()


def _run_original(make_opt, lr0, kw, train, val):
    model = _digits_model()
    opt = make_opt(model, lr0)
    ref = OriginalMuSGD(opt, **kw)
    params = list(model.parameters())
    for t, (x, y) in enumerate(train):
        lr_used = opt.param_groups[0]["lr"]
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        for p, gi in zip(params, ref.before_step(grads)):
            p.grad = gi
        opt.step()
        xv, yv = val[t % len(val)]
        val_grads = torch.autograd.grad(nn.functional.cross_entropy(model(xv), yv), params)
        ref.hyper_step(val_grads, lr_used)
    return model, ref.trace


def _run_paper(make_opt, lr0, kw, train, val):
    model = _digits_model()
    tuner = MARTHE(make_opt(model, lr0), mode="paper", **kw)
    trace = []
    for t, (x, y) in enumerate(train):
        xv, yv = val[t % len(val)]
        loss = nn.functional.cross_entropy(model(x), y)
        info = tuner.step(loss, lambda xv=xv, yv=yv: nn.functional.cross_entropy(model(xv), yv))
        trace.append((info.lr, info.hypergradient, info.mu, info.hyper_lr, info.next_lr))
    return model, trace


def _max_rel(a, b, col, floor=0.0):
    """The largest |a − b| / max(|a|, |b|, floor) of column ``col`` over the steps."""
    out = 0.0
    for x, y in zip(a, b):
        if x[col] != y[col]:
            out = max(out, abs(x[col] - y[col]) / max(abs(x[col]), abs(y[col]), floor))
    return out


_SGD = lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr)  # noqa: E731
_SGDM = lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)  # noqa: E731
_SGDM_WD = lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)  # noqa: E731

# (optimizer, η0, MuSGD arguments); the last is issue 15 item 6 (adaptive μ with momentum: 0.6 % apart before)
PAPER_CASES = {
    "sgd_mu0": (_SGD, 0.01, dict(hyper_lr=0.01, mu=0.0, alpha=0.0)),
    "sgd_mu0.9": (_SGD, 0.01, dict(hyper_lr=0.01, mu=0.9, alpha=0.0)),
    "sgd_rtho_alpha": (_SGD, 0.01, dict(hyper_lr=0.01, mu=1.0, alpha=1e-3)),
    "sgd_auto_mu": (_SGD, 0.001, dict(hyper_lr=0.01, mu=-1.0, alpha=1e-3)),
    "sgd_first_order": (_SGD, 0.01, dict(hyper_lr=0.01, mu=0.9, alpha=0.0, first_order=True)),
    "sgdm_mu0": (_SGDM, 0.001, dict(hyper_lr=0.01, mu=0.0, alpha=0.0)),
    "sgdm_mu0.99_alpha": (_SGDM, 0.001, dict(hyper_lr=0.01, mu=0.99, alpha=1e-3)),
    "sgdm_wd_mu0.9": (_SGDM_WD, 0.001, dict(hyper_lr=0.01, mu=0.9, alpha=0.0)),
    "sgdm_clip_mu0.9": (_SGDM, 0.001, dict(hyper_lr=0.01, mu=0.9, alpha=0.0, grad_clipping=0.05)),
    "sgdm_first_order_auto_mu": (_SGDM, 0.001, dict(hyper_lr=0.01, mu=-1.0, alpha=1e-3, first_order=True)),
    "sgdm_auto_mu": (_SGDM, 0.001, dict(hyper_lr=0.01, mu=-1.0, alpha=1e-3)),
    "sgdm_auto_mu_lr0.01": (_SGDM, 0.01, dict(hyper_lr=0.01, mu=-1.0, alpha=1e-3)),
}


# the fast tier runs the case and one of each kind; the other configurations are in the slow tier
FAST_PAPER_CASES = ("sgd_auto_mu", "sgdm_mu0.99_alpha", "sgdm_clip_mu0.9", "sgdm_auto_mu")


@pytest.mark.usefixtures("one_thread")  # a 64-32-10 MLP: one thread is ~30x faster than two here
@pytest.mark.parametrize(
    "name", [n if n in FAST_PAPER_CASES else pytest.param(n, marks=pytest.mark.slow) for n in PAPER_CASES]
)
def test_paper_mode_matches_the_original_arithmetic(name):
    """200 steps of MARTHE(mode="paper") against OriginalMuSGD: LR, hypergradient, μ, β to 1e-10 (relative)."""
    make_opt, lr0, kw = PAPER_CASES[name]
    train, val = _digits_problem()
    model_ref, ref = _run_original(make_opt, lr0, kw, train, val)
    model, ours = _run_paper(make_opt, lr0, kw, train, val)
    assert len(ref) == len(ours) == PAPER_STEPS
    for col, what in enumerate(("lr", "hypergradient", "mu", "hyper_lr", "next_lr")):
        # a hypergradient near 0 is a sum that cancels: measured against the run's largest (summation order)
        floor = 1e-3 * max(abs(r[col]) for r in ref) if what == "hypergradient" else 0.0
        assert _max_rel(ref, ours, col, floor) <= 1e-10, (what, _max_rel(ref, ours, col, floor))
    for a, b in zip(model_ref.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    lrs = [r[0] for r in ref]
    assert len(set(lrs)) > 5  # the LR did move (the adatune β rule may freeze it later: β → 0)
    if kw["mu"] < 0:
        assert len({r[2] for r in ref}) > 2  # and so did μ
