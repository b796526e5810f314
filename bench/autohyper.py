"""autoHyper benchmark: metric cost, and the LR it finds against a range test, random search and a grid.

    .venv/bin/python -m bench.autohyper [--epochs 20] [--grid 9] [--skip-metrics-cost]

Part 1 times the batched metrics of a CIFAR ResNet-18 against its training steps (an epoch = 391 steps of
batch 128, extrapolated from a few steps). Part 2 runs, on sklearn digits (8x8, fixed 1347/450 split) with a
4-conv net (16-32-pool-64-64-GAP-FC, the brief's probe plus one conv) and Adam, all with the same seed:
autoHyper paper and improved modes (5-epoch trials, batch 32), an LR range test (torch-lr-finder's algorithm,
re-implemented: the package is not installed here: exponential LR from 1e-7 to 10 over 100 iterations, loss
smoothing 0.05, stop at 5x the best loss, suggestion = steepest descent of the smoothed loss after skipping 10
at the start and 5 at the end), a random search with improved mode's trial budget (log-uniform [1e-4, 0.1],
best 5-epoch test loss, as the original's sota.py) and a grid as ground truth; each suggested LR is then
trained in full. Figures are printed; nothing is written. (Run it with ``-m``: as a script, its own name
would shadow the ``autohyper`` package.)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from autohyper import network_metrics, response_value, search_lr
from common.models import build_model

torch.set_num_threads(1)
SEED = 0


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


def fresh(seed: int = SEED) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet()


def batches(n: int, epoch: int, bs: int = 32):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1000 * SEED + epoch))
    return [perm[i : i + bs] for i in range(0, n, bs)]


@torch.no_grad()
def test_eval(model, xt, yt) -> tuple[float, float]:
    out = model(xt)
    return F.cross_entropy(out, yt).item(), (out.argmax(1) == yt).float().mean().item()


def train(model, lr, data, epochs, metrics_every_epoch=False):
    """Adam at ``lr``; returns (test loss, test acc, metrics history, diverged)."""
    x, y, xt, yt = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for e in range(epochs):
        for idx in batches(len(y), e):
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


def range_test(data) -> tuple[float, int]:
    """torch-lr-finder's ``range_test`` + steepest-gradient suggestion, re-implemented."""
    x, y, _, _ = data
    model = fresh()
    opt = torch.optim.Adam(model.parameters(), lr=1e-7)
    start, end, num_iter = 1e-7, 10.0, 100
    lrs, losses, best, smooth = [], [], math.inf, None
    it = 0
    for e in range(10):
        for idx in batches(len(y), e):
            lr = start * (end / start) ** (it / (num_iter - 1))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            smooth = value if smooth is None else 0.05 * value + 0.95 * smooth
            lrs.append(lr)
            losses.append(smooth)
            best = min(best, smooth)
            it += 1
            if smooth > 5 * best or not math.isfinite(smooth) or it == num_iter:
                break
        else:
            continue
        break
    lr_t, loss_t = np.array(lrs[10:-5]), np.array(losses[10:-5])
    return float(lr_t[np.argmin(np.gradient(loss_t))]), it


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--grid", type=int, default=9)
    ap.add_argument("--skip-metrics-cost", action="store_true")
    args = ap.parse_args()
    if not args.skip_metrics_cost:
        metrics_cost()
    data = digits()
    trial_epochs = 5

    def make_response(mode: str):
        def response(lr: float) -> float:
            # improved: every trial from the same seeded weights; paper: a new init per trial
            seed = SEED if mode == "improved" else SEED + 1 + len(calls)
            calls.append(lr)
            _, _, hist, diverged = train(fresh(seed), lr, data, trial_epochs, metrics_every_epoch=True)
            if diverged and mode == "improved":
                return math.nan
            while diverged and len(hist) < trial_epochs:  # the original's exception path
                hist.append(hist[-1]) if hist else hist.append(network_metrics(fresh()))
            return response_value(hist, float16=mode == "paper")

        calls: list[float] = []
        return response

    rows = []
    for mode in ("paper", "improved"):
        t = time.perf_counter()
        r = search_lr(make_response(mode), mode=mode)
        rows.append(
            (f"autoHyper {mode}", r.lr, r.num_trials, r.num_trials * trial_epochs, time.perf_counter() - t)
        )
        print(f"[{mode}] lr={r.lr:.4g} trials={r.num_trials} stop={r.stop} Z: "
              + " ".join(f"{s.lr:.2e}:{s.z:.3f}:{s.branch}" for s in r.trials))  # fmt: skip
    t = time.perf_counter()
    lr_rt, iters = range_test(data)
    rows.append(("range test (steepest)", lr_rt, 0, iters / 43, time.perf_counter() - t))
    budget = rows[1][2]
    rng = np.random.default_rng(SEED)
    t = time.perf_counter()
    cands = 10 ** rng.uniform(-4, -1, budget)
    losses = [train(fresh(), float(lr), data, trial_epochs)[0] for lr in cands]
    best = float(cands[int(np.nanargmin(losses))])
    rows.append((f"random search ({budget})", best, budget, budget * trial_epochs, time.perf_counter() - t))
    grid = np.geomspace(1e-4, 0.1, args.grid)
    grid_acc = {float(lr): train(fresh(), float(lr), data, args.epochs)[1] for lr in grid}
    best_lr = max(grid_acc, key=grid_acc.get)
    print(f"[grid] {args.epochs} epochs: " + " ".join(f"{lr:.2e}:{a:.4f}" for lr, a in grid_acc.items()))
    print(f"[grid] best lr={best_lr:.3g} acc={grid_acc[best_lr]:.4f}")
    print(
        f"{'method':24s} {'lr':>9s} {'trials':>6s} {'epochs':>7s} {'search_s':>8s} {'test_acc':>8s} {'gap_pt':>7s} {'decades':>7s}"
    )
    for name, lr, trials, epochs, secs in rows:
        acc = train(fresh(), lr, data, args.epochs)[1]
        print(
            f"{name:24s} {lr:9.3g} {trials:6d} {epochs:7.1f} {secs:8.1f} {acc:8.4f} "
            f"{100 * (grid_acc[best_lr] - acc):7.2f} {math.log10(lr / best_lr):7.2f}"
        )
    paper_ep, improved_ep = rows[0][3], rows[1][3]
    print(f"improved / paper trial-epochs = {improved_ep / paper_ep:.2f}")


if __name__ == "__main__":
    main()
