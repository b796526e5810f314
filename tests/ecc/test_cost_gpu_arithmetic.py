"""latency_cuda and energy_nvml without a GPU: their arithmetic against a fake clock and a fake energy counter.

On a machine without CUDA the two backends refuse to start (tests/ecc/test_prune_cost.py); here CUDA's events and
synchronisation, NVML and the wall clock are replaced by fakes whose readings follow from the passes run, so what
each backend returns can be computed by hand: the median of the timed passes only (warm-up excluded) for
latency_cuda, and for energy_nvml the counter's increase over the window, less idle power times the window, per
pass.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from ecc import cost


class Clock:
    """Fake time in seconds; a forward pass advances it by the next of ``durations`` (then the last, forever)."""

    def __init__(self, durations: list[float]):
        self.t, self.durations, self.passes = 100.0, list(durations), 0

    def forward_pass(self) -> float:
        dt = self.durations[min(self.passes, len(self.durations) - 1)]
        self.passes += 1
        self.t += dt
        return dt


class Timed(nn.Module):
    def __init__(self, clock: Clock, on_pass=None):
        super().__init__()
        self.clock, self.on_pass = clock, on_pass
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        dt = self.clock.forward_pass()
        if self.on_pass is not None:
            self.on_pass(dt)
        return self.lin(x)


def fake_cuda(monkeypatch, clock: Clock) -> None:
    class Event:
        def __init__(self, enable_timing: bool = False):
            assert enable_timing
            self.at = None

        def record(self):
            self.at = clock.t

        def synchronize(self):
            pass

        def elapsed_time(self, end) -> float:
            return (end.at - self.at) * 1e3  # milliseconds, as CUDA events report

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(cost.time, "perf_counter", lambda: clock.t)

    def sleep(s):
        clock.t += s

    monkeypatch.setattr(cost.time, "sleep", sleep)


def test_latency_cuda_is_the_median_of_the_timed_passes_in_seconds(monkeypatch):
    warmup = [0.5, 0.4, 0.3]  # slow first passes (cuDNN autotuning, lazy init): never in the figure
    timed = [0.004, 0.001, 0.009, 0.002, 0.003]
    clock = Clock(warmup + timed)
    fake_cuda(monkeypatch, clock)
    backend = cost.CudaLatency(batch=4, repeats=len(timed), warmup=len(warmup), device="cpu")
    assert backend.measure(Timed(clock), torch.randn(1, 3)) == pytest.approx(0.003, rel=1e-9)
    assert clock.passes == len(warmup) + len(timed)


def fake_nvml(monkeypatch, counter: dict) -> None:
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("gpu", i)
    # NVML's counter: millijoules since the driver loaded, an integer
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda handle: int(round(counter["mj"]()))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)


@pytest.mark.parametrize("subtract_idle", [True, False])
def test_energy_nvml_is_energy_per_pass_with_idle_power_taken_out(monkeypatch, subtract_idle):
    idle_w, pass_s, pass_j = 60.0, 0.01, 0.5  # a pass: 10 ms at 60 W idle plus 0.5 J of work
    clock = Clock([pass_s])
    work = {"j": 0.0}
    counter = {"mj": lambda: 1e3 * (idle_w * clock.t + work["j"])}
    fake_cuda(monkeypatch, clock)
    fake_nvml(monkeypatch, counter)

    def add_work(_dt):
        work["j"] += pass_j

    backend = cost.NvmlEnergy(batch=2, min_window_s=0.5, subtract_idle=subtract_idle, device="cpu")
    measured = backend.measure(Timed(clock, add_work), torch.randn(1, 3))
    expected = pass_j if subtract_idle else pass_j + idle_w * pass_s
    assert measured == pytest.approx(expected, rel=1e-6)
    if subtract_idle:
        assert (
            backend.idle_w == pytest.approx(idle_w, rel=1e-9)
            and backend.describe()["idle_w"] == backend.idle_w
        )
    # the window holds at least min_window_s of passes (10 warm-up passes, then 50 of 10 ms)
    assert clock.passes == 10 + 50


def test_energy_nvml_without_a_readable_counter_is_one_line(monkeypatch):
    clock = Clock([0.01])
    fake_cuda(monkeypatch, clock)
    fake_nvml(monkeypatch, {"mj": lambda: 0})
    nvml = sys.modules["pynvml"]

    def unreadable(handle):
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlDeviceGetTotalEnergyConsumption = unreadable
    with pytest.raises(cost.CostBackendUnavailable, match=r"^energy_nvml: NVML energy counter unreadable"):
        cost.NvmlEnergy(device="cpu")
