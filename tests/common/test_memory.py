"""``common.memory``: the allocator's peak on the CPU (torch.profiler's memory events), the device check, and the
largest batch under a memory cap."""

from __future__ import annotations

import pytest
import torch

from common.memory import fits_under_cap, largest_batch, peak_bytes


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


def test_largest_batch_matches_a_brute_force_answer_for_every_threshold():
    # fits(b) <=> b <= t: the answer is the largest multiple of `multiple` in [start, min(t, limit)], or 0
    for multiple in (1, 4, 8):
        for limit in (8, 50, 96, 300):
            for t in range(0, 320, 3):
                calls = []

                def fits(b, t=t, calls=calls):
                    calls.append(b)
                    return b <= t

                got, tries = largest_batch(fits, start=multiple, limit=limit, multiple=multiple)
                want = min(t, limit) // multiple * multiple
                assert got == (want if want >= multiple else 0), (multiple, limit, t)
                assert tries == len(calls)
                assert all(b % multiple == 0 and multiple <= b <= limit for b in calls)
                assert len(set(calls)) == len(calls)  # no size tried twice


def test_largest_batch_tries_about_two_log2_sizes():
    # peak = 100 + 7 b bytes under a cap of 1000: b <= 128 fits (the closed form floor(900 / 7))
    got, tries = largest_batch(lambda b: 100 + 7 * b <= 1000, start=1, limit=10_000)
    assert got == 128
    assert tries <= 2 * 8 + 2  # 8 doublings to 256, then bisection of (128, 256)
    with pytest.raises(ValueError, match="multiple"):
        largest_batch(lambda b: True, start=6, limit=100, multiple=4)
    with pytest.raises(ValueError, match="limit"):
        largest_batch(lambda b: True, start=8, limit=4)


def test_fits_under_cap_on_cpu_counts_the_peak_and_what_is_resident():
    mib = 2**20

    def step():
        torch.empty(mib, dtype=torch.uint8).fill_(1)

    assert fits_under_cap(step, "cpu", cap_bytes=2 * mib)
    assert not fits_under_cap(step, "cpu", cap_bytes=mib // 2)
    assert not fits_under_cap(step, "cpu", cap_bytes=2 * mib, resident_bytes=mib + mib // 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_step_over_the_cuda_cap_runs_out_of_memory_and_the_cap_is_lifted_after():
    from common.memory import cuda_memory_cap

    mib = 2**20
    held = torch.cuda.memory_allocated()

    def step(n):
        return lambda: torch.empty(n * mib, dtype=torch.uint8, device="cuda").fill_(1)

    cap = held + 256 * mib
    assert fits_under_cap(step(64), "cuda", cap)
    assert not fits_under_cap(step(512), "cuda", cap)
    assert torch.cuda.memory_allocated() == held  # what the failed step allocated is freed
    step(512)()  # no cap any more
    with cuda_memory_cap(cap, "cuda"), pytest.raises(torch.cuda.OutOfMemoryError):
        step(512)()
    got, _ = largest_batch(lambda n: fits_under_cap(step(n), "cuda", cap), start=8, limit=4096, multiple=8)
    assert 128 <= got <= 256  # the allocator rounds and caches: within the cap, not above it
