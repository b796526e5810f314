"""Activation memory of greedy training: a saved-tensor meter and the memory-balanced decoupling.

What limits the batch size of block-wise training is the activation memory autograd holds between a block's
forward and its backward. With per-block backward only one block's graph is alive at a time, so the peak is
that of the heaviest block (its units plus its head). A split with the same number of *units* per block is far
from the same *memory* per block in a CNN: the early, high-resolution units hold most of it (VGG-19 at 32 px:
the first four units of sixteen hold more than half). ``balanced_split`` chooses the cuts that minimise the
heaviest block instead (``method.decoupling=balanced``), which is where K blocks save the most memory.

The meter counts every storage once, however many ops save it (a ReLU's output is saved by the ReLU and by
the convolution after it), and leaves out the parameters (held anyway): the bytes autograd holds for backward,
the same on any device and linear in the batch size, so a few samples measure it.

What the allocator reaches is more: during a block's backward it also holds the gradients, operator
temporaries and, on a GPU, cuDNN's convolution workspaces, which can dominate the saved activations (the
backward of VGG-19's 32-px convolutions on an H200) and do not scale with the batch. ``block_peaks`` measures
each candidate block's real step peak with the device's allocator (:mod:`common.memory`) at the training
batch size, and ``balanced_decoupling(..., measure="allocator")`` balances that instead
(``method.balance_by``; ``auto``: the allocator on CUDA, the meter elsewhere).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from common.seeding import forked_rng
from sedona.network import DecoupledNet, Decoupling


class SavedActivationMeter:
    """Live and peak bytes of the distinct non-parameter storages autograd saves for backward.

    Use as ``with meter.hooks(): ...``; ``meter.live`` and ``meter.peak`` are in bytes.
    """

    def __init__(self, parameters: Iterator[nn.Parameter] | list[nn.Parameter] = ()) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in parameters}
        self.refs: dict[int, list[int]] = {}  # storage pointer → [references, bytes]
        self.live = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor) -> _Held:
        return _Held(self, t)

    def hooks(self) -> contextlib.AbstractContextManager:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)


class _Held:
    """One saved tensor; counts its storage while any saved tensor still refers to it."""

    def __init__(self, meter: SavedActivationMeter, t: torch.Tensor) -> None:
        # detached (same storage): a saved *output* kept with its grad_fn would make a reference cycle
        # (node → saved tensor → grad_fn → node) that keeps the whole graph alive after it is dropped
        self.t = t.detach()
        self.meter = meter
        storage = t.untyped_storage()
        key = storage.data_ptr()
        self.key = None if key in meter.exclude or storage.nbytes() == 0 else key
        if self.key is None:
            return
        ref = meter.refs.get(self.key)
        if ref is None:
            ref = meter.refs[self.key] = [0, storage.nbytes()]
            meter.live += ref[1]
            meter.peak = max(meter.peak, meter.live)
        ref[0] += 1

    def __del__(self) -> None:
        if self.key is None:
            return
        ref = self.meter.refs[self.key]
        ref[0] -= 1
        if ref[0] == 0:
            self.meter.live -= ref[1]
            del self.meter.refs[self.key]


def _unpack(held: _Held) -> torch.Tensor:
    return held.t


def _probe(net: DecoupledNet, x: torch.Tensor, kind: str | None) -> tuple[DecoupledNet, list[torch.Tensor]]:
    """A copy of ``net`` in train mode with a head of ``kind`` after every unit but the last, and the input of
    every unit on ``x`` (no graph). Call it under a forked RNG: the heads' init draws from it."""
    probe = copy.deepcopy(net)
    probe.train()
    for unit in range(net.num_units - 1):
        probe.add_head(unit, kind)
    # a copy: a slice of a larger batch would be counted with the whole storage it views
    h = x.clone()
    inputs = []
    with torch.no_grad():  # the input of every candidate first unit
        for unit in probe.units:
            inputs.append(h)
            h = unit(h)
    return probe, inputs


def _head_loss(probe: DecoupledNet, j: int, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The local loss after unit ``j``: its auxiliary head's, or the classifier's after the last unit."""
    if j == probe.num_units - 1:
        return torch.nn.functional.cross_entropy(probe.classifier(h), y)
    return probe.aux[str(j)].forward_loss(h, y, probe.label_smoothing)[0]


def block_costs(net: DecoupledNet, x: torch.Tensor, y: torch.Tensor, kind: str | None = None) -> torch.Tensor:
    """``C[i, j]``: bytes held for backward by a block of units ``i..j`` and its head, on the batch ``(x, y)``.

    The head after unit ``j < L−1`` is of ``kind`` (default: the net's ``aux``); the block ending at ``L−1``
    uses the classifier. Entries with ``i > j`` are 0. Measured on a copy of the net (built under a forked RNG,
    so the caller's random stream and the net are untouched): one forward per first unit ``i``, and one head
    forward per (i, j), each released right after it is read. The cost of a block is linear in the batch size,
    so a small probe batch gives the right proportions.
    """
    L = net.num_units
    with forked_rng(x.device):
        probe, inputs = _probe(net, x, kind)
        costs = torch.zeros(L, L, dtype=torch.float64)
        for i in range(L):
            meter = SavedActivationMeter(probe.parameters())
            with meter.hooks():
                h = inputs[i].detach()
                for j in range(i, L):
                    h = probe.units[j](h)
                    loss = _head_loss(probe, j, h, y)
                    costs[i, j] = meter.live
                    del loss  # frees the head's saved tensors: back to the units' bytes
    return costs


def block_peaks(net: DecoupledNet, x: torch.Tensor, y: torch.Tensor, kind: str | None = None) -> torch.Tensor:
    """``C[i, j]``: the allocator's peak (bytes above the start) of one step of the block of units ``i..j`` and
    its head on the batch ``(x, y)``: forward from the block's detached input, loss, backward (gradients from
    None), on ``x``'s device (:func:`common.memory.peak_bytes`).

    Heads as in :func:`block_costs`; measured on a copy of the net under a forked RNG (the caller's net and random
    stream are untouched), each block's step after one unmeasured step of the same block. The peak is not linear
    in the batch size on a GPU (workspaces): pass a batch of the training size.
    """
    from common.memory import peak_bytes

    L = net.num_units
    device = x.device
    with forked_rng(device):
        probe, inputs = _probe(net, x, kind)

        def step(i: int, j: int) -> None:
            h = inputs[i].detach()
            for u in range(i, j + 1):
                h = probe.units[u](h)
            _head_loss(probe, j, h, y).backward()

        costs = torch.zeros(L, L, dtype=torch.float64)
        for i in range(L):
            for j in range(i, L):
                # the block's step once unmeasured: what its first step alone allocates for good (cuDNN's
                # choice of algorithms and handles, the allocator's first blocks) is not its step's peak
                probe.zero_grad(set_to_none=True)
                step(i, j)
                probe.zero_grad(set_to_none=True)
                costs[i, j] = peak_bytes(lambda i=i, j=j: step(i, j), device)
        probe.zero_grad(set_to_none=True)
    return costs


def balanced_split(costs: torch.Tensor, num_blocks: int) -> tuple[int, ...]:
    """Block ends of the K-block split minimising the heaviest block's cost (``costs`` from :func:`block_costs`).

    Exact dynamic programme over contiguous splits; among splits with the same heaviest block it takes the one
    with the smallest sum of block costs, then the earliest cuts.
    """
    L = costs.shape[0]
    if not 1 <= num_blocks <= L:
        raise ValueError(f"num_blocks must be in 1..{L}, got {num_blocks}")
    c = costs.tolist()
    inf = (float("inf"), float("inf"))
    # best[k][j]: (max, sum) of the best split of units 0..j into k+1 blocks; arg[k][j]: end of block k's predecessor
    best = [[inf] * L for _ in range(num_blocks)]
    arg = [[-1] * L for _ in range(num_blocks)]
    for j in range(L):
        best[0][j] = (c[0][j], c[0][j])
    for k in range(1, num_blocks):
        for j in range(k, L):
            for e in range(k - 1, j):  # the previous block ends at e; this one is e+1..j
                prev = best[k - 1][e]
                cand = (max(prev[0], c[e + 1][j]), prev[1] + c[e + 1][j])
                if cand < best[k][j]:
                    best[k][j], arg[k][j] = cand, e
    ends = [L - 1]
    for k in range(num_blocks - 1, 0, -1):
        ends.append(arg[k][ends[-1]])
    return tuple(reversed(ends))


MEASURES = ("saved", "allocator")


def balanced_decoupling(
    net: DecoupledNet,
    num_blocks: int,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str | None = None,
    measure: str = "saved",
) -> Decoupling:
    """The memory-balanced :class:`Decoupling` of ``net`` into ``num_blocks`` blocks (heads of kind ``kind``).

    ``measure``: ``saved`` balances the activation bytes autograd saves (:func:`block_costs`; a few samples
    suffice), ``allocator`` the allocator's real step peak per block (:func:`block_peaks`; pass a training-size
    batch).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
    costs = block_costs(net, x, y, kind) if measure == "saved" else block_peaks(net, x, y, kind)
    ends = balanced_split(costs, num_blocks)
    return Decoupling(block_ends=ends, heads=(kind,) * (num_blocks - 1))


def resident_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers: what stays allocated through every step."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _random_step(net: DecoupledNet, dec: Decoupling, batch: int, sample_shape: tuple[int, ...]):
    """One per-block training step (forward, each block's backward as soon as its loss exists) on a random
    batch that is allocated inside the step: it is part of what must fit."""
    device = next(net.parameters()).device

    def step() -> None:
        x = torch.randn(batch, *sample_shape, device=device)
        y = torch.randint(0, net.num_classes, (batch,), device=device)
        for loss, _ in net.block_outputs(x, y, dec):
            loss.backward()

    return step


def step_footprint(net: DecoupledNet, dec: Decoupling, batch: int, sample_shape: tuple[int, ...]) -> int:
    """The device memory (bytes) one per-block step of ``dec`` at ``batch`` needs: the cap under which it just
    fits (:func:`largest_batch_under_cap` of backprop under ``step_footprint`` of backprop is about ``batch``).

    CUDA: the most the caching allocator reserved from the GPU during the step, from an emptied cache
    (``torch.cuda.max_memory_reserved``: everything the process holds, parameters included, with the rounding
    of its blocks into segments; what a memory cap limits and a smaller GPU runs out of), after one unmeasured
    step (cuDNN's handles and algorithm choice). CPU: the parameters' and buffers' bytes plus the step's
    profiled allocator peak. Random inputs of ``sample_shape`` under a forked RNG; ``dec``'s heads are built.
    """
    from common.memory import peak_bytes

    net.set_decoupling(dec)
    device = next(net.parameters()).device
    step = _random_step(net, dec, batch, sample_shape)
    with forked_rng(device):
        net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            step()
            net.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            need = torch.cuda.max_memory_reserved(device)
        else:
            need = resident_bytes(net) + peak_bytes(step, device)
        net.zero_grad(set_to_none=True)
    return int(need)


def largest_batch_under_cap(
    net: DecoupledNet,
    dec: Decoupling,
    cap_bytes: int,
    sample_shape: tuple[int, ...],
    *,
    start: int,
    limit: int,
    multiple: int = 1,
) -> tuple[int, int]:
    """The largest batch whose per-block step (the batch, every block's forward and backward in turn) fits in
    ``cap_bytes`` of the net's device, and the number of steps tried (:func:`common.memory.largest_batch`).

    The figure a user of greedy training cares about: how much larger a batch K blocks let them train than
    backprop (``dec`` with one block) on the same memory. On CUDA each tried step really runs under the cap
    (``torch.cuda.set_per_process_memory_fraction``: the parameters, gradients, cuDNN workspaces and the
    allocator's fragmentation all count; a workspace that does not fit makes cuDNN fall back to an algorithm
    that needs less, as on a smaller GPU). On the CPU the parameters' and buffers' bytes plus the step's
    profiled allocator peak are compared with the cap. No optimizer state is counted (add it to what the cap
    leaves you). ``dec``'s heads are built (``net.set_decoupling``); random inputs of ``sample_shape``, drawn
    under a forked RNG.
    """
    from common.memory import fits_under_cap, largest_batch

    net.set_decoupling(dec)
    device = next(net.parameters()).device
    resident = resident_bytes(net)

    def fits(batch: int) -> bool:
        net.zero_grad(set_to_none=True)
        try:
            return fits_under_cap(_random_step(net, dec, batch, sample_shape), device, cap_bytes, resident)
        finally:
            net.zero_grad(set_to_none=True)

    # the caller's random stream stays as it was
    with forked_rng(device):
        return largest_batch(fits, start=start, limit=limit, multiple=multiple)
