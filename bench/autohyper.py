"""autoHyper benchmark: metric cost, and the LR it finds against torch-lr-finder, random search and a grid.

    .venv/bin/python -m bench.autohyper [--seeds 0,1,2] [--epochs 20] [--grid 9] [--skip-metrics-cost]
        [--candidates 0.25:5,0.4:5,0.6:5,0.75:5,0.4:3,0.6:3]

Part 1 times the batched metrics of a CIFAR ResNet-18 against its training steps (an epoch = 391 steps of
batch 128, extrapolated from a few steps). Part 2 runs, on sklearn digits (8x8, fixed 1347/450 split) with a
4-conv net (16-32-pool-64-64-GAP-FC) and Adam, batch 32, for every seed ``s``
(the initial weights are ``torch.manual_seed(s)`` and the data order of epoch ``e`` is seeded ``1000 s + e``, the
same for every method):

* a grid of LRs (geometric, 1e-4..0.1), each trained in full: the ground truth, reported as mean +- std of the
  final test accuracy over the seeds; the grid's best is the LR with the best mean;
* autoHyper, paper mode (5-epoch trials, a fresh init per trial seeded ``s + 1 + k``, as ``autohyper.task``);
* autoHyper, improved mode, for each candidate setting ``rel_lr_delta:trial_epochs`` (every trial from the
  weights of seed ``s``); the trials of one (seed, trial_epochs) are a deterministic function of the LR, so the
  candidates share them: each candidate's trials / epochs / seconds are those of the trials *its* search asked
  for (what it would cost run alone), measured once;
* ``torch_lr_finder.LRFinder.range_test`` with its defaults (end_lr 10, 100 iterations, exponential, smoothing
  0.05, stop at 5x the best loss) from the optimizer's LR 1e-7 (the package's README example), on a shuffled
  DataLoader seeded as above, and its own suggestion ``plot(suggest_lr=True)`` (steepest gradient of the
  smoothed loss, skip_start 10, skip_end 5);
* a random search with the improved default's trial budget (log-uniform [1e-4, 0.1], best 5-epoch test loss,
  as the original's sota.py), seeded ``s``;

then a full training (``--epochs``) at each suggested LR, from the seed's initial weights. Figures are printed;
nothing is written. (Run it with ``-m``: as a script, its own name would shadow the ``autohyper`` package.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torch_lr_finder import LRFinder  # noqa: E402

from autohyper import network_metrics, response_value, search_lr  # noqa: E402
from common.models import build_model  # noqa: E402

torch.set_num_threads(1)
BATCH = 32
PAPER_TRIAL_EPOCHS = 5  # the original's epochs=range(0, 5)
METHOD_CONF = Path(__file__).resolve().parents[1] / "conf" / "method" / "autohyper.yaml"


def digits() -> tuple[torch.Tensor, ...]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    x = (x - x[:1347].mean()) / x[:1347].std()
    return x[:1347], y[:1347], x[1347:], y[1347:]


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def fresh(seed: int) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet()


def batches(n: int, epoch: int, seed: int):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 * seed + epoch))
    return [perm[i : i + BATCH] for i in range(0, n, BATCH)]


@torch.no_grad()
def test_eval(model, xt, yt) -> tuple[float, float]:
    out = model(xt)
    return F.cross_entropy(out, yt).item(), (out.argmax(1) == yt).float().mean().item()


def train(model, lr, data, epochs, seed, metrics_every_epoch=False):
    """Adam at ``lr``, data order of ``seed``; returns (test loss, test acc, metrics history, diverged)."""
    x, y, xt, yt = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for e in range(epochs):
        for idx in batches(len(y), e, seed):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                return math.nan, 0.1, history, True
            opt.zero_grad()
            loss.backward()
            opt.step()
        if metrics_every_epoch:
            history.append(network_metrics(model, previous=history[-1] if history else None))
    tl, ta = test_eval(model, xt, yt)
    return tl, ta, history, False


def lr_finder(data, seed: int) -> tuple[float, int, float]:
    """torch-lr-finder's range test (package defaults) and its suggestion: (lr, iterations, seconds)."""
    x, y, _, _ = data
    model = fresh(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(1000 * seed),
    )
    t = time.perf_counter()
    finder = LRFinder(model, opt, nn.CrossEntropyLoss())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(loader)
        ax, lr = finder.plot(suggest_lr=True)
    secs = time.perf_counter() - t
    plt.close(ax.figure)
    return float(lr), len(finder.history["lr"]), secs


def metrics_cost() -> None:
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    F.cross_entropy(model(x), y).backward()
    t = time.perf_counter()
    steps = 3
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    step_s = (time.perf_counter() - t) / steps
    network_metrics(model)
    t = time.perf_counter()
    network_metrics(model)
    metrics_s = time.perf_counter() - t
    print("[metrics] ResNet-18 (CIFAR, 20 conv weights, 40 unfoldings), CPU 1 thread:")
    print(
        f"  metrics {metrics_s:.2f} s; train step (batch 128) {step_s:.2f} s; epoch (391 steps) ~{391 * step_s:.0f} s"
    )
    print(
        f"  metrics / epoch = {metrics_s / (391 * step_s):.4f}; metrics / one step = {metrics_s / step_s:.2f}"
    )


@dataclass
class Row:
    """One method on one seed."""

    lr: float
    trials: int
    epochs: float
    secs: float
    acc: float = math.nan


class Trials:
    """The autoHyper response on one seed: Z of a trial at ``lr`` (improved: cached, a function of the LR)."""

    def __init__(self, data, seed: int, mode: str, epochs: int):
        self.data, self.seed, self.mode, self.epochs = data, seed, mode, epochs
        self.cache: dict[float, tuple[float, float]] = {}

    def search(self, **kw) -> tuple[Row, object]:
        used: list[float] = []
        calls = [0]

        def response(lr: float) -> float:
            k = calls[0]
            calls[0] += 1
            key = float(f"{lr:.12g}")
            if self.mode == "improved" and key in self.cache:
                z, secs = self.cache[key]
            else:
                z, secs = self._trial(lr, k)
                if self.mode == "improved":
                    self.cache[key] = (z, secs)
            used.append(secs)
            return z

        r = search_lr(response, mode=self.mode, **kw)
        return Row(r.lr, r.num_trials, r.num_trials * self.epochs, sum(used)), r

    def _trial(self, lr: float, k: int) -> tuple[float, float]:
        # improved: every trial from the seed's weights; paper: a new init per trial (as autohyper.task)
        init = self.seed if self.mode == "improved" else self.seed + 1 + k
        t = time.perf_counter()
        _, _, hist, diverged = train(
            fresh(init), lr, self.data, self.epochs, self.seed, metrics_every_epoch=True
        )
        if diverged and self.mode == "improved":
            return math.nan, time.perf_counter() - t
        while diverged and len(hist) < self.epochs:  # the original's exception path (zeros, then frozen)
            hist.append(hist[-1]) if hist else hist.append(network_metrics(fresh(self.seed)))
        return response_value(hist, float16=self.mode == "paper"), time.perf_counter() - t


def fmt_acc(accs) -> str:
    a = 100 * np.asarray(accs)
    return f"{a.mean():6.2f} +- {a.std():4.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=20, help="full-training epochs (grid and suggested LRs)")
    ap.add_argument("--grid", type=int, default=9)
    ap.add_argument(
        "--candidates",
        default="0.25:5,0.4:5,0.6:5,0.75:5,0.4:3,0.6:3",
        help="improved-mode settings rel_lr_delta:trial_epochs to compare (the config default is added)",
    )
    ap.add_argument("--skip-metrics-cost", action="store_true")
    args = ap.parse_args()
    if not args.skip_metrics_cost:
        metrics_cost()
    seeds = [int(s) for s in args.seeds.split(",")]
    conf = OmegaConf.load(METHOD_CONF)
    default = (float(conf.rel_lr_delta), int(conf.trial_epochs))
    cands = [(float(a), int(b)) for a, b in (c.split(":") for c in args.candidates.split(","))]
    if default not in cands:
        cands.insert(0, default)
    data = digits()
    t0 = time.perf_counter()

    finals: dict[tuple[int, float], float] = {}

    def final(seed: int, lr: float) -> float:
        key = (seed, float(f"{lr:.12g}"))
        if key not in finals:
            finals[key] = train(fresh(seed), lr, data, args.epochs, seed)[1]
        return finals[key]

    # ground truth: the grid, every seed
    grid = [float(v) for v in np.geomspace(1e-4, 0.1, args.grid)]
    grid_acc = {lr: [final(s, lr) for s in seeds] for lr in grid}
    best_lr = max(grid, key=lambda lr: np.mean(grid_acc[lr]))
    best = float(np.mean(grid_acc[best_lr]))
    print(f"[grid] {args.grid} LRs, {args.epochs} epochs, seeds {seeds}: test acc (%) per seed, mean +- std")
    for lr in grid:
        mark = "  <- best mean" if lr == best_lr else ""
        per = " ".join(f"{100 * a:6.2f}" for a in grid_acc[lr])
        print(f"  {lr:9.3g}  {per}   {fmt_acc(grid_acc[lr])}{mark}")

    # the methods, per seed
    rows: dict[str, list[Row]] = {}
    paper_runs, improved_runs = {}, {}
    for s in seeds:
        row, r = Trials(data, s, "paper", PAPER_TRIAL_EPOCHS).search()
        rows.setdefault("autoHyper paper", []).append(row)
        paper_runs[s] = r
        for epochs in sorted({e for _, e in cands}):
            trials = Trials(data, s, "improved", epochs)
            for rel, e in cands:
                if e == epochs:
                    row, r = trials.search(rel_lr_delta=rel)
                    rows.setdefault(f"improved rel={rel:g} ep={e}", []).append(row)
                    improved_runs[(s, rel, e)] = r
        lr, iters, secs = lr_finder(data, s)
        rows.setdefault("torch-lr-finder", []).append(Row(lr, 0, iters * BATCH / len(data[1]), secs))
        budget = improved_runs[(s, *default)].num_trials
        rng = np.random.default_rng(s)
        t = time.perf_counter()
        lrs = [float(v) for v in 10 ** rng.uniform(-4, -1, budget)]
        losses = [train(fresh(s), lr, data, PAPER_TRIAL_EPOCHS, s)[0] for lr in lrs]
        rows.setdefault("random search", []).append(
            Row(lrs[int(np.nanargmin(losses))], budget, budget * PAPER_TRIAL_EPOCHS, time.perf_counter() - t)
        )
    for rs in rows.values():
        for s, row in zip(seeds, rs):
            row.acc = final(s, row.lr)

    for s in seeds:
        r = paper_runs[s]
        print(f"[paper seed {s}] lr={r.lr:.4g} trials={r.num_trials} stop={r.stop} branches: "
              + " ".join(f"{t.lr:.2e}:{t.z:.3f}:{t.branch}" for t in r.trials))  # fmt: skip
        r = improved_runs[(s, *default)]
        print(f"[improved default seed {s}] lr={r.lr:.4g} trials={r.num_trials} stop={r.stop} branches: "
              + " ".join(f"{t.lr:.2e}:{t.z:.3f}:{t.branch}{'(c)' if t.cached else ''}" for t in r.trials))  # fmt: skip

    print(f"\n[per seed] lr / trials / trial-epochs / search s / test acc (%), {args.epochs}-epoch training")
    for name, rs in rows.items():
        cells = "  ".join(f"s{s}: {r.lr:8.3g} {r.trials:3d} {r.epochs:5.1f} {r.secs:6.1f} {100 * r.acc:6.2f}"
                          for s, r in zip(seeds, rs))  # fmt: skip
        print(f"  {name:24s} {cells}")

    paper_ep = np.mean([r.epochs for r in rows["autoHyper paper"]])
    print(
        f"\n[summary] grid best: lr={best_lr:.3g}, {100 * best:.2f}% (mean over seeds {seeds}); "
        "gap = grid best mean - method mean (points); decades = mean log10(lr / grid best lr)"
    )
    head = f"  {'method':24s} {'lr (geo-mean)':>13s} {'trials':>6s} {'epochs':>7s} {'search_s':>8s} "
    print(head + f"{'test acc % (mean +- std)':>24s} {'gap_pt':>6s} {'decades':>7s} {'ep/paper':>8s} goal")
    for name, rs in rows.items():
        lrs = np.array([r.lr for r in rs])
        accs = [r.acc for r in rs]
        gap = 100 * (best - np.mean(accs))
        ep = np.mean([r.epochs for r in rs])
        ratio = ep / paper_ep
        goal = ""
        if name.startswith("improved"):
            goal = "MET" if gap <= 1 and ratio <= 0.5 else "missed"
            if (float(name.split("rel=")[1].split()[0]), int(name.split("ep=")[1])) == default:
                goal += " (default)"
        print(
            f"  {name:24s} {np.exp(np.log(lrs).mean()):13.3g} {np.mean([r.trials for r in rs]):6.1f} "
            f"{ep:7.1f} {np.mean([r.secs for r in rs]):8.1f} {fmt_acc(accs):>24s} {gap:6.2f} "
            f"{np.mean(np.log10(lrs / best_lr)):7.2f} {ratio:8.2f} {goal}"
        )
    print(
        f"improved default (rel_lr_delta={default[0]:g}, trial_epochs={default[1]}) / paper trial-epochs = "
        f"{np.mean([r.epochs for r in rows[f'improved rel={default[0]:g} ep={default[1]}']]) / paper_ep:.2f}"
    )
    print(f"[bench] total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
