"""Peak memory from the allocator, on CUDA and on the CPU.

What runs out is the allocator's memory, not what a model holds for backward: on a GPU the convolutions'
cuDNN workspaces, gradient buffers and operator temporaries come on top of the saved activations, and can
dominate them. ``peak_bytes(fn, device)`` is the most memory the device's allocator held above what it held
when ``fn`` started:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` (synchronised);
* CPU: the running sum of every allocation and free torch.profiler records (``profile_memory=True``), in the
  order it recorded them; operator temporaries included. Profiling makes ``fn`` a few times slower.

What a user feels is the largest batch that trains on their GPU: ``largest_batch`` searches it for any
monotone test, and ``fits_under_cap`` is that test for one step under a memory cap (on CUDA the step runs
under ``torch.cuda.set_per_process_memory_fraction`` and fits unless it runs out of memory; on the CPU the
profiled peak plus what is resident is compared with the cap).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_peak_bytes", "cuda_memory_cap", "fits_under_cap", "largest_batch", "peak_bytes"]


def peak_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Allocator peak (bytes) above the memory held when ``fn`` starts, on ``device`` (cuda or cpu)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        return cpu_peak_bytes(fn)
    raise ValueError(f"no allocator peak for device type {device.type!r} (cuda or cpu)")


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (what C++ code writes there too), then restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], Any], folder: Path | str | None = None) -> int:
    """The CPU allocator's peak (bytes) above what it held when ``fn`` starts, from torch.profiler's memory events.

    The profiler records every CPU allocation and free; its exported chrome trace holds them with their signed
    sizes, so the running sum over them in order is what the allocator holds beyond the start, and its maximum
    the peak. It cannot see the free of memory allocated before it started (torch warns "Memory block of unknown
    size"): free what ``fn`` would free before calling it (gradients: ``zero_grad(set_to_none=True)``), or the
    peak is overstated by that much. ``folder``: where the trace is written for a moment (default: the system's
    temporary folder).
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # the profiler's C++ side prints start/stop lines to stderr (and, without a GPU, an error line)
    with _native_stderr_muted():
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_muted():
            prof.stop()
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    path = folder / f"trace_{os.getpid()}_{time.monotonic_ns()}.json"
    try:
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = []
    for e in events:
        args = e.get("args") or {}
        if e.get("name") == "[memory]" and "Bytes" in args and int(args.get("Device Type", 0)) == 0:
            memory.append((float(e.get("ts", 0.0)), int(args.get("Ev Idx", 0)), int(args["Bytes"])))
    if not memory:
        raise RuntimeError("torch.profiler recorded no CPU memory events")
    live = peak = 0
    for _, _, nbytes in sorted(memory):
        live += nbytes
        peak = max(peak, live)
    return peak


# ---------------------------------------------------------------------------- the largest batch under a cap
def largest_batch(
    fits: Callable[[int], bool], *, start: int, limit: int, multiple: int = 1
) -> tuple[int, int]:
    """The largest batch size ``b <= limit`` (a multiple of ``multiple``) for which ``fits(b)``, and the tries.

    ``fits`` must be monotone (true up to some size, false above it), as "one training step at this batch size
    stays under the memory cap" is. The search doubles from ``start`` until a size does not fit (or ``limit``
    is reached), then bisects between the last size that fitted and the first that did not: about
    ``2 log2(answer / start)`` calls of ``fits``, each one training step. Returns ``(0, 1)`` when ``start``
    itself does not fit.
    """
    if multiple < 1 or start < multiple or start % multiple or limit < start:
        raise ValueError(
            f"need 1 <= multiple <= start <= limit, start a multiple: {multiple=} {start=} {limit=}"
        )
    top = limit - limit % multiple
    tries = 1
    if not fits(start):
        return 0, tries
    good, bad = start, None
    while bad is None and good < top:
        size = min(2 * good, top)
        tries += 1
        if fits(size):
            good = size
        else:
            bad = size
    while bad is not None and bad - good > multiple:
        mid = (good + bad) // 2 // multiple * multiple
        tries += 1
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, tries


@contextlib.contextmanager
def cuda_memory_cap(cap_bytes: int, device: torch.device | str) -> Iterator[None]:
    """The CUDA caching allocator limited to ``cap_bytes`` on ``device`` for the duration, then unlimited.

    ``torch.cuda.set_per_process_memory_fraction``: an allocation that would take the allocator beyond the cap
    raises ``torch.cuda.OutOfMemoryError``, as on a GPU of that size. Its cached blocks are released first, so
    what an earlier, larger step left in the cache does not count against the cap. A cuDNN convolution whose
    preferred algorithm's workspace does not fit under the cap falls back to one that needs less, as it would
    on the smaller GPU.
    """
    device = torch.device(device)
    total = torch.cuda.get_device_properties(device).total_memory
    if not 0 < cap_bytes <= total:
        raise ValueError(f"cap {cap_bytes} bytes: must be positive and at most the device's {total} bytes")
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap_bytes / total, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


def fits_under_cap(
    fn: Callable[[], Any], device: torch.device | str, cap_bytes: int, resident_bytes: int = 0
) -> bool:
    """Whether ``fn`` (one training step) runs within ``cap_bytes`` of the device's memory.

    CUDA: ``fn`` really runs under the cap (:func:`cuda_memory_cap`); it fits unless it raises
    ``torch.cuda.OutOfMemoryError``, so everything the allocator holds counts (the model, the gradients, the
    cache's fragmentation). CPU, where nothing enforces a cap: ``resident_bytes`` (what is held before ``fn``
    and through it, e.g. the parameters) plus ``fn``'s allocator peak above the start (:func:`peak_bytes`)
    must not exceed the cap.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            with cuda_memory_cap(cap_bytes, device):
                fn()
                torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            return False
        return True
    return resident_bytes + peak_bytes(fn, device) <= cap_bytes
