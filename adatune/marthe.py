"""MARTHE and RTHO: the learning rate tuned online by forward-mode hypergradients (Donini et al., IJCAI 2020).

Notation (README of the original; brief §1.1): s_t is the optimizer state (weights and momentum/Adam buffers),
s_{t+1} = Φ_t(s_t, η_t), A_t = ∂Φ_t/∂s_t, B_t = ∂Φ_t/∂η_t. MARTHE keeps one tangent

    Z_{t+1} = μ A_t Z_t + B_t,   Z_0 = 0,

and steps η_{t+1} = max(0, η_t − β ⟨∇E(w_{t+1}), Z^w_{t+1}⟩), with E the validation loss. μ = 0 is HD on the
validation loss, μ = 1 is RTHO (Franceschi et al., 2017). Unrolled, Z_{t+1} = Σ_s μ^{t−s} A_t···A_{s+1} B_s: the
derivative of s_{t+1} along per-step LR perturbations μ^{t−s}, which is what the tests check by finite differences.

``mode="default"`` uses the exact Jacobian of the wrapped torch optimizer's update (momentum, dampening, Nesterov,
coupled L2, Adam's moments and bias corrections, AdamW's decoupled decay) at the LR actually used at each step,
keeps η, β, μ in float64, projects η onto η ≥ 0 and skips non-finite hypergradients. ``mode="paper"`` reproduces
the original ``MuSGD``, quirks included; it refuses Adam, whose original tangent is wrong (brief B3). The quirks:

* η0, the construction-time LR, in A forever (B1); no η ≥ 0 projection (B2).
* η a float32 tensor stepped by SGD(lr=β) (B8); the training steps use the user's η0 itself until the first
  hyper-step writes the float32 η into the param groups (the first step, the first two with momentum).
* ±100 elementwise clipping of the training gradient (which the step then uses), the HVP and the validation
  gradient (B10); the HVP computed even at μ = 0 (B12).
* With momentum the first step does nothing but train (B11), on the *unclipped* gradient: no tangent, and no
  hyper-step at all, so η, β, μ and c keep their initial values through it. Running the μ rule on that step
  (with hg = 0), as this class did before, put μ and c one update ahead of the original for the whole run:
  0.6–0.8 % apart in the LR over 200 steps with μ = "auto" (issue 15 item 6).
* Weight decay, dampening and Nesterov ignored in the tangent (B9).
* The adatune β rule (α·hg·η_{t+1}) and μ rule (η_{t+1}/⟨∇E, g_t⟩, c ← c·sign(μ) + μ, μ_init leaking into c,
  ZeroDivisionError on an exact 0 denominator; numpy's z^(1/0) = 0 or 1 and 0^(negative) = ∞) (B5, B6).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MARTHE", "RTHO", "StepInfo"]

log = logging.getLogger(__name__)

MODES = ("default", "paper")
BETA_RULES = ("hd", "adatune")
MU_RULES = ("tf", "adatune")


@dataclass
class StepInfo:
    """What one :meth:`MARTHE.step` did.

    Attributes:
        lr: the learning rate this step used (η_t).
        hypergradient: ⟨∇E(w_{t+1}), Z^w_{t+1}⟩ (0.0 when skipped).
        mu: μ after the step.
        hyper_lr: β after the step.
        next_lr: η_{t+1}, the learning rate of the next step.
        skipped: True when the hypergradient was not finite and the hyper-update was skipped.
    """

    lr: float
    hypergradient: float
    mu: float
    hyper_lr: float
    next_lr: float
    skipped: bool = False


def _dot(a: list[Tensor], b: list[Tensor | None]) -> Tensor:
    terms = [torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b) if y is not None]
    if not terms:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(terms).sum().double()


def _blocks(keys: list[tuple], start: int) -> list[tuple[tuple, list[int]]]:
    """Indices start, start+1, ... grouped by key, in order of first appearance (normally a single block)."""
    if all(k == keys[0] for k in keys):
        return [(keys[0], list(range(start, start + len(keys))))]
    out: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(start + i)
    return list(out.items())


def _put(target: list, idx: list[int], values: list) -> None:
    if len(idx) == len(target) or (idx and idx[-1] - idx[0] + 1 == len(idx)):
        target[idx[0] : idx[0] + len(idx)] = values
    else:
        for i, v in zip(idx, values):
            target[i] = v


# Elementwise arithmetic over lists of tensors (``other``: one number for every tensor, or a sequence with one number
# or tensor per tensor). On an accelerator the torch._foreach_* kernels do it in one launch per chunk of tensors instead
# of one per tensor; those ops are in every torch this project supports (2.3 and later) except _foreach_clone (absent
# from torch 2.11: issue 14), which is never used. On CPU the foreach ops run the same per-tensor kernels, so the plain
# loop is taken there (tests set FOREACH_ON_CPU to compare both paths bitwise). A torch without an op falls back too.
FOREACH_ON_CPU = False


def _pairs(xs: Sequence[Tensor], other: Any) -> Iterable[tuple[Tensor, Any]]:
    if isinstance(other, list | tuple):
        return zip(xs, other, strict=True)
    return ((x, other) for x in xs)


def _foreach_op(name: str, xs: Sequence[Tensor], other: Any = None) -> Any:
    """The ``torch._foreach_<name>`` op when it applies to ``xs`` and ``other`` here, else None."""
    if not xs or (xs[0].device.type == "cpu" and not FOREACH_ON_CPU):
        return None
    if isinstance(other, list | tuple):
        if not (all(isinstance(o, Tensor) for o in other) or all(isinstance(o, int | float) for o in other)):
            return None
    elif other is not None and (isinstance(other, bool) or not isinstance(other, int | float)):
        return None
    return getattr(torch, f"_foreach_{name}", None)


def _elementwise(name: str, xs: Sequence[Tensor], other: Any) -> list[Tensor]:
    op = _foreach_op(name, xs, other)
    if op is not None:
        return list(op(list(xs), list(other) if isinstance(other, tuple) else other))
    return [getattr(x, name)(o) for x, o in _pairs(xs, other)]


def _elementwise_(name: str, xs: list[Tensor], other: Any) -> list[Tensor]:
    op = _foreach_op(f"{name}_", xs, other)
    if op is not None:
        op(xs, list(other) if isinstance(other, tuple) else other)
        return xs
    for x, o in _pairs(xs, other):
        getattr(x, f"{name}_")(o)
    return xs


def _add(xs: Sequence[Tensor], other: Any) -> list[Tensor]:
    return _elementwise("add", xs, other)


def _sub(xs: Sequence[Tensor], other: Any) -> list[Tensor]:
    return _elementwise("sub", xs, other)


def _mul(xs: Sequence[Tensor], other: Any) -> list[Tensor]:
    return _elementwise("mul", xs, other)


def _div(xs: Sequence[Tensor], other: Any) -> list[Tensor]:
    return _elementwise("div", xs, other)


def _neg(xs: Sequence[Tensor]) -> list[Tensor]:
    op = _foreach_op("neg", xs)
    return list(op(list(xs))) if op is not None else [x.neg() for x in xs]


def _add_(xs: list[Tensor], other: Any) -> list[Tensor]:
    return _elementwise_("add", xs, other)


def _sub_(xs: list[Tensor], other: Any) -> list[Tensor]:
    return _elementwise_("sub", xs, other)


def _mul_(xs: list[Tensor], other: Any) -> list[Tensor]:
    return _elementwise_("mul", xs, other)


def _div_(xs: list[Tensor], other: Any) -> list[Tensor]:
    return _elementwise_("div", xs, other)


def _clamp(xs: Sequence[Tensor], c: float) -> list[Tensor]:
    """Each x clipped to [−c, c] (differentiable: the training gradients of paper mode are clipped in the graph)."""
    return [x.clamp_min(-c).clamp_max(c) for x in xs]


def _clone(xs: Sequence[Tensor]) -> list[Tensor]:
    return [x.clone() for x in xs]


def _scaled(xs: list[Tensor], a: float, inplace: bool = False) -> list[Tensor]:
    """a·x for each x; a = 1 returns the inputs (x·1 is exactly x)."""
    if a == 1:
        return xs
    if inplace:
        return _mul_(xs, a)
    return _mul(xs, a)


def _mu_affine(mu: float, zw: list[Tensor], eta: float, x: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """μ·(Z^w − η·x) + B, elementwise in that order."""
    out = _sub(zw, _mul(x, eta))
    out = _scaled(out, mu, inplace=True)
    return _add_(out, b)


# ---------------------------------------------------------------------- Adam's tangent, step by step (brief §1.2)
# Each function is one term of Z_{t+1} = μ A_t Z_t + B_t through torch's Adam/AdamW step k, for a list of tensors
# (one param group, or one block of it); the ops run in the order of the formulas, so a split or a merge of these
# steps would not change a bit.


@dataclass
class _AdamTerms:
    """What Adam's step k left behind that its Jacobian needs, per tensor: the state after the step.

    Attributes:
        bc1: 1 − β1^k.
        bc2: 1 − β2^k.
        m_hat: m̂ = m/(1 − β1^k).
        sv: √v̂ = √v/√(1 − β2^k).
        den: D = √v̂ + ε.
    """

    bc1: list[float]
    bc2: list[float]
    m_hat: list[Tensor]
    sv: list[Tensor]
    den: list[Tensor]

    @classmethod
    def of(cls, states: list[dict[str, Any]], beta1: float, beta2: float, eps: float) -> _AdamTerms:
        """The terms from torch Adam's per-parameter ``state`` (``step``, ``exp_avg``, ``exp_avg_sq``)."""
        ks = [float(st["step"]) for st in states]
        bc1 = [1 - beta1**k for k in ks]
        bc2 = [1 - beta2**k for k in ks]
        m_hat = _div([st["exp_avg"] for st in states], bc1)
        sv = _div_([st["exp_avg_sq"].sqrt() for st in states], [math.sqrt(b) for b in bc2])
        return cls(bc1, bc2, m_hat, sv, _add(sv, eps))

    def take(self, j: list[int]) -> _AdamTerms:
        """The terms of tensors ``j`` (a block of the group)."""
        return _AdamTerms(*([xs[i] for i in j] for xs in (self.bc1, self.bc2, self.m_hat, self.sv, self.den)))


def _adam_b(terms: _AdamTerms, w: list[Tensor] | None, decoupled_wd: float) -> list[Tensor]:
    """B^w = ∂w_{t+1}/∂η = −m̂/D, and −λw_t more for AdamW's decoupled decay w(1 − ηλ) (``w`` given then)."""
    b_w = _div_(_neg(terms.m_hat), terms.den)
    if decoupled_wd:
        _sub_(b_w, _mul(w, decoupled_wd))
    return b_w


def _coupled_l2(
    g: list[Tensor], h: list[Tensor], w: list[Tensor], zw: list[Tensor], wd: float
) -> tuple[list[Tensor], list[Tensor]]:
    """Adam's coupled L2 (``weight_decay`` of torch Adam): g' = g + λw and h' = H'Z^w = HZ^w + λZ^w."""
    return _add(g, _mul(w, wd)), _add(h, _mul(zw, wd))


def _adam_az_moments(
    zm: list[Tensor] | None,
    zv: list[Tensor] | None,
    g: list[Tensor],
    h: list[Tensor],
    beta1: float,
    beta2: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """(AZ)^m = β1 Z^m + (1−β1) h and (AZ)^v = β2 Z^v + 2(1−β2) g'⊙h (``zm``/``zv`` None: Z^m/Z^v = 0).

    The derivatives of m = β1 m + (1−β1) g' and v = β2 v + (1−β2) g'² along Z, with h = H'Z^w (g' is ``g``).
    """
    az_m = _mul(h, 1 - beta1)
    if zm is not None:
        az_m = _add(_mul(zm, beta1), az_m)
    az_v = _mul_(_mul(g, 2 * (1 - beta2)), h)
    if zv is not None:
        _add_(az_v, _mul(zv, beta2))
    return az_m, az_v


def _adam_dv_term(terms: _AdamTerms, az_v: list[Tensor]) -> list[Tensor]:
    """m̂⊙(AZ)^v / (2√v̂ (1−β2^k) D²): the derivative of m̂/D through v, since ∂D/∂v = 1/(2√v̂ (1−β2^k)).

    √v̂ = 0 only where every gradient so far was 0; there the term vanishes with its tangent. pos = 1 where
    √v̂ > 0 else 0; √v̂ + (1 − pos) is √v̂ or 1, and ·pos zeroes the term (exactly torch.where(√v̂ > 0, ·, ·) on
    finite values, without a branch).
    """
    pos = [x.sign() for x in terms.sv]
    safe_sv = _add_(_add_(_neg(pos), 1.0), terms.sv)
    q = _mul_(_mul_(_mul_(_mul(safe_sv, 2), terms.bc2), terms.den), terms.den)
    return _mul_(_div_(_mul(terms.m_hat, az_v), q), pos)


def _adam_az_w(
    zw: list[Tensor],
    az_m: list[Tensor],
    dv_term: list[Tensor],
    terms: _AdamTerms,
    eta: float,
    decoupled_wd: float,
) -> list[Tensor]:
    """(AZ)^w = Z^w − η[(AZ)^m/((1−β1^k) D) − dv_term], and −ηλZ^w more for AdamW's decoupled decay.

    The derivative of w ← w − η m̂/D (AdamW: w(1 − ηλ) − η m̂/D) along Z at the LR η the step used.
    """
    d_update = _sub_(_div(az_m, _mul(terms.den, terms.bc1)), dv_term)
    az_w = _sub(zw, _mul(d_update, eta))
    if decoupled_wd:
        _sub_(az_w, _mul(zw, eta * decoupled_wd))
    return az_w


class MARTHE:
    """Wraps a ``torch.optim.SGD``, ``Adam`` or ``AdamW`` and tunes its (single) learning rate online.

    Usage::

        tuner = MARTHE(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), hyper_lr=1e-3, mu=0.9)
        info = tuner.step(loss, lambda: val_loss_fn(model))   # replaces backward() + optimizer.step()

    Args:
        optimizer: the wrapped optimizer; every param group must start with the same ``lr`` (η_0).
        hyper_lr: β_0, the hyper learning rate.
        mu: the discount μ ∈ [0, 1]; ``"auto"`` or a negative number for the adaptive μ.
        alpha: the hyper-hyper learning rate of the β rule (0 keeps β fixed).
        beta_rule: ``"hd"`` (β ← max(β + α·hg_t·hg_{t−1}, 0), as Marthe-TF) or ``"adatune"``
            (β ← max(β + α·hg·η_{t+1}, 0), as the original PyTorch code).
        mu_rule: ``"tf"`` (z = hg_t/⟨∇E, B_t⟩, c ← (c+1)μ) or ``"adatune"`` (z = η_{t+1}/⟨∇E, g_t⟩,
            c ← c·sign(μ) + μ); in both μ ← clip(z, 0, 1)^{1/(c+1)}.
        mu_init: the first μ of the adaptive rule (default mode; paper mode starts from the negative ``mu``).
        clip_lr: project η onto η ≥ 0 (default mode).
        grad_clipping: elementwise clip value. Default mode: None (off); when set, only the hyper quantities
            (HVP, validation gradient) are clipped and :attr:`clip_count` counts how often it fired. Paper mode:
            100 unless given, applied in place to the training gradient (which the step then uses), HVP and
            validation gradient, as the original.
        first_order: drop the A_t Z_t term (Z ← B_t), i.e. μ = 0 in the tangent.
        mode: ``"default"`` or ``"paper"``.
        max_lr_change: default mode only: cap the LR step |β·hg| at ``max_lr_change``·η_t (brief B13; None: no
            cap). With a value below 1 the LR changes by at most that factor per step and never reaches 0 from
            η_0 > 0; :attr:`capped` counts the capped steps. The β and μ rules still see the uncapped hg.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        hyper_lr: float = 1e-8,
        mu: float | str = 0.99,
        alpha: float = 0.0,
        *,
        beta_rule: str = "hd",
        mu_rule: str = "tf",
        mu_init: float = 0.0,
        clip_lr: bool = True,
        grad_clipping: float | None = None,
        first_order: bool = False,
        mode: str = "default",
        max_lr_change: float | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be 'default' or 'paper', got {mode!r}")
        if max_lr_change is not None:
            if mode == "paper":
                raise ValueError("max_lr_change: the original has no cap on the LR step; use mode='default'")
            if not max_lr_change > 0:
                raise ValueError(f"max_lr_change must be > 0 or None, got {max_lr_change}")
        if hyper_lr < 0:
            raise ValueError(f"hyper_lr must be >= 0, got {hyper_lr}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if beta_rule not in BETA_RULES:
            raise ValueError(f"beta_rule must be one of {BETA_RULES}, got {beta_rule!r}")
        if mu_rule not in MU_RULES:
            raise ValueError(f"mu_rule must be one of {MU_RULES}, got {mu_rule!r}")
        self.optimizer = optimizer
        self.mode = mode
        self.kind = self._kind(optimizer)
        if mode == "paper":
            if self.kind != "sgd":
                raise ValueError(
                    "mode='paper' supports torch.optim.SGD only: the original MuAdam's tangent is not the "
                    "derivative of Adam's update (missing +Z_w carry-over, (1−η0·c) coefficient, √(v+ε) "
                    "denominator; brief B3). Use mode='default' for Adam/AdamW."
                )
            beta_rule, mu_rule = "adatune", "adatune"
            if grad_clipping is None:
                grad_clipping = 100.0
        lrs = {float(g["lr"]) for g in optimizer.param_groups}
        if len(lrs) != 1:
            raise ValueError(
                f"optimizer: MARTHE tunes one learning rate; the param groups have lr {sorted(lrs)}"
            )
        self.params: list[Tensor] = [p for g in optimizer.param_groups for p in g["params"]]
        self._group_of = [g for g in optimizer.param_groups for _ in g["params"]]
        self.eta0 = lrs.pop()
        if mu == "auto":
            self.adaptive_mu, mu_value = True, (mu_init if mode == "default" else -1.0)
        else:
            mu_value = float(mu)
            self.adaptive_mu = mu_value < 0
            if self.adaptive_mu and mode == "default":
                mu_value = mu_init
            elif mu_value > 1:
                raise ValueError(f"mu must be in [0, 1], 'auto' or negative (adaptive), got {mu}")
        # η_0 as given: the original steps a float32 copy of it, but its first training step (the first two with
        # momentum) still uses the user's η_0 from the param groups; every later η is the float32 tensor's value
        self.eta = float(self.eta0)
        self.beta = float(hyper_lr)
        self.mu = float(mu_value)
        self.alpha = float(alpha)
        self.c = 0.0
        self.prev_hg = 0.0
        self.beta_rule, self.mu_rule = beta_rule, mu_rule
        self.clip_lr = clip_lr and mode == "default"
        self.grad_clipping = grad_clipping
        self.first_order = first_order
        self.t = 0
        self.skipped = 0
        self.capped = 0
        self.max_lr_change = None if max_lr_change is None else float(max_lr_change)
        self.clip_count = 0
        self._clip_pending: list[Tensor] = []  # clip counts of this step, read at its one host sync
        n = len(self.params)
        # the tangent, per parameter: Z^w, and Z^buf (SGD momentum) or Z^m, Z^v (Adam); None means 0
        self.z: dict[str, list[Tensor | None]] = {k: [None] * n for k in ("w", "buf", "m", "v")}
        # B^w_t of the last step, for the TF μ rule's one-step hypergradient ⟨∇E(w_{t+1}), B_t⟩
        self._b: list[Tensor | None] = [None] * n
        for p in self.params:
            if not p.requires_grad:
                raise ValueError("optimizer: every parameter must require grad")

    # ------------------------------------------------------------------ torch.optim-like surface
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's param groups (schedulers and loggers see the live LR)."""
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        """The wrapped optimizer's per-parameter state."""
        return self.optimizer.state

    @property
    def hyper_lr(self) -> float:
        """β, the current hyper learning rate."""
        return self.beta

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the wrapped optimizer."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _kind(optimizer: torch.optim.Optimizer) -> str:
        if isinstance(optimizer, torch.optim.SGD):
            for g in optimizer.param_groups:
                if g.get("maximize"):
                    raise ValueError("optimizer: maximize=True is not supported")
            return "sgd"
        if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
            for g in optimizer.param_groups:
                if g.get("amsgrad") or g.get("maximize"):
                    raise ValueError("optimizer: amsgrad and maximize are not supported by the Adam tangent")
            return "adam"
        raise ValueError(
            f"optimizer: MARTHE wraps torch.optim.SGD, Adam or AdamW, got {type(optimizer).__name__}"
        )

    def _decoupled(self, group: dict) -> bool:
        return bool(group.get("decoupled_weight_decay", isinstance(self.optimizer, torch.optim.AdamW)))

    def _clip(self, tensors: list[Tensor]) -> list[Tensor]:
        c = self.grad_clipping
        if c is None:
            return tensors
        if self.mode == "default":
            # how many tensors had an entry beyond ±c, as a tensor: read at the step's one host sync
            maxabs = [torch.linalg.vector_norm(t, math.inf) for t in tensors]
            self._clip_pending.append((torch.stack(maxabs) > c).sum())
        return _clamp(tensors, c)

    @property
    def _mu_tangent(self) -> float:
        return 0.0 if self.first_order else self.mu

    def _group_slices(self) -> list[tuple[dict, int, int]]:
        out, start = [], 0
        for group in self.param_groups:
            out.append((group, start, start + len(group["params"])))
            start += len(group["params"])
        return out

    # ------------------------------------------------------------------ the step
    def step(self, loss: Tensor, val_loss: Callable[[], Tensor]) -> StepInfo:
        """One training step of the wrapped optimizer and one hypergradient step on η.

        Args:
            loss: the training loss at the current weights w_t, with its graph attached (not yet backpropagated).
            val_loss: a zero-argument callable returning the validation loss E at the updated weights w_{t+1}.

        Returns:
            A :class:`StepInfo` (the LR used, the hypergradient, μ and β after the step).
        """
        params = self.params
        paper = self.mode == "paper"
        eta_used = self.eta
        momentum_paper = paper and any(g["momentum"] != 0 for g in self.param_groups)
        has_z = any(z is not None for z in self.z["w"])
        # the HVP H_t Z_t is needed only when it is not multiplied by 0 (brief B12); the original computes it anyway.
        # It reuses the training gradient's graph: one create_graph backward, then one backward of ⟨g, Z⟩; forward-
        # over-reverse (torch.func.jvp of grad) was measured slower on CPU (README), so it is not used.
        need_hvp = has_z and not self.first_order and (paper or self.mu != 0)
        grads = torch.autograd.grad(
            loss, params, create_graph=need_hvp, allow_unused=True, materialize_grads=True
        )
        if paper and self.grad_clipping is not None:
            c = self.grad_clipping
            # the original's first call with momentum returns before it clips: that step trains on the raw
            # gradient (a parameter of a momentum group without a momentum buffer yet)
            state = self.optimizer.state
            raw = [
                momentum_paper and grp["momentum"] != 0 and state.get(p, {}).get("momentum_buffer") is None
                for p, grp in zip(params, self._group_of)
            ]
            if any(raw):
                grads = [g if r else _clamp([g], c)[0] for g, r in zip(grads, raw)]
            else:
                grads = _clamp(grads, c)
        hvp: list[Tensor] | None = None
        if need_hvp:
            zw = [z if z is not None else torch.zeros_like(p) for z, p in zip(self.z["w"], params)]
            hvp = list(
                torch.autograd.grad(grads, params, grad_outputs=zw, allow_unused=True, materialize_grads=True)
            )
            hvp = self._clip(hvp)
        g = [x.detach() for x in grads]
        del grads

        # what the tangent needs from before the step: w_t (L2/AdamW terms only) and, in paper mode, the momentum
        # buffer (torch updates it in place); p.grad gets a copy (Nesterov SGD adds the buffer into it in place)
        state = self.optimizer.state
        pre: dict[str, Any] = {"g": g, "w": None, "buf": None, "buf_existed": None}
        if any(grp["weight_decay"] for grp in self.param_groups):
            with torch.no_grad():
                pre["w"] = _clone(params)
        if paper:
            bufs = [state.get(p, {}).get("momentum_buffer") for p in params]
            if any(b is not None for b in bufs):
                known = [b for b in bufs if b is not None]
                copies = iter(_clone(known))
                bufs = [None if b is None else next(copies) for b in bufs]
            pre["buf"] = bufs
        elif self.kind == "sgd":
            pre["buf_existed"] = [state.get(p, {}).get("momentum_buffer") is not None for p in params]
        for p, gi in zip(params, _clone(g)):
            p.grad = gi
        for group in self.param_groups:
            group["lr"] = eta_used
        self.optimizer.step()

        if paper:
            self._tangent_paper(pre, hvp, momentum_paper)
        elif self.kind == "sgd":
            self._tangent_sgd(pre, hvp, eta_used)
        else:
            self._tangent_adam(pre, hvp, eta_used)
        self.t += 1
        return self._hyper_step(val_loss, pre, eta_used)

    # The tangent updates below run as list ops (_add, _mul, ...) over blocks of parameters that share a param group
    # and the same "which parts of Z are still 0" pattern (normally one block per group); each op is the same
    # elementwise arithmetic, in the same order, as the per-tensor formula in the comments.

    # Z^w_{t+1} = μ A_t Z_t + B_t for torch SGD: g' = g + λw, buf = m·buf + (1−d)g' (buf = g' at first),
    # dir = g' + m·buf (Nesterov) or buf, w ← w − η·dir. Hence (with h = H Z^w + λZ^w = H' Z^w):
    # (AZ)^buf = m Z^buf + (1−d) h (h at the first step), (AZ)^w = Z^w − η (AZ)^dir, B^w = −dir.
    def _tangent_sgd(self, pre: dict[str, Any], hvp: list[Tensor] | None, eta: float) -> None:
        mu = self._mu_tangent
        state = self.optimizer.state
        for group, s, e in self._group_slices():
            m, d, wd, nest = group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"]
            gp = pre["g"][s:e]
            if wd:
                gp = _add(gp, _mul(pre["w"][s:e], wd))
            if m == 0:
                direction = gp
            else:
                bufs = [state[p]["momentum_buffer"] for p in group["params"]]
                direction = _add(gp, _mul(bufs, m)) if nest else bufs
            b_w = _neg(direction)
            self._b[s:e] = b_w
            if hvp is None or mu == 0:
                self.z["w"][s:e] = b_w
                self.z["buf"][s:e] = [None] * (e - s)
                continue
            keys = [
                (self.z["w"][i] is None, pre["buf_existed"][i], self.z["buf"][i] is None) for i in range(s, e)
            ]
            for (zw_none, existed, zb_none), idx in _blocks(keys, s):
                bw = [b_w[i - s] for i in idx]
                if zw_none:
                    _put(self.z["w"], idx, bw)
                    _put(self.z["buf"], idx, [None] * len(idx))
                    continue
                zw = [self.z["w"][i] for i in idx]
                h = [hvp[i] for i in idx]
                if wd:
                    h = _add(h, _mul(zw, wd))
                if m == 0:
                    _put(self.z["w"], idx, _mu_affine(mu, zw, eta, h, bw))
                    continue
                if not existed:
                    az_buf = h
                elif zb_none:
                    az_buf = _scaled(h, 1 - d)
                else:
                    az_buf = _mul([self.z["buf"][i] for i in idx], m)
                    _add_(az_buf, _scaled(h, 1 - d))
                az_dir = _add(h, _mul(az_buf, m)) if nest else az_buf
                _put(self.z["w"], idx, _mu_affine(mu, zw, eta, az_dir, bw))
                _put(self.z["buf"], idx, _scaled(az_buf, mu))

    # torch Adam at step k: g' = g + λw (coupled), m = β1 m + (1−β1) g', v = β2 v + (1−β2) g'²,
    # w ← w − η m̂/D with m̂ = m/(1−β1^k), D = √(v/(1−β2^k)) + ε (AdamW: w ← w(1−ηλ) − η m̂/D). With h = H' Z^w:
    # (AZ)^m = β1 Z^m + (1−β1) h, (AZ)^v = β2 Z^v + 2(1−β2) g'⊙h,
    # (AZ)^w = Z^w − η[(AZ)^m/((1−β1^k) D) − m̂⊙(AZ)^v/(2√v̂ (1−β2^k) D²)] (− ηλ Z^w for AdamW),
    # B^w = −m̂/D (− λ w for AdamW); the moments have no B block (brief §1.2). Each step is a function below.
    def _tangent_adam(self, pre: dict[str, Any], hvp: list[Tensor] | None, eta: float) -> None:
        """Z^w, Z^m, Z^v ← μ A_t Z_t + B_t through the Adam/AdamW step that used the LR ``eta``."""
        mu = self._mu_tangent
        state = self.optimizer.state
        for group, s, e in self._group_slices():
            beta1, beta2 = group["betas"]
            wd = group["weight_decay"]
            decoupled_wd = wd if self._decoupled(group) else 0.0
            terms = _AdamTerms.of([state[p] for p in group["params"]], beta1, beta2, group["eps"])
            b_w = _adam_b(terms, pre["w"][s:e] if decoupled_wd else None, decoupled_wd)
            self._b[s:e] = b_w
            if hvp is None or mu == 0:
                self.z["w"][s:e] = b_w
                self.z["m"][s:e] = [None] * (e - s)
                self.z["v"][s:e] = [None] * (e - s)
                continue
            keys = [
                (self.z["w"][i] is None, self.z["m"][i] is None, self.z["v"][i] is None) for i in range(s, e)
            ]
            for (zw_none, zm_none, zv_none), idx in _blocks(keys, s):
                j = [i - s for i in idx]
                bw = [b_w[i] for i in j]
                if zw_none:
                    _put(self.z["w"], idx, bw)
                    _put(self.z["m"], idx, [None] * len(idx))
                    _put(self.z["v"], idx, [None] * len(idx))
                    continue
                zw = [self.z["w"][i] for i in idx]
                gp = [pre["g"][i] for i in idx]
                h = [hvp[i] for i in idx]
                if wd and not decoupled_wd:
                    gp, h = _coupled_l2(gp, h, [pre["w"][i] for i in idx], zw, wd)
                zm = None if zm_none else [self.z["m"][i] for i in idx]
                zv = None if zv_none else [self.z["v"][i] for i in idx]
                az_m, az_v = _adam_az_moments(zm, zv, gp, h, beta1, beta2)
                block = terms.take(j)
                az_w = _adam_az_w(zw, az_m, _adam_dv_term(block, az_v), block, eta, decoupled_wd)
                z_w = _scaled(az_w, mu, inplace=True)
                _put(self.z["w"], idx, _add_(z_w, bw))
                _put(self.z["m"], idx, _scaled(az_m, mu))
                _put(self.z["v"], idx, _scaled(az_v, mu))

    # the original MuSGD (brief §1.2): η0 in A, weight decay/dampening/Nesterov ignored, first step skipped with
    # momentum (the buffer does not exist yet; step() leaves its gradient unclipped and _hyper_step does nothing
    # then), the HVP computed even at μ = 0
    def _tangent_paper(self, pre: dict[str, Any], hvp: list[Tensor] | None, momentum: bool) -> None:
        mu, eta0 = self.mu, self.eta0
        first_order = self.first_order
        g_all, buf_all = pre["g"], pre["buf"]
        for group, s, e in self._group_slices():
            m = group["momentum"]
            keys = [
                (self.z["w"][i] is None, buf_all[i] is None, self.z["buf"][i] is None) for i in range(s, e)
            ]
            for (zw_none, buf_none, _), idx in _blocks(keys, s):
                g = [g_all[i] for i in idx]
                fresh = zw_none or first_order or hvp is None
                if not momentum:
                    if fresh:
                        _put(self.z["w"], idx, _neg(g))
                    else:
                        zw, h = [self.z["w"][i] for i in idx], [hvp[i] for i in idx]
                        z_w = _sub(zw, _mul(h, eta0))
                        _mul_(z_w, mu)
                        _sub_(z_w, g)
                        _put(self.z["w"], idx, z_w)
                    continue
                if buf_none:
                    continue  # iteration 1: no momentum buffer yet, the original leaves Z at 0 (brief B11)
                direction = _mul([buf_all[i] for i in idx], m)
                _add_(direction, g)
                if fresh:
                    _put(self.z["w"], idx, _neg(direction))
                    _put(self.z["buf"], idx, [torch.zeros_like(x) for x in g])
                    continue
                zw, zb, h = (
                    [self.z["w"][i] for i in idx],
                    [self.z["buf"][i] for i in idx],
                    [hvp[i] for i in idx],
                )
                z_w = _sub(zw, _mul(h, eta0))
                _sub_(z_w, _mul(zb, eta0 * m))
                _mul_(z_w, mu)
                _sub_(z_w, direction)
                z_b = _add(h, _mul(zb, m))
                _mul_(z_b, mu)
                _put(self.z["w"], idx, z_w)
                _put(self.z["buf"], idx, z_b)

    # ------------------------------------------------------------------ η, β, μ (brief §1.4)
    def _hyper_step(self, val_loss: Callable[[], Tensor], pre: dict[str, Any], eta_used: float) -> StepInfo:
        params = self.params
        if self.mode == "paper" and all(z is None for z in self.z["w"]):
            # the original's hyper_step returns at once while it has no tangent (the first step with momentum):
            # η, β, μ and c stay as they are; the validation loss is still evaluated, as the original computed
            # the validation gradient before that call (a BatchNorm in train mode updates its statistics)
            val_loss()
            return StepInfo(eta_used, 0.0, self.mu, self.beta, self.eta)
        with torch.enable_grad():
            e = val_loss()
            gv = list(torch.autograd.grad(e, params, allow_unused=True, materialize_grads=True))
        gv = self._clip(gv)
        dots = [_dot(gv, self.z["w"])]
        if self.adaptive_mu:
            if self.mu_rule == "tf":
                # ⟨∇E(w_{t+1}), B_t⟩: the one-step (HD) hypergradient, from the current tangent when μ = 0
                dots.append(_dot(gv, self._b))
            else:
                dots.append(_dot(gv, pre["g"]))
        n_dots = len(dots)
        if self._clip_pending:
            dots.extend(c.to(torch.float64) for c in self._clip_pending)
            self._clip_pending = []
        values = torch.stack(dots).tolist()  # the one host sync of the step
        self.clip_count += int(sum(values[n_dots:]))
        values = values[:n_dots]
        hg = values[0]
        if self.mode == "default" and not all(math.isfinite(x) for x in values):
            self.skipped += 1
            warnings.warn(
                f"MARTHE: non-finite hypergradient at step {self.t}; hyper-update skipped, tangent reset",
                RuntimeWarning,
                stacklevel=2,
            )
            for key in self.z:
                self.z[key] = [None] * len(params)
            return StepInfo(eta_used, 0.0, self.mu, self.beta, self.eta, skipped=True)
        if self.mode == "paper":
            eta32 = torch.tensor(self.eta, dtype=torch.float32)
            eta32.add_(torch.tensor(hg, dtype=torch.float32), alpha=-self.beta)
            new_eta = float(eta32)
        else:
            change = self.beta * hg
            if self.max_lr_change is not None:
                cap = self.max_lr_change * self.eta
                if abs(change) > cap:
                    change = math.copysign(cap, change)
                    self.capped += 1
            new_eta = self.eta - change
            if self.clip_lr:
                new_eta = max(0.0, new_eta)
        if self.beta_rule == "adatune":
            self.beta = max(self.beta + self.alpha * hg * new_eta, 0.0)
        else:
            self.beta = max(self.beta + self.alpha * hg * self.prev_hg, 0.0)
        self.prev_hg = hg
        if self.adaptive_mu:
            self._mu_step(hg, new_eta, values[1])
        self.eta = new_eta
        for group in self.param_groups:
            group["lr"] = new_eta
        return StepInfo(eta_used, hg, self.mu, self.beta, new_eta)

    def _mu_step(self, hg: float, new_eta: float, den: float) -> None:
        if self.mu_rule == "tf":
            q = hg / den if den != 0 else 0.0
            self.c = (self.c + 1.0) * self.mu
        else:
            if self.mode == "paper":
                q = new_eta / den  # ZeroDivisionError on an exact 0, as the original
            else:
                q = new_eta / den if den != 0 else 0.0
            self.c = self.c * (math.copysign(1.0, self.mu) if self.mu != 0 else 0.0) + self.mu
        z = min(max(q, 0.0), 1.0)
        if self.c + 1.0 == 0.0:
            self.mu = 1.0 if z == 1.0 else 0.0  # exponent 1/0 = ∞ (μ_init = −1 in the original)
        elif z == 0.0 and self.c + 1.0 < 0.0:
            self.mu = math.inf  # numpy's 0^(negative) (μ_init < −1 in the original), where ** raises
        else:
            self.mu = z ** (1.0 / (self.c + 1.0))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state and the tuner's (tangent, η, β, μ, c, counters)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "tuner": {
                "eta": self.eta,
                "beta": self.beta,
                "mu": self.mu,
                "c": self.c,
                "prev_hg": self.prev_hg,
                "t": self.t,
                "skipped": self.skipped,
                "capped": self.capped,
                "clip_count": self.clip_count,
            },
            "tangent": {k: [None if z is None else z.detach().clone() for z in v] for k, v in self.z.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the wrapped optimizer included)."""
        self.optimizer.load_state_dict(state["optimizer"])
        tuner = state["tuner"]
        self.eta, self.beta, self.mu = float(tuner["eta"]), float(tuner["beta"]), float(tuner["mu"])
        self.c, self.prev_hg = float(tuner["c"]), float(tuner["prev_hg"])
        self.t, self.skipped, self.clip_count = (
            int(tuner["t"]),
            int(tuner["skipped"]),
            int(tuner["clip_count"]),
        )
        self.capped = int(tuner.get("capped", 0))
        for k, zs in state["tangent"].items():
            self.z[k] = [
                None if z is None else z.to(device=p.device, dtype=p.dtype) for z, p in zip(zs, self.params)
            ]
        for group in self.param_groups:
            group["lr"] = self.eta


class RTHO(MARTHE):
    """MARTHE with μ = 1: real-time hyperparameter optimisation (Franceschi et al., ICML 2017)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, hyper_lr: float = 1e-8, alpha: float = 0.0, **kwargs: Any
    ):
        super().__init__(optimizer, hyper_lr=hyper_lr, mu=1.0, alpha=alpha, **kwargs)
