"""Pipelined multi-device greedy training: SEDONA's ``train.train_parallel`` (brief §1.6).

Block b lives on ``devices[b % len(devices)]`` (:func:`place_blocks`). Block 0 runs in the caller's thread, blocks
1 … K−1 each in a daemon thread. Each block does its own zero_grad, forward (its units + its local loss), backward,
optimizer step (and per-iteration LR step, and GradScaler under fp16 on CUDA), then pushes a detached copy of
its output activation and the labels into a bounded FIFO read by the next block; the last block hands
(loss, logits, labels) back to the caller (:meth:`BlockPipeline.poll`, :meth:`BlockPipeline.drain`).

No gradient crosses a block boundary in greedy training, so block b at batch i consumes block b−1's output of
batch i computed with block b−1's weights before its step i, exactly as the sequential trainer does: without
random layers (dropout) the pipeline's weights equal the sequential ``backward=per_block`` trainer's, batch for
batch. The "staleness" of the original (block b trains on activations of older weights of block b−1, up to
``queue_size`` steps behind in wall-clock time) only changes *when* a step runs, not *what* it computes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Sequence
from typing import Any

import torch

from common.config import ConfigError
from common.engine import autocast
from sedona.network import DecoupledNet, Decoupling

# how often a blocked queue operation looks for a failure or a stop (seconds)
_POLL_S = 0.05


def available_devices() -> list[str]:
    """The device names ``method.devices`` accepts here: ``cpu`` and ``cuda:i`` for each visible GPU."""
    return ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]


def parse_device(name: str) -> torch.device | None:
    """``cpu``, ``cuda`` (= ``cuda:0``) or ``cuda:i`` as a device; None for anything else (whatever is present)."""
    try:
        dev = torch.device(str(name).strip())
    except (RuntimeError, ValueError):
        return None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        return torch.device("cuda", 0 if dev.index is None else dev.index)
    return None


def resolve_devices(spec: Any) -> list[torch.device] | None:
    """``method.devices``: None stays None; a list (or a comma-separated string) of ``cpu``/``cuda``/``cuda:i``.

    ``cuda`` means ``cuda:0``. A name that is not a device, or a device not present here, is a
    :class:`~common.config.ConfigError` (one line) naming what is available.
    """
    if spec is None:
        return None
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    avail = available_devices()
    if not items or not all(items):
        raise ConfigError(f"method.devices must be null or a non-empty list of devices ({', '.join(avail)})")
    devices = []
    for name in items:
        dev = parse_device(name)
        if dev is None or str(dev) not in avail:
            raise ConfigError(
                f"method.devices: {name!r} is not available here; available: {', '.join(avail)}"
            )
        devices.append(dev)
    return devices


def place_blocks(net: DecoupledNet, dec: Decoupling, devices: Sequence[torch.device]) -> list[torch.device]:
    """Move block b (its units and its head; the classifier for the last block) to ``devices[b % n]``.

    Build the optimizers after this. Returns the device of every block.
    """
    if not devices:
        raise ValueError("place_blocks needs at least one device")
    if dec.block_ends[-1] != net.num_units - 1:
        raise ValueError(f"the last block must end at unit {net.num_units - 1}, got {dec.block_ends}")
    placed, start = [], 0
    for b, end in enumerate(dec.block_ends):
        dev = torch.device(devices[b % len(devices)])
        for i in range(start, end + 1):
            net.units[i].to(dev)
        (net.classifier if b == dec.num_blocks - 1 else net.aux[str(end)]).to(dev)
        placed.append(dev)
        start = end + 1
    return placed


def _on_device(dev: torch.device) -> contextlib.AbstractContextManager:
    """Make ``dev`` the current CUDA device (for what allocates on it, e.g. a GradScaler's scale)."""
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


class BlockPipeline:
    """K greedy blocks trained as a pipeline of threads connected by bounded FIFOs.

    Args:
        net: the decoupled network, its blocks already placed (:func:`place_blocks`).
        dec: the decoupling (K = ``dec.num_blocks`` ≥ 2).
        devices: the device of each block (what :func:`place_blocks` returned).
        optimizers: one optimizer per block, over that block's parameters.
        schedulers: one per-iteration LR scheduler per block (stepped after each of its steps), or None.
        scalers: one ``GradScaler`` per block (fp16 on CUDA), or None.
        amp, amp_dtype: autocast in every block, as ``trainer.amp``/``trainer.amp_dtype``.
        queue_size: capacity of each FIFO between two blocks (the original's ``--queue-size``, 50).
        output_device: where the results (loss, logits, labels) are delivered (default: block 0's device).

    Use: :meth:`submit` every batch, :meth:`poll` (non-blocking) for the batches that have passed the last block,
    :meth:`drain` to wait for all of them (before a checkpoint or a validation: the threads then idle), and
    :meth:`close` at the end (also after an error; the object is a context manager). An exception in a worker
    thread stops the pipeline and is re-raised (the same exception object) at the next submit/poll/drain.
    """

    def __init__(
        self,
        net: DecoupledNet,
        dec: Decoupling,
        devices: Sequence[torch.device],
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        schedulers: Sequence[Any] | None = None,
        scalers: Sequence[torch.amp.GradScaler] | None = None,
        amp: bool = False,
        amp_dtype: str = "float16",
        queue_size: int = 50,
        output_device: torch.device | None = None,
    ) -> None:
        k = dec.num_blocks
        if k < 2:
            raise ValueError(f"a pipeline needs K >= 2 blocks, got {k}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        for name, seq in (("devices", devices), ("optimizers", optimizers), ("schedulers", schedulers)):
            if seq is not None and len(seq) != k:
                raise ValueError(f"{name}: one per block ({k}), got {len(seq)}")
        if scalers is not None and len(scalers) != k:
            raise ValueError(f"scalers: one per block ({k}), got {len(scalers)}")
        self.net, self.dec = net, dec
        self.devices = [torch.device(d) for d in devices]
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers) if schedulers is not None else [None] * k
        self.scalers = list(scalers) if scalers is not None else [None] * k
        self.amp, self.amp_dtype = amp, amp_dtype
        self.queue_size = int(queue_size)
        self.output_device = torch.device(output_device) if output_device is not None else self.devices[0]
        # queues[b] feeds block b + 1; the last block feeds results
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=self.queue_size) for _ in range(k - 1)]
        self.results: queue.Queue = queue.Queue()
        self.submitted = 0
        self.completed = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False

    @property
    def num_blocks(self) -> int:
        return self.dec.num_blocks

    # ------------------------------------------------------------------ the caller's side
    def submit(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Train block 0 on (x, y) now and pass its output on (blocks while the first FIFO is full)."""
        self._check_usable()
        if not self._threads:
            self._start()
        with _on_device(self.devices[0]):
            out = self._block_step(0, x, y, self.submitted)
        self._put(0, out)
        self.submitted += 1

    def poll(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The (loss, logits, labels) of the batches that passed the last block since the last call, in order."""
        self._raise_if_failed()
        done = []
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                return done
            done.append(self._accept(item))

    def drain(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Wait until every submitted batch has passed the last block; return the results not yet polled."""
        done = self.poll()
        while self.completed < self.submitted:
            self._check_usable()
            try:
                item = self.results.get(timeout=_POLL_S)
            except queue.Empty:
                item = None
            if item is not None:
                done.append(self._accept(item))
            elif not all(t.is_alive() for t in self._threads):
                self._raise_if_failed()
                raise RuntimeError("a SEDONA pipeline thread ended with batches still in flight")
        return done

    def close(self) -> None:
        """Stop the threads (batches still in flight are dropped). Safe to call more than once."""
        self._closed = True
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60.0)
        self._threads = []

    def __enter__(self) -> BlockPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept(self, item: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, logits, y, index = item
        if index != self.completed:  # every FIFO keeps the order; anything else is a bug
            raise RuntimeError(f"SEDONA pipeline: batch {index} completed when {self.completed} was expected")
        self.completed += 1
        return loss, logits, y

    def _check_usable(self) -> None:
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError("this SEDONA pipeline is closed")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _start(self) -> None:
        for b in range(1, self.num_blocks):
            t = threading.Thread(target=self._worker, args=(b,), name=f"sedona-block-{b}", daemon=True)
            self._threads.append(t)
            t.start()

    # ------------------------------------------------------------------ the blocks
    def _block_step(
        self, b: int, h: torch.Tensor, y: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimisation step of block b on its input; returns what goes to the next block (or the results)."""
        dev = self.devices[b]
        opt, sched, scaler = self.optimizers[b], self.schedulers[b], self.scalers[b]
        opt.zero_grad(set_to_none=True)
        with autocast(dev, self.amp, self.amp_dtype):
            out, loss, logits = self.net.block_forward(b, h, y, self.dec)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        if b == self.num_blocks - 1:
            od = self.output_device
            return (loss.detach().to(od), logits.detach().to(od), y.to(od), index)
        nxt = self.devices[b + 1]
        # a copy: the next block must not share memory with this block's graph (nor see an in-place change)
        return (out.detach().to(nxt, copy=True), y.to(nxt), index)

    def _worker(self, b: int) -> None:
        dev = self.devices[b]
        try:
            with _on_device(dev):
                while True:
                    item = self._get(self.queues[b - 1])
                    if item is None:
                        return
                    h, y, index = item
                    out = self._block_step(b, h, y, index)
                    del item, h, y
                    if b == self.num_blocks - 1:
                        self.results.put(out)
                    elif not self._put(b, out):
                        return
        except BaseException as e:  # everything goes back to the caller's thread
            self._fail(b, e)

    def _fail(self, b: int, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"(raised in the thread of SEDONA pipeline block {b}, on {self.devices[b]})")
                self._error = exc
        self._stop.set()

    def _get(self, q: queue.Queue) -> Any:
        """The next item of ``q``, or None once the pipeline is stopping."""
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def _put(self, b: int, item: tuple) -> bool:
        """Push block b's output into the FIFO of block b + 1; False if the pipeline stopped meanwhile."""
        q = self.queues[b]
        while True:
            if self._stop.is_set():
                if b == 0:  # the caller's thread: say why
                    self._check_usable()
                    raise RuntimeError("the SEDONA pipeline stopped")
                return False
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue


__all__ = ["BlockPipeline", "available_devices", "place_blocks", "resolve_devices"]
