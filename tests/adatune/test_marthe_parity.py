"""The foreach tangent updates of MARTHE against the per-tensor loop they replaced (kept here as the reference)."""

from __future__ import annotations

import math

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
