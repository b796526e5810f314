"""The autoHyper search for the initial learning rate (``auto_lr`` of the original, brief §1.3).

The search walks a geometric grid of LRs upwards; each step trains a fresh network for a few epochs and reads
its response ``Z`` (:func:`autohyper.metrics.response_value`). ``Z = 1`` (nothing learned) moves the floor up;
a low ``Z`` at the floor extends the grid down; ``Z = 0`` brackets just below; and when the running product
``(prod Z)^power`` since the last regrid falls below ``min_delta`` (a "plateau") the window narrows to the last
two grid steps. The search stops when the window is narrow enough; the answer is the top of the last window.

Two modes:

* ``paper``: the original's decisions exactly, numeric quirks included: the product of Z in float16, the
  absolute width exit ``|hi - lo| < lr_delta``, the already-evaluated first LR of a refined window trained again.
* ``improved``: Z in float64; an LR already tried is not trained again (its Z is reused, ``Step.cached``); a
  diverged trial (the response returns a non-finite value) is read as "too large" and bracketed below (the
  original reads the zero knowledge gains of NaN weights as "learned nothing" and moves *up*); the exit test is
  relative, ``(hi - lo)/hi < rel_lr_delta`` (default 0.6: after the first plateau), so the resolution is the
  same at every LR scale. (That every trial starts from the same seeded weights and data order is the trial
  agent's part: :mod:`autohyper.task`.)

Both modes stop after ``max_trials`` responses (``exit-budget``): the original can loop for ever when Z stays 1
(the floor keeps moving up); no run of the original that terminates reaches it at the default.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

BRANCHES = (
    "nothing",
    "all-zero",
    "early-cross",
    "reach-100",
    "plateau",
    "end-reached",
    "exit-delta",
    "exit-counter",
    "diverged",
    "exit-budget",
)


@dataclass(frozen=True)
class Step:
    """One row of the search log (the original's ``lrrt.csv``: ``lr, rank, msg``).

    Attributes:
        lr: the LR evaluated (for ``end-reached``/``exit-delta``/``exit-counter``/``exit-budget`` rows, which
            evaluate nothing, the grid LR at that point, as the original logs it).
        z: the response Z at ``lr`` (for the rows that evaluate nothing, the last Z).
        branch: the decision taken (one of :data:`BRANCHES`).
        evaluated: whether this row is an evaluation of ``lr`` (False for the bookkeeping rows).
        cached: an evaluation answered from the cache (``improved`` mode), not a new trial.
    """

    lr: float
    z: float
    branch: str
    evaluated: bool = True
    cached: bool = False


@dataclass
class SearchResult:
    """What :func:`search_lr` found.

    Attributes:
        lr: the chosen initial learning rate.
        trials: every evaluation of the search in order (``Step`` rows with ``evaluated=True``).
        log: every row in order, the bookkeeping rows (end-reached, exit-delta, exit-counter) included.
        stop: why the search stopped: ``exit-delta``, ``exit-counter`` or ``exit-budget``.
        mode: ``paper`` or ``improved``.
    """

    lr: float
    trials: list[Step] = field(default_factory=list)
    log: list[Step] = field(default_factory=list)
    stop: str = ""
    mode: str = "paper"

    @property
    def num_trials(self) -> int:
        """Number of calls of the response (trainings), cache hits excluded."""
        return sum(1 for t in self.trials if not t.cached)

    def to_dict(self) -> dict:
        return {
            "lr": self.lr,
            "stop": self.stop,
            "mode": self.mode,
            "num_trials": self.num_trials,
            "log": [asdict(s) for s in self.log],
        }


def _key(lr: float) -> float:
    # LRs reached by different grids are equal up to rounding: compare at 12 significant digits
    return float(f"{lr:.12g}")


def search_lr(
    response: Callable[[float], float],
    *,
    min_lr: float = 1e-4,
    max_lr: float = 0.1,
    num_split: int = 20,
    min_delta: float = 5e-3,
    lr_delta: float = 3e-5,
    power: float = 0.8,
    exit_counter_thresh: int = 6,
    mode: str = "paper",
    rel_lr_delta: float = 0.6,
    max_trials: int = 200,
    on_step: Callable[[Step], None] | None = None,
) -> SearchResult:
    """Find the initial learning rate by response modelling (autoHyper).

    Args:
        response: ``response(lr) -> Z``; called once per trial, in order. In ``improved`` mode a non-finite
            return value means the trial diverged.
        min_lr, max_lr: the first grid's ends.
        num_split: the grid size.
        min_delta: the plateau threshold on ``(prod Z)^power``.
        lr_delta: ``paper``: the absolute window width ``|hi - lo|`` below which the search stops.
        power: the exponent of the running product.
        exit_counter_thresh: stop after more than this many plateaus.
        mode: ``paper`` (the original decision for decision) or ``improved`` (see the module docstring).
        rel_lr_delta: ``improved``: the relative width ``(hi - lo)/hi`` below which the search stops. The
            default 0.6 was chosen by ``bench/autohyper.py`` (README, "Measured figures"): it stops after the
            first plateau on the default grid (whose two-step window has ``(hi - lo)/hi = 0.52``), i.e. the
            answer is where the running product of Z first crosses ``min_delta``, the grid step (0.16 decade)
            being the resolution; values of 0.08..0.52 stop after the second plateau instead (0.03 decade),
            which on the benchmark lands lower (0.53 decade under the grid's best LR) at 1.5x the trials.
        max_trials: stop (``exit-budget``) after this many responses.
        on_step: called with every log row as it is written (e.g. to rewrite ``trials.csv``).

    Returns:
        A :class:`SearchResult`; ``.lr`` is the top of the last window (the original's ``grid[-1]``).
    """
    if mode not in ("paper", "improved"):
        raise ValueError(f"mode must be 'paper' or 'improved', got {mode!r}")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if num_split < 3:
        raise ValueError(f"num_split must be at least 3, got {num_split}")
    paper = mode == "paper"
    # the original keeps Z and the running product in float16 (compute_rank returns a float16)
    ftype = np.float16 if paper else np.float64
    result = SearchResult(lr=float("nan"), mode=mode)
    cache: dict[float, float] = {}

    def record(lr: float, z: float, branch: str, evaluated: bool = True, cached: bool = False) -> None:
        step = Step(float(lr), float(z), branch, evaluated, cached)
        result.log.append(step)
        if evaluated:
            result.trials.append(step)
        if on_step is not None:
            on_step(step)

    lo, hi = min_lr, max_lr
    grid = np.geomspace(lo, hi, num_split)
    i = 0
    exits = 0
    first = True
    hist: list = []
    z = float("nan")
    calls = 0
    while True:
        if i == num_split:
            # walked off the top of the grid: extend it upward; the product (hist) is kept, as in the original
            lo, hi = grid[-2], 1.5 * grid[-1]
            grid = np.geomspace(lo, hi, num_split)
            i = 0
            record(grid[i], z, "end-reached", evaluated=False)
            continue
        narrow = abs(lo - hi) < lr_delta if paper else (hi - lo) / hi < rel_lr_delta
        if narrow:
            record(grid[i], z, "exit-delta", evaluated=False)
            result.stop = "exit-delta"
            break
        if calls >= max_trials:
            record(grid[i], z, "exit-budget", evaluated=False)
            result.stop = "exit-budget"
            break
        lr = float(grid[i])
        cached = not paper and _key(lr) in cache
        if cached:
            z = cache[_key(lr)]
        else:
            z = float(response(lr))
            calls += 1
            if paper:
                # the original's Z is a float16 (compute_rank): every comparison sees the rounded value
                z = float(np.float16(z))
            if not paper:
                cache[_key(lr)] = z
        if not paper and not math.isfinite(z):
            # a diverged trial is "too large": bracket below it (not in the original)
            if i == 0:
                hi, lo = lo, lo / 10
            else:
                lo = grid[max(i - 2, 0)]
                hi = grid[i - 1] if grid[i - 1] != lo else (lo + grid[i]) / 2
                first = False
            grid = np.geomspace(lo, hi, num_split)
            hist, i = [], 0
            record(lr, z, "diverged", cached=cached)
            continue
        hist.append(ftype(z))
        zeta = np.cumprod(np.asarray(hist, dtype=ftype)) ** ftype(power)
        if np.isclose(z, 1):
            # nothing learned at this LR: move the floor up
            lo *= 5
            if lo > hi:
                hi = 1.5 * lo
            grid = np.geomspace(lo, hi, num_split)
            hist, i = [], 0
            record(lr, z, "all-zero", cached=cached)
            continue
        if i == 0:
            if first and z < 0.5:
                # already learning at the floor: extend the grid down (i stays 0)
                lo /= 10
                grid = np.geomspace(lo, hi, num_split)
                hist = []
                record(lr, z, "early-cross", cached=cached)
                continue
        else:
            first = False
            if np.isclose(z, 0):
                # every unfolding learned: the response has bottomed out, bracket just below
                lo = grid[max(i - 2, 0)]
                hi = grid[i - 1] if grid[i - 1] != lo else (lo + grid[i]) / 2
                grid = np.geomspace(lo, hi, num_split)
                hist, i = [], 0
                record(lr, z, "reach-100", cached=cached)
                continue
            if zeta[-1] < min_delta:
                # the running product has flattened out: narrow to the last two grid steps
                exits += 1
                lo, hi = grid[max(i - 2, 0)], grid[i]
                grid = np.geomspace(lo, hi, num_split)
                hist, i = [], 0
                record(lr, z, "plateau", cached=cached)
                if exits > exit_counter_thresh:
                    record(grid[i], z, "exit-counter", evaluated=False)
                    result.stop = "exit-counter"
                    break
                continue
        record(lr, z, "nothing", cached=cached)
        i += 1
    # the original returns grid[-1]: the top of the last window, i.e. the LR at which the last plateau fired
    result.lr = float(grid[-1])
    log.info("autoHyper (%s): lr=%.4g after %d trials (%s)", mode, result.lr, result.num_trials, result.stop)
    return result
