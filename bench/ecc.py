"""ECC benchmark: the bilinear cost model on real CPU latencies, and ECC against its baselines on digits / shapes.

    .venv/bin/python -m bench.ecc --part fit --samples 1000 --repeats 50
    .venv/bin/python -m bench.ecc --part compress --seeds 3 --epochs 30
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.ecc --part latency --seeds 2 --epochs 10  # ~16 minutes
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.ecc --part latency --dataset shapes --seeds 3 --epochs 3 \
        --pretrain-epochs 10 --lr 0.05 --samples 200 --rounds 5 --train-size 3000 --val-size 500 \
        --batch-size 32  # 50 minutes; see ecc/README "On shapes"
    .venv/bin/python -m bench.ecc                       # all three parts (fit and compress: ~5 minutes)

(``python bench/ecc.py`` would put ``bench/`` first on the path, where this file shadows the ``ecc`` package.)

Part ``fit``: ``--samples`` random width configurations (``ecc.cost.sample_widths``, seed 1, as ``collect_cost_data``)
of ``alexnet_small`` (64-192-384-256-256 / 1024-1024) and ``mobilenet_v1`` (CIFAR strides, width 1), 3x32x32
input, each measured with ``latency_cpu`` (1 thread, batch 1, median of ``--repeats`` after 3 warm-up passes;
the all-ones and dense nets first, as warm-up). Holdout MRAE on the original's 80/20 split (seed 117) of the
bilinear model (``lstsq``) against two MACs-only models fitted on the same training rows: latency = k MACs (one
scale factor) and latency = k MACs + c. The holdout rows are then measured a second time ("re-measured": the MRAE
of the second measurement against the first, i.e. the timing noise of one measurement, counted twice).

Part ``compress``: digits, ``alexnet_small`` 16-32-32-32-32 / 64-64 (as ``tests/ecc``), ``method.cost=macs``,
budgets 0.3 / 0.5 / 0.7 of the dense MACs. ``method=ecc`` (pretrain E epochs, ADMM until under budget, fine-tune
E epochs) against uniform width scaling to the largest common factor whose MACs fit the budget, either cut from
the same dense net (keeping each slot's channels with the largest group norm) and fine-tuned E epochs, or trained
from scratch for 2E epochs; torch-pruning's global L1 pruning and NetAdapt (``ecc.netadapt``: 10 constant MACs
steps, per slot the fewest smallest-L2 filters removed, 20-minibatch short-term fine-tune, best ``val`` accuracy
kept), both from the same dense net and fine-tuned E epochs. SGD lr 0.02 (cosine), seeds 0..``--seeds``-1. All through ``launch.run.run`` with composed configs, in a temporary folder.

Part ``latency``: digits resized to CIFAR resolution (bilinearly, by alexnet_small's ``min_input_size`` 32: 1x32x32),
``alexnet_small`` 32-64-128-96-96 / 256-256 (``MID_NET``, dropout 0), budgets ``--budgets`` (0.3 / 0.5 / 0.7) of
the measured dense latency (``method.budget_reference=measured``). ``method=ecc method.cost=latency_cpu`` (``--samples`` random widths, each
timed with batch ``--batch``, median of ``--repeats``, 1 thread); the dense net and the cost data / bilinear fit
of a seed's first budget are reused by its other budgets (``method.dense_checkpoint``, ``<out>/cost`` copied).
Baselines from the same dense net, at the same budget on the *same fitted latency model*: NetAdapt as
``method=ecc method.algorithm=netadapt`` (ECC's cost folder copied in), uniform width scaling to the largest
factor whose predicted latency fits and torch-pruning global L1 stepped until it fits (``+method.bench_cost=model
+method.bench_energy_model=<ECC's cost/energy_model.pt>``, relative to the measured dense latency in the fit.json
beside it); all fine-tuned E epochs. Every slim net is then timed against the dense one (``latency_ratios``: the same backend settings,
``--rounds`` interleaved dense/slim pairs, median ratio): the measured ratio next to the predicted one.
``--dataset shapes``: the embedded procedural benchmark (``common.data.shapes``, 3x32x32, 10 classes), split sizes
``--train-size`` / ``--val-size`` / ``--test-size`` (default 20000 / 2000 / 2000) and ``--batch-size`` (64);
``--lr`` sets every job's SGD lr (NetAdapt's short-term fine-tune included) and ``--pretrain-epochs`` P trains
each seed's dense net alone first (``method=train``, cosine over P) for all four methods to start from. Last, per budget, ECC against each baseline
paired by seed (``significance``: ``scipy.stats.ttest_rel``, the mean difference and its 95 % t interval).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from common.config import CONF_DIR, ConfigError
from common.engine import RunContext, evaluate
from common.factory import make_data
from common.logging import format_table
from common.method import Method, option
from common.metrics import count_macs
from common.models import build_model
from common.task import train_model
from ecc.cost import make_backend, sample_widths
from ecc.energy_model import BilinearEnergyModel, mrae, split_holdout
from ecc.netadapt import netadapt
from ecc.prune import group_scores, last_layer, slim, slim_to_widths, width_chain, width_slots
from ecc.task import ECCConfig, netadapt_steps, phase_dense

FIT_NETS = {
    "alexnet_small": dict(widths=[64, 192, 384, 256, 256], hidden=[1024, 1024], dropout=0.5),
    "mobilenet_v1": dict(width_mult=1.0),
}
TINY_NET = dict(widths=[16, 32, 32, 32, 32], hidden=[64, 64])  # the compress part's alexnet_small
MID_NET = dict(widths=[32, 64, 128, 96, 96], hidden=[256, 256])  # the latency part's: 22.6 MMACs at 1x32x32


def net_overrides(net: dict[str, list[int]]) -> tuple[str, ...]:
    """The config overrides of an ``alexnet_small`` with these ``widths`` / ``hidden``, dropout 0."""
    return (
        "network=alexnet_small",
        f"network.widths=[{','.join(map(str, net['widths']))}]",
        f"network.hidden=[{','.join(map(str, net['hidden']))}]",
        "network.dropout=0.0",
    )


TINY = (
    *net_overrides(TINY_NET),
    "optimizer.lr=0.02",  # 0.05 (tests/ecc) left the seed-0 dense net at chance (0.1028) in 15 epochs
    "trainer.progress=false",
)
ECC = ("method=ecc", "method.cost=macs", "method.samples=40", "method.admm_epochs=30")
BUDGETS = (0.3, 0.5, 0.7)
MID = (
    *net_overrides(MID_NET),
    "dataset=digits",
    "optimizer.lr=0.02",
    "trainer.progress=false",
)
# the latency part's data sets and their input channels (digits is resized to 1x32x32, shapes rendered at 3x32x32)
LATENCY_DATASETS = {"digits": 1, "shapes": 3}


def latency_overrides(
    dataset: str = "digits",
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    batch_size: int | None = None,
) -> tuple[str, ...]:
    """The latency part's config overrides (:data:`MID`) on ``dataset``, with the split sizes and training
    minibatch size given.

    Only ``shapes`` takes them (digits has a fixed 1257 / 180 / 360 split and the batch of 32 of the digits
    figures), so sizes on digits are refused.
    """
    if dataset not in LATENCY_DATASETS:
        raise ValueError(f"latency part: dataset must be one of {sorted(LATENCY_DATASETS)}, got {dataset!r}")
    sizes = {"train_size": train_size, "val_size": val_size, "test_size": test_size, "batch_size": batch_size}
    given = tuple(f"dataset.{k}={v}" for k, v in sizes.items() if v is not None)
    if dataset == "digits":
        if given:
            raise ValueError(f"digits has a fixed split; split sizes are for shapes only, got {given}")
        return MID
    return tuple(f"dataset={dataset}" if o == "dataset=digits" else o for o in MID) + given


# ---------------------------------------------------------------------------------------------- part 1: fit
def measure_widths(
    model: torch.nn.Module, x: torch.Tensor, widths: np.ndarray, repeats: int
) -> tuple[np.ndarray, np.ndarray]:
    """Latency (``latency_cpu``) and MACs of ``model`` slimmed to every row of ``widths``."""
    backend = make_backend("latency_cpu", repeats=repeats, warmup=3, threads=1)
    lat, macs = np.empty(len(widths)), np.empty(len(widths))
    for i, w in enumerate(widths):
        net = slim_to_widths(model, w).eval()
        lat[i] = backend.measure(net, x)
        macs[i] = count_macs(net, x)
    return lat, macs


def fit_part(samples: int, repeats: int) -> None:
    rows = []
    for name, kwargs in FIT_NETS.items():
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=3, image_size=32, **kwargs).eval()
        x = torch.randn(1, 3, 32, 32)
        chain = width_chain(model)
        ub = chain[1:-1]
        t0 = time.perf_counter()
        (ones_lat, dense_lat), (ones_macs, dense_macs) = measure_widths(
            model, x, np.array([[1] * len(ub), ub]), repeats
        )
        widths = sample_widths(ub, samples, seed=1)
        lat, macs = measure_widths(model, x, widths, repeats)
        t_measure = time.perf_counter() - t0
        chains = np.concatenate(
            [np.full((samples, 1), chain[0]), widths, np.full((samples, 1), chain[-1])], 1
        )
        train, hold = split_holdout(samples, 0.2, seed=117)

        bilinear = BilinearEnergyModel(chain).fit(chains[train], lat[train])
        k = float(macs[train] @ lat[train] / (macs[train] @ macs[train]))
        design = np.stack([macs, np.ones_like(macs)], 1)
        (ka, ca), *_ = np.linalg.lstsq(design[train], lat[train], rcond=None)
        again, _ = measure_widths(model, x, widths[hold], repeats)
        rows.append(
            {
                "network": name,
                "configs": samples,
                "measure s": t_measure,
                "dense ms": dense_lat * 1e3,
                "all-ones ms": ones_lat * 1e3,
                "bilinear": bilinear.mrae(chains[hold], lat[hold]),
                "bilinear train": bilinear.mrae(chains[train], lat[train]),
                "k*MACs": mrae(k * macs[hold], lat[hold]),
                "k*MACs+c": mrae(ka * macs[hold] + ca, lat[hold]),
                "re-measured": mrae(again, lat[hold]),
                "pred dense ms": bilinear.dense_cost() * 1e3,
                "k*MACs dense ms": k * dense_macs * 1e3,
            }
        )
        print(
            f"{name}: chain {chain}, dense {dense_macs / 1e6:.2f} MMACs, all-ones {ones_macs / 1e6:.4f} MMACs;"
            f" bilinear b = {float(bilinear.b) * 1e3:.3f} ms, MACs-affine c = {ca * 1e3:.3f} ms",
            flush=True,
        )
    print(
        f"\nHoldout MRAE (80/20 split, seed 117) of CPU latency models; latency_cpu 1 thread, batch 1, "
        f"median of {repeats}; 3x32x32 input"
    )
    print(format_table(rows, floatfmt=".4g"))


# ----------------------------------------------------------------------------------------- part 2: compress
def compose_config(*overrides: str, output_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(
                config_name="config",
                overrides=["logger=none", f"paths.output_dir={output_dir}", *overrides],
            )
    finally:
        GlobalHydra.instance().clear()


CostFn = Callable[[Sequence[int]], float]


def macs_cost(model: torch.nn.Module, x: torch.Tensor) -> CostFn:
    """The MACs of ``model`` slimmed to the given slot widths (on input ``x``)."""
    return lambda widths: float(count_macs(slim_to_widths(model, list(widths)), x))


def bench_cost(cfg: DictConfig, model: torch.nn.Module, x: torch.Tensor) -> tuple[CostFn, float]:
    """The cost a baseline job targets and the dense cost its budget is relative to.

    ``method.bench_cost``: ``macs`` (the default; the dense MACs) or ``model``, the bilinear model saved at
    ``method.bench_energy_model`` (e.g. ECC's fitted latency model) at the width chain, relative to the dense
    net's measured cost recorded beside it in ``fit.json`` (what ECC's budget uses,
    ``method.budget_reference=measured``), or to the model's own dense prediction when none was recorded.
    """
    if cfg.method.bench_cost == "macs":
        cost = macs_cost(model, x)
        return cost, cost(width_chain(model)[1:-1])
    path = Path(cfg.method.bench_energy_model)
    energy_model = BilinearEnergyModel.load(path)
    chain = width_chain(model)
    fit = json.loads((path.parent / "fit.json").read_text()) if (path.parent / "fit.json").exists() else {}
    dense_ref = fit.get("dense_measured") or float(energy_model.dense_cost())
    return lambda widths: float(energy_model.predict([chain[0], *widths, chain[-1]])), float(dense_ref)


def uniform_widths(
    model: torch.nn.Module,
    x: torch.Tensor,
    budget: float,
    cost: CostFn | None = None,
    dense: float | None = None,
) -> list[int]:
    """Every width times the largest common factor f whose cost (default MACs) is <= ``budget`` x ``dense``
    (default: the cost of the dense widths)."""
    cost = cost or macs_cost(model, x)
    ub = width_chain(model)[1:-1]
    dense = cost(ub) if dense is None else dense

    def at(f: float) -> list[int]:
        return [max(1, round(f * u)) for u in ub]

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(at(mid)) <= budget * dense else (lo, mid)
    return at(lo)


def finetuned_baseline(
    cfg: DictConfig, ctx: RunContext, cut: Callable[..., torch.nn.Module]
) -> dict[str, float]:
    """A baseline job: the dense net (``method.dense_checkpoint``) cut to the budget by
    ``cut(dense, x, budget, cost, dense_ref)`` (on the ``method.bench_cost`` cost), then fine-tuned
    ``finetune_epochs``; test accuracy, MACs and predicted cost ratios, widths."""
    m = cfg.method
    data = make_data(cfg, ctx.device)
    dense = phase_dense(cfg, ctx, data)
    x, _ = next(iter(data.test.epoch_iter(0)))
    cost, dense_ref = bench_cost(cfg, dense, x[:1])
    net = cut(dense, x[:1], float(m.budget), cost, dense_ref)
    widths = width_chain(net)[1:-1]
    train_model(cfg, net, data, ctx, epochs=m.finetune_epochs, phase="finetune")
    out = {"test_acc": evaluate(net, data.test, task=data.task, device=ctx.device)["test_acc"]}
    out["macs_ratio"] = count_macs(net, x[:1]) / count_macs(dense, x[:1])
    out["predicted_cost_ratio"] = cost(widths) / dense_ref
    out.update({f"width_{u + 1}": float(w) for u, w in enumerate(widths)})
    return out


def uniform_cut(
    dense: torch.nn.Module, x: torch.Tensor, budget: float, cost: CostFn, dense_ref: float
) -> torch.nn.Module:
    """Uniform width scaling to the budget, each slot keeping its channels of largest group norm."""
    widths = uniform_widths(dense, x, budget, cost, dense_ref)
    keep = [
        group_scores(s).argsort(descending=True)[:w].sort().values for s, w in zip(width_slots(dense), widths)
    ]
    return slim(dense, keep)


def run_uniform_finetune(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """The job of :data:`UNIFORM_FT`: the dense net (``method.dense_checkpoint``) cut uniformly to the budget,
    fine-tuned."""
    return finetuned_baseline(cfg, ctx, uniform_cut)


def l1_prune(
    model: torch.nn.Module,
    x: torch.Tensor,
    budget: float,
    steps: int = 200,
    cost: CostFn | None = None,
    dense: float | None = None,
) -> torch.nn.Module:
    """torch-pruning's global L1-magnitude channel pruning, stepped until the cost (default MACs, else
    ``cost`` of the slot widths) is <= ``budget`` x ``dense`` (default: the dense net's cost).

    ``MagnitudePruner(importance=MagnitudeImportance(p=1), global_pruning=True)`` with ``steps`` iterative steps
    towards 95 % of the channels removed (at most 98 % per layer); the classifier's outputs are kept.
    """
    import torch_pruning as tp

    net = copy.deepcopy(model).eval()
    cost = cost or (lambda widths: float(count_macs(net, x)))  # MACs of the pruned net itself
    dense = cost(width_chain(net)[1:-1]) if dense is None else dense
    pruner = tp.pruner.MagnitudePruner(
        net, x, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=True, pruning_ratio=0.95,
        max_pruning_ratio=0.98, iterative_steps=steps, ignored_layers=[last_layer(net)],
    )  # fmt: skip
    for _ in range(steps):
        if cost(width_chain(net)[1:-1]) <= budget * dense:
            break
        pruner.step()
    return net


def run_l1_finetune(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """The job of :data:`L1_FT`: the dense net (``method.dense_checkpoint``) L1-pruned to the budget, fine-tuned."""
    return finetuned_baseline(
        cfg,
        ctx,
        lambda dense, x, budget, cost, dense_ref: l1_prune(dense, x, budget, cost=cost, dense=dense_ref),
    )


NETADAPT_ITERATIONS = 10  # constant step: (dense - budget) / 10 of the MACs per iteration
NETADAPT_BATCHES = 20  # short-term fine-tune: 20 train minibatches (about half an epoch of digits)


def run_netadapt_finetune(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """The job of :data:`NETADAPT_FT`: NetAdapt (``ecc.netadapt``) from the dense net (``method.dense_checkpoint``)
    to the budget's cost (``method.bench_cost``: MACs or a saved bilinear model), proposals scored on the ``val``
    split, then fine-tuned ``finetune_epochs``."""
    m = cfg.method
    data = make_data(cfg, ctx.device)
    dense = phase_dense(cfg, ctx, data)
    x, _ = next(iter(data.test.epoch_iter(0)))
    x1 = x[:1]
    dense_macs = count_macs(dense, x1)
    cost, dense_cost = bench_cost(cfg, dense, x1)

    short_term, score = netadapt_steps(data, ctx.device, NETADAPT_BATCHES, float(cfg.optimizer.lr))
    res = netadapt(
        dense, cost, float(m.budget) * dense_cost, iterations=NETADAPT_ITERATIONS, short_term=short_term,
        score=score, seed=int(cfg.seed),
    )  # fmt: skip
    net = res.model
    train_model(cfg, net, data, ctx, epochs=m.finetune_epochs, phase="finetune")
    out = {"test_acc": evaluate(net, data.test, task=data.task, device=ctx.device)["test_acc"]}
    out["macs_ratio"] = count_macs(net, x1) / dense_macs
    out["predicted_cost_ratio"] = res.cost / dense_cost
    out["netadapt_iterations"] = float(len(res.history))
    out.update({f"width_{u + 1}": float(w) for u, w in enumerate(res.widths)})
    return out


@dataclass
class BaselineConfig(ECCConfig):
    """``method=ecc``'s options plus the cost a baseline job targets (``+method.bench_cost=...``).

    Attributes:
        bench_cost: ``macs`` (the dense net's MACs) or ``model`` (the bilinear model at ``bench_energy_model``).
        bench_energy_model: A saved :class:`BilinearEnergyModel` (e.g. ECC's ``cost/energy_model.pt``).
    """

    bench_cost: str = option("macs", choices=("macs", "model"))
    bench_energy_model: str | None = option(None)

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        if self.bench_cost == "model" and not self.bench_energy_model:
            raise ConfigError(
                "method.bench_cost=model needs +method.bench_energy_model=<path of energy_model.pt>"
            )


# the baseline jobs, run through launch with method=ecc and method.plugin=bench.ecc:<name>
UNIFORM_FT = Method(name="ecc_bench_uniform", schema=BaselineConfig, run=run_uniform_finetune)
L1_FT = Method(name="ecc_bench_l1", schema=BaselineConfig, run=run_l1_finetune)
NETADAPT_FT = Method(name="ecc_bench_netadapt", schema=BaselineConfig, run=run_netadapt_finetune)


def latency_ratios(
    widths: Sequence[Sequence[int]],
    repeats: int,
    net: dict[str, list[int]] = TINY_NET,
    batch: int = 1,
    rounds: int = 3,
    in_channels: int = 1,
) -> tuple[list[float], float]:
    """CPU latency of ``alexnet_small`` (``net``, ``in_channels`` x32x32 input) at each of ``widths`` over the
    dense one.

    ``latency_cpu`` (1 thread, ``batch``, median of ``repeats`` after 3 warm-up passes), interleaved: each of
    ``rounds`` rounds times, per slim net, the dense net and then the slim one; a slim net's ratio is the
    median over the rounds of slim / the dense timing just before it. Returns the ratios and the median dense
    latency (s).
    """
    torch.manual_seed(0)
    dense = build_model("alexnet_small", num_classes=10, in_channels=in_channels, image_size=32, **net).eval()
    x = torch.randn(1, in_channels, 32, 32)
    backend = make_backend("latency_cpu", batch=batch, repeats=repeats, warmup=3, threads=1)
    slims = [copy.deepcopy(slim_to_widths(dense, list(w))).eval() for w in widths]
    ratios: list[list[float]] = [[] for _ in slims]
    dense_s = []
    for _ in range(rounds):
        for i, s in enumerate(slims):
            dense_s.append(backend.measure(dense, x))
            ratios[i].append(backend.measure(s, x) / dense_s[-1])
    return [statistics.median(r) for r in ratios], statistics.median(dense_s)


def run(cfg: DictConfig) -> dict[str, float]:
    """``launch.run.run`` without its printed results table."""
    from launch.run import run as launch_run

    with contextlib.redirect_stdout(io.StringIO()):
        return launch_run(cfg)


def compress_part(seeds: int, epochs: int, repeats: int) -> None:
    rows: list[dict[str, Any]] = []
    dense_ub = [16, 32, 32, 32, 32, 64, 64]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(seeds):
            common = (*TINY, f"seed={seed}", f"trainer.epochs={epochs}")
            dense_ckpt = None
            for budget in BUDGETS:
                out = root / f"ecc_s{seed}_b{budget}"
                extra = (f"method.dense_checkpoint={dense_ckpt}",) if dense_ckpt else ()
                r = run(compose_config(*ECC, *common, f"method.budget={budget}", *extra, output_dir=out))
                dense_ckpt = dense_ckpt or out / "dense" / "model.pt"
                w = [int(r[f"width_{u + 1}"]) for u in range(len(dense_ub))]
                rows.append(
                    {
                        "budget": budget, "seed": seed, "method": "ecc", "dense acc": r["dense_test_acc"],
                        "test acc": r["test_acc"], "pred ratio": r["predicted_cost_ratio"],
                        "MACs ratio": r["macs_ratio"], "CPU lat ratio": latency_ratios([w], repeats)[0][0],
                        "widths": "-".join(map(str, w)),
                    }
                )  # fmt: skip
                # the baselines: cut from the same dense net to the budget's MACs, then fine-tuned E epochs
                baselines = {}
                for method, plugin, tag in (
                    ("uniform ft", "UNIFORM_FT", "uft"),
                    ("L1 global ft", "L1_FT", "l1"),
                    ("NetAdapt ft", "NETADAPT_FT", "na"),
                ):
                    r = run(
                        compose_config(
                            "method=ecc", *common, f"method.budget={budget}", f"method.dense_checkpoint={dense_ckpt}",
                            f"method.plugin=bench.ecc:{plugin}", output_dir=root / f"{tag}_s{seed}_b{budget}",
                        )
                    )  # fmt: skip
                    widths = [int(r[f"width_{u + 1}"]) for u in range(len(dense_ub))]
                    baselines[method] = (r, widths, latency_ratios([widths], repeats)[0][0])
                    rows.append(
                        {
                            "budget": budget, "seed": seed, "method": method, "test acc": r["test_acc"],
                            "MACs ratio": r["macs_ratio"], "CPU lat ratio": baselines[method][2],
                            "widths": "-".join(map(str, widths)),
                        }
                    )  # fmt: skip
                # uniform scaling trained from scratch at the uniform widths, 2E epochs
                r, w, lat = baselines["uniform ft"]
                uniform_macs = r["macs_ratio"]
                arch = (f"network.widths=[{','.join(map(str, w[:5]))}]", f"network.hidden=[{w[5]},{w[6]}]")
                r = run(
                    compose_config(
                        "method=train", *common, *arch, f"trainer.epochs={2 * epochs}",
                        output_dir=root / f"uscratch_s{seed}_b{budget}",
                    )
                )  # fmt: skip
                rows.append(
                    {
                        "budget": budget, "seed": seed, "method": f"uniform scratch {2 * epochs}ep",
                        "test acc": r["test_acc"], "MACs ratio": uniform_macs, "CPU lat ratio": lat,
                        "widths": "-".join(map(str, w)),
                    }
                )  # fmt: skip
    rows.sort(key=lambda r: (r["budget"], r["method"], r["seed"]))
    print(
        f"\ndigits, alexnet_small 16-32-32-32-32/64-64, cost=macs, E={epochs} epochs, {seeds} seed(s), "
        f"{time.perf_counter() - t0:.0f} s; CPU latency ratio: 1 thread, batch 1, median of 3 x median of {repeats}"
    )
    print(format_table(rows, floatfmt=".4f"))
    if seeds > 1:
        summary = []
        for budget in BUDGETS:
            for method in dict.fromkeys(r["method"] for r in rows):
                accs = [r["test acc"] for r in rows if r["budget"] == budget and r["method"] == method]
                summary.append(
                    {"budget": budget, "method": method, "mean acc": statistics.mean(accs),
                     "std": statistics.stdev(accs), "n": len(accs)}
                )  # fmt: skip
        print(format_table(summary, floatfmt=".4f"))


# ------------------------------------------------------------------------------------------ part 3: latency
def slot_widths(r: dict[str, float]) -> list[int]:
    """The ``width_<u>`` entries of a job's results, in order."""
    return [int(r[f"width_{u}"]) for u in range(1, 1 + sum(k.startswith("width_") for k in r))]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Paired t-test of ``a`` against ``b`` (pairs: the same index, e.g. the same seed).

    Returns n, the mean difference a - b, its two-sided ``confidence`` interval (Student's t with n - 1 degrees
    of freedom on the std of the differences), t and p of ``scipy.stats.ttest_rel``. Fewer than two pairs give
    nan for everything but n and the mean; differences all equal give a zero-width interval (and t = p = nan when
    they are all zero: nothing to test).
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired_test needs as many values in a as in b, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    out = {"n": float(n), "mean diff": float(d.mean()) if n else float("nan")}
    nan = float("nan")
    if n < 2:
        return {**out, "ci low": nan, "ci high": nan, "t": nan, "p": nan}
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    if np.all(d == d[0]):  # ttest_rel warns on zero variance; all-zero differences have nothing to test
        t, pval = (nan, nan) if d[0] == 0 else (float(np.sign(d[0]) * np.inf), 0.0)
    else:
        res = stats.ttest_rel(a, b)
        t, pval = float(res.statistic), float(res.pvalue)
    return {**out, "ci low": out["mean diff"] - half, "ci high": out["mean diff"] + half, "t": t, "p": pval}


def significance(
    rows: Sequence[dict[str, Any]], reference: str = "ECC", alpha: float = 0.05, key: str = "test acc"
) -> list[dict[str, Any]]:
    """Per budget, ``reference`` against every other method by :func:`paired_test` on ``key``, paired by seed
    (seeds missing from either side are left out). Each row says in words whether p <= ``alpha``."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        at = [r for r in rows if r["budget"] == budget]
        ref = {r["seed"]: r[key] for r in at if r["method"] == reference}
        for method in dict.fromkeys(r["method"] for r in at if r["method"] != reference):
            other = {r["seed"]: r[key] for r in at if r["method"] == method}
            seeds = sorted(set(ref) & set(other))
            test = paired_test([ref[s] for s in seeds], [other[s] for s in seeds])
            if not test["p"] <= alpha:  # nan (too few seeds, no differences) counts as not significant
                verdict = f"not significant (p > {alpha:g})" if test["p"] > alpha else "not testable"
            else:
                verdict = f"{reference} {'better' if test['mean diff'] > 0 else 'worse'} (p <= {alpha:g})"
            out.append(
                {
                    "budget": budget,
                    "comparison": f"{reference} - {method}",
                    **test,
                    "n": len(seeds),
                    "verdict": verdict,
                }
            )
    return out


def latency_part(
    seeds: int,
    epochs: int,
    samples: int,
    repeats: int,
    batch: int,
    rounds: int,
    budgets: Sequence[float],
    dataset: str = "digits",
    sizes: dict[str, int | None] | None = None,
    lr: float | None = None,
    pretrain_epochs: int | None = None,
) -> None:
    """ECC on a fitted CPU-latency model against NetAdapt / uniform / L1 at the same predicted latency, on
    ``dataset`` (``digits`` resized to 1x32x32, or ``shapes`` at 3x32x32 with split ``sizes``).

    ``lr`` (default :data:`MID`'s 0.02) is every job's SGD learning rate, NetAdapt's short-term fine-tune
    included; ``pretrain_epochs`` (default ``epochs``) trains each seed's dense net, which every method then
    starts from, each fine-tuned ``epochs``.
    """
    mid = latency_overrides(dataset, **(sizes or {}))
    if lr is not None:
        mid = tuple(f"optimizer.lr={lr}" if o.startswith("optimizer.lr=") else o for o in mid)
    in_channels = LATENCY_DATASETS[dataset]
    ecc = (
        "method=ecc", "method.cost=latency_cpu", f"method.samples={samples}", f"method.cost_batch={batch}",
        f"method.cost_repeats={repeats}", "method.admm_epochs=30",
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    fits: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in range(seeds):
            common = (*mid, f"seed={seed}", f"trainer.epochs={epochs}")
            first: Path | None = None  # the seed's first ECC run: its dense net and cost data are reused
            dense: Path | None = None
            if pretrain_epochs is not None:
                dense = pretrain_dense((*mid, f"seed={seed}"), pretrain_epochs, root / f"dense_s{seed}")
            for budget in budgets:
                out = root / f"ecc_s{seed}_b{budget}"
                extra: tuple[str, ...] = (f"method.dense_checkpoint={dense}",) if dense else ()
                if first is not None:
                    # phase_energy_model loads the fit it finds in <out>/cost: measured once per seed
                    shutil.copytree(first / "cost", out / "cost")
                t = time.perf_counter()
                r = run(compose_config(*ecc, *common, f"method.budget={budget}", *extra, output_dir=out))
                if first is None:
                    first = out
                    dense = dense or out / "dense" / "model.pt"
                    meta = json.loads((out / "cost" / "meta.json").read_text())
                    fits[seed] = {
                        "seed": seed, "dense acc": r["dense_test_acc"], "holdout MRAE": r["holdout_mrae"],
                        "train MRAE": json.loads((out / "cost" / "fit.json").read_text())["train_mrae"],
                        "dense ms": meta["dense_cost"] * 1e3, "all-ones ms": meta["ones_cost"] * 1e3,
                        "pred dense ms": BilinearEnergyModel.load(out / "cost" / "energy_model.pt").dense_cost() * 1e3,
                    }  # fmt: skip
                jobs: dict[str, tuple[dict[str, float], float]] = {"ECC": (r, time.perf_counter() - t)}
                # NetAdapt is method=ecc's own option: same dense net, cost data, fit and budget as ECC
                t, na_out = time.perf_counter(), root / f"na_s{seed}_b{budget}"
                shutil.copytree(first / "cost", na_out / "cost")
                r = run(
                    compose_config(
                        *ecc, *common, f"method.budget={budget}", "method.algorithm=netadapt",
                        f"method.dense_checkpoint={dense}", output_dir=na_out,
                    )
                )  # fmt: skip
                jobs["NetAdapt ft"] = (r, time.perf_counter() - t)
                for method, plugin, tag in (
                    ("uniform ft", "UNIFORM_FT", "uft"),
                    ("L1 global ft", "L1_FT", "l1"),
                ):
                    t = time.perf_counter()
                    r = run(
                        compose_config(
                            "method=ecc", *common, f"method.budget={budget}",
                            f"method.dense_checkpoint={dense}", f"method.plugin=bench.ecc:{plugin}",
                            "+method.bench_cost=model", f"+method.bench_energy_model={first / 'cost' / 'energy_model.pt'}",
                            output_dir=root / f"{tag}_s{seed}_b{budget}",
                        )
                    )  # fmt: skip
                    jobs[method] = (r, time.perf_counter() - t)
                widths = {method: slot_widths(r) for method, (r, _) in jobs.items()}
                measured, dense_s = latency_ratios(
                    list(widths.values()), repeats, MID_NET, batch, rounds, in_channels
                )
                for (method, (r, secs)), lat in zip(jobs.items(), measured):
                    rows.append(
                        {
                            "budget": budget, "seed": seed, "method": method, "test acc": r["test_acc"],
                            "pred ratio": r["predicted_cost_ratio"], "meas ratio": lat, "MACs ratio": r["macs_ratio"],
                            "widths": "-".join(map(str, widths[method])), "dense ms": dense_s * 1e3, "job s": secs,
                        }
                    )  # fmt: skip
                print(format_table(rows[-len(jobs) :], floatfmt=".4f"), flush=True)
    print(
        f"\n{dataset} at {in_channels}x32x32{size_note(sizes)}, "
        f"alexnet_small {'-'.join(map(str, MID_NET['widths']))} / "
        f"{'-'.join(map(str, MID_NET['hidden']))}, cost=latency_cpu (1 thread, batch {batch}, median of {repeats}), "
        f"{samples} samples per seed, E={epochs} epochs (dense: {pretrain_epochs or epochs}), lr {lr or 0.02}, "
        f"{seeds} seed(s), {time.perf_counter() - t0:.0f} s; "
        f"measured ratio: median of {rounds} interleaved dense/slim timings"
    )
    print("Fits (one per seed, reused across its budgets):")
    print(format_table(list(fits.values()), floatfmt=".4f"))
    print(format_table(rows, floatfmt=".4f"))
    summary = []
    for budget in budgets:
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["budget"] == budget and r["method"] == method]
            summary.append(
                {
                    "budget": budget, "method": method, "test acc": mean_std([r["test acc"] for r in sel]),
                    "pred ratio": mean_std([r["pred ratio"] for r in sel]),
                    "meas ratio": mean_std([r["meas ratio"] for r in sel]),
                    "MACs ratio": mean_std([r["MACs ratio"] for r in sel]), "n": len(sel),
                }
            )  # fmt: skip
    print(format_table(summary))
    err = [abs(r["meas ratio"] - r["pred ratio"]) / r["pred ratio"] for r in rows]
    ecc_err = [e for e, r in zip(err, rows) if r["method"] == "ECC"]
    holdout = ", ".join(f"{f['holdout MRAE']:.4f}" for f in fits.values())
    print(
        f"holdout MRAE of the fits: {holdout}; mean |measured - predicted| / predicted ratio over {len(rows)} "
        f"rows: {statistics.mean(err):.4f} (max {max(err):.4f}; ECC rows {statistics.mean(ecc_err):.4f})"
    )
    print(
        "\nECC against each baseline, test accuracy paired by seed (scipy.stats.ttest_rel; mean difference "
        "ECC - baseline and its 95 % t interval):"
    )
    print(format_table(significance(rows), floatfmt=".4f"))
    print(f"total {time.perf_counter() - t0:.0f} s")


def pretrain_dense(overrides: Sequence[str], epochs: int, out: Path) -> Path:
    """Train a seed's dense net alone (``method=train``, ``epochs`` with the cosine schedule over them) and save
    its weights as ``<out>/model.pt`` for ``method.dense_checkpoint``.

    Separate so that the dense net's epochs (and cosine period, ``trainer.epochs``) can differ from the
    fine-tunes': the dense net is trained once per seed, the fine-tunes are 4 per budget and seed.
    """
    run(compose_config("method=train", *overrides, f"trainer.epochs={epochs}", output_dir=out))
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    if (state["phase"], state["epoch"]) != ("train", epochs):
        raise RuntimeError(
            f"{out}: the last checkpoint is {state['phase']} epoch {state['epoch']}, not the end"
        )
    torch.save({"model": state["model"]}, out / "model.pt")
    return out / "model.pt"


def size_note(sizes: dict[str, int | None] | None) -> str:
    """``, train_size 4000, batch_size 32`` for the sizes given (the data set's defaults are not shown)."""
    return "".join(f", {k} {v}" for k, v in (sizes or {}).items() if v is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "fit", "compress", "latency"), default="all")
    parser.add_argument(
        "--samples", type=int, default=300, help="random width configurations per network / fit"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per latency (median)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="E: pretrain and fine-tune epochs")
    parser.add_argument("--batch", type=int, default=8, help="latency part: batch of every latency timing")
    parser.add_argument(
        "--rounds", type=int, default=7, help="latency part: interleaved timings per slim net"
    )
    parser.add_argument("--budgets", type=float, nargs="+", default=BUDGETS, help="latency part: budgets")
    parser.add_argument(
        "--dataset", choices=tuple(LATENCY_DATASETS), default="digits", help="latency part: data set"
    )
    parser.add_argument("--lr", type=float, default=None, help="latency part: SGD lr of every job (0.02)")
    parser.add_argument(
        "--pretrain-epochs", type=int, default=None, help="latency part: the dense nets' epochs (E)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="latency part, shapes only: training minibatch (64)"
    )
    for split in ("train", "val", "test"):
        parser.add_argument(
            f"--{split}-size", type=int, default=None, help=f"latency part, shapes only: {split} split size"
        )
    args = parser.parse_args()
    if args.part in ("all", "fit"):
        fit_part(args.samples, args.repeats)
    if args.part in ("all", "compress"):
        compress_part(args.seeds, args.epochs, args.repeats)
    if args.part in ("all", "latency"):
        sizes = {
            "train_size": args.train_size, "val_size": args.val_size, "test_size": args.test_size,
            "batch_size": args.batch_size,
        }  # fmt: skip
        if args.dataset == "digits" and any(v is not None for v in sizes.values()):
            parser.error(
                "--train-size / --val-size / --test-size / --batch-size are for --dataset shapes only"
            )
        latency_part(
            args.seeds, args.epochs, args.samples, args.repeats, args.batch, args.rounds, args.budgets,
            args.dataset, sizes, args.lr, args.pretrain_epochs,
        )  # fmt: skip


if __name__ == "__main__":
    main()
