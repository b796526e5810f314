"""Which method saves the most tuning, at what accuracy? Every contender on one harness, one data set, one budget.

    .venv/bin/python -m bench.leaderboard [--smoke] [--networks lenet5,resnet18:8] [--seeds 0,1,2] [--epochs 10]
        [--train-size 10000] [--grid 0.003,0.01,0.03,0.1,0.3] [--dataset shapes] [--set KEY=VALUE]
        [--contenders NAME,...] [--out outputs/leaderboard]

The defaults are the board measured in the README (with ``--set trainer.threads=1``, two processes side by side).

Every contender trains ``--epochs`` epochs (E) of ``python -m launch``'s own job (the same data, batch size,
seeds and Trainer), on each network and seed; what differs is how its learning rate was chosen and what that cost
before the final training, in trial-epochs (epochs of training spent on choosing) and seconds:

* ``grid (oracle)``: SGD-momentum + cosine at every LR of ``--grid``; the best by validation accuracy is kept
  (cost: grid size x E; the final run is one of the grid's);
* ``optuna TPE`` / ``random search``: ``hydra/sweeper=optuna`` over a log-uniform LR in [min grid, max grid],
  trials of autoHyper's trial length, as many as the trial-epochs autoHyper (default mode) spent on that seed;
  then a final run at the best LR (by validation);
* ``LR range test``: torch-lr-finder's range test (its defaults: 100 steps up to lr 10) and its suggestion;
* ``autoHyper`` (default mode) and ``autoHyper (paper)``: ``method=autohyper`` (search + final training);
* ``HD`` and ``MARTHE`` (``method=adatune``) from the default LR; ``ECCO`` (``optimizer=ecco``);
* ``Schedule-Free SGD/AdamW``, ``Prodigy``, ``D-Adapt Adam``, ``Adam 1e-3`` at their defaults.

Selection reads the validation split only; each contender's test accuracy is that of its final run. A run whose
loss turns non-finite (a default that diverges on this network) is scored as chance (1 / classes) and marked by
``diverged.json`` in its folder, so running the command again does not retrain it; the table names its seeds
after the contender and the plot draws them as x. Runs are
folders under ``--out``: running the command again reuses every finished one (and resumes an interrupted one).
It writes ``leaderboard.csv`` / ``.md`` (mean +- std over seeds per contender and network), ``runs.csv`` (one
row per run) and ``leaderboard.png`` (test accuracy against tuning cost, one panel per network, seed spread as
error bars, the Pareto front marked). ``--smoke``: the whole path on a tiny set in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from common.config import CONF_DIR, REPO_ROOT

log = logging.getLogger("bench.leaderboard")


@dataclass
class Run:
    """One contender's final run on one network and seed, and what choosing its setting cost."""

    contender: str
    network: str
    seed: int
    test_acc: float
    val_acc: float
    lr: float | None
    tuning_epochs: float
    tuning_s: float
    train_s: float
    default: bool
    folder: str = ""
    diverged: bool = False  # its loss turned non-finite: scored as chance (1 / classes)


@dataclass
class Setting:
    """What one bench run is: data, networks, seeds, budget; where its folders go."""

    out: Path
    dataset: list[str]
    networks: list[str]
    seeds: list[int]
    epochs: int
    grid: list[float]
    extra: list[str] = field(default_factory=list)  # overrides of every run (--smoke: few batches)
    autohyper: list[str] = field(default_factory=list)  # overrides of autoHyper's runs (--smoke: one trial)


def network_overrides(spec: str) -> tuple[str, list[str]]:
    """``resnet18:16`` -> ("resnet18-w16", ["network=resnet18", "network.width=16"]); ``lenet5`` -> as is."""
    name, _, width = spec.partition(":")
    if width:
        return f"{name}-w{width}", [f"network={name}", f"network.width={width}"]
    return name, [f"network={name}"]


def compose_cfg(overrides: Sequence[str], output_dir: Path):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(
                config_name="config",
                overrides=[
                    "logger=none",
                    "trainer.progress=false",
                    f"paths.output_dir={output_dir}",
                    *overrides,
                ],
            )
    finally:
        GlobalHydra.instance().clear()


def train(setting: Setting, folder: Path, overrides: Sequence[str]) -> tuple[dict, float]:
    """``python -m launch <overrides>`` in-process into ``folder``; (results, seconds). A finished folder is
    returned as it is (its seconds: the training time it recorded)."""
    from common.engine import NonFiniteLossError
    from common.io import write_json_atomic
    from launch.run import run

    marker = folder / "diverged.json"
    if marker.exists():  # diverged before: the same seed diverges again, so it is not retrained
        return json.loads(marker.read_text()), 0.0
    cfg = compose_cfg([*setting.dataset, *setting.extra, *overrides], folder)
    finished = (folder / "results.json").exists()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            results = run(cfg)
    except NonFiniteLossError as exc:
        # a setting that diverges is a result of the board, not a crash of it: scored as chance
        chance = 1.0 / int(cfg.dataset.num_classes)
        results = {"test_acc": chance, "val_acc": chance, "diverged": 1.0, "error": str(exc)}
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, results)
        log.warning("%s diverged (%s): scored as chance, %.3f", folder, exc, chance)
        return results, time.perf_counter() - start
    secs = time.perf_counter() - start
    if finished:
        secs = float(results.get("train_time_s", 0.0))
    return results, secs


def final_lr(folder: Path) -> float | None:
    """The optimizer's configured LR of a finished run (its ``config_resolved.yaml``)."""
    from omegaconf import OmegaConf

    path = folder / "config_resolved.yaml"
    if not path.exists():
        return None
    lr = OmegaConf.select(OmegaConf.load(path), "optimizer.lr")
    return None if lr is None else float(lr)


# ------------------------------------------------------------------------------------------------ contenders
def defaults_contender(name: str, overrides: Sequence[str]) -> Callable[[Setting, str, list[str], int], Run]:
    def contender(setting: Setting, net: str, net_ov: list[str], seed: int) -> Run:
        folder = setting.out / net / slug(name) / str(seed)
        res, secs = train(
            setting, folder, [*net_ov, f"seed={seed}", f"trainer.epochs={setting.epochs}", *overrides]
        )
        lr = res.get("autohyper_lr") or final_lr(folder)
        return Run(name, net, seed, res["test_acc"], res["val_acc"], lr, 0.0, 0.0, secs, True, str(folder),
                   diverged(res))  # fmt: skip

    return contender


def grid_contender(setting: Setting, net: str, net_ov: list[str], seed: int) -> Run:
    runs = []
    for lr in setting.grid:
        folder = setting.out / net / "grid" / str(seed) / f"lr{lr:g}"
        res, secs = train(setting, folder, [*net_ov, f"seed={seed}", f"trainer.epochs={setting.epochs}",
                                            "optimizer=sgd_momentum", "scheduler=cosine", f"optimizer.lr={lr}"])  # fmt: skip
        runs.append((res["val_acc"], -lr, lr, res, secs, folder))
    _, _, lr, best, _, folder = max(runs, key=lambda r: (r[0], r[1]))  # ties: the smaller LR
    cost_s = sum(r[4] for r in runs)
    return Run("grid (oracle)", net, seed, best["test_acc"], best["val_acc"], lr,
               len(setting.grid) * setting.epochs, cost_s, 0.0, False, str(folder), diverged(best))  # fmt: skip


def autohyper_contender(mode: str) -> Callable[[Setting, str, list[str], int], Run]:
    name = "autoHyper" if mode == "improved" else "autoHyper (paper)"

    def contender(setting: Setting, net: str, net_ov: list[str], seed: int) -> Run:
        folder = setting.out / net / slug(name) / str(seed)
        res, secs = train(setting, folder, [*net_ov, f"seed={seed}", f"trainer.epochs={setting.epochs}",
                                            "method=autohyper", f"method.mode={mode}", *setting.autohyper])  # fmt: skip
        total, _, search_s = autohyper_spent(folder, res)
        # train_time_s: the final training's own time (the search's is autohyper_search_s)
        return Run(name, net, seed, res["test_acc"], res["val_acc"], res.get("autohyper_lr"), total, search_s,
                   float(res.get("train_time_s", secs)), False, str(folder), diverged(res))  # fmt: skip

    return contender


def autohyper_cost(results: dict) -> tuple[float, int]:
    """(trial-epochs autoHyper's search spent in all, epochs of one trial) from its ``results.json``
    (``autohyper_trial_epochs`` is the total over its ``autohyper_trials`` trials)."""
    total, trials = float(results["autohyper_trial_epochs"]), max(1, int(results["autohyper_trials"]))
    return total, max(1, round(total / trials))


def autohyper_spent(folder: Path, results: dict) -> tuple[float, int, float]:
    """(trial-epochs in all, epochs of one trial, search seconds) of the autoHyper run in ``folder``: from its
    results, or, when its final training diverged (no autoHyper figures in its results), from the search's own
    record ``search/trials.jsonl`` (one line per trial, with its per-epoch metrics and seconds)."""
    if "autohyper_trial_epochs" in results:
        total, trial_epochs = autohyper_cost(results)
        return total, trial_epochs, float(results["autohyper_search_s"])
    record = folder / "search" / "trials.jsonl"
    trials = (
        [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        if record.exists()
        else []
    )
    if not trials:
        return 0.0, 1, 0.0
    trial_epochs = max(1, len(trials[0].get("z_per_epoch", [])))
    return float(len(trials) * trial_epochs), trial_epochs, sum(float(t.get("seconds", 0.0)) for t in trials)


def diverged(results: dict) -> bool:
    return bool(results.get("diverged"))


def optuna_contender(sampler: str) -> Callable[[Setting, str, list[str], int], Run]:
    name = "optuna TPE" if sampler == "tpe" else "random search"

    def contender(setting: Setting, net: str, net_ov: list[str], seed: int) -> Run:
        # the same trial budget as autoHyper's default mode on this seed (it runs first: its folder is reused)
        ah = autohyper_contender("improved")(setting, net, net_ov, seed)
        ah_folder = Path(ah.folder)
        ah_res = json.loads((ah_folder / ("diverged.json" if ah.diverged else "results.json")).read_text())
        budget, trial_epochs, _ = autohyper_spent(ah_folder, ah_res)
        n_trials = max(1, round(budget / trial_epochs))
        sweep = setting.out / net / slug(name) / str(seed) / "search"
        if not (sweep / "optuna_best.json").exists():
            low, high = min(setting.grid), max(setting.grid)
            proc = subprocess.run(
                [sys.executable, "-m", "launch", "-m", "hydra/sweeper=optuna",
                 f"optimizer.lr=tag(log, interval({low}, {high}))", f"hydra.sweeper.n_trials={n_trials}",
                 f"hydra.sweeper.sampler={sampler}", f"hydra.sweeper.seed={seed}",
                 "hydra.sweeper.n_startup_trials=3", f"hydra.sweep.dir={sweep}", "logger=none",
                 "trainer.progress=false", *setting.dataset, *setting.extra, *net_ov, f"seed={seed}",
                 f"trainer.epochs={trial_epochs}", "optimizer=sgd_momentum", "scheduler=cosine"],
                cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )  # fmt: skip
            if not (sweep / "optuna_best.json").exists():
                raise RuntimeError(f"{name} on {net} seed {seed} found nothing:\n{proc.stderr[-3000:]}")
        # the trials' own training times, as for the grid (a reused search costs what it cost when it ran)
        search_s = sum(
            float(json.loads(r.read_text()).get("train_time_s", 0.0)) for r in sweep.glob("*/results.json")
        )
        best = json.loads((sweep / "optuna_best.json").read_text())
        lr = float(best["params"]["optimizer.lr"])
        folder = setting.out / net / slug(name) / str(seed) / "final"
        res, secs = train(setting, folder, [*net_ov, f"seed={seed}", f"trainer.epochs={setting.epochs}",
                                            "optimizer=sgd_momentum", "scheduler=cosine", f"optimizer.lr={lr!r}"])  # fmt: skip
        return Run(name, net, seed, res["test_acc"], res["val_acc"], lr, n_trials * trial_epochs, search_s, secs,
                   False, str(folder), diverged(res))  # fmt: skip

    return contender


def lr_range_test_contender(setting: Setting, net: str, net_ov: list[str], seed: int) -> Run:
    from torch.utils.data import DataLoader, TensorDataset
    from torch_lr_finder import LRFinder

    from common.factory import build_optimizer, make_data, make_model
    from common.seeding import seed_everything

    name = "LR range test"
    folder = setting.out / net / slug(name) / str(seed)
    record = folder / "range_test.json"
    if record.exists():
        found = json.loads(record.read_text())
    else:
        cfg = compose_cfg([*setting.dataset, *setting.extra, *net_ov, f"seed={seed}", "optimizer=sgd_momentum"],
                          folder / "range")  # fmt: skip
        device = torch.device("cpu")
        start = time.perf_counter()
        data = make_data(cfg, device)
        xs, ys = zip(*data.train.epoch_iter(0))
        x, y = torch.cat(xs), torch.cat(ys)
        seed_everything(seed)
        model = make_model(cfg, data, device)
        # the package's README example: the optimizer at a tiny LR, its range test up to lr 10 over 100 steps
        optimizer = build_optimizer(cfg.optimizer, model, lr=1e-7)
        loader = DataLoader(TensorDataset(x, y), batch_size=int(cfg.dataset.batch_size), shuffle=True,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
        finder = LRFinder(model, optimizer, torch.nn.CrossEntropyLoss(), device="cpu")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            finder.range_test(loader, end_lr=10, num_iter=100)
            ax, lr = finder.plot(suggest_lr=True)
        plt.close(ax.figure)
        steps = len(finder.history["lr"])
        found = {"lr": None if lr is None else float(lr), "steps": steps,
                 "steps_per_epoch": len(data.train), "seconds": time.perf_counter() - start}  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(found, indent=2))
    if found["lr"] is None:
        raise RuntimeError(f"{name} on {net} seed {seed}: torch-lr-finder made no suggestion")
    res, secs = train(setting, folder / "final", [*net_ov, f"seed={seed}", f"trainer.epochs={setting.epochs}",
                                                  "optimizer=sgd_momentum", "scheduler=cosine",
                                                  f"optimizer.lr={found['lr']!r}"])  # fmt: skip
    return Run(name, net, seed, res["test_acc"], res["val_acc"], found["lr"],
               found["steps"] / found["steps_per_epoch"], found["seconds"], secs, False, str(folder / "final"),
               diverged(res))  # fmt: skip


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


# the contenders that are one job each, by their config in conf/contender/ (shared with
# experiment=leaderboard_cifar10, whose sweep runs the same jobs on a cluster)
CONTENDER_CONFIGS = {
    "autoHyper": "autohyper",
    "autoHyper (paper)": "autohyper_paper",
    "HD": "hd",
    "MARTHE": "marthe",
    "ECCO": "ecco",
    "Schedule-Free SGD": "schedulefree_sgd",
    "Schedule-Free AdamW": "schedulefree_adamw",
    "Prodigy": "prodigy",
    "D-Adapt Adam": "dadapt_adam",
    "Adam 1e-3": "adam",
}
GRID_CONFIG_PREFIX = "grid_lr"  # conf/contender/grid_lr<lr>.yaml: the oracle's grid points

CONTENDERS: dict[str, Callable[[Setting, str, list[str], int], Run]] = {
    "grid (oracle)": grid_contender,
    "autoHyper": autohyper_contender("improved"),
    "autoHyper (paper)": autohyper_contender("paper"),
    "optuna TPE": optuna_contender("tpe"),
    "random search": optuna_contender("random"),
    "LR range test": lr_range_test_contender,
    **{
        name: defaults_contender(name, [f"+contender={config}"])
        for name, config in CONTENDER_CONFIGS.items()
        if not name.startswith("autoHyper")
    },
}


# ------------------------------------------------------------------------------------------------ a cluster sweep
def runs_from_sweep(sweep_dir: Path) -> tuple[list[Run], Setting, list[str]]:
    """The leaderboard's runs from a finished ``python -m launch -m experiment=leaderboard_cifar10`` sweep: one
    job per contender config and seed, read from each job folder; the grid points of a network and seed become
    the oracle (the best by validation accuracy, ties to the smaller LR; its cost the grid's epochs). Returns
    the runs, the setting they describe and one line per job that did not finish (left out)."""
    from omegaconf import OmegaConf

    from common.sweep import job_dirs, job_overrides

    by_config = {v: k for k, v in CONTENDER_CONFIGS.items()}
    runs: list[Run] = []
    grid: dict[tuple[str, int], list[tuple[float, int, Run]]] = {}  # (lr, epochs, run) per network and seed
    skipped: list[str] = []
    epochs, datasets = set(), set()
    for job in job_dirs(sweep_dir):
        config = job_overrides(job).get("contender")
        if config is None:
            continue
        failed = job / "failed.json"
        failure = json.loads(failed.read_text()) if failed.exists() else {}
        cfg_file = job / "config_resolved.yaml"
        cfg = OmegaConf.load(cfg_file if cfg_file.exists() else job / ".hydra" / "config.yaml")
        if failure.get("error") == "NonFiniteLossError":
            # a default that diverges is a result, scored as chance as the local board does
            chance = 1.0 / int(cfg.dataset.num_classes)
            res = {
                "test_acc": chance,
                "val_acc": chance,
                "diverged": 1.0,
                "error": failure.get("message", ""),
            }
        elif not (job / "results.json").exists():
            skipped.append(f"{job.name} ({config}): no results.json")
            continue
        else:
            res = json.loads((job / "results.json").read_text())
        width = OmegaConf.select(cfg, "network.width")
        net = str(cfg.network.name) + (f"-w{width}" if width not in (None, 64) else "")
        seed, e = int(cfg.seed), int(cfg.trainer.epochs)
        epochs.add(e)
        datasets.add(str(cfg.dataset.name))
        lr = OmegaConf.select(cfg, "optimizer.lr")
        train_s = float(res.get("train_time_s", 0.0))
        if config.startswith(GRID_CONFIG_PREFIX):
            run = Run("grid (oracle)", net, seed, res["test_acc"], res["val_acc"], lr, 0.0, 0.0, train_s, False,
                      str(job), diverged(res))  # fmt: skip
            grid.setdefault((net, seed), []).append((float(lr), e, run))
        elif config in ("autohyper", "autohyper_paper"):
            total, _, search_s = autohyper_spent(job, res)
            runs.append(Run(by_config[config], net, seed, res["test_acc"], res["val_acc"], res.get("autohyper_lr"),
                            total, search_s, train_s, False, str(job), diverged(res)))  # fmt: skip
        elif config in by_config:
            runs.append(Run(by_config[config], net, seed, res["test_acc"], res["val_acc"], lr, 0.0, 0.0, train_s,
                            True, str(job), diverged(res)))  # fmt: skip
        else:
            skipped.append(f"{job.name}: unknown contender {config}")
    for (_net, _seed), points in grid.items():
        _, e, best = max(points, key=lambda p: (p[2].val_acc, -p[0]))
        best.tuning_epochs = len(points) * e
        best.tuning_s, best.train_s = sum(r.train_s for _, _, r in points), 0.0
        runs.insert(0, best)
    setting = Setting(
        out=Path(sweep_dir), dataset=[f"dataset={d}" for d in sorted(datasets)],
        networks=sorted({r.network for r in runs}), seeds=sorted({r.seed for r in runs}),
        epochs=max(epochs) if epochs else 0, grid=sorted({lr for p in grid.values() for lr, _, _ in p}),
    )  # fmt: skip
    order = list(CONTENDERS)
    runs.sort(
        key=lambda r: (r.network, order.index(r.contender) if r.contender in order else len(order), r.seed)
    )
    return runs, setting, skipped


# ------------------------------------------------------------------------------------------------ the report
def summarize(runs: Sequence[Run]) -> list[dict]:
    rows = []
    for net in dict.fromkeys(r.network for r in runs):
        for name in dict.fromkeys(r.contender for r in runs):
            mine = [r for r in runs if r.network == net and r.contender == name]
            if not mine:
                continue
            accs = [r.test_acc for r in mine]
            rows.append({
                "network": net, "contender": name, "seeds": len(mine),
                "test_acc_mean": statistics.fmean(accs), "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "val_acc_mean": statistics.fmean(r.val_acc for r in mine),
                "tuning_epochs": statistics.fmean(r.tuning_epochs for r in mine),
                "tuning_s": statistics.fmean(r.tuning_s for r in mine),
                "train_s": statistics.fmean(r.train_s for r in mine),
                "default": all(r.default for r in mine),
                "lr": "; ".join(f"{r.lr:.3g}" for r in mine if r.lr is not None),
                "diverged_seeds": ",".join(str(r.seed) for r in mine if r.diverged),
            })  # fmt: skip
    for row in rows:
        row["pareto"] = not any(
            o is not row and o["network"] == row["network"]
            and o["test_acc_mean"] >= row["test_acc_mean"] and o["tuning_epochs"] <= row["tuning_epochs"]
            and (o["test_acc_mean"] > row["test_acc_mean"] or o["tuning_epochs"] < row["tuning_epochs"])
            for o in rows
        )  # fmt: skip
    return rows


def last_per_key(overrides: Sequence[str]) -> list[str]:
    """The overrides as Hydra applies them: the last of each key, in the order keys first appear."""
    kept: dict[str, str] = {}
    for o in overrides:
        kept[o.split("=", 1)[0]] = o
    return list(kept.values())


def markdown(rows: Sequence[dict], setting: Setting) -> str:
    data = " ".join(last_per_key([*setting.dataset, *setting.extra])) or "the default data set"
    lines = [
        f"Test accuracy (mean ± std over seeds {','.join(map(str, setting.seeds))}) after {setting.epochs} epochs "
        f"on {data}; tuning cost in trial-epochs before the final "
        "training and in seconds (this machine); * on the Pareto front (accuracy vs trial-epochs) of its network; "
        "a seed whose loss turned non-finite is scored as chance and named after the contender.",
        "",
        "| network | contender | test acc | tuning (trial-epochs) | tuning (s) | final train (s) | default | LR per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["network"], -r["test_acc_mean"])):
        seeds = r.get("diverged_seeds", "")
        note = f" (diverged: seed{'s' if ',' in seeds else ''} {seeds})" if seeds else ""
        lines.append(
            f"| {r['network']} | {r['contender']}{' *' if r['pareto'] else ''}{note} | {100 * r['test_acc_mean']:.1f} ± "
            f"{100 * r['test_acc_std']:.1f} | {r['tuning_epochs']:.1f} | {r['tuning_s']:.0f} | {r['train_s']:.0f} | "
            f"{'yes' if r['default'] else 'no'} | {r['lr']} |"
        )
    return "\n".join(lines) + "\n"


def figure(rows: Sequence[dict], runs: Sequence[Run], path: Path) -> list[str]:
    """``leaderboard.png``: one panel per network; returns the legend's labels (every contender of any panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(dict.fromkeys(r["network"] for r in rows))
    names = list(dict.fromkeys(r["contender"] for r in rows))
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}  # one colour per contender
    fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets) + 2.8, 5), squeeze=False)
    for ax, net in zip(axes[0], nets):
        mine = [r for r in rows if r["network"] == net]
        for r in mine:
            x = r["tuning_epochs"] + 1  # log axis: the defaults (cost 0) sit at 1
            colour = colours[r["contender"]]
            ax.errorbar(x, 100 * r["test_acc_mean"], yerr=100 * r["test_acc_std"], fmt="o" if r["pareto"] else "s",
                        color=colour, capsize=3, markersize=9 if r["pareto"] else 6, markeredgecolor="k",
                        label=r["contender"])  # fmt: skip
            seeds = [s for s in runs if s.network == net and s.contender == r["contender"]]
            for gone, marker in ((False, "o"), (True, "x")):  # x: a seed that diverged, scored as chance
                accs = [100 * s.test_acc for s in seeds if s.diverged == gone]
                ax.scatter(  # above the mean's marker: a diverged seed sits where its row's mean does
                    [x] * len(accs), accs, color="k" if gone else colour, s=10 if not gone else 40,
                    alpha=0.6 if not gone else 0.9, marker=marker, zorder=3,
                )  # fmt: skip
        front = sorted((r for r in mine if r["pareto"]), key=lambda r: r["tuning_epochs"])
        ax.plot(
            [r["tuning_epochs"] + 1 for r in front], [100 * r["test_acc_mean"] for r in front], "k--", lw=0.8
        )
        ax.set_xscale("log")
        ax.set_xlabel("trial-epochs spent choosing, + 1 (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(net)
        ax.grid(alpha=0.3)
    # one legend for all panels, by colour only: a contender on the front of one panel may not be on another's
    from matplotlib.lines import Line2D

    entries = {
        n: Line2D([], [], color=colours[n], marker="s", linestyle="", markersize=7, markeredgecolor="k")
        for n in names
    }
    fig.legend(
        list(entries.values()), list(entries), loc="center right", fontsize=8,
        title="large circle: on its panel's\nPareto front", title_fontsize=8,
    )  # fmt: skip
    fig.suptitle("Accuracy against tuning cost\n(mean ± std over seeds, dots: single seeds, x: a seed that diverged, "
                 "dashed: Pareto front)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / (5.5 * len(nets) + 2.8), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return list(entries)


def write_report(runs: Sequence[Run], setting: Setting) -> list[dict]:
    rows = summarize(runs)
    setting.out.mkdir(parents=True, exist_ok=True)
    with open(setting.out / "runs.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(runs[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in runs)
    with open(setting.out / "leaderboard.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (setting.out / "leaderboard.md").write_text(markdown(rows, setting), encoding="utf-8")
    figure(rows, runs, setting.out / "leaderboard.png")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="the whole path on a tiny set (about a minute)")
    ap.add_argument("--networks", default="lenet5,resnet18:8", help="network[:resnet width], comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every final training (E)")
    ap.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="training images (dataset.train_size): default 10000 on shapes (the README's board), else the set's own",
    )
    ap.add_argument(
        "--grid", default="0.003,0.01,0.03,0.1,0.3", help="the oracle's LRs (SGD-momentum + cosine)"
    )
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="an override of every run, e.g. --set dataset.train_size=10000 (repeatable)",
    )  # fmt: skip
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="a subset, comma-separated")
    ap.add_argument("--out", default=str(REPO_ROOT / "outputs" / "leaderboard"))
    ap.add_argument(
        "--from-sweep",
        metavar="DIR",
        help="no training: the report of a finished experiment=leaderboard_* sweep",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.from_sweep:
        return report_sweep(Path(args.from_sweep))
    for noisy in ("common", "launch", "autohyper", "adatune", "ecco"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        print(f"error: unknown contender(s) {unknown}; known: {', '.join(CONTENDERS)}", file=sys.stderr)
        return 2
    train_size = (
        args.train_size if args.train_size is not None else (10000 if args.dataset == "shapes" else 0)
    )
    setting = Setting(
        out=Path(args.out), networks=args.networks.split(","),
        dataset=[f"dataset={args.dataset}", *([f"dataset.train_size={train_size}"] if train_size else [])],
        seeds=[int(s) for s in args.seeds.split(",")], epochs=args.epochs,
        grid=[float(g) for g in args.grid.split(",")], extra=list(args.set),
    )  # fmt: skip
    if args.smoke:
        # a tiny set, one seed, one epoch of a few batches, a two-point grid, one autoHyper trial
        setting.out = Path(args.out) / "smoke" if args.out == ap.get_default("out") else Path(args.out)
        setting.dataset += ["dataset.train_size=256", "dataset.val_size=128", "dataset.test_size=128"]
        setting.networks, setting.seeds, setting.epochs = ["lenet5"], [0], 1
        setting.grid = [0.01, 0.1]
        setting.extra += ["trainer.limit_train_batches=3", "trainer.limit_eval_batches=1"]
        setting.autohyper = ["method.max_trials=1", "method.trial_epochs=1"]
    runs: list[Run] = []
    start = time.perf_counter()
    for spec in setting.networks:
        net, net_ov = network_overrides(spec)
        for name in names:
            for seed in setting.seeds:
                t = time.perf_counter()
                run = CONTENDERS[name](setting, net, net_ov, seed)
                runs.append(run)
                log.info("%-10s %-20s seed %d: test %.4f val %.4f lr %s tuning %.1f ep / %.0f s (%.0f s)", net, name,
                         seed, run.test_acc, run.val_acc, "-" if run.lr is None else f"{run.lr:.3g}",
                         run.tuning_epochs, run.tuning_s, time.perf_counter() - t)  # fmt: skip
    rows = write_report(runs, setting)
    print(markdown(rows, setting))
    print(
        f"wall time {time.perf_counter() - start:.0f} s; written: {setting.out}/leaderboard.md, .csv, .png, runs.csv"
    )
    return 0 if all(math.isfinite(r["test_acc_mean"]) for r in rows) else 1


def report_sweep(sweep_dir: Path) -> int:
    if not sweep_dir.is_dir():
        print(f"error: {sweep_dir} is not a folder (give the sweep folder, e.g. outputs/leaderboard/multiruns/<date>)",
              file=sys.stderr)  # fmt: skip
        return 2
    runs, setting, skipped = runs_from_sweep(sweep_dir)
    for line in skipped:
        print(f"left out: {line}", file=sys.stderr)
    if not runs:
        print(f"error: no finished contender jobs under {sweep_dir}", file=sys.stderr)
        return 2
    rows = write_report(runs, setting)
    print(markdown(rows, setting))
    print(f"written: {setting.out}/leaderboard.md, .csv, .png, runs.csv")
    return 0 if not skipped else 1


if __name__ == "__main__":
    raise SystemExit(main())
