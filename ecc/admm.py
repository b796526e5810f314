"""Stage 3 of ECC: training under an energy budget, min_{W,s} l(W) s.t. phi_u(W) <= s_u, E(s) <= B (brief §1.3).

Per minibatch (:class:`ECCStep`): a W-step of the primal optimizer on the distillation loss, the exact
proximal step of ``y phi + (rho_y / 2)(phi - s)_+^2`` on every slot's input-channel groups in Adam's metric
(:func:`group_prox`), the width counts phi, ``s_int`` projected-gradient steps on the continuous targets s
(with the original's z floor), and dual ascent on z (energy) and y (counts).

``mode="paper"`` keeps the original's quirks: the s-gradient squares the *sum* of the count violations while
the prox uses the sum of squares; Adam's metric without bias correction; MobileNet trains without L2 (the
``netl2wd`` bug); s is not clamped to the dense widths. ``mode="default"`` uses the sum of squares in both,
the bias-corrected metric, L2 on conv/fc weights only, and clamps s to [1, ub].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecc.energy_model import BilinearEnergyModel
from ecc.prune import (
    WidthSlot,
    group_scores,
    is_depthwise_separable,
    live_mask,
    width_chain,
    width_slots,
    zero_groups,
)

log = logging.getLogger(__name__)

MODES = ("default", "paper")


class BudgetMet(Exception):  # noqa: N818 - a signal, not an error
    """Raised by :class:`ECCStep` at the first minibatch whose E(phi) is within the budget."""


def joint_loss(
    output: torch.Tensor, teacher_output: torch.Tensor | None, target: torch.Tensor, distill: float
) -> torch.Tensor:
    """The original's ``joint_loss``: d * mean((f - f_T)^2) + (1 - d) * CE; d >= 1 MSE only, d <= 0 CE only."""
    if distill <= 0 or teacher_output is None:
        return F.cross_entropy(output, target)
    mse = torch.mean((output - teacher_output) ** 2)
    if distill >= 1:
        return mse
    return distill * mse + (1 - distill) * F.cross_entropy(output, target)


def group_prox(
    scores: torch.Tensor, s: float, y: float, rho_y: float, alpha: float
) -> tuple[torch.Tensor, float]:
    """The exact prox of ``y phi + (rho_y/2)(phi - s)_+^2`` over input-channel groups (brief §1.3, step 2).

    With a_c the group's D-weighted squared norm and r_c its 1-based rank by descending a, group c is dropped
    iff a_c < a_rho(r_c) + 2 alpha y, a_rho(r) = rho_y alpha [(r - s)_+^2 - (r - s - 1)_+^2]. The kept set is a
    sorted prefix minimising (1/2alpha) sum_dropped a_c + y k + (rho_y/2)(k - s)_+^2 over the kept count k,
    because the marginal cost of the r-th group grows with r while a falls. First y is capped at
    t / (2 alpha), t the floor(s)-th largest a - a_rho, so at least floor(s) groups survive.

    Args:
        scores: a_c >= 0 per group.
        s: The continuous width target of the slot.
        y: The slot's count dual (>= 0).
        rho_y: The count penalty.
        alpha: The primal step size (the optimizer's learning rate).

    Returns:
        ``(keep, y)``: the boolean mask of kept groups and the (possibly capped) dual.
    """
    a = scores.double()
    order = torch.argsort(a, descending=True, stable=True)
    a_sorted = a[order]
    rank = torch.arange(1, a.numel() + 1, dtype=torch.float64, device=a.device)
    a_rho = rho_y * alpha * (torch.clamp(rank - s, min=0) ** 2 - torch.clamp(rank - s - 1, min=0) ** 2)
    floor_s = min(int(math.floor(s)), a.numel())
    if y > 0 and floor_s >= 1:
        t = float((a_sorted - a_rho)[floor_s - 1])
        y = min(y, t / (2 * alpha))
    keep_sorted = ~(a_sorted < a_rho + 2 * alpha * y)
    if floor_s >= 1:
        # the cap makes 2 alpha y <= t exactly; t / (2 alpha) * (2 alpha) can round one ulp above t
        keep_sorted[:floor_s] = True
    keep = torch.empty_like(keep_sorted)
    keep[order] = keep_sorted
    return keep, y


def prox_objective(
    scores: torch.Tensor, keep: torch.Tensor, s: float, y: float, rho_y: float, alpha: float
) -> float:
    """(1/2alpha) sum of dropped scores + y k + (rho_y/2)(k - s)_+^2: what :func:`group_prox` minimises."""
    k = int(keep.sum())
    dropped = float(scores.double()[~keep].sum())
    return dropped / (2 * alpha) + y * k + 0.5 * rho_y * max(k - s, 0.0) ** 2


def adam_metric(optimizer: torch.optim.Optimizer, bias_correction: bool) -> dict[nn.Parameter, torch.Tensor]:
    """D = sqrt(v) + eps per parameter from Adam's ``exp_avg_sq`` (the original skips the bias correction)."""
    metric = {}
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                continue
            v = state["exp_avg_sq"]
            if bias_correction:
                v = v / (1 - beta2 ** float(state["step"]))
            metric[p] = v.sqrt() + eps
    return metric


class ECCState:
    """The continuous targets s, the duals y and z, and the step count: everything the s/dual steps carry."""

    def __init__(self, s: torch.Tensor, y_init: float = 0.0, z_init: float = 0.0):
        self.s = s.double().clone()
        self.y = torch.full_like(self.s, float(y_init))
        self.z = float(z_init)
        self.steps = 0
        self.energy = float("nan")
        self.done = False

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only."""
        return {
            "s": self.s.clone(),
            "y": self.y.clone(),
            "z": self.z,
            "steps": self.steps,
            "energy": self.energy,
            "done": self.done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.s = state["s"].double().clone()
        self.y = state["y"].double().clone()
        self.z = float(state["z"])
        self.steps = int(state["steps"])
        self.energy = float(state["energy"])
        self.done = bool(state["done"])


class ECCStep:
    """One minibatch of ECC's energy-constrained training, usable as a ``Trainer`` ``step_fn``.

    Args:
        model: The student (a net :func:`ecc.prune.width_slots` supports, on its device).
        teacher: The frozen dense net for distillation, or None.
        optimizer: The primal optimizer (Adam gives the weighted metric; SGD the plain one).
        energy_model: The fitted cost model of the network's width chain.
        budget: B in the energy model's units (absolute).
        state: The s / y / z state (checkpointed by the caller).
        mode: ``"default"`` or ``"paper"``.
        rho_z, rho_y: Dual step sizes and penalties.
        pslr: Step size of the s-updates.
        psgrad_mask: Keep only positive s-gradients (s never grows).
        psgrad_clip: Clip the s-gradient's L2 norm (None: no clipping).
        s_int: s-steps per minibatch.
        slb: Lower bound of s under which a coordinate is frozen (absolute, per slot).
        distill: Distillation weight d of :func:`joint_loss`.
        stop_at_budget: Raise :class:`BudgetMet` at the first minibatch with E(phi) <= B.
        cost_scale: The s- and dual updates see E·cost_scale and B·cost_scale. 1 (the original) makes the
            hyperparameters depend on the cost's units: ρ_z(E − B), the z floor and the s-gradient are all in
            them, so with a latency in seconds s crawls (1e-3·pslr channels a step) while with MACs z explodes
            at once. The default mode passes 1/E(dense) (unit-free); ``state.energy`` stays in the model's units.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module | None,
        optimizer: torch.optim.Optimizer,
        energy_model: BilinearEnergyModel,
        budget: float,
        state: ECCState,
        *,
        mode: str = "default",
        rho_z: float = 10.0,
        rho_y: float = 10.0,
        pslr: float = 3.0,
        psgrad_mask: bool = True,
        psgrad_clip: float | None = 1.0,
        s_int: int = 1,
        slb: Sequence[float] | float = 1.0,
        distill: float = 0.5,
        stop_at_budget: bool = True,
        cost_scale: float = 1.0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.teacher, self.optimizer = model, teacher, optimizer
        self.energy_model = energy_model.cpu()
        if not (math.isfinite(cost_scale) and cost_scale > 0):
            raise ValueError(f"cost_scale must be a finite number > 0, got {cost_scale}")
        self.cost_scale = float(cost_scale)
        self.budget_units = float(budget)
        self.budget = float(budget) * self.cost_scale
        self.state = state
        self.mode = mode
        self.rho_z, self.rho_y, self.pslr = float(rho_z), float(rho_y), float(pslr)
        self.psgrad_mask, self.psgrad_clip, self.s_int = psgrad_mask, psgrad_clip, int(s_int)
        self.distill = float(distill)
        self.stop_at_budget = stop_at_budget
        self.slots: list[WidthSlot] = width_slots(model)
        chain = width_chain(model)
        self.ends = (float(chain[0]), float(chain[-1]))
        self.ub = torch.tensor(chain[1:-1], dtype=torch.float64)
        self.slb = torch.as_tensor(slb, dtype=torch.float64).expand_as(self.ub).clone()
        self.phi = torch.tensor([float(s.width) for s in self.slots], dtype=torch.float64)
        self.last_loss = float("nan")

    def chain(self, widths: torch.Tensor) -> torch.Tensor:
        """``[w_0, widths, w_{L+1}]`` (the ends are constants, as the original detaches them)."""
        w0 = torch.tensor([self.ends[0]], dtype=torch.float64)
        w1 = torch.tensor([self.ends[1]], dtype=torch.float64)
        return torch.cat([w0, widths, w1])

    def energy(self, widths: torch.Tensor) -> torch.Tensor:
        """E of the widths of the L slots, times ``cost_scale`` (the units the s- and dual updates work in)."""
        return self.energy_model.predict(self.chain(widths)) * self.cost_scale  # ×1.0 is exact

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, out = self.w_step(x, target)
        self.prox_step()
        self.state.energy = float(self.energy_model.predict(self.chain(self.phi)))
        for _ in range(self.s_int):
            self.s_step()
        self.dual_step()
        self.state.steps += 1
        if self.stop_at_budget and self.state.energy <= self.budget_units:
            self.state.done = True
            raise BudgetMet(
                f"E(phi) = {self.state.energy:.6g} <= B = {self.budget_units:.6g} at step {self.state.steps}"
            )
        return loss, out

    # --------------------------------------------------------------- the four updates
    def w_step(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One primal optimizer step on the distillation loss."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(x)
        teacher_out = None
        if self.teacher is not None and self.distill > 0:
            with torch.no_grad():
                teacher_out = self.teacher(x)
        loss = joint_loss(out, teacher_out, target, self.distill)
        loss.backward()
        self.optimizer.step()
        self.last_loss = float(loss.detach())
        return loss.detach(), out.detach()

    @torch.no_grad()
    def prox_step(self) -> None:
        """The group prox of every slot, then phi = the live group counts."""
        alpha = float(self.optimizer.param_groups[0]["lr"])
        metric = None
        if isinstance(self.optimizer, torch.optim.Adam):
            metric = adam_metric(self.optimizer, bias_correction=self.mode == "default")
        for u, slot in enumerate(self.slots):
            scores = group_scores(slot, metric)
            keep, y_u = group_prox(scores, float(self.state.s[u]), float(self.state.y[u]), self.rho_y, alpha)
            self.state.y[u] = y_u  # the cap is written back
            zero_groups(slot, ~keep)
            self.phi[u] = float(live_mask(slot).sum())

    def s_step(self) -> None:
        """One projected-gradient step on s with the z floor (brief §1.3, step 4)."""
        st = self.state
        s = st.s.clone().requires_grad_(True)
        over = torch.clamp(self.energy(s) - self.budget, min=0)
        gap = torch.clamp(self.phi - s, min=0)
        # paper: the squared *sum* of violations; default: the sum of squares, as in the prox
        count_pen = gap.sum() ** 2 if self.mode == "paper" else (gap**2).sum()
        penalty = 0.5 * self.rho_z * over**2 + 0.5 * self.rho_y * count_pen + (st.y * (self.phi - s)).sum()
        (g1,) = torch.autograd.grad(penalty, s)
        s2 = st.s.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(self.energy(s2), s2)
        mask = st.s > self.slb
        if bool(mask.any()):
            # the z floor: makes the masked coordinate with the smallest ratio move down
            floor = (-torch.clamp(g1, max=0) + 1e-3) / torch.clamp(g2, min=0)
            z_floor = float(floor[mask].min())
            if math.isfinite(z_floor):
                st.z = max(st.z, z_floor)
        grad = g1 + st.z * g2
        if self.psgrad_mask:
            grad = torch.clamp(grad, min=0)
        grad = torch.where(mask, grad, torch.zeros_like(grad))
        if self.psgrad_clip is not None:
            norm = float(grad.norm())
            if norm > self.psgrad_clip:
                grad = grad * (self.psgrad_clip / norm)
        new_s = torch.clamp(st.s - self.pslr * grad, min=1.0)
        if self.mode == "default":
            new_s = torch.minimum(new_s, self.ub)
        st.s = new_s.detach()

    def dual_step(self) -> None:
        """Dual ascent: z += rho_z (E(s) - B), y += rho_y (phi - floor(s)), both kept >= 0."""
        st = self.state
        st.z = max(0.0, st.z + self.rho_z * (float(self.energy(st.s)) - self.budget))
        st.y = torch.clamp(st.y + self.rho_y * (self.phi - torch.floor(st.s)), min=0)


@torch.no_grad()
def project_to_budget(
    model: nn.Module, energy_model: BilinearEnergyModel, budget: float
) -> tuple[list[int], int]:
    """Enforces E(phi) <= B on a masked net by zeroing whole input-channel groups, greedily.

    The fallback of the default mode when ``admm_epochs`` end above the budget. Each step considers, in
    every slot with more than one live group, its live group of smallest (plain) squared norm, and zeroes
    the one with the largest *model-predicted* cost saved per squared norm removed; it stops as soon as
    E(phi) <= B. Deterministic (ties go to the lowest slot, then the lowest channel).

    Args:
        model: The masked network (modified in place).
        energy_model: The cost model of its width chain.
        budget: B, absolute, in the model's units.

    Returns:
        ``(widths, removed)``: the live counts afterwards and how many groups were zeroed.
    """
    slots = width_slots(model)
    chain = width_chain(model)
    ends = (float(chain[0]), float(chain[-1]))

    def cost(widths: torch.Tensor) -> torch.Tensor:
        # a row of widths per chain: one batched prediction instead of one call per slot
        rows = widths.reshape(-1, widths.shape[-1])
        pad = rows.new_tensor(ends).expand(rows.shape[0], 2)
        return energy_model.predict(torch.cat([pad[:, :1], rows, pad[:, 1:]], dim=1)).to(torch.float64)

    def smallest_live(u: int) -> int:
        live = alive[u].nonzero().flatten()
        return int(live[torch.argmin(scores[u][live])])  # the first of equal minima: the lowest channel

    scores = [group_scores(slot) for slot in slots]
    alive = [sc > 0 for sc in scores]
    phi = torch.tensor([float(a.sum()) for a in alive], dtype=torch.float64)
    # each slot's candidate (its smallest live group) changes only when that slot loses a group; a net of
    # ~150 slots that must lose thousands of groups (ResNet-152) took ~40 s one prediction at a time
    candidate = [smallest_live(u) if phi[u] > 1 else -1 for u in range(len(slots))]
    current, removed = float(cost(phi)[0]), 0
    while current > budget:
        eligible = (phi > 1).nonzero().flatten()
        trials = phi.expand(len(eligible), -1).clone()
        trials[torch.arange(len(eligible)), eligible] -= 1
        saved = current - cost(trials) if len(eligible) else torch.zeros(0, dtype=torch.float64)
        if not bool((saved > 0).any()):
            raise ValueError(
                f"cannot reach the budget {budget:.6g}: every slot is at width 1 (E = {current:.6g})"
            )
        norms = torch.tensor([float(scores[u][candidate[u]]) for u in eligible.tolist()], dtype=torch.float64)
        ratio = torch.where(saved > 0, saved / norms.clamp(min=1e-30), torch.full_like(saved, -math.inf))
        u = int(eligible[int(torch.argmax(ratio))])  # the first of equal maxima: the lowest slot
        c = candidate[u]
        dead = torch.zeros_like(alive[u])
        dead[c] = True
        zero_groups(slots[u], dead)
        alive[u][c] = False
        phi[u] -= 1
        candidate[u] = smallest_live(u) if phi[u] > 1 else -1
        current, removed = float(cost(phi)[0]), removed + 1
    return [int(p) for p in phi], removed


def primal_param_groups(model: nn.Module, l2wd: float, mode: str) -> list[dict[str, Any]]:
    """Parameter groups of the primal optimizer with the original's (paper) or the fixed (default) L2.

    Paper: coupled L2 on every parameter, except MobileNet (:func:`ecc.prune.is_depthwise_separable`), which the
    original trains without L2 (its ``netl2wd = 0.0`` bug). Default: L2 on conv/fc weights that are not depthwise;
    none on BN and biases.
    """
    if mode == "paper":
        return [
            {
                "params": list(model.parameters()),
                "weight_decay": 0.0 if is_depthwise_separable(model) else l2wd,
            }
        ]
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
            if name == "weight" and isinstance(m, nn.Conv2d | nn.Linear) and not depthwise:
                decay.append(p)
            else:
                no_decay.append(p)
    return [{"params": decay, "weight_decay": l2wd}, {"params": no_decay, "weight_decay": 0.0}]
