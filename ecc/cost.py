"""Stage 1 of ECC: what a network "costs", measured by one of several backends, and the random-width data set.

Backends (``make_backend(name)``):

* ``latency_cpu``: median wall time of one forward pass (``perf_counter``, warm-up, fixed threads).
* ``latency_cuda``: median of CUDA-event timings after warm-up and synchronisation.
* ``energy_nvml``: GPU energy from NVML's total-energy counter over a window of >= ``min_window_s``; idle power
  measured first and subtracted when ``subtract_idle`` (the original's nvidia-smi polling kept idle power).
* ``energy_rapl``: CPU package energy from ``/sys/class/powercap/intel-rapl:*/energy_uj`` (often root-only).
* ``macs``: multiply-accumulates from PyTorch's FLOP counter: deterministic, exactly bilinear for chains.

A backend that cannot run on this machine raises :class:`CostBackendUnavailable` with a one-line reason that
names the alternatives.
"""

from __future__ import annotations

import logging
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.config import ConfigError
from common.logging import progress
from common.metrics import count_macs
from ecc.prune import slim_to_widths, width_chain

log = logging.getLogger(__name__)


class CostBackendUnavailable(ConfigError, RuntimeError):
    """The cost backend cannot run on this machine (the message says why and what to use instead).

    A :class:`~common.config.ConfigError`: ``python -m launch`` prints it as one ``error:`` line, no traceback."""


class CostBackend:
    """Measures the cost of one forward pass of a batch of ``batch`` inputs."""

    name = "base"
    unit = ""

    def __init__(self, batch: int = 1):
        self.batch = int(batch)

    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        """The cost of ``model`` on ``example`` (one sample, repeated to ``batch``)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Metadata written next to the cost data."""
        return {"backend": self.name, "unit": self.unit, "batch": self.batch}

    def _input(self, example: torch.Tensor, device: torch.device) -> torch.Tensor:
        return example[:1].expand(self.batch, *example.shape[1:]).contiguous().to(device)


class MacsCost(CostBackend):
    """Multiply-accumulates per forward pass (analytic; the same on every machine)."""

    name = "macs"
    unit = "MAC"

    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        device = next(model.parameters()).device
        return float(count_macs(model, self._input(example, device)))


class CpuLatency(CostBackend):
    """Median wall time (s) of ``repeats`` forward passes on the CPU, after ``warmup`` passes, with fixed threads."""

    name = "latency_cpu"
    unit = "s"

    def __init__(self, batch: int = 1, repeats: int = 20, warmup: int = 3, threads: int = 1):
        super().__init__(batch)
        self.repeats, self.warmup, self.threads = int(repeats), int(warmup), int(threads)

    @torch.no_grad()
    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        model = model.cpu().eval()
        x = self._input(example, torch.device("cpu"))
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for _ in range(self.warmup):
                model(x)
            times = []
            for _ in range(self.repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(before)
        return statistics.median(times)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "threads": self.threads,
            "repeats": self.repeats,
            "cpu": platform.processor(),
        }


def _capture_graph(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward pass of ``model`` on ``x`` captured as a CUDA graph; returns its ``replay``.

    A replay launches the whole pass at once, so what is timed is the GPU's work, not the host's launch of
    each kernel (at small batches most of an eager pass's time, and the noisiest part). The pass is run a few
    times on a side stream first, as capture requires (lazy initialisation, cuDNN's algorithm choice).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)
    return graph.replay


class _CudaPasses:
    """What the CUDA backends share: the forward pass to run, eager or as a CUDA graph replay."""

    graph: bool
    _graph_failed_said = False

    def _forward(self, model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
        if self.graph:
            try:
                return _capture_graph(model, x)
            except Exception as exc:  # noqa: BLE001 - an uncapturable net is measured eagerly, said once
                if not self._graph_failed_said:
                    log.warning(
                        "%s: CUDA graph capture failed (%s: %s); timing eager passes",
                        self.name, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                    )  # fmt: skip
                    self._graph_failed_said = True
                self.graph_fallbacks += 1
        return lambda: model(x)


class CudaLatency(_CudaPasses, CostBackend):
    """Median CUDA-event time (s) of one forward pass, after warm-up and synchronisation.

    Each of the ``repeats`` samples times ``passes`` back-to-back passes between one pair of events and
    divides (one pass of a small net is shorter than the events' and launches' jitter); ``graph`` replays the
    pass as a captured CUDA graph (:func:`_capture_graph`: the GPU's time, without the host's launch overhead).
    Defaults (1 pass, eager) are the original's protocol.
    """

    name = "latency_cuda"
    unit = "s"

    def __init__(
        self,
        batch: int = 1,
        repeats: int = 50,
        warmup: int = 10,
        device: str = "cuda",
        passes: int = 1,
        graph: bool = False,
    ):
        super().__init__(batch)
        if not torch.cuda.is_available():
            raise CostBackendUnavailable("latency_cuda: no CUDA device here; use latency_cpu or macs")
        self.repeats, self.warmup, self.passes = int(repeats), int(warmup), int(passes)
        self.graph, self.graph_fallbacks = bool(graph), 0
        self.device = torch.device(device)

    @torch.no_grad()
    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        model = model.to(self.device).eval()
        x = self._input(example, self.device)
        run = self._forward(model, x)
        for _ in range(self.warmup):
            run()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.passes):
                run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / self.passes)
        return statistics.median(times)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(), "repeats": self.repeats, "warmup": self.warmup, "passes": self.passes,
            "graph": self.graph, "graph_fallbacks": self.graph_fallbacks,
        }  # fmt: skip


class NvmlEnergy(_CudaPasses, CostBackend):
    """GPU energy (J) per forward pass from NVML's total-energy counter (``nvidia-ml-py``).

    The counter is read around a loop of forward passes lasting >= ``min_window_s`` (the counter's
    resolution is coarse); with ``subtract_idle`` the idle power, measured over the same window before the
    first measurement, times the window is subtracted (the original included idle power). ``graph``: the
    passes are replays of a captured CUDA graph (as :class:`CudaLatency`'s).
    """

    name = "energy_nvml"
    unit = "J"

    def __init__(
        self,
        batch: int = 1,
        min_window_s: float = 2.0,
        subtract_idle: bool = True,
        device_index: int = 0,
        device: str | None = None,
        graph: bool = False,
    ):
        super().__init__(batch)
        self.graph, self.graph_fallbacks = bool(graph), 0
        # the GPU that runs the passes; NVML's counter is device_index's (the same GPU unless told otherwise)
        self.device = torch.device(device if device is not None else f"cuda:{device_index}")
        try:
            import pynvml
        except ImportError:
            raise CostBackendUnavailable(
                "energy_nvml: nvidia-ml-py is not installed (pip install nvidia-ml-py); use latency_cpu or macs"
            ) from None
        if not torch.cuda.is_available():
            raise CostBackendUnavailable("energy_nvml: no CUDA device here; use latency_cpu or macs")
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except pynvml.NVMLError as exc:
            raise CostBackendUnavailable(
                f"energy_nvml: NVML energy counter unreadable ({exc}); use latency_cuda"
            ) from None
        self._nvml = pynvml
        self.min_window_s, self.subtract_idle = float(min_window_s), bool(subtract_idle)
        self.idle_w: float | None = None

    def _energy_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3  # mJ -> J

    @torch.no_grad()
    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        if self.subtract_idle and self.idle_w is None:
            torch.cuda.synchronize()
            e0, t0 = self._energy_j(), time.perf_counter()
            time.sleep(self.min_window_s)
            self.idle_w = (self._energy_j() - e0) / (time.perf_counter() - t0)
        model = model.to(self.device).eval()
        x = self._input(example, self.device)
        run = self._forward(model, x)
        for _ in range(10):
            run()
        torch.cuda.synchronize()
        e0, t0, n = self._energy_j(), time.perf_counter(), 0
        while time.perf_counter() - t0 < self.min_window_s:
            run()
            n += 1
            if n % 10 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        energy, wall = self._energy_j() - e0, time.perf_counter() - t0
        if self.subtract_idle:
            energy -= self.idle_w * wall
        return energy / n

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(), "idle_subtracted": self.subtract_idle, "idle_w": self.idle_w,
            "graph": self.graph, "graph_fallbacks": self.graph_fallbacks,
        }  # fmt: skip


class RaplEnergy(CostBackend):
    """CPU package energy (J) per forward pass from RAPL's ``energy_uj`` counter, over >= ``min_window_s``."""

    name = "energy_rapl"
    unit = "J"
    root = Path("/sys/class/powercap")

    def __init__(self, batch: int = 1, min_window_s: float = 1.0, threads: int = 1):
        super().__init__(batch)
        zones = sorted(self.root.glob("intel-rapl:[0-9]")) if self.root.exists() else []
        readable = [z for z in zones if _readable(z / "energy_uj")]
        if not readable:
            why = "no RAPL zones" if not zones else "energy_uj is root-only (Linux >= 5.10)"
            raise CostBackendUnavailable(f"energy_rapl: {why} on this machine; use latency_cpu or macs")
        self.zones = readable
        self.min_window_s, self.threads = float(min_window_s), int(threads)

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self.zones]

    @torch.no_grad()
    def measure(self, model: nn.Module, example: torch.Tensor) -> float:
        model = model.cpu().eval()
        x = self._input(example, torch.device("cpu"))
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            model(x)
            e0, t0, n = self._read(), time.perf_counter(), 0
            while time.perf_counter() - t0 < self.min_window_s:
                model(x)
                n += 1
            e1 = self._read()
        finally:
            torch.set_num_threads(before)
        total = 0
        for z, a, b in zip(self.zones, e0, e1):
            wrap = int((z / "max_energy_range_uj").read_text()) if b < a else 0
            total += b - a + wrap
        return total / 1e6 / n


def _readable(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except OSError:
        return False


_REGISTRY = {
    "latency_cpu": CpuLatency,
    "latency_cuda": CudaLatency,
    "energy_nvml": NvmlEnergy,
    "energy_rapl": RaplEnergy,
    "macs": MacsCost,
}
# the backend names ``make_backend`` (and ``method.cost``) accepts
BACKENDS = tuple(_REGISTRY)


def make_backend(name: str, **kwargs: Any) -> CostBackend:
    """The backend ``name`` (one of :data:`BACKENDS`), or :class:`CostBackendUnavailable` if it cannot run here."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown cost backend {name!r}; choose one of {BACKENDS}")
    return _REGISTRY[name](**kwargs)


def sample_widths(upper_bounds: Sequence[int], n: int, seed: int = 1) -> np.ndarray:
    """``n`` width vectors, each w_j uniform on [1, ub_j] (the original's ``random.seed(1)``, ``randint``)."""
    rng = random.Random(seed)
    return np.array([[rng.randint(1, int(u)) for u in upper_bounds] for _ in range(n)], dtype=np.int64)


# how many times collect_cost_data re-measures the dense net (spread over the samples; the median is kept)
DENSE_CHECKS = 10


def collect_cost_data(
    model: nn.Module,
    example: torch.Tensor,
    backend: CostBackend,
    samples: int,
    *,
    seed: int = 1,
    show_progress: bool = True,
    rounds: int = 1,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Measures ``samples`` random-width versions of ``model`` (brief §1.1).

    Each configuration keeps the first w_u channels of every slot of the (dense, trained or not) ``model``;
    the weights do not change a dense forward's cost, only the widths do. With ``rounds`` > 1 every
    configuration is measured in each of ``rounds`` passes over all of them, every other pass in reverse order,
    and its cost is the mean: a drift of the device's speed during the run (clocks, temperature, a neighbour's
    load) then falls on all configurations alike instead of on the ones measured while it lasted (a linear
    drift cancels exactly over a forward and a reverse pass: an even ``rounds``). Each measurement is already
    robust to a spike (the backends take medians or long windows).

    Args:
        model: The dense network (not modified).
        example: One input sample ``[1, C, H, W]``.
        backend: The cost backend.
        samples: Number of configurations.
        seed: Seed of the width sampler.
        show_progress: Show a progress bar (only on a terminal).
        rounds: Interleaved measurements of each configuration (their mean is kept; 1: the original's one).

    Returns:
        ``(chains [N, L+2], costs [N], meta)``; ``meta`` holds the backend's description, the all-ones cost
        and the dense cost (the median of DENSE_CHECKS measurements spread over the run; the first one, taken
        with the all-ones net before the samples, is kept as ``dense_cost_first``), the network class and torch's version.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    chain = width_chain(model)
    ub = chain[1:-1]
    widths = sample_widths(ub, samples, seed)
    ones_cost = backend.measure(slim_to_widths(model, [1] * len(ub)), example)
    first_dense = backend.measure(model, example)
    measured = np.empty((rounds, samples), dtype=np.float64)
    # the dense net is measured again DENSE_CHECKS times spread over the run and the median kept: relative
    # budgets divide by this number, and one timing is at the mercy of the moment's load (in one bench run with
    # a single dense timing, the slim nets of budget 0.5 measured 0.25-0.41 of the dense latency)
    check_after = {int(i) for i in np.linspace(samples - 1, 0, min(DENSE_CHECKS, samples), endpoint=False)}
    dense_checks: list[float] = []
    order = [
        (r, i) for r in range(rounds) for i in (range(samples) if r % 2 == 0 else reversed(range(samples)))
    ]
    for r, i in progress(order, enabled=show_progress, desc=f"cost data ({backend.name})"):
        measured[r, i] = backend.measure(slim_to_widths(model, widths[i]), example)
        if r == 0 and i in check_after:
            dense_checks.append(backend.measure(model, example))
    costs = measured.mean(axis=0)
    dense_cost = float(np.median(dense_checks)) if dense_checks else first_dense
    chains = np.concatenate(
        [np.full((samples, 1), chain[0]), widths, np.full((samples, 1), chain[-1])], axis=1
    )
    meta = {
        **backend.describe(),
        "network": type(model).__name__,
        "width_upper_bounds": chain,
        "input_shape": list(example.shape[1:]),
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "dense_cost": dense_cost,
        "dense_cost_first": first_dense,
        "dense_cost_checks": dense_checks,
        "ones_cost": ones_cost,
        "samples": samples,
        "seed": seed,
        "rounds": rounds,
    }
    return chains, costs, meta
