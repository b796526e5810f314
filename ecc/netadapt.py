"""NetAdapt (Yang et al., ECCV 2018), simplified for the width chains of ``ecc.prune``: the paper's baseline.

Start from the dense net. Iteration i has the resource target ``max(B, C_{i-1} - step)``, a *constant* step
``(C_dense - B) / iterations`` (so the budget B is reached in about ``iterations`` iterations; the paper's
MobileNet runs decay the step, the original ECC re-implementation shrinks the target geometrically by 0.96).
For every width slot, the proposal removes the *fewest* output channels of that slot that bring the cost to
the target (:func:`layer_proposal`, exact with the cost function, MACs here), dropping the filters of
smallest L2 norm (:func:`filter_norms`, the producer's output filters, as the paper). When no slot alone can
reach an iteration's target (each iteration shrinks one slot), that iteration's step is halved until one can
(no proposal is fine-tuned on the way, so this is free; a cost that no slot can lower raises). Each proposal is
fine-tuned short-term (a few minibatches, :func:`short_term_finetune`) and scored on a held-out split; the
best one (ties: the earliest slot) is kept, fine-tuned weights included. The loop stops when the cost is
<= B; the caller then fine-tunes long-term.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ecc.prune import WidthSlot, slim, width_chain, width_slots

CostFn = Callable[[Sequence[int]], float]


def layer_proposal(widths: Sequence[int], slot: int, target: float, cost: CostFn) -> int | None:
    """The largest width of ``slot`` (fewest channels removed, at least one) with ``cost <= target``.

    The other slots keep ``widths``; ``cost`` must be non-decreasing in each width (MACs, a bilinear
    model with non-negative terms). Returns None when even width 1 misses the target.
    """

    def at(w: int) -> float:
        return cost([*widths[:slot], w, *widths[slot + 1 :]])

    if at(1) > target:
        return None
    lo, hi = 1, int(widths[slot])  # at(lo) <= target; find the largest such w by bisection
    if at(hi) <= target:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) <= target else (lo, mid)
    return lo


def filter_norms(slot: WidthSlot) -> torch.Tensor:
    """L2 norm of each output filter of the slot's producer (weights, float64)."""
    return slot.producer.weight.detach().double().flatten(1).norm(dim=1)


def keep_largest(slot: WidthSlot, width: int) -> torch.Tensor:
    """Indices (ascending) of the ``width`` filters of largest L2 norm; ties go to the lower index."""
    norms = filter_norms(slot)
    order = torch.argsort(-norms, stable=True)
    return order[:width].sort().values


def shrink_slot(model: nn.Module, slot: int, width: int) -> nn.Module:
    """A slim copy of ``model`` whose slot ``slot`` keeps its ``width`` largest-norm filters."""
    slots = width_slots(model)
    keep = [torch.arange(s.width) for s in slots]
    keep[slot] = keep_largest(slots[slot], width)
    return slim(model, keep)


def short_term_finetune(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float, momentum: float = 0.9
) -> None:
    """Plain SGD with cross-entropy over ``batches`` (in place)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@dataclass
class NetAdaptResult:
    """The adapted net and its trace: per iteration the target, the chosen slot, the widths and the score."""

    model: nn.Module
    widths: list[int]
    cost: float
    budget: float
    history: list[dict[str, float]] = field(default_factory=list)


def netadapt(
    model: nn.Module,
    cost: CostFn,
    budget: float,
    *,
    iterations: int = 10,
    short_term: Callable[[nn.Module, int], None],
    score: Callable[[nn.Module], float],
    seed: int = 0,
) -> NetAdaptResult:
    """Shrinks ``model`` (not modified) until ``cost(widths) <= budget`` (absolute, in the cost's units).

    Args:
        cost: Cost of the slot widths (``width_chain(model)[1:-1]``).
        iterations: The constant step is ``(cost(dense) - budget) / iterations`` (halved for an iteration in
            which no slot alone can reach the target, so there can be more iterations).
        short_term: ``short_term(net, iteration)`` fine-tunes a proposal in place (the same batches for all
            proposals of an iteration).
        score: Held-out accuracy of a proposal (higher is better).
        seed: ``torch.manual_seed(seed + iteration)`` before each proposal's short-term fine-tune.
    """
    current = copy.deepcopy(model).eval()
    widths = width_chain(current)[1:-1]
    c = cost(widths)
    step = max(c - budget, 0.0) / max(iterations, 1)
    history: list[dict[str, float]] = []
    it = 0
    while c > budget:
        best: tuple[float, int, nn.Module, int] | None = None
        it_step = step
        while best is None:
            target = max(budget, c - it_step)
            for u in range(len(widths)):
                w = layer_proposal(widths, u, target, cost)
                if w is None or w >= widths[u]:
                    continue
                cand = shrink_slot(current, u, w)
                torch.manual_seed(seed * 100_003 + it)
                short_term(cand, it)
                s = float(score(cand))
                if best is None or s > best[0]:
                    best = (s, u, cand, w)
            if best is None:
                # no single slot reaches this target (a large step late in the run, a non-MACs model):
                # halve this iteration's step, which costs nothing (no proposal was fine-tuned)
                if it_step <= abs(c) * 1e-12:
                    raise RuntimeError(
                        f"NetAdapt: no slot can reach the target {target:.6g} (widths {widths})"
                    )
                it_step /= 2
        s, u, current, w = best
        widths = [*widths[:u], w, *widths[u + 1 :]]
        c = cost(widths)
        history.append({"iteration": it, "target": target, "cost": c, "slot": u, "width": w, "score": s})
        it += 1
    return NetAdaptResult(current, widths, c, budget, history)
