"""ECC benchmark: the bilinear cost model on real CPU latencies, and ECC against its baselines on digits.

    .venv/bin/python -m bench.ecc                       # both parts, about 5 minutes on 2 CPU cores
    .venv/bin/python -m bench.ecc --part fit --samples 1000 --repeats 50
    .venv/bin/python -m bench.ecc --part compress --seeds 3 --epochs 30

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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from common.config import CONF_DIR
from common.engine import RunContext, evaluate
from common.factory import make_data
from common.logging import format_table
from common.metrics import count_macs
from common.models import build_model
from common.task import train_model
from ecc.cost import make_backend, sample_widths
from ecc.energy_model import BilinearEnergyModel, mrae, split_holdout
from ecc.netadapt import netadapt, short_term_finetune
from ecc.prune import group_scores, last_layer, slim, slim_to_widths, width_chain, width_slots
from ecc.task import phase_dense

FIT_NETS = {
    "alexnet_small": dict(widths=[64, 192, 384, 256, 256], hidden=[1024, 1024], dropout=0.5),
    "mobilenet_v1": dict(width_mult=1.0),
}
TINY = (
    "network=alexnet_small",
    "network.widths=[16,32,32,32,32]",
    "network.hidden=[64,64]",
    "network.dropout=0.0",
    "optimizer.lr=0.02",  # 0.05 (tests/ecc) left the seed-0 dense net at chance (0.1028) in 15 epochs
    "trainer.progress=false",
)
ECC = ("method=ecc", "method.cost=macs", "method.samples=40", "method.admm_epochs=30")
BUDGETS = (0.3, 0.5, 0.7)


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


def uniform_widths(model: torch.nn.Module, x: torch.Tensor, budget: float) -> list[int]:
    """Every width times the largest common factor f whose MACs are <= ``budget`` x the dense MACs."""
    ub = width_chain(model)[1:-1]
    dense = count_macs(model, x)

    def at(f: float) -> list[int]:
        return [max(1, round(f * u)) for u in ub]

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count_macs(slim_to_widths(model, at(mid)), x) <= budget * dense else (lo, mid)
    return at(lo)


def run_uniform_finetune(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """A ``method.run``: the dense net (``method.dense_checkpoint``) cut uniformly to the budget, fine-tuned."""
    m = cfg.method
    data = make_data(cfg, ctx.device)
    dense = phase_dense(cfg, ctx, data)
    x, _ = next(iter(data.test.epoch_iter(0)))
    widths = uniform_widths(dense, x[:1], float(m.budget))
    keep = [
        group_scores(s).argsort(descending=True)[:w].sort().values for s, w in zip(width_slots(dense), widths)
    ]
    net = slim(dense, keep)
    train_model(cfg, net, data, ctx, epochs=m.finetune_epochs, phase="finetune")
    out = {"test_acc": evaluate(net, data.test, task=data.task, device=ctx.device)["test_acc"]}
    out["macs_ratio"] = count_macs(net, x[:1]) / count_macs(dense, x[:1])
    out.update({f"width_{u + 1}": float(w) for u, w in enumerate(widths)})
    return out


def l1_prune(model: torch.nn.Module, x: torch.Tensor, budget: float, steps: int = 200) -> torch.nn.Module:
    """torch-pruning's global L1-magnitude channel pruning, stepped until the MACs are <= ``budget`` x dense.

    ``MagnitudePruner(importance=MagnitudeImportance(p=1), global_pruning=True)`` with ``steps`` iterative steps
    towards 95 % of the channels removed (at most 98 % per layer); the classifier's outputs are kept.
    """
    import torch_pruning as tp

    net = copy.deepcopy(model).eval()
    dense = count_macs(net, x)
    pruner = tp.pruner.MagnitudePruner(
        net, x, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=True, pruning_ratio=0.95,
        max_pruning_ratio=0.98, iterative_steps=steps, ignored_layers=[last_layer(net)],
    )  # fmt: skip
    for _ in range(steps):
        if count_macs(net, x) <= budget * dense:
            break
        pruner.step()
    return net


def run_l1_finetune(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """A ``method.run``: the dense net (``method.dense_checkpoint``) L1-pruned to the budget, fine-tuned."""
    m = cfg.method
    data = make_data(cfg, ctx.device)
    dense = phase_dense(cfg, ctx, data)
    x, _ = next(iter(data.test.epoch_iter(0)))
    net = l1_prune(dense, x[:1], float(m.budget))
    widths = width_chain(net)[1:-1]
    train_model(cfg, net, data, ctx, epochs=m.finetune_epochs, phase="finetune")
    out = {"test_acc": evaluate(net, data.test, task=data.task, device=ctx.device)["test_acc"]}
    out["macs_ratio"] = count_macs(net, x[:1]) / count_macs(dense, x[:1])
    out.update({f"width_{u + 1}": float(w) for u, w in enumerate(widths)})
    return out


NETADAPT_ITERATIONS = 10  # constant step: (dense - budget) / 10 of the MACs per iteration
NETADAPT_BATCHES = 20  # short-term fine-tune: 20 train minibatches (about half an epoch of digits)


def run_netadapt_finetune(cfg: DictConfig, ctx: RunContext) -> dict[str, float]:
    """A ``method.run``: NetAdapt (``ecc.netadapt``) from the dense net (``method.dense_checkpoint``) to the
    budget's MACs, proposals scored on the ``val`` split, then fine-tuned ``finetune_epochs``."""
    m = cfg.method
    data = make_data(cfg, ctx.device)
    dense = phase_dense(cfg, ctx, data)
    x, _ = next(iter(data.test.epoch_iter(0)))
    x1 = x[:1]
    dense_macs = count_macs(dense, x1)

    def cost(widths: list[int]) -> float:
        return float(count_macs(slim_to_widths(dense, widths), x1))

    def short_term(net: torch.nn.Module, it: int) -> None:
        batches = itertools.islice(data.train.epoch_iter(it), NETADAPT_BATCHES)
        short_term_finetune(net, batches, lr=float(cfg.optimizer.lr))

    def score(net: torch.nn.Module) -> float:
        return evaluate(net, data.val, task=data.task, prefix="val", device=ctx.device)["val_acc"]

    res = netadapt(
        dense, cost, float(m.budget) * dense_macs, iterations=NETADAPT_ITERATIONS, short_term=short_term,
        score=score, seed=int(cfg.seed),
    )  # fmt: skip
    net = res.model
    train_model(cfg, net, data, ctx, epochs=m.finetune_epochs, phase="finetune")
    out = {"test_acc": evaluate(net, data.test, task=data.task, device=ctx.device)["test_acc"]}
    out["macs_ratio"] = count_macs(net, x1) / dense_macs
    out["netadapt_iterations"] = float(len(res.history))
    out.update({f"width_{u + 1}": float(w) for u, w in enumerate(res.widths)})
    return out


def latency_ratio(widths: list[int], dense_widths: list[int], repeats: int) -> float:
    """CPU latency of the tiny AlexNet at ``widths`` over the dense one (1 thread, batch 1, 1x32x32)."""
    torch.manual_seed(0)
    dense = build_model(
        "alexnet_small",
        num_classes=10,
        in_channels=1,
        image_size=32,
        widths=[16, 32, 32, 32, 32],
        hidden=[64, 64],
    ).eval()
    x = torch.randn(1, 1, 32, 32)
    backend = make_backend("latency_cpu", repeats=repeats, warmup=3, threads=1)
    d = statistics.median(backend.measure(dense, x) for _ in range(3))
    s = statistics.median(backend.measure(copy.deepcopy(slim_to_widths(dense, widths)), x) for _ in range(3))
    return s / d


def compress_part(seeds: int, epochs: int, repeats: int) -> None:
    from launch.run import run as launch_run

    def run(cfg: DictConfig) -> dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):  # launch prints a results table per run
            return launch_run(cfg)

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
                        "MACs ratio": r["macs_ratio"], "CPU lat ratio": latency_ratio(w, dense_ub, repeats),
                        "widths": "-".join(map(str, w)),
                    }
                )  # fmt: skip
                # the baselines: cut from the same dense net to the budget's MACs, then fine-tuned E epochs
                baselines = {}
                for method, fn, tag in (
                    ("uniform ft", "run_uniform_finetune", "uft"),
                    ("L1 global ft", "run_l1_finetune", "l1"),
                    ("NetAdapt ft", "run_netadapt_finetune", "na"),
                ):
                    r = run(
                        compose_config(
                            "method=ecc", *common, f"method.budget={budget}", f"method.dense_checkpoint={dense_ckpt}",
                            f"method.run=bench.ecc.{fn}", output_dir=root / f"{tag}_s{seed}_b{budget}",
                        )
                    )  # fmt: skip
                    widths = [int(r[f"width_{u + 1}"]) for u in range(len(dense_ub))]
                    baselines[method] = (r, widths, latency_ratio(widths, dense_ub, repeats))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "fit", "compress"), default="all")
    parser.add_argument("--samples", type=int, default=300, help="random width configurations per network")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per latency (median)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="E: pretrain and fine-tune epochs")
    args = parser.parse_args()
    if args.part in ("all", "fit"):
        fit_part(args.samples, args.repeats)
    if args.part in ("all", "compress"):
        compress_part(args.seeds, args.epochs, args.repeats)


if __name__ == "__main__":
    main()
