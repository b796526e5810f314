"""Method ``ecc``: dense net -> cost data -> bilinear fit -> energy-constrained training -> removal -> fine-tune.

``method.algorithm`` picks the compression step between the fit and the removal: ``ecc`` (ADMM, the paper's
method) or ``netadapt`` (the paper's baseline, :mod:`ecc.netadapt`, on the same fitted energy model and budget).
Each phase writes its artifact under the run folder and is skipped when the artifact exists, so a rerun of
the same folder resumes at the first unfinished phase; the training phases inside (``pretrain``, ``admm``,
``finetune``) also resume mid-phase from the Trainer's checkpoint (NetAdapt reruns whole when killed inside).

```
dense/model.pt  cost/data.npz cost/meta.json  cost/energy_model.pt cost/fit.json
admm/masked.pt admm/result.json  (or netadapt/result.pt netadapt/result.json)
slim/model.pt  finetune/model.pt  ecc_summary.json  (results.json by launch)
```

The plugins: :data:`METHOD` (``method=ecc``) and :data:`COST_DATA_METHOD` (``method=ecc_cost_data``, stages 1-2
alone), both typed by :class:`ECCConfig`; a finished ``-m method=ecc`` sweep gets the accuracy-cost plot
(:func:`ecc.plot.sweep_artifacts`).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from common.checkpoint import load_verified, save_atomic
from common.config import ConfigError
from common.data import DataBundle
from common.engine import RunContext, Trainer, evaluate
from common.factory import make_data, make_model
from common.io import write_json_atomic
from common.method import Method, MethodConfig, option
from common.metrics import count_macs, count_parameters
from common.seeding import forked_rng
from common.task import train_model
from ecc.admm import MODES, BudgetMet, ECCState, ECCStep, primal_param_groups, project_to_budget
from ecc.cost import BACKENDS, CostBackend, collect_cost_data, make_backend
from ecc.energy_model import FIT_METHODS, BilinearEnergyModel, split_holdout
from ecc.netadapt import netadapt, short_term_finetune
from ecc.plot import sweep_artifacts
from ecc.prune import (
    is_depthwise_separable,
    live_counts,
    set_input_shape,
    slim,
    slim_masked,
    width_chain,
    width_edges,
)

log = logging.getLogger(__name__)

# the values of ``method.algorithm``
ALGORITHMS = ("ecc", "netadapt")
# the authors' shipped AlexNet / Jetson TX2 energy model: a ``method.cost`` that is a model, not a backend
TX2_ALEXNET = "tx2_alexnet"
# the values of ``method.cost``: every backend of ecc.cost's registry, and the shipped model
COSTS = (*BACKENDS, TX2_ALEXNET)
# the networks ECC cannot prune: ResNeXt's grouped convolutions, the LSTM's recurrent layers (ecc.prune)
UNSUPPORTED = ("resnext29", "lstm")


# The ADMM hyperparameters a null ``method.<key>`` resolves to, per mode (see :func:`admm_hparams`).
DEFAULT_HP: dict[str, Any] = {
    "primal": "adam", "plr": 1.0e-3, "l2wd": 1.0e-4, "pslr": 3.0, "psgrad_mask": True, "psgrad_clip": 1.0,
    "rho_z": 10.0, "rho_y": 10.0, "distill": 0.5,
}  # fmt: skip
# admm_prox_train.py's argparse defaults (the AlexNet runs): SGD momentum 0.9, no --padam/--psgrad_mask/--psgrad_clip
PAPER_HP: dict[str, Any] = {
    "primal": "sgd", "plr": 1.0e-5, "l2wd": 0.0, "pslr": 0.01, "psgrad_mask": False, "psgrad_clip": 0.0,
    "rho_z": 1.0, "rho_y": 1.0, "distill": 0.5,
}  # fmt: skip
# the original README's MobileNet-v1 recipe (--padam --plr 1e-5 --l2wd 1e-4 --pslr 3.0 --psgrad_mask
# --psgrad_clip 1.0 --rho_z 10 --rho_y 10 --distill 0.5; its L2 is then silently off, see primal_param_groups)
PAPER_HP_MOBILENET: dict[str, Any] = {
    "primal": "adam", "plr": 1.0e-5, "l2wd": 1.0e-4, "pslr": 3.0, "psgrad_mask": True, "psgrad_clip": 1.0,
    "rho_z": 10.0, "rho_y": 10.0, "distill": 0.5,
}  # fmt: skip


def admm_hparams(cfg: DictConfig, model: torch.nn.Module) -> dict[str, Any]:
    """The ADMM hyperparameters of ``model``: each ``method.<key>`` as given, or the mode's default where it is null.

    ``mode=default``: :data:`DEFAULT_HP`. ``mode=paper``: the original's, :data:`PAPER_HP_MOBILENET` for
    MobileNet-style nets (:func:`ecc.prune.is_depthwise_separable`, the README recipe) and :data:`PAPER_HP`
    (argparse defaults) otherwise. ``psgrad_clip <= 0`` means no clipping.
    """
    m = cfg.method
    if m.mode == "paper":
        base = PAPER_HP_MOBILENET if is_depthwise_separable(model) else PAPER_HP
    else:
        base = DEFAULT_HP
    hp = {k: (m[k] if m[k] is not None else v) for k, v in base.items()}
    hp["psgrad_clip"] = float(hp["psgrad_clip"]) if hp["psgrad_clip"] and hp["psgrad_clip"] > 0 else None
    return hp


def make_cost_backend(m: DictConfig) -> CostBackend:
    """The backend of ``method.cost`` (``tx2_alexnet`` is measured again with ``latency_cpu``)."""
    name = "latency_cpu" if m.cost == TX2_ALEXNET else m.cost
    kwargs: dict[str, Any] = {"batch": m.cost_batch}
    if name in ("latency_cpu", "latency_cuda"):
        kwargs["repeats"] = m.cost_repeats
    if name == "latency_cuda":
        kwargs["passes"] = m.cost_passes
    if name in ("latency_cuda", "energy_nvml"):
        kwargs["graph"] = m.cost_graph
    return make_backend(name, **kwargs)


def build_net(cfg: DictConfig, data: DataBundle, device: torch.device) -> torch.nn.Module:
    """``cfg.network`` for ``data`` (:func:`common.factory.make_model`), told the data's input shape: a coupled net
    is traced at it (:func:`ecc.prune.set_input_shape`)."""
    model = make_model(cfg, data, device)
    if data.image_size is not None:
        set_input_shape(model, (data.in_channels, data.image_size, data.image_size))
    return model


def phase_dense(cfg: DictConfig, ctx: RunContext, data: DataBundle) -> torch.nn.Module:
    """The dense network: loaded from ``method.dense_checkpoint`` or trained (phase ``pretrain``)."""
    m = cfg.method
    model = build_net(cfg, data, ctx.device)
    path = ctx.output_dir / "dense" / "model.pt"
    if m.dense_checkpoint:
        state = torch.load(m.dense_checkpoint, map_location=ctx.device, weights_only=True)
        model.load_state_dict(state.get("model", state))
    elif path.exists():
        model.load_state_dict(load_verified(path)["model"])
    else:
        train_model(cfg, model, data, ctx, epochs=m.pretrain_epochs, phase="pretrain")
        save_atomic({"model": model.state_dict()}, path)
    return model


def phase_energy_model(
    cfg: DictConfig, ctx: RunContext, dense: torch.nn.Module, example: torch.Tensor
) -> tuple[BilinearEnergyModel, dict[str, Any]]:
    """Cost data (stage 1) and the bilinear fit (stage 2), or the shipped TX2 model."""
    m = cfg.method
    chain = width_chain(dense)
    if m.cost == TX2_ALEXNET:
        return BilinearEnergyModel.tx2_alexnet(chain), {"cost_model": TX2_ALEXNET}
    folder = ctx.output_dir / "cost"
    model_path, fit_path = folder / "energy_model.pt", folder / "fit.json"
    if model_path.exists() and fit_path.exists():
        return BilinearEnergyModel.load(model_path), json.loads(fit_path.read_text())
    data_path = folder / "data.npz"
    if data_path.exists():
        stored = np.load(data_path)
        chains, costs = stored["widths"], stored["costs"]
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    else:
        measured = copy.deepcopy(dense)
        chains, costs, meta = collect_cost_data(
            measured, example, make_cost_backend(m), m.samples, seed=m.cost_seed, show_progress=ctx.progress,
            rounds=m.cost_rounds,
        )  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "data.tmp.npz", widths=chains, costs=costs)
        (folder / "data.tmp.npz").replace(data_path)
        write_json_atomic(folder / "meta.json", meta)
    train, hold = split_holdout(len(costs), m.holdout, seed=m.fit_seed)
    energy_model = BilinearEnergyModel(chain, width_edges(dense)).fit(
        chains[train], costs[train], method=m.fit
    )
    fit = {
        "fit_method": m.fit,
        "train_mrae": energy_model.mrae(chains[train], costs[train]),
        "holdout_mrae": energy_model.mrae(chains[hold], costs[hold]) if len(hold) else float("nan"),
        "a": energy_model.a.tolist(),
        "b": float(energy_model.b),
        "dense_measured": float(meta["dense_cost"]) if "dense_cost" in meta else None,
    }
    energy_model.save(model_path)
    write_json_atomic(fit_path, fit)
    log.info("bilinear fit (%s): holdout MRAE %.4g", m.fit, fit["holdout_mrae"])
    return energy_model, fit


def energy_budget(
    m: DictConfig, energy_model: BilinearEnergyModel, chain: list[int], fit: dict[str, Any]
) -> tuple[float, float]:
    """The budget B and the dense reference cost that relative budgets and reported ratios divide by.

    The reference is the dense net's *measured* cost from the cost data (``method.budget_reference=measured``,
    the default) or the model's prediction of it (``model``, or when nothing was measured: ``tx2_alexnet``).
    A fitted model misses the dense corner most (random widths rarely sample it: the latency fits here
    over-predicted it by 14-28 %), and every relative figure divides by it, so the measured value keeps "half
    the dense latency" what it says. B is ``method.budget`` times the reference, or absolute with
    ``budget_absolute``.

    Raises:
        ConfigError: B is below the model's cost of the all-ones network (no width vector meets it).
    """
    measured = fit.get("dense_measured")
    dense_cost = (
        float(measured) if m.budget_reference == "measured" and measured else float(energy_model.dense_cost())
    )
    budget = float(m.budget) if m.budget_absolute else float(m.budget) * dense_cost
    ones_cost = float(energy_model.predict([chain[0], *([1] * (len(chain) - 2)), chain[-1]]))
    if ones_cost > budget:
        raise ConfigError(
            f"method.budget: {budget:.6g} is below the cost of the all-ones network {ones_cost:.6g}: infeasible"
        )
    return budget, dense_cost


def phase_admm(
    cfg: DictConfig,
    ctx: RunContext,
    data: DataBundle,
    dense: torch.nn.Module,
    energy_model: BilinearEnergyModel,
    fit: dict[str, Any],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Energy-constrained training (phase ``admm``): the masked full-size net and its summary."""
    m = cfg.method
    folder = ctx.output_dir / "admm"
    student = copy.deepcopy(dense)
    if (folder / "result.json").exists():
        student.load_state_dict(load_verified(folder / "masked.pt")["model"])
        return student, json.loads((folder / "result.json").read_text())
    chain = width_chain(dense)
    budget, dense_cost = energy_budget(m, energy_model, chain, fit)
    teacher = copy.deepcopy(dense).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    hp = admm_hparams(cfg, student)
    log.info("ADMM hyperparameters (%s mode): %s", m.mode, hp)
    groups = primal_param_groups(student, hp["l2wd"], m.mode)
    if hp["primal"] == "adam":
        opt = torch.optim.Adam(groups, lr=hp["plr"], betas=tuple(m.padam_beta))
    else:
        opt = torch.optim.SGD(groups, lr=hp["plr"], momentum=m.momentum)
    state = ECCState(torch.tensor(chain[1:-1], dtype=torch.float64), y_init=m.yinit, z_init=m.zinit)
    slb = [max(1.0, m.slb * u) if m.slb < 1 else m.slb for u in chain[1:-1]]
    step = ECCStep(
        student, teacher, opt, energy_model, budget, state, mode=m.mode, rho_z=hp["rho_z"], rho_y=hp["rho_y"],
        pslr=hp["pslr"], psgrad_mask=hp["psgrad_mask"], psgrad_clip=hp["psgrad_clip"], s_int=m.s_int, slb=slb,
        distill=hp["distill"], cost_scale=1.0 / dense_cost if m.mode == "default" else 1.0,
    )  # fmt: skip
    trainer = Trainer.from_config(
        cfg, student, opt, data, ctx, epochs=m.admm_epochs, phase="admm", step_fn=step,
        extra_state={"ecc": state},
    )  # fmt: skip
    try:
        trainer.fit()
    except BudgetMet as met:
        log.info("ADMM: %s", met)
    admm_met = bool(state.done)
    fallback_removed = 0
    if not admm_met:
        log.warning("ADMM ended after %d steps above the budget (E = %.6g > B = %.6g)", state.steps,
                    float(energy_model.predict([chain[0], *live_counts(student), chain[-1]])), budget)  # fmt: skip
        if m.mode == "default" and m.fallback:
            _, fallback_removed = project_to_budget(student, energy_model, budget)
            log.info("fallback: zeroed %d smallest-norm groups to meet the budget", fallback_removed)
    widths = live_counts(student)
    predicted = float(energy_model.predict([chain[0], *widths, chain[-1]]))
    result = {
        "budget": budget,
        "dense_cost_ref": dense_cost,
        "dense_cost_pred": float(energy_model.dense_cost()),
        "budget_met": predicted <= budget,
        "admm_budget_met": admm_met,
        "fallback_used": not admm_met and fallback_removed > 0,
        "fallback_groups": fallback_removed,
        "admm_steps": state.steps,
        "predicted_cost": predicted,
        "z": state.z,
        "s": state.s.tolist(),
        "widths": widths,
    }
    save_atomic({"model": student.state_dict()}, folder / "masked.pt")
    write_json_atomic(folder / "result.json", result)
    return student, result


def rebuild_slim(
    cfg: DictConfig, data: DataBundle, widths: list[int], device: torch.device
) -> torch.nn.Module:
    """A network of ``cfg.network`` slimmed to ``widths`` (load a slim state dict into it)."""
    return slim(build_net(cfg, data, device), [torch.arange(w) for w in widths])


def netadapt_steps(
    data: DataBundle,
    device: torch.device,
    batches: int,
    lr: float,
    momentum: float = 0.9,
    limit_eval_batches: int | None = None,
) -> tuple[Callable[[torch.nn.Module, int], None], Callable[[torch.nn.Module], float]]:
    """NetAdapt's ``short_term`` (SGD on the first ``batches`` train minibatches of epoch ``it``) and ``score``
    (accuracy on the ``val`` split, its first ``limit_eval_batches`` batches) for :func:`ecc.netadapt.netadapt`."""

    def short_term(net: torch.nn.Module, it: int) -> None:
        short_term_finetune(
            net, itertools.islice(data.train.epoch_iter(it), batches), lr=lr, momentum=momentum
        )

    def score(net: torch.nn.Module) -> float:
        return evaluate(
            net, data.val, task=data.task, prefix="val", limit_batches=limit_eval_batches, device=device
        )["val_acc"]

    return short_term, score


def phase_netadapt(
    cfg: DictConfig,
    ctx: RunContext,
    data: DataBundle,
    dense: torch.nn.Module,
    energy_model: BilinearEnergyModel,
    fit: dict[str, Any],
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """NetAdapt (:func:`ecc.netadapt.netadapt`) from the dense net down to the budget of the fitted model.

    The cost of a proposal is the energy model's prediction on its width chain (what ECC's budget uses);
    proposals are short-term fine-tuned on ``method.netadapt.batches`` train minibatches (SGD, ``lr`` or
    ``optimizer.lr``, ``momentum``) and scored by accuracy on the ``val`` split. Returns the slim adapted net
    and its summary; ``netadapt/result.pt`` (weights, widths, history) makes a rerun skip the phase. The global
    RNG is left as it was, so what follows does not depend on whether the phase ran or was loaded.
    """
    m, na = cfg.method, cfg.method.netadapt
    folder = ctx.output_dir / "netadapt"
    path = folder / "result.pt"
    with forked_rng(ctx.device):
        if path.exists():
            stored = load_verified(path)
            widths = [int(w) for w in stored["widths"]]
            net = rebuild_slim(cfg, data, widths, ctx.device)
            net.load_state_dict(stored["model"])
            return net, dict(stored["result"])
        chain = width_chain(dense)
        budget, dense_cost = energy_budget(m, energy_model, chain, fit)
        lr = float(na.lr) if na.lr is not None else float(cfg.optimizer.lr)

        def cost(widths: list[int]) -> float:
            return float(energy_model.predict([chain[0], *widths, chain[-1]]))

        short_term, score = netadapt_steps(
            data, ctx.device, int(na.batches), lr, float(na.momentum), cfg.trainer.limit_eval_batches
        )
        res = netadapt(
            dense, cost, budget, iterations=int(na.iterations), short_term=short_term, score=score,
            seed=int(cfg.seed),
        )  # fmt: skip
        result = {
            "budget": budget,
            "dense_cost_ref": dense_cost,
            "dense_cost_pred": float(energy_model.dense_cost()),
            "budget_met": res.cost <= budget,
            "predicted_cost": res.cost,
            "netadapt_iterations": len(res.history),
            "widths": res.widths,
            "history": res.history,
        }
        log.info("NetAdapt: %d iterations, widths %s, E = %.6g <= B = %.6g",
                 len(res.history), res.widths, res.cost, budget)  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "result.json", result)
        save_atomic({"model": res.model.state_dict(), "widths": res.widths, "result": result}, path)
        return res.model, result


def phase_slim(
    cfg: DictConfig, ctx: RunContext, data: DataBundle, make: Callable[[], tuple[torch.nn.Module, list[int]]]
) -> tuple[torch.nn.Module, list[int]]:
    """The slim net before fine-tuning, ``slim/model.pt``: ``make()`` gives (net, widths) when it is missing.

    Building modules draws from the global RNG, as does rebuilding them from the file; the RNG is restored so
    that fine-tuning starts from the same state either way.
    """
    slim_path = ctx.output_dir / "slim" / "model.pt"
    with forked_rng(ctx.device):
        if slim_path.exists():
            stored = load_verified(slim_path)
            widths = [int(w) for w in stored["widths"]]
            slim_net = rebuild_slim(cfg, data, widths, ctx.device)
            slim_net.load_state_dict(stored["model"])
        else:
            slim_net, widths = make()
            save_atomic({"model": slim_net.state_dict(), "widths": widths}, slim_path)
    return slim_net, widths


def run(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Runs the ECC pipeline; returns dense and final accuracy, cost ratios, widths (as ``width_<u>``).

    ``method.algorithm=netadapt`` swaps the ADMM phase for NetAdapt on the same energy model and budget; the
    rest (removal, fine-tuning, evaluation, measurement) is shared. ``method.mode`` then only decides the long
    fine-tune, as for ECC: ``paper`` skips it (the original ``net_adapt.py``'s ``--lt_epochs 0`` default).
    """
    m = cfg.method
    algorithm = m.algorithm
    # built first: a backend this machine cannot run (no CUDA, no NVML) stops here, before any training
    backend = make_cost_backend(m)
    data = make_data(cfg, ctx.device)
    if algorithm == "netadapt" and (data.val is None or data.task != "classification"):
        raise ConfigError("method.algorithm=netadapt scores proposals by accuracy on the val split: it needs a "
                          "classification data set with a validation split")  # fmt: skip
    dense = phase_dense(cfg, ctx, data)
    # the Trainer's evaluation limit (debug=fast) bounds these evaluations too; None: whole splits
    limit = cfg.trainer.limit_eval_batches
    dense_eval = evaluate(dense, data.test, task=data.task, limit_batches=limit, device=ctx.device)
    x, _ = next(iter(data.test.epoch_iter(0)))
    example = x[:1]
    energy_model, fit = phase_energy_model(cfg, ctx, dense, example)
    if algorithm == "ecc":
        masked, summary = phase_admm(cfg, ctx, data, dense, energy_model, fit)
        extra = {
            "fallback_used": float(summary.get("fallback_used", False)),
            "admm_steps": float(summary["admm_steps"]),
        }
        slim_net, widths = phase_slim(cfg, ctx, data, lambda: slim_masked(masked))
    else:
        adapted, summary = phase_netadapt(cfg, ctx, data, dense, energy_model, fit)
        masked = adapted
        extra = {"netadapt_iterations": float(summary["netadapt_iterations"])}
        slim_net, widths = phase_slim(
            cfg, ctx, data, lambda: (copy.deepcopy(adapted), list(summary["widths"]))
        )
    # ECC: the masked full-size net; NetAdapt: the adapted slim net; both before the long fine-tune
    masked_eval = evaluate(masked, data.test, task=data.task, limit_batches=limit, device=ctx.device)

    ft_path = ctx.output_dir / "finetune" / "model.pt"
    if m.finetune_epochs > 0 and m.mode == "default":
        if ft_path.exists():
            slim_net.load_state_dict(load_verified(ft_path)["model"])
        else:
            train_model(cfg, slim_net, data, ctx, epochs=m.finetune_epochs, phase="finetune")
            save_atomic({"model": slim_net.state_dict(), "widths": widths}, ft_path)
    final_eval = evaluate(slim_net, data.test, task=data.task, limit_batches=limit, device=ctx.device)
    # the sweep objective (conf/config.yaml: objective=val_acc) and best-config picking need a val metric
    val_eval = (
        {}
        if data.val is None
        else evaluate(
            slim_net, data.val, task=data.task, prefix="val", limit_batches=limit, device=ctx.device
        )
    )

    ex = example.to(ctx.device)
    dense_measured = backend.measure(copy.deepcopy(dense), ex)
    slim_measured = backend.measure(copy.deepcopy(slim_net), ex)
    chain = width_chain(dense)
    # relative figures divide by the budget's reference (older summaries hold only the model's prediction)
    dense_ref = float(summary.get("dense_cost_ref", summary["dense_cost_pred"]))
    results: dict[str, float] = {
        "dense_test_acc": dense_eval.get("test_acc", float("nan")),
        "masked_test_acc": masked_eval.get("test_acc", float("nan")),
        "test_acc": final_eval.get("test_acc", float("nan")),
        "test_loss": final_eval.get("test_loss", float("nan")),
        **{k: v for k, v in val_eval.items() if k in ("val_acc", "val_loss")},
        "budget_ratio": summary["budget"] / dense_ref,
        "budget_met": float(summary["budget_met"]),
        **extra,
        "predicted_cost_ratio": float(energy_model.predict([chain[0], *widths, chain[-1]])) / dense_ref,
        "measured_cost_ratio": slim_measured / dense_measured,
        "params_ratio": count_parameters(slim_net) / count_parameters(dense),
        "macs_ratio": count_macs(slim_net, ex) / count_macs(dense, ex),
        "holdout_mrae": float(fit.get("holdout_mrae", float("nan"))),
    }
    results.update({f"width_{u + 1}": float(w) for u, w in enumerate(widths)})
    write_json_atomic(
        ctx.output_dir / "ecc_summary.json",
        {**results, "algorithm": algorithm, "widths": widths, "dense_widths": chain[1:-1]},
    )
    return results


def run_cost_data(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """Stages 1 and 2 alone (``method=ecc_cost_data``): measure random widths of the untrained net, fit the model.

    Cost does not depend on the weights, so no training happens; the data set and the fit land in
    ``<output_dir>/cost/`` exactly as in the full pipeline.
    """
    data = make_data(cfg, ctx.device)
    model = build_net(cfg, data, ctx.device)
    x, _ = next(iter(data.test.epoch_iter(0)))
    energy_model, fit = phase_energy_model(cfg, ctx, model, x[:1])
    results = {k: float(v) for k, v in fit.items() if isinstance(v, int | float)}
    results["dense_cost"] = float(energy_model.dense_cost())
    return results


@dataclass
class NetAdaptConfig:
    """``method.netadapt``: NetAdapt's schedule and short-term fine-tune (``method.algorithm=netadapt``).

    Attributes:
        iterations: The constant step is (E(dense) - B) / iterations of the model's predicted cost.
        batches: Train minibatches of each proposal's short-term fine-tune (SGD, cross-entropy).
        lr: The short-term fine-tune's learning rate; None: ``optimizer.lr``.
        momentum: The short-term fine-tune's SGD momentum.
    """

    iterations: int = option(ge=1)
    batches: int = option(ge=1)
    lr: float | None = option(gt=0)
    momentum: float = option(ge=0)


@dataclass
class ECCConfig(MethodConfig):
    """``method=ecc`` and ``method=ecc_cost_data`` (which uses the cost and fit keys only).

    The values and what each key does are in ``conf/method/ecc.yaml``; here their types and allowed values. A
    null ADMM hyperparameter (``primal`` ... ``distill``) takes the mode's default (:func:`admm_hparams`).
    """

    algorithm: str = option(choices=ALGORITHMS)
    mode: str = option(choices=MODES)
    # a fraction of the dense cost in (0, 1], or absolute (> 0, the cost's units) with budget_absolute (check)
    budget: float = option(gt=0)
    budget_absolute: bool = option()
    budget_reference: str = option(choices=("measured", "model"))
    cost: str = option(choices=COSTS)
    samples: int = option(ge=2)
    cost_seed: int = option()
    cost_batch: int = option(ge=1)
    cost_repeats: int = option(ge=1)
    cost_passes: int = option(ge=1)
    cost_graph: bool = option()
    cost_rounds: int = option(ge=1)
    fit: str = option(choices=FIT_METHODS)
    holdout: float = option(gt=0, lt=1)
    fit_seed: int = option()
    dense_checkpoint: str | None = option()
    pretrain_epochs: int = option(ge=0)
    admm_epochs: int = option(ge=0)
    fallback: bool = option()
    primal: str | None = option(choices=("adam", "sgd"))
    plr: float | None = option(gt=0)
    padam_beta: list[float] = option(ge=0, lt=1)
    momentum: float = option(ge=0)
    l2wd: float | None = option(ge=0)
    pslr: float | None = option(gt=0)
    psgrad_mask: bool | None = option()
    psgrad_clip: float | None = option()  # <= 0: no clipping
    s_int: int = option(ge=1)
    slb: float = option(gt=0)
    rho_z: float | None = option(gt=0)
    rho_y: float | None = option(gt=0)
    zinit: float = option(ge=0)
    yinit: float = option(ge=0)
    distill: float | None = option(ge=0, le=1)
    finetune_epochs: int = option(ge=0)
    netadapt: NetAdaptConfig = field(default_factory=NetAdaptConfig)

    def check(self, cfg: DictConfig) -> None:
        """A relative budget is a fraction of the dense cost; Adam has two betas."""
        if not self.budget_absolute and self.budget > 1:
            raise ConfigError(
                f"method.budget must be in (0, 1] (a fraction of the dense cost) unless method.budget_absolute=true; "
                f"got {self.budget}"
            )
        if len(self.padam_beta) != 2:
            raise ConfigError(f"method.padam_beta must be two numbers [beta1, beta2]; got {self.padam_beta}")


def supports(network: str) -> bool:
    """Every network ECC finds width slots in (:func:`ecc.prune.width_slots`): chains and coupled nets."""
    return network not in UNSUPPORTED


_SUPPORTS_DOC = (
    "conv/linear chains, residual and concatenating nets; no grouped convolutions or recurrent layers"
)

METHOD = Method(
    name="ecc",
    schema=ECCConfig,
    run=run,
    supports=supports,
    supports_doc=_SUPPORTS_DOC,
    sweep_artifacts=sweep_artifacts,
)
COST_DATA_METHOD = Method(
    name="ecc_cost_data", schema=ECCConfig, run=run_cost_data, supports=supports, supports_doc=_SUPPORTS_DOC
)
