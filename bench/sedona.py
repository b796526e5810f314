"""SEDONA benchmark: peak saved-activation memory and time per iteration of greedy training, K = 1, 2, 4, 8.

VGG-19 (SEDONA's, feat_mult 1) on CIFAR-shaped random batches, per-block against joint backward, measured side
by side in one run. Memory is the peak of the bytes autograd holds for backward (saved-tensor accounting via
``torch.autograd.graph.saved_tensors_hooks``), which is the activation memory on any device.

    .venv/bin/python -m bench.sedona [--batch 32] [--iters 3]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
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
