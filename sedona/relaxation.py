"""SEDONA's continuous relaxation of the decoupling and its unrolled meta-gradient (Pyeon et al., ICLR 2021).

* :class:`SearchNet`: the units and classifier of a :class:`~sedona.network.DecoupledNet` with a
  :class:`MixedHead` (the β-weighted mixture of the light-conv candidates) after every unit but the last;
  ``SearchNet(x, y, alpha, beta, scales)`` is the relaxed training loss 𝓛(θ; α, β) (brief §1.4). With one
  head kind and ``beta=None`` (the original's ``--no-beta``: ``method.search_beta=false``) every cut uses that
  head, not a mixture, and only α is searched.
* :func:`relaxed_grads` / :func:`sgd_momentum_update` / :func:`hypergradient`: T inner SGD-momentum steps written
  with :func:`torch.func.functional_call`, differentiated with respect to (α, β) by backprop through the unroll,
  with the original's objective (``train_last``) or the paper's (``val``).
* :func:`relaxed_step` (one ordinary step of a weight-memory state) and :func:`relaxed_train_step` (one in-place
  step of a live model): the non-differentiable steps of the pretraining, the search and the continuous
  evaluation.

The phases that use them (pretraining, search, evaluation) are in :mod:`sedona.meta_search`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from sedona.heads import build_head, smoothed_cross_entropy
from sedona.network import DecoupledNet, sedona_init

CANDIDATES = ("conv1", "conv2", "conv3", "conv4")
SCALE_EPS = 1e-5  # s_l = 1 / (p_l + 1e-5), the original's output scale

Params = dict[str, torch.Tensor]


class MixedHead(nn.Module):
    """The search's auxiliary net at one cut: Σ_k w_k g_k(h), the weighted sum of the candidates' logits.

    Args:
        channels, spatial: the unit's output (C, S); ``spatial=None`` for flat units.
        num_classes: number of classes.
        kinds: the candidate heads (``conv1`` … ``conv4`` in the original).
        feat_mult: width multiplier of the heads.
    """

    def __init__(
        self,
        channels: int,
        spatial: int | None,
        num_classes: int,
        kinds: Sequence[str] = CANDIDATES,
        feat_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.kinds = tuple(kinds)
        self.candidates = nn.ModuleList(
            [build_head(k, channels, spatial, num_classes, feat_mult) for k in self.kinds]
        )

    def forward(self, h: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """β-weighted logits; ``weights`` = softmax(β_l) (one entry per candidate).

        ``weights=None`` (no β: ``--no-beta``) is the logits of the single candidate, not a mixture.
        """
        if weights is None:
            if len(self.candidates) != 1:
                raise ValueError(f"without beta a cut needs exactly one head kind, got {self.kinds}")
            return self.candidates[0](h)
        return sum(w * g(h) for w, g in zip(weights, self.candidates, strict=True))


def cut_probabilities(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q): p_l = softmax(α_l)_0 ("decouple after unit l"), q_l = softmax(α_l)_1 = 1 − p_l."""
    probs = torch.softmax(alpha, dim=-1)
    return probs[:, 0], probs[:, 1]


def prefix_products(alpha: torch.Tensor) -> torch.Tensor:
    """Π_{j<l} q_j for l = 0 … L−1 (L = len(alpha) + 1): the weight of the path from the loss to unit l."""
    _, q = cut_probabilities(alpha)
    return torch.cat([q.new_ones(1), torch.cumprod(q, 0)])


def output_scales(alpha: torch.Tensor) -> torch.Tensor:
    """s_l = 1 / (p_l + 1e-5), from ``alpha``'s value only: a constant without gradient (brief §4.3)."""
    p, _ = cut_probabilities(alpha.detach())
    return 1.0 / (p + SCALE_EPS)


class SearchNet(nn.Module):
    """A decoupled net whose every decoupling point carries a :class:`MixedHead`.

    ``forward(x)`` is the plain network (classifier logits). ``forward(x, y, alpha, beta, scales)`` returns
    (𝓛, classifier logits) with the relaxed training loss (brief §1.4)

        𝓛 = Σ_{l<L−1} (Π_{j<l} q_j) p_l ℓ_l + (Π_{j<L−1} q_j) ℓ_{L−1},
        ℓ_l = CE_ls(s_l · g_l(h_l / s_l), y),  g_l = Σ_k softmax(β_l)_k g_{l,k},

    with no detach anywhere; ``beta=None`` needs a single head kind, and g_l is that head (``--no-beta``). The
    parameters of unit l (its encoder and its head; the classifier is unit L−1's) form group l (:attr:`groups`)
    for the rescaling of :func:`relaxed_grads`.

    Args:
        net: the decoupled net whose units and classifier are used (its own heads are not).
        kinds: the candidate heads.
        feat_mult: width multiplier of the heads.
    """

    def __init__(self, net: DecoupledNet, kinds: Sequence[str] = CANDIDATES, feat_mult: float = 1.0) -> None:
        super().__init__()
        self.units = net.units
        self.classifier = net.classifier
        self.label_smoothing = net.label_smoothing
        self.kinds = tuple(kinds)
        heads = []
        for shape in net.unit_shapes[:-1]:
            head = MixedHead(
                shape[0], shape[-1] if len(shape) == 3 else None, net.num_classes, kinds, feat_mult
            )
            sedona_init(head)
            heads.append(head)
        ref = next(net.parameters())
        self.mixed = nn.ModuleList(heads).to(ref.device, ref.dtype)
        self.groups = {name: self._group(name) for name, _ in self.named_parameters()}

    @property
    def num_units(self) -> int:
        """L."""
        return len(self.units)

    def _group(self, name: str) -> int:
        part, rest = name.split(".", 1)
        if part == "classifier":
            return self.num_units - 1
        return int(rest.split(".", 1)[0])

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Classifier logits (``alpha`` None), or (relaxed loss 𝓛, classifier logits)."""
        if alpha is None:
            for unit in self.units:
                x = unit(x)
            return self.classifier(x)
        p, q = cut_probabilities(alpha)
        mix = None if beta is None else torch.softmax(beta, dim=-1)
        scales = output_scales(alpha) if scales is None else scales
        total = x.new_zeros(())
        path = x.new_ones(())  # Π_{j<l} q_j
        h = x
        last = self.num_units - 1
        for i, unit in enumerate(self.units):
            h = unit(h)
            if i < last:
                s = scales[i]
                # the output scale acts as a temperature that undoes p_l's shrinking of the local signal (§1.4)
                g = self.mixed[i](h / s, None if mix is None else mix[i])
                loss = smoothed_cross_entropy(s * g, y, self.label_smoothing)
                total = total + path * p[i] * loss
                path = path * q[i]
        logits = self.classifier(h)
        total = total + path * smoothed_cross_entropy(logits, y, self.label_smoothing)
        return total, logits


def relaxed_grads(
    model: SearchNet,
    params: Params,
    buffers: Params,
    batch: tuple[torch.Tensor, torch.Tensor],
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    scales: torch.Tensor,
    create_graph: bool,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """∇_θ 𝓛 with unit l's group divided by Π_{j<l} q_j (so δ_l = p_l ∇ℓ_l + q_l δ_{l+1}, brief §1.4).

    With ``create_graph`` the gradients (and the divisor, a function of α) stay differentiable, as in the
    original's inner loop; otherwise α and β enter as constants (the original's real steps use ``alpha.data``).
    ``beta=None``: no β (a single head kind at every cut, ``--no-beta``).

    Returns:
        (gradients by name, 𝓛, classifier logits).
    """
    if not create_graph:
        alpha = alpha.detach()
        beta = None if beta is None else beta.detach()
    loss, logits = functional_call(model, (params, buffers), (batch[0], batch[1], alpha, beta, scales))
    names = list(params)
    raw = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True)
    prefix = prefix_products(alpha)
    grads = {
        n: (torch.zeros_like(params[n]) if g is None else g / prefix[model.groups[n]])
        for n, g in zip(names, raw, strict=True)
    }
    return grads, loss, logits


def sgd_momentum_update(
    params: Params, grads: Params, momenta: Params | None, lr: float, momentum: float, weight_decay: float
) -> tuple[Params, Params]:
    """One step of ``torch.optim.SGD`` (no dampening, no Nesterov) as a pure function.

    d = g + wd·θ;  m ← μ·m + d (m ← d on the first step);  θ ← θ − lr·m.
    """
    new_params, new_momenta = {}, {}
    for n, theta in params.items():
        d = grads[n] + weight_decay * theta if weight_decay else grads[n]
        m = d if momenta is None or momenta.get(n) is None else momentum * momenta[n] + d
        new_momenta[n] = m
        new_params[n] = theta - lr * m
    return new_params, new_momenta


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """BatchNorm momentum 0 inside: running statistics are not updated (batch statistics are still used).

    The eval-mode validation loss would otherwise depend on statistics updated in place during the inner steps,
    a dependence autograd does not see (brief §4.4).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


def hypergradient(
    model: SearchNet,
    state: dict[str, Any],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    objective: str = "train_last",
    val_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The meta-step's outer objective and its gradient w.r.t. (α, β), by backprop through T unrolled steps.

    Starting from ``state`` (``params``, ``buffers``, ``momenta``; never modified), T = ``len(batches)``
    differentiable SGD-momentum steps of the relaxed loss are taken (BatchNorm in train mode, on copies of the
    running statistics). The objective is

    * ``train_last`` (the original code, brief §4.1): the relaxed training loss of the last inner step,
      𝓛(θ^{(T−1)}(α, β); α, β). The T-th update cannot change it, so it is not computed.
    * ``val`` (the paper): CE_ls of the classifier of θ^{(T)} on ``val_batch`` in eval mode, with the running
      statistics frozen during the inner steps so that the hypergradient is exact.

    Args:
        beta: the head logits, or None when β is not searched (one head kind, ``--no-beta``).
        scales: the output scales s_l; default from α's value (held fixed: a stop-gradient in the original).

    Returns:
        (objective, ∂/∂α, ∂/∂β); ∂/∂β is None when ``beta`` is None.
    """
    if objective not in ("train_last", "val"):
        raise ValueError(f"objective must be train_last or val, got {objective!r}")
    if objective == "val" and val_batch is None:
        raise ValueError("objective=val needs a validation batch")
    scales = output_scales(alpha) if scales is None else scales
    params = {n: t.detach().clone().requires_grad_(True) for n, t in state["params"].items()}
    buffers = {n: t.detach().clone() for n, t in state["buffers"].items()}
    momenta = state.get("momenta")
    was = model.training
    model.train()
    freeze = frozen_batchnorm(model) if objective == "val" else contextlib.nullcontext()
    updates = len(batches) - 1 if objective == "train_last" else len(batches)
    try:
        with freeze:
            for t in range(updates):
                grads, _, _ = relaxed_grads(model, params, buffers, batches[t], alpha, beta, scales, True)
                params, momenta = sgd_momentum_update(params, grads, momenta, lr, momentum, weight_decay)
            if objective == "train_last":
                x, y = batches[-1]
                value, _ = functional_call(model, (params, buffers), (x, y, alpha, beta, scales))
            else:
                model.eval()
                logits = functional_call(model, (params, buffers), (val_batch[0],))
                value = smoothed_cross_entropy(logits, val_batch[1], model.label_smoothing)
    finally:
        model.train(was)
    variables = [alpha] if beta is None else [alpha, beta]
    grads = torch.autograd.grad(value, variables, allow_unused=True)
    d_alpha = torch.zeros_like(alpha) if grads[0] is None else grads[0]
    if beta is None:
        return value.detach(), d_alpha, None
    d_beta = torch.zeros_like(beta) if grads[1] is None else grads[1]
    return value.detach(), d_alpha, d_beta


def relaxed_step(
    model: SearchNet,
    state: dict[str, Any],
    batch: tuple[torch.Tensor, torch.Tensor],
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One ordinary (non-differentiable) relaxed step of a memory state; returns (new state, 𝓛)."""
    params = {n: t.detach().clone().requires_grad_(True) for n, t in state["params"].items()}
    buffers = {n: t.detach().clone() for n, t in state["buffers"].items()}
    model.train()
    grads, loss, _ = relaxed_grads(model, params, buffers, batch, alpha, beta, output_scales(alpha), False)
    with torch.no_grad():
        new, momenta = sgd_momentum_update(params, grads, state.get("momenta"), lr, momentum, weight_decay)
    return {
        "params": {n: t.detach() for n, t in new.items()},
        "buffers": buffers,
        "momenta": {n: t.detach() for n, t in momenta.items()},
        "step": int(state.get("step", 0)) + 1,
        "error": float(state.get("error", float("nan"))),
    }, loss.detach()


def relaxed_train_step(
    model: SearchNet,
    optimizer: Any,
    batch: tuple[torch.Tensor, torch.Tensor],
    alpha: torch.Tensor,
    beta: torch.Tensor | None,
    scales: torch.Tensor,
    prefix: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One in-place step of a live model on 𝓛 (the original's ``continuous_train_step``).

    The gradient of unit l's group is divided by ``prefix[l]`` = Π_{j<l} q_j (constants from α's value), as in
    :func:`relaxed_grads` without ``create_graph``. Used by the pretraining and the continuous evaluation.

    Returns:
        (𝓛, classifier logits), detached.
    """
    optimizer.zero_grad(set_to_none=True)
    loss, logits = model(batch[0], batch[1], alpha, beta, scales)
    loss.backward()
    with torch.no_grad():  # the per-unit rescaling of §1.4 (one param group per unit in the original)
        for n, p in model.named_parameters():
            if p.grad is not None:
                p.grad.div_(prefix[model.groups[n]])
    optimizer.step()
    return loss.detach(), logits.detach()


__all__ = [
    "CANDIDATES",
    "SCALE_EPS",
    "MixedHead",
    "SearchNet",
    "cut_probabilities",
    "frozen_batchnorm",
    "hypergradient",
    "output_scales",
    "prefix_products",
    "relaxed_grads",
    "relaxed_step",
    "relaxed_train_step",
    "sgd_momentum_update",
]
