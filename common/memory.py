"""Peak memory from the allocator, on CUDA and on the CPU.

What runs out is the allocator's memory, not what a model holds for backward: on a GPU the convolutions'
cuDNN workspaces, gradient buffers and operator temporaries come on top of the saved activations, and can
dominate them. ``peak_bytes(fn, device)`` is the most memory the device's allocator held above what it held
when ``fn`` started:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` (synchronised);
* CPU: the running sum of every allocation and free torch.profiler records (``profile_memory=True``), in the
  order it recorded them; operator temporaries included. Profiling makes ``fn`` a few times slower.
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

__all__ = ["cpu_peak_bytes", "peak_bytes"]


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
