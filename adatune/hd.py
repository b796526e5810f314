"""Hypergradient descent on the training loss: SGD-HD and Adam-HD (Baydin et al., ICLR 2018).

The learning rate follows α_t = α_{t−1} − β ∂f(θ_t)/∂α_{t−1}, and since θ_t = θ_{t−1} − α_{t−1} u_{t−1}
(u the update direction), ∂f(θ_t)/∂α_{t−1} = −⟨∇f(θ_t), u_{t−1}⟩ (Baydin et al., eq. 3 / Alg. 2-3).

Two modes:

* ``mode="default"``: one hypergradient per param group, the dot product taken over the whole group and the LR
  updated once per step (in float64 Python floats), gradients left untouched, the LR kept ≥ 0, and Adam in
  torch's form (m̂ / (√v̂ + ε)), so the hypergradient is that of the step actually applied.
* ``mode="paper"``: the arithmetic of the original ``hd_sgd.py``/``hd_adam.py``: one param group only for SGD-HD,
  weight decay added into ``p.grad`` in place, the LR updated in float32 (SGD-HD) and, for Adam-HD, inside the
  per-tensor loop with the old ε form ``lr·√bc2/bc1·m/(√v+ε)``; no floor on the LR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["SGDHD", "AdamHD"]

_MODES = ("default", "paper")


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return mode


def _closure_loss(closure: Callable[[], Any] | None) -> Any:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class _HDOptimizer(Optimizer):
    """What SGDHD and AdamHD share: the mode, and a step that updates each group's LR, then its parameters.

    Subclasses define ``_default_group`` and ``_paper_group`` (one group's LR update and parameter step).
    """

    @property
    def mode(self) -> str:
        """``"default"`` or ``"paper"`` (kept in ``defaults`` so that it survives pickling and deepcopy)."""
        return self.defaults["mode"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One hypergradient LR update followed by one step of the base rule, for every param group."""
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if self.mode == "paper":
                self._paper_group(group, params)
            else:
                self._default_group(group, params)
        return loss


class SGDHD(_HDOptimizer):
    """SGD (momentum, dampening, Nesterov, coupled weight decay) whose LR is tuned by hypergradient descent.

    Args:
        params: parameters or param groups.
        lr: initial learning rate α_0 (≥ 0).
        momentum: heavy-ball momentum, torch's convention (buf = m·buf + (1−dampening)·g).
        dampening: dampening of the momentum.
        weight_decay: coupled L2 coefficient (added to the gradient).
        nesterov: Nesterov momentum.
        hypergrad_lr: β, the hyper learning rate.
        mode: ``"default"`` (per-group, exact, LR ≥ 0) or ``"paper"`` (the original's arithmetic).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        hypergrad_lr: float = 1e-6,
        mode: str = "default",
    ):
        if lr < 0.0:
            raise ValueError(f"Invalid lr: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if hypergrad_lr < 0.0:
            raise ValueError(f"Invalid hypergrad_lr: {hypergrad_lr}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=float(lr),
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            hypergrad_lr=hypergrad_lr,
            mode=_check_mode(mode),
        )
        super().__init__(params, defaults)
        if self.mode == "paper" and len(self.param_groups) != 1:
            raise ValueError("params: mode='paper' supports one param group only (as the original SGDHD)")

    def _direction(self, group: dict, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        momentum, dampening = group["momentum"], group["dampening"]
        if momentum == 0:
            return grad
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.clone()
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        return grad.add(buf, alpha=momentum) if group["nesterov"] else buf

    def _default_group(self, group: dict, params: list[torch.Tensor]) -> None:
        wd = group["weight_decay"]
        grads = [p.grad.add(p, alpha=wd) if wd else p.grad for p in params]
        # h = ⟨∇f(θ_t), u_{t−1}⟩ over the whole group (u_{−1} = 0): one host sync per group
        prevs = [self.state[p].get("prev_direction") for p in params]
        dots = [torch.sum(g * u) for g, u in zip(grads, prevs) if u is not None]
        h = float(torch.stack(dots).sum()) if dots else 0.0
        if math.isfinite(h):
            group["lr"] = max(0.0, float(group["lr"]) + group["hypergrad_lr"] * h)
        lr = group["lr"]
        for p, g in zip(params, grads):
            d = self._direction(group, p, g)
            self.state[p]["prev_direction"] = d.clone()
            p.add_(d, alpha=-lr)

    def _paper_group(self, group: dict, params: list[torch.Tensor]) -> None:
        wd = group["weight_decay"]
        if wd:
            for p in params:
                p.grad.add_(p, alpha=wd)  # the original mutates p.grad
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        state = self.state[params[0]]  # the original keeps its global state on the first parameter
        prev = state.get("grad_prev")
        if prev is None:
            prev = torch.zeros_like(grad)
        h = torch.dot(grad, prev)
        lr32 = torch.tensor(group["lr"], dtype=h.dtype) + group["hypergrad_lr"] * h
        group["lr"] = float(lr32)
        momentum, dampening = group["momentum"], group["dampening"]
        if momentum != 0:
            buf = state.get("momentum_buffer_flat")
            if buf is None:
                buf = state["momentum_buffer_flat"] = grad.clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        state["grad_prev"] = grad.clone()
        offset = 0
        for p in params:
            n = p.numel()
            p.sub_(grad[offset : offset + n].view_as(p) * lr32)
            offset += n


class AdamHD(_HDOptimizer):
    """Adam (coupled L2) whose LR is tuned by hypergradient descent.

    Args:
        params: parameters or param groups.
        lr: initial learning rate α_0 (≥ 0).
        betas: (β1, β2) of Adam.
        eps: ε of Adam.
        weight_decay: coupled L2 coefficient (added to the gradient).
        hypergrad_lr: β, the hyper learning rate.
        mode: ``"default"`` (per-group dot product, torch's Adam form, LR ≥ 0) or ``"paper"``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hypergrad_lr: float = 1e-8,
        mode: str = "default",
    ):
        if lr < 0.0:
            raise ValueError(f"Invalid lr: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if hypergrad_lr < 0.0:
            raise ValueError(f"Invalid hypergrad_lr: {hypergrad_lr}")
        defaults = dict(
            lr=float(lr),
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            hypergrad_lr=hypergrad_lr,
            mode=_check_mode(mode),
        )
        super().__init__(params, defaults)

    def _default_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        wd, eps = group["weight_decay"], group["eps"]
        grads = [p.grad.add(p, alpha=wd) if wd else p.grad for p in params]
        # u_{t−1} = m̂_{t−1}/(√v̂_{t−1}+ε), the direction of the previous step (stored when it was taken)
        dots = [
            torch.sum(g * self.state[p]["prev_direction"])
            for p, g in zip(params, grads)
            if "prev_direction" in self.state[p]
        ]
        h = float(torch.stack(dots).sum()) if dots else 0.0
        if math.isfinite(h):
            group["lr"] = max(0.0, float(group["lr"]) + group["hypergrad_lr"] * h)
        lr = group["lr"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            k = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bc1, bc2 = 1 - beta1**k, 1 - beta2**k
            d = (m / bc1) / (v.sqrt() / math.sqrt(bc2) + eps)
            state["prev_direction"] = d
            p.add_(d, alpha=-lr)

    def _paper_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        wd, eps = group["weight_decay"], group["eps"]
        for p in params:
            grad = p.grad
            if wd:
                grad.add_(p, alpha=wd)  # the original mutates p.grad
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            if state["step"] >= 1:
                # per tensor, from its 2nd step, with the previous step's bias corrections (gbaydin #9)
                prev = state["step"]
                bc1, bc2 = 1 - beta1**prev, 1 - beta2**prev
                h = torch.dot(grad.reshape(-1), (m / (v.sqrt() + eps)).reshape(-1)) * math.sqrt(bc2) / bc1
                group["lr"] = float(group["lr"] + group["hypergrad_lr"] * float(h))
            state["step"] += 1
            k = state["step"]
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bc1, bc2 = 1 - beta1**k, 1 - beta2**k
            p.addcdiv_(m, v.sqrt().add_(eps), value=-group["lr"] * math.sqrt(bc2) / bc1)
