"""The search on synthetic response curves: its decisions checked by hand against the brief §1.3."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autohyper.search import search_lr

THRESH = 5e-3 ** (1 / 0.8)  # the plateau fires once prod Z < min_delta^(1/power)


class Recorder:
    """A response that is a known function of the LR and remembers every call."""

    def __init__(self, f):
        self.f = f
        self.calls: list[float] = []

    def __call__(self, lr: float) -> float:
        self.calls.append(lr)
        return self.f(lr)


def monotone(lr: float) -> float:
    return min(1.0, max(0.2, 1 - 0.3 * math.log10(lr / 1e-3)))


@pytest.mark.parametrize("mode", ["paper", "improved"])
def test_monotone_curve_all_zero_then_plateau_then_refine(mode):
    resp = Recorder(monotone)
    # improved mode's default (rel_lr_delta=0.6, chosen by the benchmark) stops at the first plateau; a finer
    # exit makes it refine as the paper mode does, which is what this test follows (and the cache with it)
    r = search_lr(resp, mode=mode, **({"rel_lr_delta": 0.25} if mode == "improved" else {}))
    branches = [s.branch for s in r.log]
    # Z(1e-4) = Z(5e-4) = 1: the floor moves up x5 twice, to 2.5e-3
    assert branches[:2] == ["all-zero", "all-zero"]
    assert resp.calls[:3] == pytest.approx([1e-4, 5e-4, 2.5e-3])
    # by hand: walk geomspace(2.5e-3, 0.1, 20) until prod Z < 5e-3^(1/0.8)
    grid = np.geomspace(2.5e-3, 0.1, 20)
    prod, n = 1.0, 0
    while prod >= THRESH:
        prod *= monotone(grid[n])
        n += 1
    first_plateau = 2 + n - 1
    assert branches[2:first_plateau] == ["nothing"] * (n - 1)
    assert branches[first_plateau] == "plateau"
    assert r.log[first_plateau].lr == pytest.approx(grid[n - 1])
    # the refined window is [grid[i-2], grid[i]]: it restarts at an LR already tried
    restart = r.log[first_plateau + 1]
    assert restart.lr == pytest.approx(grid[n - 3])
    assert restart.cached == (mode == "improved")
    assert r.stop == "exit-delta" and r.log[-1].branch == "exit-delta"
    # the answer is the top of the last window: the LR at which the last plateau fired
    last_plateau = [s for s in r.log if s.branch == "plateau"][-1]
    assert r.lr == pytest.approx(last_plateau.lr)
    # the response is called once per (non-cached) trial, in order
    assert resp.calls == pytest.approx([t.lr for t in r.trials if not t.cached])
    if mode == "improved":
        assert len(set(resp.calls)) == len(resp.calls)


def test_improved_default_stops_after_the_first_plateau():
    resp = Recorder(monotone)
    r = search_lr(resp, mode="improved")
    branches = [s.branch for s in r.log]
    # rel_lr_delta=0.6 > the relative width of a two-step window of the grid (0.32 here, after two all-zero)
    assert branches.count("plateau") == 1 and branches[-2:] == ["plateau", "exit-delta"]
    assert r.lr == pytest.approx(r.log[-2].lr)
    # the window after it, [grid[i-2], grid[i]] of geomspace(2.5e-3, 0.1, 20), is narrower than 0.6
    assert 1 - (2.5e-3 / 0.1) ** (2 / 19) < 0.6
    # 2 all-zero trials + the first walk, nothing retrained
    assert r.num_trials == len(resp.calls) == len(r.trials)


def test_paper_mode_numbers_are_float16_and_width_is_absolute():
    resp = Recorder(monotone)
    r = search_lr(resp, mode="paper")
    for t in r.trials:
        assert t.z == float(np.float16(monotone(t.lr)))
    # absolute exit 3e-5: the final window at LR ~0.045 is (hi - lo) < 3e-5 wide, far below 0.1% relative
    assert r.lr < 0.06
    improved = search_lr(Recorder(monotone), mode="improved")
    # improved stops at a relative width, with fewer trials
    assert improved.num_trials < r.num_trials
    assert abs(math.log10(improved.lr / r.lr)) < 0.1


def test_already_low_at_the_floor_extends_down():
    def f(lr):  # Z(1e-4) = 0.45 < 0.5 at the very first trial
        return min(1.0, max(0.1, 0.45 - 0.25 * math.log10(lr / 1e-4)))

    resp = Recorder(f)
    r = search_lr(resp, mode="paper")
    assert r.log[0].branch == "early-cross" and r.log[0].lr == pytest.approx(1e-4)
    # lo /= 10 and i stays 0: the next trial is the new floor 1e-5 (Z = 0.7: nothing)
    assert r.log[1].lr == pytest.approx(1e-5) and r.log[1].branch == "nothing"
    assert r.log[2].lr == pytest.approx(np.geomspace(1e-5, 0.1, 20)[1])
    assert "early-cross" not in [s.branch for s in r.log[1:]]
    assert r.stop == "exit-delta"


def test_sigmoid_reaching_zero_brackets_below():
    def f(lr):  # learns everything (Z = 0) from 2e-3 on
        return 0.9 if lr < 2e-3 else 0.0

    resp = Recorder(f)
    r = search_lr(resp, mode="paper")
    grid = np.geomspace(1e-4, 0.1, 20)
    # 0.9^9 = 0.39 is far from the plateau threshold: 9 nothings, then Z = 0 at grid[9] = 2.64e-3
    assert [s.branch for s in r.log[:10]] == ["nothing"] * 9 + ["reach-100"]
    assert r.log[9].lr == pytest.approx(grid[9])
    # the window becomes [grid[7], grid[8]]: the next trial is grid[7], retrained
    assert r.log[10].lr == pytest.approx(grid[7])
    branches = [s.branch for s in r.log]
    assert "end-reached" in branches
    assert r.lr < 2e-3 * 1.05 and r.stop == "exit-delta"


def test_end_reached_extends_the_grid_and_keeps_the_product():
    def f(lr):  # a slow decline: the product stays above the threshold over the whole first grid
        return min(1.0, max(0.05, 0.98 - 0.08 * math.log10(lr / 1e-4)))

    r = search_lr(Recorder(f), mode="paper")
    grid = np.geomspace(1e-4, 0.1, 20)
    end = next(k for k, s in enumerate(r.log) if s.branch == "end-reached")
    assert end == 20 and not r.log[end].evaluated
    new_grid = np.geomspace(grid[-2], 1.5 * grid[-1], 20)
    # the original logs the new grid's first value; the next trial is it
    assert r.log[end].lr == pytest.approx(new_grid[0])
    assert r.log[end + 1].lr == pytest.approx(new_grid[0])
    # the product is kept: the plateau fires when the product over BOTH grids crosses the threshold
    zs = [s.z for s in r.log[: end + 40] if s.evaluated]
    k = next(k for k, s in enumerate(r.log) if s.branch == "plateau")
    assert np.prod(np.asarray(zs[:k], dtype=np.float16)) ** 0.8 < 5e-3


def test_exit_counter_after_seven_plateaus():
    r = search_lr(Recorder(monotone), mode="paper", lr_delta=0.0)
    branches = [s.branch for s in r.log]
    assert branches.count("plateau") == 7
    assert branches[-1] == "exit-counter" and r.stop == "exit-counter"


def test_improved_reads_divergence_as_too_large():
    def f(lr):
        return math.nan if lr > 0.02 else min(1.0, max(0.3, 1 - 0.35 * math.log10(lr / 1e-3)))

    resp = Recorder(f)
    r = search_lr(resp, mode="improved")
    assert "diverged" in [s.branch for s in r.log]
    assert r.lr <= 0.02
    # paper mode has no guard: NaN is never close to 1 or 0 and never below the threshold
    paper = search_lr(Recorder(f), mode="paper", max_trials=60)
    assert "diverged" not in [s.branch for s in paper.log]


def test_budget_stops_a_search_that_never_learns():
    r = search_lr(Recorder(lambda lr: 1.0), mode="paper", max_trials=12)
    assert r.num_trials == 12 and r.stop == "exit-budget"
    assert all(s.branch == "all-zero" for s in r.trials)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mode"):
        search_lr(monotone, mode="fast")
    with pytest.raises(ValueError, match="min_lr"):
        search_lr(monotone, min_lr=0.1, max_lr=0.01)
