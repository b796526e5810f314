"""Benchmark of adatune: per-step cost of HD/MARTHE over plain SGD-momentum, and LR sensitivity on digits.

    .venv/bin/python bench/adatune.py [--part speed|accuracy|accuracy_cifar|all] [--reps 5] [--epochs 10]

Speed: median wall time of one training step (same model, batch, weights, 1 thread) for SGD-momentum,
SGDHD and MARTHE (μ = 0.9; its HVP is a double backward through the create_graph gradient, its tangent update
public per-tensor ops, plus one validation forward/backward), on the digits MLP (64-32-10), a 512-512 MLP and
CIFAR ResNet-18 (batch 32, 3x32x32).
Accuracy: digits MLP, SGD-momentum 0.9, from lr0 ∈ {0.001, 0.01, 0.1}: MARTHE, RTHO, HD (training loss), and the
step, exponential and cosine-with-restarts schedules; final test accuracy and the LR at a few epochs.
Accuracy, CIFAR-shaped (``accuracy_cifar``): the same comparison with a small CNN (conv 3-8, conv 8-8 stride 2,
linear; LeNet-5 stays at chance here) on the repo's synthetic
class-conditional Gaussian images (``conf/dataset/synthetic.yaml``: 3x32x32, 10 classes, signal 4, no download),
2048 train / 512 validation / 1000 test samples, batch 64.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adatune import MARTHE, SGDHD  # noqa: E402
from common.models import build_model  # noqa: E402


def _timed(fns: list, reps: int) -> list[float]:
    """Median wall time of each fn, timed round-robin (load drift on a shared machine hits all alike)."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def speed(reps: int) -> None:
    cases = {
        "digits_mlp": (lambda: nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)), (64,), 50),
        "mlp_512": (
            lambda: nn.Sequential(
                nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
            ),
            (784,),
            128,
        ),
        "resnet18_cifar": (
            lambda: build_model("resnet18", num_classes=10, in_channels=3, image_size=32),
            (3, 32, 32),
            32,
        ),
    }
    print(
        f"{'model':16s} {'sgdm ms':>9s} {'hd ms':>9s} {'marthe ms':>10s} {'hd/sgdm':>8s} {'marthe/sgdm':>12s} "
        f"{'grad+HVP dbl':>14s} {'grad+HVP f-r':>14s} {'marthe fwd-rev':>16s}   (ratios to sgdm)"
    )
    for name, (make, shape, bs) in cases.items():
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(bs, *shape, generator=g), torch.randint(0, 10, (bs,), generator=g)
        xv, yv = torch.randn(bs, *shape, generator=g), torch.randint(0, 10, (bs,), generator=g)
        torch.manual_seed(0)
        m1 = make()
        o1 = torch.optim.SGD(m1.parameters(), lr=1e-3, momentum=0.9)

        def sgd_step(m=m1, o=o1, x=x, y=y):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()

        torch.manual_seed(0)
        m2 = make()
        o2 = SGDHD(m2.parameters(), lr=1e-3, momentum=0.9, hypergrad_lr=1e-9)

        def hd_step(m=m2, o=o2, x=x, y=y):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()

        torch.manual_seed(0)
        m3 = make()
        tuner = MARTHE(torch.optim.SGD(m3.parameters(), lr=1e-3, momentum=0.9), hyper_lr=1e-9, mu=0.9)

        def marthe_step(m=m3, tuner=tuner, x=x, y=y, xv=xv, yv=yv):
            def val():
                m.eval()
                try:
                    return F.cross_entropy(m(xv), yv)
                finally:
                    m.train()

            tuner.step(F.cross_entropy(m(x), y), val)

        marthe_step()  # the first step has no tangent yet (no HVP): time the steady state
        double_backward, forward_over_reverse = _hvp_variants(make, x, y)
        r = reps if name != "resnet18_cifar" else max(3, reps // 2)
        ts, th, tm, tdb, tfr = _timed(
            [sgd_step, hd_step, marthe_step, double_backward, forward_over_reverse], r * 4
        )
        print(
            f"{name:16s} {ts * 1e3:9.2f} {th * 1e3:9.2f} {tm * 1e3:10.2f} {th / ts:8.2f} {tm / ts:12.2f} "
            f"{tdb / ts:14.2f} {tfr / ts:14.2f} {(tm - tdb + tfr) / ts:16.2f}"
        )
    print(
        "grad+HVP: the gradient and H·Z of the training loss, as MARTHE computes them (double backward through the\n"
        "create_graph gradient) and by forward-over-reverse (torch.func.jvp of torch.func.grad; BatchNorm without\n"
        "running statistics, which func transforms cannot update); 'marthe fwd-rev' = MARTHE - the first + the second."
    )


def _hvp_variants(make, x: torch.Tensor, y: torch.Tensor):
    """The gradient + Hessian-vector product of the training loss, by double backward and by forward-over-reverse."""
    torch.manual_seed(0)
    model = make()
    torch.func.replace_all_batch_norm_modules_(model)
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    z = {k: torch.randn_like(p) for k, p in params.items()}

    def loss_of(p):
        return F.cross_entropy(torch.func.functional_call(model, (p, buffers), (x,)), y)

    def double_backward():
        p = {k: v.requires_grad_() for k, v in params.items()}
        grads = torch.autograd.grad(loss_of(p), list(p.values()), create_graph=True)
        dot = sum((g * z[k]).sum() for g, k in zip(grads, p))
        hvp = torch.autograd.grad(dot, list(p.values()))
        for v in p.values():
            v.requires_grad_(False)
        return grads, hvp

    def forward_over_reverse():
        return torch.func.jvp(torch.func.grad(loss_of), (params,), (z,))

    return double_backward, forward_over_reverse


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    tr, va = slice(0, 1000), slice(1000, 1400)
    te = slice(1400, None)
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mean) / std
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def _synthetic_cifar():
    from common.data.synthetic import class_means, sample

    means = class_means((3, 32, 32), 10, 4.0, 0)  # the defaults of conf/dataset/synthetic.yaml
    return tuple(sample(means, n, 1.0, seed) for n, seed in ((2048, 1), (512, 2), (1000, 3)))


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def _small_cnn() -> nn.Module:
    # LeNet-5 stays at chance on these images: its pooling averages away the class-mean patterns, which are
    # white noise in space; two 3x3 convs (the second strided) and a linear head keep the layout and learn them
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16 * 16, 10),
    )  # fmt: skip


def accuracy(epochs: int, data=None, make_model=_digits_mlp, bs: int = 50, hyper_lr: float = 1e-3) -> None:
    (xt, yt), (xv, yv), (xe, ye) = data if data is not None else _digits()
    steps_per_epoch = len(yt) // bs
    methods = ("marthe", "rtho", "hd", "step", "exponential", "cosine_restarts")
    print(f"{'lr0':>7s} " + " ".join(f"{m:>16s}" for m in methods))
    finals = {m: [] for m in methods}
    for lr0 in (0.001, 0.01, 0.1):
        row = []
        for method in methods:
            torch.manual_seed(0)
            model = make_model()
            base = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9)
            tuner = sched = opt = None
            if method in ("marthe", "rtho"):
                tuner = MARTHE(base, hyper_lr=hyper_lr, mu=0.9 if method == "marthe" else 1.0)
            elif method == "hd":
                opt = SGDHD(model.parameters(), lr=lr0, momentum=0.9, hypergrad_lr=hyper_lr)
            else:
                opt = base
                if method == "step":
                    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
                elif method == "exponential":
                    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)
                else:
                    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, epochs // 3))
            step = 0
            lr_curve = []
            for epoch in range(epochs):
                order = torch.randperm(len(yt), generator=torch.Generator().manual_seed(epoch))
                for b in range(steps_per_epoch):
                    idx = order[b * bs : (b + 1) * bs]
                    vi = (
                        (torch.arange(step * bs, (step + 1) * bs) % len(yv)) if len(yv) >= bs else slice(None)
                    )
                    loss = F.cross_entropy(model(xt[idx]), yt[idx])
                    if tuner is not None:
                        tuner.step(loss, lambda vi=vi, model=model: F.cross_entropy(model(xv[vi]), yv[vi]))
                    else:
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    step += 1
                if sched is not None:
                    sched.step()
                lr_curve.append((tuner or opt).param_groups[0]["lr"])
            with torch.no_grad():
                model.eval()
                acc = float((model(xe).argmax(1) == ye).float().mean())
            finals[method].append(acc)
            row.append(f"{acc:.3f}@{lr_curve[-1]:.2g}")
            curve = ", ".join(f"{lr:.3g}" for lr in lr_curve[:: max(1, epochs // 5)])
            print(f"#   {method} lr0={lr0}: LR per epoch (every {max(1, epochs // 5)}): {curve}", flush=True)
        print(f"{lr0:7.3f} " + " ".join(f"{c:>16s}" for c in row), flush=True)
    print("spread of final test acc over lr0 (max - min):")
    for m in methods:
        print(f"  {m:16s} {max(finals[m]) - min(finals[m]):.3f}  (mean {statistics.mean(finals[m]):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy", "accuracy_cifar", "all"), default="all")
    parser.add_argument("--hyper-lr", type=float, default=1e-3, help="β (HD, RTHO, MARTHE)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part in ("speed", "all"):
        speed(args.reps)
    if args.part in ("accuracy", "all"):
        accuracy(args.epochs, hyper_lr=args.hyper_lr)
    if args.part in ("accuracy_cifar", "all"):
        t0 = time.perf_counter()
        accuracy(args.epochs, _synthetic_cifar(), _small_cnn, bs=64, hyper_lr=args.hyper_lr)
        print(f"accuracy_cifar: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
