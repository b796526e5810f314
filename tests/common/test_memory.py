"""``common.memory``: the allocator's peak on the CPU (torch.profiler's memory events) and the device check."""

from __future__ import annotations

import pytest
import torch

from common.memory import peak_bytes


def test_cpu_peak_is_the_most_held_at_once_above_the_start():
    size = 4 * 2**20
    held = torch.empty(size, dtype=torch.uint8)  # held before: not part of the peak

    def fn():
        a = torch.empty(size, dtype=torch.uint8).fill_(1)
        b = torch.empty(2 * size, dtype=torch.uint8).fill_(1)
        del a, b  # peak 3 x size here
        c = torch.empty(size, dtype=torch.uint8).fill_(1)
        del c

    peak = peak_bytes(fn, "cpu")
    assert 3 * size <= peak < 3 * size + 2**20
    assert held.numel() == size


def test_a_device_without_an_allocator_peak_is_refused():
    with pytest.raises(ValueError, match="cuda or cpu"):
        peak_bytes(lambda: None, "meta")


def test_the_profilers_own_lines_do_not_reach_stderr(capfd):
    peak_bytes(lambda: torch.ones(1000).sum(), "cpu")
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err and "gpuGetDeviceCount" not in err
