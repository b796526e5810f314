"""The search on synthetic response curves, its decisions checked by hand against the original's ``auto_lr``;
then each decision step on its own, on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autohyper.lr_search import (
    SearchState,
    bracket_below,
    classify,
    extend_up,
    is_diverged,
    lr_grid,
    next_window,
    read_z,
    running_product,
    search_lr,
    stop_before_trial,
    window_is_narrow,
)

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


# --- the decision steps of search_lr, each on hand-made inputs (no training, no search loop) ---


def test_lr_grid_is_geometric_with_both_ends():
    grid = lr_grid(1e-4, 0.1, 4)
    assert grid == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    assert grid[0] == 1e-4 and grid[-1] == 0.1


def test_window_is_narrow_paper_absolute_improved_relative():
    paper = dict(mode="paper", lr_delta=3e-5, rel_lr_delta=0.6)
    improved = dict(mode="improved", lr_delta=3e-5, rel_lr_delta=0.6)
    # paper: |hi - lo| < 3e-5, whatever the scale: 2e-5 wide is narrow at 1e-3 and at 1.0
    assert window_is_narrow(1e-3, 1e-3 + 2e-5, **paper)
    assert window_is_narrow(1.0, 1.0 + 2e-5, **paper)
    assert not window_is_narrow(1e-3, 1e-3 + 4e-5, **paper)
    # improved: (hi - lo) / hi < 0.6: 0.5 is narrow, 0.7 is not, at any scale
    assert window_is_narrow(0.5, 1.0, **improved) and window_is_narrow(0.5e-3, 1e-3, **improved)
    assert not window_is_narrow(0.3, 1.0, **improved) and not window_is_narrow(0.3e-3, 1e-3, **improved)
    # a width of 0 never stops the search (only the exit counter or the budget do)
    assert not window_is_narrow(1e-3, 1e-3 + 1e-12, mode="paper", lr_delta=0.0, rel_lr_delta=0.6)
    assert not window_is_narrow(0.99, 1.0, mode="improved", lr_delta=3e-5, rel_lr_delta=0.0)


def test_stop_before_trial_narrow_window_first_then_budget():
    kw = dict(mode="paper", lr_delta=3e-5, rel_lr_delta=0.6, max_trials=5)
    assert stop_before_trial(1e-3, 2e-3, 4, **kw) is None
    assert stop_before_trial(1e-3, 2e-3, 5, **kw) == "exit-budget"
    # both hold: the width is tested first, as the original's loop head does
    assert stop_before_trial(1e-3, 1e-3 + 1e-5, 5, **kw) == "exit-delta"


def test_read_z_paper_rounds_to_float16_and_always_calls():
    calls = []

    def response(lr):
        calls.append(lr)
        return 1 / 3

    cache: dict = {}
    assert read_z(response, 1e-3, mode="paper", cache=cache) == (0.333251953125, False)
    assert read_z(response, 1e-3, mode="paper", cache=cache) == (0.333251953125, False)
    # the original retrains an LR it already tried; nothing is cached
    assert calls == [1e-3, 1e-3] and cache == {}


def test_read_z_improved_caches_unrounded_by_12_significant_digits():
    calls = []

    def response(lr):
        calls.append(lr)
        return 1 / 3 if lr < 0.01 else math.nan

    cache: dict = {}
    assert read_z(response, 1e-3, mode="improved", cache=cache) == (1 / 3, False)
    # the same LR reached through another grid differs in the last bits: still a cache hit, no call
    assert read_z(response, 1e-3 * (1 + 1e-14), mode="improved", cache=cache) == (1 / 3, True)
    assert calls == [1e-3]
    z, cached = read_z(response, 0.05, mode="improved", cache=cache)
    assert math.isnan(z) and not cached
    z, cached = read_z(response, 0.05, mode="improved", cache=cache)
    assert math.isnan(z) and cached and calls == [1e-3, 0.05]


def test_divergence_guard_is_improved_mode_only():
    assert is_diverged(math.nan, mode="improved") and is_diverged(math.inf, mode="improved")
    assert not is_diverged(0.4, mode="improved")
    assert not is_diverged(math.nan, mode="paper")


def test_running_product_in_the_mode_type():
    # float64: (0.5 * 0.4)^0.8
    assert running_product([0.5, 0.4], 0.8, np.float64) == pytest.approx(0.2**0.8, rel=1e-15)
    # float16, power 1: (1/3 in float16 = 0.333251953125)^2 = 0.1110568..., rounded to the float16 grid of
    # [2^-4, 2^-3) (steps of 2^-14): 1820 * 2^-14 = 0.111083984375
    third = np.float16(1 / 3)
    p = running_product([third, third], 1.0, np.float16)
    assert p.dtype == np.float16 and float(p) == 1820 * 2.0**-14
    # the plateau fires once prod Z < min_delta^(1/power): at power 0.8, 5e-3 -> 1.33e-3
    assert (
        running_product([0.0364] * 2, 0.8, np.float64) < 5e-3 < running_product([0.037] * 2, 0.8, np.float64)
    )


@pytest.mark.parametrize(
    ("z", "i", "first", "product", "branch"),
    [
        (1.0, 0, True, 1.0, "all-zero"),  # nothing learned, at the floor
        (1.0, 7, False, 1e-9, "all-zero"),  # ... and above it, whatever the product
        (0.45, 0, True, 0.45, "early-cross"),  # already learning at the floor, on the first walk
        (0.5, 0, True, 0.5, "nothing"),  # Z < 0.5 is strict
        (0.1, 0, False, 0.1, "nothing"),  # not on the first walk any more
        (0.0, 0, False, 0.0, "nothing"),  # reach-100 and the plateau are never tested at the floor
        (0.0, 3, True, 0.0, "reach-100"),  # every unfolding learned
        (0.3, 3, False, 1e-3, "plateau"),  # the running product fell below min_delta
        (0.3, 3, False, 5e-3, "nothing"),  # ... strictly
        (math.nan, 3, False, math.nan, "nothing"),  # paper mode's NaN: no branch fires
    ],
)
def test_classify_follows_the_original_if_chain(z, i, first, product, branch):
    assert classify(z, i, first=first, product=product, min_delta=5e-3) == branch


def test_bracket_below_and_extend_up():
    grid = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    assert bracket_below(grid, 3) == (2.0, 4.0)  # [grid[i-2], grid[i-1]]
    assert bracket_below(grid, 2) == (1.0, 2.0)
    assert bracket_below(grid, 1) == (1.0, 1.5)  # grid[i-2] clips to grid[0] = grid[i-1]: the midpoint
    assert extend_up(grid) == (8.0, 24.0)  # [grid[-2], 1.5 grid[-1]]


def test_next_window_of_each_branch():
    grid = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    assert next_window("all-zero", grid, 2, 1.0, 16.0) == (5.0, 16.0)  # the floor x5
    assert next_window("all-zero", grid, 2, 4.0, 16.0) == (20.0, 30.0)  # past the top: top = 1.5 floor
    assert next_window("early-cross", grid, 0, 1.0, 16.0) == (0.1, 16.0)  # the floor / 10
    assert next_window("reach-100", grid, 3, 1.0, 16.0) == (2.0, 4.0)
    assert next_window("plateau", grid, 3, 1.0, 16.0) == (2.0, 8.0)  # the last two grid steps
    assert next_window("plateau", grid, 1, 1.0, 16.0) == (1.0, 2.0)
    assert next_window("diverged", grid, 0, 1.0, 16.0) == (0.1, 1.0)  # the decade below the floor
    assert next_window("diverged", grid, 3, 1.0, 16.0) == (2.0, 4.0)
    assert next_window("end-reached", grid, 5, 1.0, 16.0) == (8.0, 24.0)
    with pytest.raises(ValueError, match="keeps the window"):
        next_window("nothing", grid, 2, 1.0, 16.0)


def test_state_advance_bookkeeping():
    state = SearchState.start(1.0, 16.0, 5)
    state.hist = [0.9]
    state.advance("nothing")  # at the floor: first walk goes on
    assert (state.i, state.first, state.hist) == (1, True, [0.9])
    state.advance("all-zero")  # above the floor, but all-zero keeps the first walk
    assert (state.lo, state.hi, state.i, state.first, state.hist) == (5.0, 16.0, 0, True, [])
    assert state.grid == pytest.approx(np.geomspace(5.0, 16.0, 5))
    state.advance("early-cross")  # i stays 0
    assert (state.lo, state.i, state.first) == (0.5, 0, True)
    state.advance("nothing")
    state.hist = [0.8, 0.7]
    state.advance("nothing")  # the first trial above the floor ends the first walk
    assert (state.i, state.first) == (2, False)
    state.i = len(state.grid)
    state.advance("end-reached")  # the product is kept across the extension
    assert state.i == 0 and state.hist == [0.8, 0.7] and state.exits == 0
    state.i = 3
    top = state.grid[3]
    state.advance("plateau")
    assert (state.hi, state.i, state.hist, state.exits) == (top, 0, [], 1)
