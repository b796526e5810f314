"""The autoHyper search for the initial learning rate: ``auto_lr`` of the original (``master``,
``src/autohyper/autoHyper.py``).

The search walks a geometric grid of LRs upwards; each step trains a fresh network for a few epochs and reads
its response ``Z`` (:func:`autohyper.metrics.response_value`). ``Z = 1`` (nothing learned) moves the floor up;
a low ``Z`` at the floor extends the grid down; ``Z = 0`` brackets just below; and when the running product
``(prod Z)^power`` since the last regrid falls below ``min_delta`` (a "plateau") the window narrows to the last
two grid steps. The search stops when the window is narrow enough; the answer is the top of the last window.

The loop of :func:`search_lr` is made of these decision steps, each a function of its inputs alone:

* :func:`lr_grid`: the grid of a window;
* :func:`stop_before_trial`: the exits tested before each trial (``exit-delta`` by :func:`window_is_narrow`,
  ``exit-budget``);
* :func:`read_z`: a trial's Z (float16-rounded in ``paper`` mode, cached in ``improved`` mode);
* :func:`is_diverged`: the ``improved`` mode's divergence guard;
* :func:`running_product`: ``(prod Z)^power`` since the last regrid;
* :func:`classify`: the branch the original's if-chain takes on a Z (all-zero, early-cross, reach-100, plateau,
  nothing);
* :func:`next_window`: the window each branch moves to (with :func:`bracket_below` and :func:`extend_up`);
* :meth:`SearchState.advance`: the bookkeeping of a branch (grid position, product, ``first``, plateau count).

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

MODES = ("paper", "improved")

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


def lr_grid(lo: float, hi: float, num_split: int) -> np.ndarray:
    """The grid of the window ``[lo, hi]``: ``num_split`` geometric steps, both ends included.

    ``auto_lr`` builds it with ``np.geomspace(lo, hi, num_split)`` at the start and after every change of window.
    """
    return np.geomspace(lo, hi, num_split)


def window_is_narrow(lo: float, hi: float, *, mode: str, lr_delta: float, rel_lr_delta: float) -> bool:
    """Whether the window ``[lo, hi]`` is narrow enough to stop (``exit-delta``).

    ``paper``: the original's absolute width ``|lo - hi| < lr_delta`` (3e-5: a few refinements at LR 1e-3, more
    at larger LRs). ``improved``: the relative width ``(hi - lo)/hi < rel_lr_delta``, the same resolution at
    every LR scale.
    """
    if mode == "paper":
        return abs(lo - hi) < lr_delta
    return (hi - lo) / hi < rel_lr_delta


def stop_before_trial(
    lo: float,
    hi: float,
    calls: int,
    *,
    mode: str,
    lr_delta: float,
    rel_lr_delta: float,
    max_trials: int,
) -> str | None:
    """The exit taken before the next trial, or None to go on.

    ``exit-delta`` when the window is narrow (:func:`window_is_narrow`; the original tests it at the top of its
    loop, before each trial); otherwise ``exit-budget`` once ``calls`` responses were asked for (not in the
    original, which can loop for ever when Z stays 1).
    """
    if window_is_narrow(lo, hi, mode=mode, lr_delta=lr_delta, rel_lr_delta=rel_lr_delta):
        return "exit-delta"
    if calls >= max_trials:
        return "exit-budget"
    return None


def read_z(
    response: Callable[[float], float], lr: float, *, mode: str, cache: dict[float, float]
) -> tuple[float, bool]:
    """The response Z of a trial at ``lr``, and whether it came from ``cache`` (then ``response`` is not called).

    ``paper``: ``response`` is called every time (the original retrains the first LR of a refined window), and
    its value is rounded through float16, the type of the original's ``compute_rank``, so every comparison sees
    the rounded value. ``improved``: an LR already tried (equal at 12 significant digits) is answered from
    ``cache``; a new one is stored there unrounded (a non-finite value too: it diverges again).
    """
    if mode != "paper" and _key(lr) in cache:
        return cache[_key(lr)], True
    z = float(response(lr))
    if mode == "paper":
        z = float(np.float16(z))
    else:
        cache[_key(lr)] = z
    return z, False


def is_diverged(z: float, *, mode: str) -> bool:
    """The ``improved`` mode's divergence guard: a non-finite Z means the trial diverged (LR too large).

    Not in the original, which has no such test: there a NaN Z never equals 0 or 1 and never falls below the
    threshold, so it walks on (``nothing``); its trials' NaN weights give the EVBMF exception path's zeros,
    "learned nothing", so it moves *up*.
    """
    return mode == "improved" and not math.isfinite(z)


def running_product(hist: Sequence[float], power: float, ftype: type[np.floating]) -> np.floating:
    """``(prod Z)^power`` over the Z values since the last regrid, in ``ftype``.

    The original's ``zeta = cumprod(hist) ** power`` read at its last element, in the Z's own type (float16 in
    ``paper`` mode, so the product is rounded at every step). Returned as the numpy scalar the original compares.
    """
    return (np.cumprod(np.asarray(hist, dtype=ftype)) ** ftype(power))[-1]


def classify(z: float, i: int, *, first: bool, product: np.floating | float, min_delta: float) -> str:
    """The branch ``auto_lr``'s if-chain takes on the Z of the trial at grid position ``i``.

    In the original's order: ``all-zero`` when Z is 1 (nothing learned at this LR, anywhere on the grid); at the
    floor (``i == 0``) ``early-cross`` when Z < 0.5 on the first walk (``first``: already learning at the floor),
    else ``nothing``; above the floor ``reach-100`` when Z is 0 (every unfolding learned), ``plateau`` when the
    running ``product`` (:func:`running_product`) is below ``min_delta``, else ``nothing``. Z equal to 0 or 1 is
    ``np.isclose`` (float16 Z values are exact there); the plateau is never tested at the floor.
    """
    if np.isclose(z, 1):
        return "all-zero"
    if i == 0:
        return "early-cross" if first and z < 0.5 else "nothing"
    if np.isclose(z, 0):
        return "reach-100"
    if product < min_delta:
        return "plateau"
    return "nothing"


def bracket_below(grid: np.ndarray, i: int) -> tuple[float, float]:
    """The window just below grid position ``i > 0`` (``reach-100``, and ``improved``'s ``diverged``).

    ``auto_lr``: ``lo = grid[max(i - 2, 0)]``, ``hi = grid[i - 1]``; when those coincide (``i == 1``), ``hi`` is
    the midpoint ``(lo + grid[i]) / 2`` so that the window is not empty.
    """
    lo = grid[max(i - 2, 0)]
    hi = grid[i - 1] if grid[i - 1] != lo else (lo + grid[i]) / 2
    return lo, hi


def extend_up(grid: np.ndarray) -> tuple[float, float]:
    """The window after walking off the top of ``grid`` (``end-reached``): ``[grid[-2], 1.5 grid[-1]]`` (auto_lr)."""
    return grid[-2], 1.5 * grid[-1]


def next_window(branch: str, grid: np.ndarray, i: int, lo: float, hi: float) -> tuple[float, float]:
    """The window ``[lo, hi]`` after ``branch`` was taken at grid position ``i`` of the window ``[lo, hi]``.

    From ``auto_lr``: ``all-zero`` moves the floor up x5 (and the top to 1.5x the floor if it passed it);
    ``early-cross`` extends the grid down x10; ``reach-100`` brackets below (:func:`bracket_below`); ``plateau``
    narrows to the last two grid steps ``[grid[i-2], grid[i]]``; ``end-reached`` extends up (:func:`extend_up`).
    ``diverged`` (``improved`` only) brackets below as ``reach-100``; at the floor, the decade below it.

    Raises:
        ValueError: for ``nothing`` and the exits, which keep the window.
    """
    if branch == "all-zero":
        lo = lo * 5
        return lo, (1.5 * lo if lo > hi else hi)
    if branch == "early-cross":
        return lo / 10, hi
    if branch == "reach-100":
        return bracket_below(grid, i)
    if branch == "diverged":
        return (lo / 10, lo) if i == 0 else bracket_below(grid, i)
    if branch == "plateau":
        return grid[max(i - 2, 0)], grid[i]
    if branch == "end-reached":
        return extend_up(grid)
    raise ValueError(f"branch {branch!r} keeps the window")


@dataclass
class SearchState:
    """Where the search stands.

    Attributes:
        lo, hi: the window.
        grid: its grid (:func:`lr_grid`).
        i: the position of the next trial on the grid.
        first: still on the first walk up from the floor (``early-cross`` is only taken then).
        exits: the number of plateaus so far (``exit-counter``).
        hist: the Z values since the last regrid (the running product's factors, in the mode's float type).
    """

    lo: float
    hi: float
    grid: np.ndarray
    i: int = 0
    first: bool = True
    exits: int = 0
    hist: list = field(default_factory=list)

    @classmethod
    def start(cls, min_lr: float, max_lr: float, num_split: int) -> SearchState:
        """The first window ``[min_lr, max_lr]``, at its floor."""
        return cls(min_lr, max_lr, lr_grid(min_lr, max_lr, num_split))

    def advance(self, branch: str) -> None:
        """Apply ``branch``, taken by the trial at ``self.i``: move on the grid or change window.

        As ``auto_lr``: ``nothing`` steps up the grid; every other branch moves to :func:`next_window`, regrids
        and restarts at its floor; the product is reset, except at ``end-reached`` (the original keeps it across
        the extension). ``first`` ends with the first trial above the floor that is not ``all-zero``; a
        ``plateau`` counts towards ``exit-counter``.
        """
        num_split = len(self.grid)
        if branch not in ("all-zero", "end-reached") and self.i > 0:
            self.first = False
        if branch == "nothing":
            self.i += 1
            return
        self.lo, self.hi = next_window(branch, self.grid, self.i, self.lo, self.hi)
        self.grid = lr_grid(self.lo, self.hi, num_split)
        self.i = 0
        if branch != "end-reached":
            self.hist = []
        if branch == "plateau":
            self.exits += 1


def _check_arguments(mode: str, min_lr: float, max_lr: float, num_split: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'paper' or 'improved', got {mode!r}")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if num_split < 3:
        raise ValueError(f"num_split must be at least 3, got {num_split}")


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

    Raises:
        ValueError: for an unknown ``mode``, ``min_lr``/``max_lr`` not ``0 < min_lr < max_lr``, or
            ``num_split < 3``.
    """
    _check_arguments(mode, min_lr, max_lr, num_split)
    # the original keeps Z and the running product in float16 (compute_rank returns a float16)
    ftype = np.float16 if mode == "paper" else np.float64
    result = SearchResult(lr=float("nan"), mode=mode)
    cache: dict[float, float] = {}

    def record(lr: float, z: float, branch: str, evaluated: bool = True, cached: bool = False) -> None:
        step = Step(float(lr), float(z), branch, evaluated, cached)
        result.log.append(step)
        if evaluated:
            result.trials.append(step)
        if on_step is not None:
            on_step(step)

    state = SearchState.start(min_lr, max_lr, num_split)
    z = float("nan")
    calls = 0
    while True:
        if state.i == num_split:
            # walked off the top of the grid: extend it upward (the product is kept, as in the original)
            state.advance("end-reached")
            record(state.grid[state.i], z, "end-reached", evaluated=False)
            continue
        stop = stop_before_trial(
            state.lo,
            state.hi,
            calls,
            mode=mode,
            lr_delta=lr_delta,
            rel_lr_delta=rel_lr_delta,
            max_trials=max_trials,
        )
        if stop is not None:
            record(state.grid[state.i], z, stop, evaluated=False)
            result.stop = stop
            break
        i, lr = state.i, float(state.grid[state.i])
        z, cached = read_z(response, lr, mode=mode, cache=cache)
        calls += not cached
        if is_diverged(z, mode=mode):
            branch = "diverged"
        else:
            state.hist.append(ftype(z))
            product = running_product(state.hist, power, ftype)
            branch = classify(z, i, first=state.first, product=product, min_delta=min_delta)
        state.advance(branch)
        record(lr, z, branch, cached=cached)
        if branch == "plateau" and state.exits > exit_counter_thresh:
            record(state.grid[state.i], z, "exit-counter", evaluated=False)
            result.stop = "exit-counter"
            break
    # the original returns grid[-1]: the top of the last window, i.e. the LR at which the last plateau fired
    result.lr = float(state.grid[-1])
    log.info("autoHyper (%s): lr=%.4g after %d trials (%s)", mode, result.lr, result.num_trials, result.stop)
    return result
