"""SEDONA's search: the continuous relaxation, the unrolled meta-step, the weight memory, ``method=sedona_search``.

* :class:`SearchNet`: the units and classifier of a :class:`~sedona.network.DecoupledNet` with a
  :class:`MixedHead` (the β-weighted mixture of the light-conv candidates) after every unit but the last;
  ``SearchNet(x, y, alpha, beta, scales)`` is the relaxed training loss 𝓛(θ; α, β) (brief §1.4). With one
  head kind and ``beta=None`` (the original's ``--no-beta``: ``method.search_beta=false``) every cut uses that
  head, not a mixture, and only α is searched.
* :func:`relaxed_grads` / :func:`sgd_momentum_update` / :func:`hypergradient`: T inner SGD-momentum steps written
  with :func:`torch.func.functional_call`, differentiated with respect to (α, β) by backprop through the unroll,
  with the original's objective (``train_last``) or the paper's (``val``).
* :class:`WeightMemory`: the states of a pretraining run the meta-loop samples from (brief §1.5).
* :func:`run`: ``method=sedona_search``: pretraining → search → (optional) evaluation of the found decoupling
  (``method.eval_mode=discrete``: a fresh K-block net, ``method=sedona``) or of the relaxed net itself
  (``continuous``: the original's ``--eval-continuous``, :func:`evaluate_continuous`), each phase resumable,
  artifacts under ``<output_dir>/search/`` and ``<output_dir>/eval/``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.func import functional_call

from common.checkpoint import CheckpointManager, load_verified, save_atomic
from common.engine import RunContext, Trainer
from sedona.heads import build_head, smoothed_cross_entropy
from sedona.network import DecoupledNet, Decoupling, sedona_init, select_decoupling
from sedona.task import block_optimization, train_steps

log = logging.getLogger(__name__)

CANDIDATES = ("conv1", "conv2", "conv3", "conv4")
# the heads ``method.search_beta=false`` can fix at every cut: logits heads, which the output scale s_l
# applies to (PredSim's similarity loss has no logits to scale). The original's --no-beta uses its
# --baseline-dec-type, default mlp_sr.
FIXED_HEADS = ("mlp_sr", "conv1", "conv2", "conv3", "conv4")
EVAL_MODES = ("discrete", "continuous")
SCALE_EPS = 1e-5  # s_l = 1 / (p_l + 1e-5), the original's output scale

Params = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------- the relaxation


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


# ------------------------------------------------------------------------------------- the weight memory


class WeightMemory:
    """A bounded list of training states (params, buffers, momenta, step, error) to start meta-steps from.

    Args:
        capacity: the most states kept (50 in the original).
        keep: which states survive when it is full: ``oldest`` evicts the oldest (what the original does, so the
            memory ends up holding the last ``capacity`` snapshots; brief §4.5) or ``spread`` evicts the state
            whose removal leaves the most even spacing of steps over training (the newest is always kept).
    """

    def __init__(self, capacity: int = 50, keep: str = "oldest") -> None:
        if keep not in ("oldest", "spread"):
            raise ValueError(f"keep must be oldest or spread, got {keep!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.keep = keep
        self.entries: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, entry: dict[str, Any]) -> None:
        """Add a state, evicting one first if full."""
        if len(self.entries) >= self.capacity:
            self.entries.pop(self._victim())
        self.entries.append(entry)

    def _victim(self) -> int:
        if self.keep == "oldest":
            return 0
        steps = [int(e["step"]) for e in self.entries]
        # drop i whose neighbours are closest together (the gap left behind is the smallest)
        gaps = [steps[i + 1] - (steps[i - 1] if i > 0 else 0) for i in range(len(steps) - 1)]
        return min(range(len(gaps)), key=gaps.__getitem__)

    def pop(self, index: int) -> dict[str, Any]:
        """Remove and return a state (the original's ``sample`` pops; the advanced state is pushed back)."""
        return self.entries.pop(index)

    def steps(self) -> list[int]:
        return [int(e["step"]) for e in self.entries]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "keep": self.keep, "entries": list(self.entries)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity, self.keep = int(state["capacity"]), str(state["keep"])
        self.entries = list(state["entries"])


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int, error: float) -> dict:
    """A memory entry from a live model and its ``torch.optim.SGD`` (momentum buffers by parameter name)."""
    momenta = {}
    if optimizer is not None:
        for n, p in model.named_parameters():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                momenta[n] = buf.detach().clone()
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "momenta": momenta,
        "step": int(step),
        "error": float(error),
    }


def clipped_cosine(step: int, lr: float, lr_min: float, t_max: int) -> float:
    """The original's cosine LR at ``step``, clipped to ``lr_min`` after ``t_max``."""
    t = min(step, t_max)
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / max(1, t_max))) / 2


# ------------------------------------------------------------------------------------- data streams


class BatchStream:
    """An endless, resumable stream over a loader's epochs (its position is in :meth:`state_dict`)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.epoch = 0
        self.batch = 0
        self._it: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (a new epoch when one ends)."""
        for _ in range(2):
            if self._it is None:
                self._it = iter(self.loader.epoch_iter(self.epoch, self.batch))
            try:
                x, y = next(self._it)
                self.batch += 1
                return x, y
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
        raise RuntimeError("the loader yields no batch")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._it = int(state["epoch"]), int(state["batch"]), None


# ------------------------------------------------------------------------------------- the phases


class PretrainState:
    """The pretraining's step counter and weight memory (checkpointed with the pretraining ``Trainer``)."""

    def __init__(self, memory: WeightMemory) -> None:
        self.memory = memory
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.memory.load_state_dict(state["memory"])


def _sub_ctx(ctx: RunContext, folder: Path) -> RunContext:
    folder.mkdir(parents=True, exist_ok=True)
    return RunContext(
        cfg=ctx.cfg,
        output_dir=folder,
        device=ctx.device,
        logger=ctx.logger,
        checkpoints=CheckpointManager(folder),
        progress=ctx.progress,
    )


@torch.no_grad()
def _batch_error(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    was = model.training
    model.eval()
    err = float((model(batch[0]).argmax(-1) != batch[1]).float().mean())
    model.train(was)
    return err


def searches_beta(cfg: DictConfig) -> bool:
    """``method.search_beta`` (default true); false is the original's ``--no-beta``."""
    value = cfg.method.get("search_beta", True)
    if not isinstance(value, bool):
        raise ValueError(f"method.search_beta must be true or false, got {value!r}")
    return value


def head_kinds(cfg: DictConfig) -> tuple[str, ...]:
    """The heads at every cut: ``method.candidates`` (β searched) or ``(method.fixed_head,)`` (no β)."""
    if searches_beta(cfg):
        return tuple(cfg.method.candidates)
    fixed = str(cfg.method.get("fixed_head", "mlp_sr"))
    if fixed not in FIXED_HEADS:
        raise ValueError(
            f"method.fixed_head must be one of {FIXED_HEADS} (a logits head the output scale applies to), "
            f"got {fixed!r}"
        )
    return (fixed,)


def initial_beta(model: SearchNet, search_beta: bool, requires_grad: bool = False) -> torch.Tensor | None:
    """β = 0 (one column per candidate), or None when β is not searched."""
    if not search_beta:
        return None
    ref = next(model.parameters())
    beta = torch.zeros(model.num_units - 1, len(model.kinds), device=ref.device, dtype=ref.dtype)
    return beta.requires_grad_(requires_grad)


def pretrain(cfg: DictConfig, model: SearchNet, data: Any, ctx: RunContext, folder: Path) -> WeightMemory:
    """Phase 1 (``init_memory.py``): relaxed training at α = 0, β = 0 (p = ½, unweighted head average).

    With ``search_beta=false`` the single fixed head at every cut (the memory holds that head set).
    SGD-momentum on the per-iteration clipped cosine; every ``snapshot_every`` steps the state and its error on
    one validation batch go into the memory. Resumable (a ``Trainer`` in ``search/pretrain``).
    """
    m = cfg.method
    memory = WeightMemory(int(m.memory_size), str(m.memory_keep))
    pstate = PretrainState(memory)
    opt = torch.optim.SGD(model.parameters(), lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay)
    ref = next(model.parameters())
    alpha = torch.zeros(model.num_units - 1, 2, device=ref.device, dtype=ref.dtype)
    beta = initial_beta(model, searches_beta(cfg))
    scales, prefix = output_scales(alpha), prefix_products(alpha)
    t_max = int(m.cosine_iters) if m.cosine_iters else train_steps(cfg, data, m.pretrain_epochs)
    val = BatchStream(data.val)

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for g in opt.param_groups:
            g["lr"] = clipped_cosine(pstate.step, m.lr, m.lr_min, t_max)
        loss, logits = relaxed_train_step(model, opt, (x, y), alpha, beta, scales, prefix)
        pstate.step += 1
        if pstate.step % int(m.snapshot_every) == 0:
            memory.push(snapshot(model, opt, pstate.step, _batch_error(model, val.next())))
        return loss, logits

    trainer = Trainer.from_config(
        cfg,
        model,
        opt,
        data,
        _sub_ctx(ctx, folder),
        epochs=int(m.pretrain_epochs),
        step_fn=step_fn,
        extra_state={"pretrain": pstate, "pretrain_val_stream": val},
        phase="sedona_pretrain",
    )
    trainer.fit()
    if len(memory) == 0:  # fewer steps than snapshot_every: keep the final state
        memory.push(snapshot(model, opt, pstate.step, _batch_error(model, val.next())))
    log.info("pretraining done: %d states in memory, steps %s", len(memory), memory.steps())
    return memory


def search(
    cfg: DictConfig, model: SearchNet, data: Any, memory: WeightMemory, state_path: Path
) -> dict[str, Any]:
    """Phase 2 (``search.py``): ``meta_iters`` meta-steps with Adam on (α, β); resumable from ``state_path``.

    With ``search_beta=false`` (``--no-beta``) there is no β: Adam holds α only and the result's β is None.
    """
    m = cfg.method
    ref = next(model.parameters())
    alpha = torch.zeros(model.num_units - 1, 2, device=ref.device, dtype=ref.dtype, requires_grad=True)
    beta = initial_beta(model, searches_beta(cfg), requires_grad=True)
    meta_opt = meta_optimizer(cfg, alpha, beta)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    train, val = BatchStream(data.train), BatchStream(data.val)
    t_max = int(m.cosine_iters) if m.cosine_iters else train_steps(cfg, data, m.pretrain_epochs)
    history: list[dict[str, float]] = []
    start = 0
    if state_path.exists():
        st = load_verified(state_path)
        if (st.get("beta") is None) != (beta is None):
            raise ValueError(
                f"{state_path} was written with another method.search_beta: remove it to restart"
            )
        with torch.no_grad():
            alpha.copy_(st["alpha"])
            if beta is not None:
                beta.copy_(st["beta"])
        meta_opt.load_state_dict(st["meta_opt"])
        memory.load_state_dict(st["memory"])
        gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        train.load_state_dict(st["train_stream"])
        val.load_state_dict(st["val_stream"])
        history, start = list(st["history"]), int(st["iteration"])
        log.info("search resumed at meta-iteration %d", start)

    def save(iteration: int) -> None:
        save_atomic(
            {
                "alpha": alpha.detach(),
                "beta": None if beta is None else beta.detach(),
                "meta_opt": meta_opt.state_dict(),
                "memory": memory.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "train_stream": train.state_dict(),
                "val_stream": val.state_dict(),
                "history": history,
                "iteration": iteration,
            },
            state_path,
        )

    tick = time.monotonic()
    for it in range(start, int(m.meta_iters)):
        entry = memory.pop(int(torch.randint(len(memory), (1,), generator=gen)))
        lr = clipped_cosine(int(entry["step"]) + 1, m.lr, m.lr_min, t_max)
        batches = [train.next() for _ in range(int(m.inner_steps))]
        val_batch = val.next() if m.objective == "val" else None
        value, d_alpha, d_beta = hypergradient(
            model,
            entry,
            batches,
            alpha,
            beta,
            lr=lr,
            momentum=m.momentum,
            weight_decay=m.weight_decay,
            objective=str(m.objective),
            val_batch=val_batch,
        )
        meta_opt.zero_grad(set_to_none=True)
        alpha.grad = d_alpha
        if beta is not None:
            beta.grad = d_beta
        meta_opt.step()
        # advance the popped state by one ordinary step with the new (α, β) and put it back (brief §1.5 step 6)
        entry, _ = relaxed_step(
            model, entry, train.next(), alpha, beta, lr=lr, momentum=m.momentum, weight_decay=m.weight_decay
        )
        memory.push(entry)
        p, _ = cut_probabilities(alpha.detach())
        history.append({"iteration": it + 1, "objective": float(value), "lr": lr})
        if (it + 1) % int(m.log_every) == 0 or it + 1 == int(m.meta_iters):
            log.info(
                "meta %d/%d  %s %.4f  p %s  (%.1fs)",
                it + 1,
                m.meta_iters,
                m.objective,
                float(value),
                [round(float(v), 3) for v in p],
                time.monotonic() - tick,
            )
        if (it + 1) % int(m.checkpoint_every) == 0 or it + 1 == int(m.meta_iters):
            save(it + 1)
    return {
        "alpha": alpha.detach().cpu(),
        "beta": None if beta is None else beta.detach().cpu(),
        "history": history,
    }


def meta_optimizer(cfg: DictConfig, alpha: torch.Tensor, beta: torch.Tensor | None) -> torch.optim.Adam:
    """Adam(meta_lr, meta_betas, meta_weight_decay) on α and β, or on α only when ``beta`` is None."""
    m = cfg.method
    variables = [alpha] if beta is None else [alpha, beta]
    return torch.optim.Adam(
        variables, lr=m.meta_lr, betas=tuple(m.meta_betas), weight_decay=m.meta_weight_decay
    )


def decoupling_result(
    alpha: torch.Tensor, beta: torch.Tensor | None, kinds: Sequence[str], meta: dict
) -> dict:
    """``decoupling.json``: α, β, p, and the block ends and heads for K = 2, 4, 8, 16 where K ≤ L.

    ``beta=None`` (``--no-beta``, one head kind): ``beta`` and ``head_weights`` are null, ``fixed_head`` is
    that kind and every cut of every split names it (not null, which ``method=sedona`` would read as its own
    ``aux``).
    """
    num_units = alpha.shape[0] + 1
    p, _ = cut_probabilities(alpha.double())
    if beta is None and len(kinds) != 1:
        raise ValueError(f"without beta the search has exactly one head kind, got {tuple(kinds)}")
    splits = {}
    for k in (2, 4, 8, 16):
        if k <= num_units:
            dec = select_decoupling(alpha, beta, k, kinds)
            if beta is None:
                dec = Decoupling(dec.block_ends, (kinds[0],) * len(dec.cuts))
            splits[str(k)] = dec.to_dict()
    return {
        **meta,
        "num_units": num_units,
        "candidates": list(kinds),
        "search_beta": beta is not None,
        "fixed_head": None if beta is not None else kinds[0],
        "alpha": alpha.tolist(),
        "beta": None if beta is None else beta.tolist(),
        "cut_probability": p.tolist(),
        "head_weights": None if beta is None else torch.softmax(beta.double(), -1).tolist(),
        "splits": splits,
    }


def plot_cut_probabilities(result: dict, path: Path) -> None:
    """Bar chart of p_l per unit, labelled with argmax β (the head a cut there would use) or the fixed head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = result["cut_probability"]
    if result.get("head_weights") is None:  # --no-beta: one head everywhere
        heads = [result["candidates"][0]] * len(p)
    else:
        heads = [result["candidates"][max(range(len(w)), key=w.__getitem__)] for w in result["head_weights"]]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(p) + 2), 3.2))
    ax.bar(range(len(p)), p, color="tab:blue")
    for i, (v, h) in enumerate(zip(p, heads, strict=True)):
        ax.text(i, v + 0.02, h.replace("conv", "d").replace("mlp_sr", "mlp"), ha="center", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("decoupling point (after unit l)")
    ax.set_ylabel("p_l = softmax(α_l)_0")
    how = (
        "dK = argmax β" if result.get("head_weights") is not None else f"fixed head {result['candidates'][0]}"
    )
    ax.set_title(f"SEDONA search ({result.get('objective', '')}): cut probabilities, {how}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_search_net(cfg: DictConfig, data: Any, device: torch.device) -> SearchNet:
    """The backbone of ``cfg`` (as ``method=sedona`` builds it) with the search's heads at every cut.

    The heads are ``method.candidates`` (β-mixed), or ``method.fixed_head`` alone when ``search_beta=false``.
    """
    from sedona.task import build_net

    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.method.num_blocks = 1
        sub.method.decoupling = "uniform"
    net, _ = build_net(sub, data, device)
    return SearchNet(net, head_kinds(cfg), float(cfg.method.head_feat_mult)).to(device)


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """``method=sedona_search``: pretrain → search → evaluate, each phase skipped when its artifact exists.

    Artifacts: ``search/memory.pt`` (pretraining), ``search/state.pt`` (the search, every ``checkpoint_every``
    meta-iterations), ``search/result.json`` = ``decoupling.json`` and ``cut_probabilities.png`` (the search's
    result), ``eval/`` (``eval_blocks`` 0: no evaluation; ``eval_mode=discrete``: greedy training of the found
    decoupling at K = ``eval_blocks``; ``continuous``: the relaxed net itself, :func:`evaluate_continuous`).
    """
    from common.factory import make_data

    m = cfg.method
    eval_mode = str(m.get("eval_mode", "discrete"))
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"method.eval_mode must be discrete or continuous, got {eval_mode!r}")
    kinds = head_kinds(cfg)  # checks search_beta and fixed_head
    if eval_mode == "continuous" and m.lr_schedule not in ("iter_cosine", "config"):
        raise ValueError(f"method.lr_schedule must be iter_cosine or config, got {m.lr_schedule!r}")
    if m.objective not in ("train_last", "val"):
        raise ValueError(f"method.objective must be train_last or val, got {m.objective!r}")
    if m.memory_keep not in ("oldest", "spread"):
        raise ValueError(f"method.memory_keep must be oldest or spread, got {m.memory_keep!r}")
    if int(m.inner_steps) < 1:
        raise ValueError(f"method.inner_steps must be >= 1, got {m.inner_steps}")
    data = make_data(cfg, ctx.device)
    if data.val is None:
        raise ValueError(
            "sedona_search needs a validation split carved from the training set (dataset.val_fraction)"
        )
    folder = ctx.output_dir / "search"
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    torch.manual_seed(int(cfg.seed))
    model = build_search_net(cfg, data, ctx.device)
    log.info(
        "sedona_search: L=%d units, %d candidate cuts, heads %s%s",
        model.num_units,
        model.num_units - 1,
        model.kinds,
        "" if searches_beta(cfg) else " (fixed: beta not searched)",
    )

    if result_path.exists():
        result = json.loads(result_path.read_text())
        log.info("search result found at %s: skipping pretraining and search", result_path)
    else:
        memory_path = folder / "memory.pt"
        if memory_path.exists():
            saved = load_verified(memory_path)
            if saved.get("kinds", list(kinds)) != list(kinds):
                raise ValueError(
                    f"{memory_path} holds states with heads {saved['kinds']}, this search uses {list(kinds)} "
                    "(method.search_beta / candidates / fixed_head changed): use another output folder"
                )
            memory = WeightMemory()
            memory.load_state_dict(saved["memory"])
        else:
            memory = pretrain(cfg, model, data, ctx, folder / "pretrain")
            save_atomic({"memory": memory.state_dict(), "kinds": list(kinds)}, memory_path)
        out = search(cfg, model, data, memory, folder / "state.pt")
        meta = {
            "objective": str(m.objective),
            "meta_iters": int(m.meta_iters),
            "inner_steps": int(m.inner_steps),
            "memory_steps": memory.steps(),
            "final_objective": out["history"][-1]["objective"] if out["history"] else None,
        }
        result = decoupling_result(out["alpha"], out["beta"], model.kinds, meta)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(result_path)
    (ctx.output_dir / "decoupling.json").write_text(json.dumps(result, indent=2))
    plot_cut_probabilities(result, ctx.output_dir / "cut_probabilities.png")
    for k, split in result["splits"].items():
        log.info("K=%s: block ends %s, heads %s", k, split["block_ends"], split["heads"])

    metrics: dict[str, float] = {
        "search_num_units": float(result["num_units"]),
        "search_max_cut_probability": float(max(result["cut_probability"])),
    }
    if result.get("final_objective") is not None:
        metrics["search_objective"] = float(result["final_objective"])
    k = int(m.eval_blocks)
    if k > 0 and eval_mode == "continuous":
        metrics.update(evaluate_continuous(cfg, data, result, ctx))
    elif k > 0:
        if str(k) not in result["splits"]:
            raise ValueError(f"method.eval_blocks={k}: the search gives K in {sorted(result['splits'])}")
        from sedona.task import run as greedy_run

        sub = copy.deepcopy(cfg)
        with open_dict(sub):
            sub.method.num_blocks = k
            sub.method.decoupling = str(ctx.output_dir / "decoupling.json")
        evaluated = greedy_run(sub, _sub_ctx(ctx, ctx.output_dir / "eval"))
        metrics.update(evaluated)
    return metrics


def evaluate_continuous(cfg: DictConfig, data: Any, result: dict, ctx: RunContext) -> dict[str, float]:
    """Phase 3 with ``eval_mode=continuous`` (the original's ``--eval-continuous``): the relaxed net itself.

    No discretisation: a freshly initialised :class:`SearchNet` (seed ``cfg.seed``, the search's heads at every
    cut) is trained on 𝓛(θ; α, β) with the searched α and β frozen, the output scales s_l and the per-unit
    gradient rescaling of the search's ordinary steps (:func:`relaxed_train_step`). As in the original, every
    unit (its encoder and its head; the last with the classifier) has its own optimizer (``cfg.optimizer``) and
    LR schedule (``method.lr_schedule``, as ``method=sedona``: ``iter_cosine`` to ``lr_min`` over all steps, or
    ``config``). A ``Trainer`` in ``<run>/eval/`` (phase ``sedona_continuous``) checkpoints and resumes; the
    test metrics are those of the classifier (the last unit's output), the net's own prediction.
    ``<run>/eval/relaxation.json`` records the α, β, heads, p_l and path weights Π_{j<l} q_j trained with.
    """

    torch.manual_seed(int(cfg.seed))
    model = build_search_net(cfg, data, ctx.device)
    found_beta = result.get("beta") is not None
    if list(result["candidates"]) != list(model.kinds) or found_beta != searches_beta(cfg):
        raise ValueError(
            f"the search result has heads {result['candidates']} (beta searched: {found_beta}); "
            f"this config asks {list(model.kinds)} (search_beta={searches_beta(cfg)})"
        )
    ref = next(model.parameters())
    alpha = torch.tensor(result["alpha"], dtype=ref.dtype, device=ref.device)
    beta = (
        None
        if result.get("beta") is None
        else torch.tensor(result["beta"], dtype=ref.dtype, device=ref.device)
    )
    if alpha.shape != (model.num_units - 1, 2):
        raise ValueError(f"alpha has shape {tuple(alpha.shape)}, the net has {model.num_units - 1} cuts")
    scales, prefix = output_scales(alpha), prefix_products(alpha)
    sub = _sub_ctx(ctx, ctx.output_dir / "eval")
    p, _ = cut_probabilities(alpha.double())
    record = {
        "heads": list(model.kinds),
        "alpha": result["alpha"],
        "beta": result.get("beta"),
        "cut_probability": p.tolist(),
        "path_weight": prefix_products(alpha.double()).tolist(),
    }
    (sub.output_dir / "relaxation.json").write_text(json.dumps(record, indent=2))
    log.info("continuous evaluation: the relaxed net, p %s", [round(float(v), 3) for v in p])

    groups: list[list[nn.Parameter]] = [[] for _ in range(model.num_units)]
    for n, param in model.named_parameters():
        groups[model.groups[n]].append(param)
    opts, epoch_sched, iter_sched = block_optimization(cfg, groups, data)
    extra: dict[str, Any] = {} if iter_sched is None else {"block_schedulers": iter_sched}

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = relaxed_train_step(model, opts, (x, y), alpha, beta, scales, prefix)
        if iter_sched is not None:
            iter_sched.step()
        return out

    trainer = Trainer.from_config(
        cfg,
        model,
        opts,
        data,
        sub,
        scheduler=epoch_sched,
        step_fn=step_fn,
        extra_state=extra,
        phase="sedona_continuous",
    )
    results = trainer.fit()
    results["eval_continuous"] = 1.0
    return results


__all__ = [
    "CANDIDATES",
    "EVAL_MODES",
    "FIXED_HEADS",
    "BatchStream",
    "MixedHead",
    "SearchNet",
    "WeightMemory",
    "clipped_cosine",
    "cut_probabilities",
    "decoupling_result",
    "evaluate_continuous",
    "frozen_batchnorm",
    "head_kinds",
    "hypergradient",
    "output_scales",
    "prefix_products",
    "relaxed_grads",
    "relaxed_step",
    "relaxed_train_step",
    "run",
    "searches_beta",
    "sgd_momentum_update",
]
