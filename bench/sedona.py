"""SEDONA benchmark: peak saved-activation memory and time per iteration of greedy training, K = 1, 2, 4, 8.

VGG-19 (SEDONA's, feat_mult 1) on CIFAR-shaped random batches, per-block against joint backward, measured side
by side in one run. Memory is the peak of the bytes autograd holds for backward (saved-tensor accounting via
``torch.autograd.graph.saved_tensors_hooks``), which is the activation memory on any device.

    .venv/bin/python -m bench.sedona [--batch 32] [--iters 3] [--search-cost]

``--search-cost`` times one ordinary relaxed step and one meta-step (T unrolled inner steps) of SEDONA's search
on the same net and batch, and prints the cost of the original's search protocol in greedy-training-step
equivalents (measured, not the (T+1) pass count).
"""

from __future__ import annotations

import argparse
import time

import torch

from sedona import build_decoupled, uniform_split


class SavedBytes:
    """Live and peak bytes of the tensors autograd saves for backward."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def hooks(self):
        meter = self

        class Held:
            def __init__(self, t: torch.Tensor) -> None:
                self.t = t
                self.n = t.numel() * t.element_size()
                meter.live += self.n
                meter.peak = max(meter.peak, meter.live)

            def __del__(self) -> None:
                meter.live -= self.n

        return torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t)


def step(net, cfg, x, y, mode: str) -> None:
    net.zero_grad(set_to_none=True)
    losses = []
    for loss, _ in net.block_outputs(x, y, cfg):
        if mode == "per_block":
            loss.backward()
        losses.append(loss)
    if mode == "joint":
        torch.stack(losses).sum().backward()


def search_cost(batch: int, iters: int, inner_steps: int = 5) -> None:
    """Time of a greedy step (K = 4), a relaxed step and a meta-step (T inner steps) on VGG-19; search cost."""
    from sedona import search as S

    torch.manual_seed(0)
    net = build_decoupled("vgg19", 10, 3, image_size=32, feat_mult=1.0, aux="conv4", heads=False)
    model = S.SearchNet(net)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    alpha = torch.zeros(model.num_units - 1, 2, requires_grad=True)
    beta = torch.zeros(model.num_units - 1, 4, requires_grad=True)
    state = S.snapshot(model, None, 0, 0.0)
    greedy = build_decoupled("vgg19", 10, 3, image_size=32, feat_mult=1.0, aux="conv4")
    cfg = uniform_split(greedy.num_units, 4)
    greedy.set_decoupling(cfg)

    def timed(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters

    t_greedy = timed(lambda: step(greedy, cfg, x, y, "per_block"))
    t_relaxed = timed(
        lambda: S.relaxed_step(model, state, (x, y), alpha, beta, lr=0.01, momentum=0.9, weight_decay=1e-4)
    )
    t_meta = timed(lambda: S.hypergradient(model, state, [(x, y)] * inner_steps, alpha, beta, lr=0.01))
    meta = (t_meta + t_relaxed) / t_greedy  # a meta-iteration also advances the popped state by one step
    pre, iters_meta = 40_000, 2_000
    total = pre * t_relaxed / t_greedy + iters_meta * meta
    print(f"VGG-19 (fm 1), batch {batch}, CPU 1 thread; T = {inner_steps} (train_last)")
    print(f"  greedy step K=4 (conv4 heads): {t_greedy:.3f} s = 1 step-equivalent")
    print(f"  relaxed step (15 mixed heads): {t_relaxed:.3f} s = {t_relaxed / t_greedy:.2f}")
    print(f"  meta-iteration (unroll + advance): {t_meta + t_relaxed:.3f} s = {meta:.2f}")
    print(
        f"  original protocol (40k pretraining + 2k meta-iterations): {total:,.0f} step-equivalents"
        f" = {total / 64_000:.2f}x one 64k-step CIFAR-10 training"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--search-cost", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.search_cost:
        search_cost(args.batch, args.iters)
        return
    torch.manual_seed(0)
    net = build_decoupled("vgg19", 10, 3, image_size=32, feat_mult=1.0, aux="mlp_sr")
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    print(f"VGG-19 (SEDONA, fm 1), batch {args.batch}, CPU 1 thread, MLP-SR heads, uniform split")
    print(f"{'K':>3} {'backward':>10} {'peak saved MB':>14} {'vs K=1':>7} {'s/iter':>8}")
    base = None
    for k in (1, 2, 4, 8):
        cfg = uniform_split(net.num_units, k)
        for mode in ("joint", "per_block"):
            meter = SavedBytes()
            with meter.hooks():
                step(net, cfg, x, y, mode)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                step(net, cfg, x, y, mode)
            dt = (time.perf_counter() - t0) / args.iters
            base = base or meter.peak
            print(f"{k:>3} {mode:>10} {meter.peak / 2**20:>14.2f} {meter.peak / base:>7.3f} {dt:>8.3f}")


if __name__ == "__main__":
    main()
