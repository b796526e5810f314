"""SEDONA's search, ``method=sedona_search``: pretraining → meta-search → evaluation, each phase resumable.

1. :func:`pretrain` (the original's ``init_memory.py``): relaxed training at α = 0, β = 0 that fills the
   :class:`~sedona.weight_memory.WeightMemory`.
2. :func:`search` (the original's ``search.py``): meta-iterations of Adam on (α, β), each from a memory state,
   with the hypergradient of T unrolled steps (:func:`sedona.relaxation.hypergradient`).
3. The evaluation of the result (``method.eval_mode=discrete``: a fresh K-block net, ``method=sedona``) or of
   the relaxed net itself (``continuous``: the original's ``--eval-continuous``, :func:`evaluate_continuous`).

:func:`run_search` runs them (the plugin is :data:`sedona.task.SEARCH_METHOD`); artifacts under
``<output_dir>/search/`` and ``<output_dir>/eval/``, the result in ``<output_dir>/decoupling.json``
(:func:`decoupling_result`) and ``cut_probabilities.png`` (:mod:`sedona.plot`).
"""

from __future__ import annotations

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

from common.checkpoint import load_verified, save_atomic
from common.config import ConfigError
from common.data import DataBundle, Loader
from common.engine import RunContext, Trainer
from common.factory import make_data
from common.io import write_json_atomic
from sedona.greedy_training import block_optimization, build_backbone, train_greedy, train_steps
from sedona.network import Decoupling, select_decoupling
from sedona.options import SEARCH_SPLITS, SedonaConfig
from sedona.plot import plot_cut_probabilities
from sedona.relaxation import (
    SearchNet,
    cut_probabilities,
    hypergradient,
    output_scales,
    prefix_products,
    relaxed_step,
    relaxed_train_step,
)
from sedona.weight_memory import WeightMemory, snapshot

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- schedule and data


def clipped_cosine(step: int, lr: float, lr_min: float, t_max: int) -> float:
    """The original's cosine LR at ``step``, clipped to ``lr_min`` after ``t_max``."""
    t = min(step, t_max)
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / max(1, t_max))) / 2


class BatchStream:
    """An endless, resumable stream over a loader's epochs (its position is in :meth:`state_dict`)."""

    def __init__(self, loader: Loader) -> None:
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


@torch.no_grad()
def _batch_error(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    was = model.training
    model.eval()
    err = float((model(batch[0]).argmax(-1) != batch[1]).float().mean())
    model.train(was)
    return err


def head_kinds(cfg: DictConfig) -> tuple[str, ...]:
    """The heads at every cut: ``method.candidates`` (β searched) or ``(method.fixed_head,)`` (no β)."""
    if cfg.method.search_beta:
        return tuple(cfg.method.candidates)
    return (cfg.method.fixed_head,)


def initial_beta(model: SearchNet, search_beta: bool, requires_grad: bool = False) -> torch.Tensor | None:
    """β = 0 (one column per candidate), or None when β is not searched."""
    if not search_beta:
        return None
    ref = next(model.parameters())
    beta = torch.zeros(model.num_units - 1, len(model.kinds), device=ref.device, dtype=ref.dtype)
    return beta.requires_grad_(requires_grad)


def pretrain(
    cfg: DictConfig, model: SearchNet, data: DataBundle, ctx: RunContext, folder: str | Path
) -> WeightMemory:
    """Phase 1 (``init_memory.py``): relaxed training at α = 0, β = 0 (p = ½, unweighted head average).

    With ``search_beta=false`` the single fixed head at every cut (the memory holds that head set).
    SGD-momentum on the per-iteration clipped cosine; every ``snapshot_every`` steps the state and its error on
    one validation batch go into the memory. Resumable (a ``Trainer`` in ``search/pretrain``).
    """
    m = cfg.method
    memory = WeightMemory(m.memory_size, m.memory_keep)
    pstate = PretrainState(memory)
    opt = torch.optim.SGD(model.parameters(), lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay)
    ref = next(model.parameters())
    alpha = torch.zeros(model.num_units - 1, 2, device=ref.device, dtype=ref.dtype)
    beta = initial_beta(model, m.search_beta)
    scales, prefix = output_scales(alpha), prefix_products(alpha)
    t_max = m.cosine_iters if m.cosine_iters is not None else train_steps(cfg, data, m.pretrain_epochs)
    val = BatchStream(data.val)

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for g in opt.param_groups:
            g["lr"] = clipped_cosine(pstate.step, m.lr, m.lr_min, t_max)
        loss, logits = relaxed_train_step(model, opt, (x, y), alpha, beta, scales, prefix)
        pstate.step += 1
        if pstate.step % m.snapshot_every == 0:
            memory.push(snapshot(model, opt, pstate.step, _batch_error(model, val.next())))
        return loss, logits

    trainer = Trainer.from_config(
        cfg,
        model,
        opt,
        data,
        ctx.child(folder),
        epochs=m.pretrain_epochs,
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
    cfg: DictConfig, model: SearchNet, data: DataBundle, memory: WeightMemory, state_path: Path
) -> dict[str, Any]:
    """Phase 2 (``search.py``): ``meta_iters`` meta-steps with Adam on (α, β); resumable from ``state_path``.

    With ``search_beta=false`` (``--no-beta``) there is no β: Adam holds α only and the result's β is None.
    """
    m = cfg.method
    ref = next(model.parameters())
    alpha = torch.zeros(model.num_units - 1, 2, device=ref.device, dtype=ref.dtype, requires_grad=True)
    beta = initial_beta(model, m.search_beta, requires_grad=True)
    meta_opt = meta_optimizer(cfg, alpha, beta)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    train, val = BatchStream(data.train), BatchStream(data.val)
    t_max = m.cosine_iters if m.cosine_iters is not None else train_steps(cfg, data, m.pretrain_epochs)
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
    for it in range(start, m.meta_iters):
        entry = memory.pop(int(torch.randint(len(memory), (1,), generator=gen)))
        lr = clipped_cosine(int(entry["step"]) + 1, m.lr, m.lr_min, t_max)
        batches = [train.next() for _ in range(m.inner_steps)]
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
            objective=m.objective,
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
        if (it + 1) % m.log_every == 0 or it + 1 == m.meta_iters:
            log.info(
                "meta %d/%d  %s %.4f  p %s  (%.1fs)",
                it + 1,
                m.meta_iters,
                m.objective,
                float(value),
                [round(float(v), 3) for v in p],
                time.monotonic() - tick,
            )
        if (it + 1) % m.checkpoint_every == 0 or it + 1 == m.meta_iters:
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
    for k in SEARCH_SPLITS:
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


def build_search_net(cfg: DictConfig, data: DataBundle, device: torch.device) -> SearchNet:
    """The backbone of ``cfg`` (as ``method=sedona`` builds it) with the search's heads at every cut.

    The heads are ``method.candidates`` (β-mixed), or ``method.fixed_head`` alone when ``search_beta=false``.
    """
    x, _ = next(iter(data.test.epoch_iter(0)))
    net = build_backbone(cfg, data, device, tuple(x.shape[1:]))
    return SearchNet(net, head_kinds(cfg), cfg.method.head_feat_mult).to(device)


def run_search(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """``method=sedona_search``: pretrain → search → evaluate, each phase skipped when its artifact exists.

    Artifacts: ``search/memory.pt`` (pretraining), ``search/state.pt`` (the search, every ``checkpoint_every``
    meta-iterations), ``search/result.json`` = ``decoupling.json`` and ``cut_probabilities.png`` (the search's
    result), ``eval/`` (``eval_blocks`` 0: no evaluation; ``eval_mode=discrete``: greedy training of the found
    decoupling at K = ``eval_blocks``; ``continuous``: the relaxed net itself, :func:`evaluate_continuous`).
    """
    m = cfg.method
    kinds = head_kinds(cfg)
    data = make_data(cfg, ctx.device)
    if data.val is None:
        raise ConfigError(
            "method=sedona_search needs a validation split carved from the training set "
            "(dataset.val_fraction or dataset.val_size)"
        )
    torch.manual_seed(int(cfg.seed))
    model = build_search_net(cfg, data, ctx.device)
    if m.eval_mode == "discrete" and m.eval_blocks > model.num_units:
        splits = ", ".join(str(k) for k in SEARCH_SPLITS if k <= model.num_units)
        raise ConfigError(
            f"method.eval_blocks={m.eval_blocks}: network={cfg.network.name} has {model.num_units} units, "
            f"the search gives K in {splits} (0: no evaluation)"
        )
    folder = ctx.output_dir / "search"
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "result.json"
    log.info(
        "sedona_search: L=%d units, %d candidate cuts, heads %s%s",
        model.num_units,
        model.num_units - 1,
        model.kinds,
        "" if m.search_beta else " (fixed: beta not searched)",
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
            "objective": m.objective,
            "meta_iters": m.meta_iters,
            "inner_steps": m.inner_steps,
            "memory_steps": memory.steps(),
            "final_objective": out["history"][-1]["objective"] if out["history"] else None,
        }
        result = decoupling_result(out["alpha"], out["beta"], model.kinds, meta)
        write_json_atomic(result_path, result, sort_keys=False)
    write_json_atomic(ctx.output_dir / "decoupling.json", result, sort_keys=False)
    plot_cut_probabilities(result, ctx.output_dir / "cut_probabilities.png")
    for k, split in result["splits"].items():
        log.info("K=%s: block ends %s, heads %s", k, split["block_ends"], split["heads"])

    metrics: dict[str, float] = {
        "search_num_units": float(result["num_units"]),
        "search_max_cut_probability": float(max(result["cut_probability"])),
    }
    if result.get("final_objective") is not None:
        metrics["search_objective"] = float(result["final_objective"])
    k = m.eval_blocks
    if k > 0 and m.eval_mode == "continuous":
        metrics.update(evaluate_continuous(cfg, data, result, ctx))
    elif k > 0:
        # method=sedona on the found decoupling, with the search's greedy options
        sub = copy.deepcopy(cfg)
        with open_dict(sub):
            sub.method = SedonaConfig.for_evaluation(cfg.method, k, str(ctx.output_dir / "decoupling.json"))
        metrics.update(train_greedy(sub, ctx.child("eval")))
    return metrics


def evaluate_continuous(
    cfg: DictConfig, data: DataBundle, result: dict[str, Any], ctx: RunContext
) -> dict[str, float]:
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
    if list(result["candidates"]) != list(model.kinds) or found_beta != cfg.method.search_beta:
        raise ValueError(
            f"the search result has heads {result['candidates']} (beta searched: {found_beta}); "
            f"this config asks {list(model.kinds)} (search_beta={cfg.method.search_beta})"
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
    sub = ctx.child("eval")
    p, _ = cut_probabilities(alpha.double())
    record = {
        "heads": list(model.kinds),
        "alpha": result["alpha"],
        "beta": result.get("beta"),
        "cut_probability": p.tolist(),
        "path_weight": prefix_products(alpha.double()).tolist(),
    }
    write_json_atomic(sub.output_dir / "relaxation.json", record, sort_keys=False)
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
    "BatchStream",
    "PretrainState",
    "build_search_net",
    "clipped_cosine",
    "decoupling_result",
    "evaluate_continuous",
    "head_kinds",
    "initial_beta",
    "meta_optimizer",
    "pretrain",
    "run_search",
    "search",
]
