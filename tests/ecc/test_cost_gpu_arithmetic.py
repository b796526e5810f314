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

import numpy as np
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


# ------------------------------------------------------------------- the GPU protocol (issue 14 item 4)
def test_latency_cuda_times_several_passes_per_event_pair_and_divides(monkeypatch):
    warmup = [0.5, 0.5]
    # three samples of three passes: means 0.002, 0.010, 0.004 -> median 0.004
    timed = [0.001, 0.002, 0.003, 0.010, 0.010, 0.010, 0.004, 0.004, 0.004]
    clock = Clock(warmup + timed)
    fake_cuda(monkeypatch, clock)
    backend = cost.CudaLatency(repeats=3, warmup=2, passes=3, device="cpu")
    assert backend.measure(Timed(clock), torch.randn(1, 3)) == pytest.approx(0.004, rel=1e-9)
    assert clock.passes == 2 + 9
    assert backend.describe()["passes"] == 3 and backend.describe()["graph"] is False


def test_latency_cuda_with_a_graph_times_the_replays(monkeypatch):
    clock = Clock([0.007])  # an eager pass: 7 ms (launch-bound)
    fake_cuda(monkeypatch, clock)
    captured = []

    def capture(
        model, x
    ):  # the replay of the captured pass: 1 ms of GPU time, the model's forward not called
        captured.append(model)

        def replay():
            clock.t += 0.001

        return replay

    monkeypatch.setattr(cost, "_capture_graph", capture)
    backend = cost.CudaLatency(repeats=5, warmup=2, passes=4, graph=True, device="cpu")
    model = Timed(clock)
    assert backend.measure(model, torch.randn(1, 3)) == pytest.approx(0.001, rel=1e-9)
    assert captured == [model] and clock.passes == 0
    assert backend.describe()["graph"] is True and backend.describe()["graph_fallbacks"] == 0


def test_a_net_that_cannot_be_captured_is_timed_eagerly_with_one_warning(monkeypatch, caplog):
    clock = Clock([0.007])
    fake_cuda(monkeypatch, clock)

    def capture(model, x):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(cost, "_capture_graph", capture)
    backend = cost.CudaLatency(repeats=3, warmup=1, graph=True, device="cpu")
    with caplog.at_level("WARNING", logger="ecc.cost"):
        for _ in range(2):
            assert backend.measure(Timed(clock), torch.randn(1, 3)) == pytest.approx(0.007, rel=1e-9)
    warnings = [r.getMessage() for r in caplog.records if "graph capture failed" in r.getMessage()]
    assert len(warnings) == 1 and "more detail" not in warnings[0]
    assert backend.describe()["graph_fallbacks"] == 2


def test_energy_nvml_with_a_graph_counts_the_replays_energy(monkeypatch):
    idle_w, pass_s, pass_j = 60.0, 0.01, 0.5
    clock = Clock([1.0])  # an eager pass would take 1 s: never run
    work = {"j": 0.0}
    counter = {"mj": lambda: 1e3 * (idle_w * clock.t + work["j"])}
    fake_cuda(monkeypatch, clock)
    fake_nvml(monkeypatch, counter)

    def capture(model, x):
        def replay():
            clock.t += pass_s
            work["j"] += pass_j

        return replay

    monkeypatch.setattr(cost, "_capture_graph", capture)
    backend = cost.NvmlEnergy(min_window_s=0.5, graph=True, device="cpu")
    assert backend.measure(Timed(clock), torch.randn(1, 3)) == pytest.approx(pass_j, rel=1e-6)
    assert clock.passes == 0 and backend.describe()["graph"] is True


class Drifting(cost.CostBackend):
    """A cost that drifts up with every measurement (a GPU heating up): the i-th call adds ``drift * i``."""

    name, unit = "drifting", "u"

    def __init__(self, drift: float):
        super().__init__(1)
        self.drift, self.calls = drift, []

    def measure(self, model, example):
        from ecc.prune import width_chain

        widths = tuple(width_chain(model)[1:-1])
        self.calls.append(widths)
        return float(sum(widths)) + self.drift * (len(self.calls) - 1)


def _two_layer():
    from common.models import build_model

    torch.manual_seed(0)
    return build_model("alexnet_small", num_classes=10, in_channels=1, image_size=32)


def test_interleaved_rounds_average_out_a_linear_drift():
    model, x, n = _two_layer(), torch.randn(1, 1, 32, 32), 30
    truth = Drifting(drift=0.0)
    chains, exact, meta = cost.collect_cost_data(model, x, truth, n, show_progress=False)
    assert meta["rounds"] == 1
    slim = [tuple(c[1:-1]) for c in chains]
    dense = tuple(meta["width_upper_bounds"][1:-1])
    # one unit of drift per measurement: measured once each, in order, the last configurations carry ~n
    # (and the dense checks' calls) more than the first
    once = cost.collect_cost_data(model, x, Drifting(drift=1.0), n, show_progress=False)[1]
    assert np.ptp(once - exact) >= n - 1
    backend = Drifting(drift=1.0)
    chains2, costs, meta = cost.collect_cost_data(model, x, backend, n, show_progress=False, rounds=2)
    assert meta["rounds"] == 2 and (chains2 == chains).all()
    configs = [c for c in backend.calls if c != dense and c in slim]
    assert configs == slim + slim[::-1]  # a forward pass, then a reverse one (dense checks in the first)
    values = [float(sum(c)) + k for k, c in enumerate(backend.calls)]
    for i, c in enumerate(slim):
        assert costs[i] == pytest.approx(np.mean([v for v, call in zip(values, backend.calls) if call == c]))
    # forward + reverse: every configuration's mean carries the same drift, up to the dense checks' calls
    # that sit between its two measurements on one side only
    assert np.ptp(costs - exact) <= cost.DENSE_CHECKS
    with pytest.raises(ValueError, match="rounds"):
        cost.collect_cost_data(model, x, Drifting(0.0), 6, show_progress=False, rounds=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_latency_cuda_captures_a_real_graph_on_the_gpu():
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model("alexnet_small", num_classes=10, in_channels=1, image_size=32)
    x = torch.randn(1, 1, 32, 32)
    graphed = cost.CudaLatency(batch=64, repeats=5, warmup=3, passes=10, graph=True)
    eager = cost.CudaLatency(batch=64, repeats=5, warmup=3, passes=10)
    t_graph, t_eager = graphed.measure(model, x), eager.measure(model, x)
    assert graphed.describe()["graph_fallbacks"] == 0
    assert 0 < t_graph < 1.5 * t_eager  # a replay launches nothing per kernel: not slower than eager passes


def test_the_method_options_reach_the_gpu_backends(monkeypatch):
    from omegaconf import OmegaConf

    from ecc.task import make_cost_backend

    fake_cuda(monkeypatch, Clock([0.001]))
    fake_nvml(monkeypatch, {"mj": lambda: 0})
    m = OmegaConf.create(
        {"cost": "latency_cuda", "cost_batch": 64, "cost_repeats": 7, "cost_passes": 20, "cost_graph": True}
    )
    lat = make_cost_backend(m)
    assert (lat.batch, lat.repeats, lat.passes, lat.graph) == (64, 7, 20, True)
    m.cost = "energy_nvml"
    energy = make_cost_backend(m)
    assert (energy.batch, energy.graph) == (64, True)
