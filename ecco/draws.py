"""The robustness study's random hyperparameter draws per optimizer, and the summary of the trials.

Three range variants (brief §3):

* ``paper``: the original scripts' ranges. ECCO: α₀ ~ U(0,1), η ~ U(0,100). Adam + cosine: lr, β₁, β₂ ~ U(0,1),
  T_max ~ randint(1,300). SGD momentum 0.9 + cosine: lr ~ U(0,1), wd = 10^randint(−8,−1), T_max ~ randint(50,500).
  AdaGrad: lr, lr_decay ~ U(0,1), wd = 10^randint(−8,−1). RMSprop: lr, alpha ~ U(0,1), wd = 10^randint(−8,−1).
  Uniform draws are rounded to 6 decimals as in the scripts (and kept > 0: U(0,1) may round to 0).
* ``paper_lstm``: the original's ranges for its LSTM power task, where three optimizers differ: SGD momentum
  0.9 + cosine with lr ~ U(0.9, 1.5) and **wd ~ U(0.9, 1.5)** (as the script has it: a weight decay near 1, which
  pulls the weights to 0 every step), T_max ~ randint(50, 500); AdaGrad lr, lr_decay, wd ~ U(0,1); RMSprop
  lr, alpha, wd ~ U(0,1). ECCO and Adam as ``paper``.
* ``loguniform``: the same knobs on log scales around sensible values, β₂ > β₁, weight decay ≤ 1e-2 and a
  cosine schedule over the whole run (the brief's §4 item 17 fix of the handicapped baselines).

A draw is a pure function of (seed, optimizer, trial index), so a resumed study redraws the same values.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# the optimizers themselves are built by ecco.task (its OPTIMIZERS); draw() has ranges for each of them
RANGES = ("paper", "paper_lstm", "loguniform")
_MIN_UNIFORM = 1e-6


def _rng(seed: int, optimizer: str, trial: int, ranges: str) -> np.random.Generator:
    key = hashlib.sha256(f"{seed}/{optimizer}/{trial}/{ranges}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little"))


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return max(round(float(rng.uniform(low, high)), 6), _MIN_UNIFORM)


def _log_u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw(
    optimizer: str, trial: int, *, seed: int = 0, ranges: str = "paper", epochs: int = 20
) -> dict[str, Any]:
    """One hyperparameter draw for ``optimizer``.

    Args:
        optimizer: one of ``ecco.task.OPTIMIZERS`` (the optimizers the study builds).
        trial: the trial index.
        seed: the study seed.
        ranges: ``"paper"``, ``"paper_lstm"`` or ``"loguniform"``.
        epochs: the training length (the cosine horizon of the log-uniform variant).

    Returns:
        The optimizer's keyword arguments, plus ``t_max`` for the cosine schedule where there is one.

    Raises:
        ValueError: unknown optimizer or range variant.
    """
    if ranges not in RANGES:
        raise ValueError(f"ranges must be one of {RANGES}, got {ranges!r}")
    rng = _rng(seed, optimizer, trial, ranges)
    if ranges == "paper_lstm" and optimizer in ("sgd_momentum", "adagrad", "rmsprop"):
        if optimizer == "sgd_momentum":
            return {
                "lr": _u(rng, 0.9, 1.5),
                "momentum": 0.9,
                "weight_decay": _u(rng, 0.9, 1.5),
                "t_max": int(rng.integers(50, 501)),
            }
        if optimizer == "adagrad":
            return {"lr": _u(rng, 0, 1), "lr_decay": _u(rng, 0, 1), "weight_decay": _u(rng, 0, 1)}
        if optimizer == "rmsprop":
            return {"lr": _u(rng, 0, 1), "alpha": _u(rng, 0, 1), "weight_decay": _u(rng, 0, 1)}
    if ranges in ("paper", "paper_lstm"):
        if optimizer == "ecco":
            return {"alpha_0": _u(rng, 0, 1), "eta": _u(rng, 0, 100)}
        if optimizer == "adam":
            return {
                "lr": _u(rng, 0, 1),
                "betas": (_u(rng, 0, 1), _u(rng, 0, 1)),
                "t_max": int(rng.integers(1, 301)),
            }
        if optimizer == "sgd_momentum":
            return {
                "lr": _u(rng, 0, 1),
                "momentum": 0.9,
                "weight_decay": 10.0 ** int(rng.integers(-8, 0)),
                "t_max": int(rng.integers(50, 501)),
            }
        if optimizer == "adagrad":
            return {
                "lr": _u(rng, 0, 1),
                "lr_decay": _u(rng, 0, 1),
                "weight_decay": 10.0 ** int(rng.integers(-8, 0)),
            }
        if optimizer == "rmsprop":
            return {
                "lr": _u(rng, 0, 1),
                "alpha": _u(rng, 0, 1),
                "weight_decay": 10.0 ** int(rng.integers(-8, 0)),
            }
        raise ValueError(f"draw has no ranges for optimizer {optimizer!r}")
    if optimizer == "ecco":
        return {"alpha_0": _log_u(rng, 1e-3, 1.0), "eta": _log_u(rng, 1e-4, 100.0)}
    if optimizer == "adam":
        return {
            "lr": _log_u(rng, 1e-5, 1e-1),
            "betas": (1 - _log_u(rng, 1e-2, 0.3), 1 - _log_u(rng, 1e-4, 1e-1)),
            "t_max": epochs,
        }
    if optimizer == "sgd_momentum":
        return {
            "lr": _log_u(rng, 1e-4, 1.0),
            "momentum": 0.9,
            "weight_decay": _log_u(rng, 1e-6, 1e-2),
            "t_max": epochs,
        }
    if optimizer == "adagrad":
        return {"lr": _log_u(rng, 1e-4, 1.0), "lr_decay": 0.0, "weight_decay": _log_u(rng, 1e-6, 1e-2)}
    if optimizer == "rmsprop":
        return {
            "lr": _log_u(rng, 1e-5, 1e-1),
            "alpha": 1 - _log_u(rng, 1e-3, 0.3),
            "weight_decay": _log_u(rng, 1e-6, 1e-2),
        }
    raise ValueError(f"draw has no ranges for optimizer {optimizer!r}")


def summarize(
    trials: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    higher_is_better: bool = True,
    tolerance: float = 0.01,
) -> list[dict[str, Any]]:
    """Per-optimizer distribution of ``metric``: count, median, quartiles, min, max, and the fraction of draws
    within ``tolerance`` of the best draw of all optimizers (1 point of accuracy by default; for a loss,
    within ``tolerance`` relative to the best).

    Non-finite values (diverged runs) count as the worst possible result.
    """
    values: dict[str, list[float]] = {}
    for t in trials:
        values.setdefault(str(t["optimizer"]), []).append(float(t[metric]))
    finite = [v for vs in values.values() for v in vs if math.isfinite(v)]
    if not finite:
        return []
    best = max(finite) if higher_is_better else min(finite)
    worst = -math.inf if higher_is_better else math.inf
    rows = []
    for name, vs in values.items():
        arr = np.array([v if math.isfinite(v) else worst for v in vs], dtype=float)
        if higher_is_better:
            near = arr >= best - tolerance
        else:
            near = arr <= best * (1 + tolerance) if best > 0 else arr <= best + tolerance
        # with diverged (infinite) entries interpolation is undefined: take the lower order statistic
        method = "linear" if np.isfinite(arr).all() else "lower"
        q1, med, q3 = (float(np.quantile(arr, q, method=method)) for q in (0.25, 0.5, 0.75))
        rows.append(
            {
                "optimizer": name,
                "draws": len(vs),
                "median": float(med),
                "q1": float(q1),
                "q3": float(q3),
                "min": float(arr.min()),
                "max": float(arr.max()),
                "diverged": int(sum(not math.isfinite(v) for v in vs)),
                "frac_near_best": float(near.mean()),
            }
        )
    return rows
