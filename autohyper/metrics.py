"""Low-rank metrics of conv (and Linear) weights: EVBMF, knowledge gain, rank fraction, mapping condition, Z.

EVBMF is the analytic empirical variational Bayes matrix factorisation of Nakajima, Sugiyama, Babacan and
Tomioka (JMLR 2013, "Global analytic solution of fully-observed variational Bayesian matrix factorization"),
with the constants, bounds and bounded scalar search of the autoHyper/AdaS code (``VBMF.EVBMF``).

The metrics of a conv weight ``W`` (``C_out x C_in x k_h x k_w``) are taken on two unfoldings:
mode-3 ("in", ``C_in x C_out k_h k_w``) and mode-4 ("out", ``C_out x C_in k_h k_w``). With ``N`` the number of
rows of the unfolding, ``r`` the EVBMF rank and ``d_1 >= ... >= d_r`` the shrunk singular values:

* knowledge gain ``S = (1/N) sum_{i<=r} (d_i/d_1)^p`` (0 when ``r = 0``),
* rank fraction ``r/N``,
* mapping condition ``kappa = (d_1/d_r)^p`` (0 when ``r = 0``).

Which weights (:func:`metric_weights`): the conv weights (every 4-D parameter, the original's definition), or,
for a network without any (an MLP), the weights of its ``nn.Linear`` layers. The original counts only convs;
a Linear weight ``W`` (``C_out x C_in``) is read as the 1x1 conv it equals, so its mode-3 unfolding is ``W^T``
(``N = C_in``) and its mode-4 unfolding ``W`` (``N = C_out``). Both have the same singular values, hence the
same EVBMF rank and shrunk values; only ``N`` differs. A conv network's Z is unchanged (its Linear classifier
stays out, as in the original).

Departure from the original: Nakajima's solution is stated for ``L <= M``; the original never checks and hits
scipy's "lower bound exceeds the upper bound" on tall unfoldings (e.g. mode-4 of a 1x1 conv expanding 32->128),
then falls back to an exception path. Here a tall matrix is transposed first (the factorisation model
``Y = B A^T + E`` is symmetric under transposition, so the solution is the same with ``L`` and ``M`` swapped);
``N`` stays the unfolding's row count. The exception path is kept for what can still fail (non-finite weights).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

log = logging.getLogger(__name__)

# Nakajima et al. 2013, Theorem 13: tau_bar = 2.5129 sqrt(alpha) (the constant of the EVB threshold)
_TAU_BAR_CONSTANT = 2.5129


class EVBMFResult(NamedTuple):
    """The EVBMF solution of one matrix.

    Attributes:
        rank: the estimated rank (number of singular values above the EVB threshold).
        values: the shrunk singular values of the retained components, descending (length ``rank``).
        sigma2: the estimated noise variance.
    """

    rank: int
    values: np.ndarray
    sigma2: float


class ConvMetrics(NamedTuple):
    """The six per-layer values of one conv (or Linear) weight (mode-3 = ``in``, mode-4 = ``out``)."""

    in_S: float
    in_rank: float
    in_condition: float
    out_S: float
    out_rank: float
    out_condition: float


@dataclass
class NetworkMetrics:
    """Per-layer metrics of every metric weight of a network at one epoch (arrays of length ``L``)."""

    in_S: np.ndarray
    in_rank: np.ndarray
    in_condition: np.ndarray
    out_S: np.ndarray
    out_rank: np.ndarray
    out_condition: np.ndarray

    FIELDS = ConvMetrics._fields

    def layer(self, index: int) -> ConvMetrics:
        """The six values of layer ``index``."""
        return ConvMetrics(*(float(getattr(self, f)[index]) for f in self.FIELDS))

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists (for JSON / checkpoints)."""
        return {f: [float(v) for v in getattr(self, f)] for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]]) -> NetworkMetrics:
        return cls(**{f: np.asarray(d[f], dtype=np.float64) for f in cls.FIELDS})


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    # Nakajima et al. 2013, eq. (the EVB posterior): tau(x) = (x - 1 - alpha + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2
    b = x - 1.0 - alpha
    return 0.5 * (b + np.sqrt(b * b - 4.0 * alpha))


def evbmf_objective(sigma2: float, s: np.ndarray, L: int, M: int) -> float:
    """The EVB free energy (up to constants) as a function of the noise variance ``sigma2``.

    ``sum_{x<=x_bar}(x - ln x) + sum_{x>x_bar}(x - tau(x)) + sum_{x>x_bar} ln((tau+1)/x)
    + alpha sum_{x>x_bar} ln(tau/alpha + 1)`` with ``x_h = s_h^2 / (M sigma2)``; the ``(L - H) ln sigma2`` and
    residual terms of Nakajima's objective vanish because ``H = L`` (all components kept).
    """
    alpha = L / M
    tau_bar = _TAU_BAR_CONSTANT * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    x = s**2 / (M * sigma2)
    above = x[x > x_bar]
    below = x[x <= x_bar]
    tau_above = _tau(above, alpha)
    return float(
        np.sum(below - np.log(below))
        + np.sum(above - tau_above)
        + np.sum(np.log((tau_above + 1.0) / above))
        + alpha * np.sum(np.log(tau_above / alpha + 1.0))
    )


def evbmf_from_singular_values(s: np.ndarray, L: int, M: int) -> EVBMFResult:
    """EVBMF of an ``L x M`` matrix (``L <= M``) given its singular values ``s`` (descending, length ``L``).

    Follows the original: the objective is evaluated on a float32 copy of ``s``; the noise variance is found by
    scipy's bounded Brent search with its default absolute tolerance (``xatol=1e-5``) between
    ``lower = max(s_{k+1}^2/(M x_bar), mean(s_{k+1:}^2)/M)`` and ``upper = sum(s^2)/(L M)``.

    Raises:
        ValueError: if ``L > M`` or ``s`` is not finite.
    """
    if L > M:
        raise ValueError(f"evbmf_from_singular_values needs L <= M, got L={L}, M={M} (transpose first)")
    s = np.asarray(s, dtype=np.float32)[:L]
    if not np.all(np.isfinite(s)):
        raise ValueError("EVBMF: the matrix has non-finite entries")
    H = L
    alpha = L / M
    tau_bar = _TAU_BAR_CONSTANT * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    upper = float(np.sum(s.astype(np.float64) ** 2) / (L * M))
    if upper <= 0.0:  # the zero matrix: nothing but (zero) noise
        return EVBMFResult(0, np.zeros(0), 0.0)
    # the index below which components may be signal: k + 2 = ceil(L / (1 + alpha)) (Nakajima et al. 2013, §5)
    k = int(min(math.ceil(L / (1.0 + alpha)) - 1, H)) - 1
    tail = s[k + 1 :].astype(np.float64)
    lower = max(float(tail[0] ** 2 / (M * x_bar)), float(np.mean(tail**2) / M))
    res = minimize_scalar(lambda v: evbmf_objective(v, s, L, M), bounds=[lower, upper], method="bounded")
    sigma2 = float(res.x)
    threshold = math.sqrt(M * sigma2 * x_bar)
    kept = s[s > threshold].astype(np.float64)
    return EVBMFResult(int(kept.size), evb_shrinkage(kept, L, M, sigma2), sigma2)


def evb_shrinkage(s: np.ndarray, L: int, M: int, sigma2: float) -> np.ndarray:
    """The EVB estimate of each retained singular value ``s_h`` of an ``L x M`` matrix with noise ``sigma2``.

    ``d_h = (s_h/2) (1 - (L+M) sigma2/s_h^2 + sqrt((1 - (L+M) sigma2/s_h^2)^2 - 4 L M sigma2^2/s_h^4))``
    (Nakajima et al. 2013, the VB posterior mean of a component above the threshold).
    """
    s = np.asarray(s, dtype=np.float64)
    q = (L + M) * sigma2 / s**2
    return 0.5 * s * (1.0 - q + np.sqrt((1.0 - q) ** 2 - 4.0 * L * M * sigma2**2 / s**4))


def evbmf(Y: torch.Tensor | np.ndarray) -> EVBMFResult:
    """Analytic empirical VB matrix factorisation of ``Y`` (Nakajima et al. 2013).

    A tall ``Y`` (more rows than columns) is factorised as ``Y^T``: the model is symmetric and the solution
    the same (the original assumes ``L <= M`` and fails there, see the module docstring).

    Args:
        Y: a 2-D matrix.

    Returns:
        ``(rank, values, sigma2)``: the estimated rank, the shrunk singular values (descending) and the noise variance.
    """
    Y = torch.as_tensor(Y)
    if Y.ndim != 2:
        raise ValueError(f"evbmf expects a matrix, got shape {tuple(Y.shape)}")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    if not bool(torch.isfinite(Y).all()):
        raise ValueError("EVBMF: the matrix has non-finite entries")
    s = _svdvals(Y).detach().cpu().numpy()
    return evbmf_from_singular_values(s, L, M)


def _svdvals(x: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.svdvals``, run on one thread when ``x`` is on the CPU (the thread count is restored).

    The threaded LAPACK SVD gains little on matrices of this size, and on a CPU that other processes share its
    threads wait on each other: on a loaded 2-core machine, 2 threads took 6x (ResNet-18's metrics) to 20x
    (one 256 x 2304 matrix) the time of 1 thread.
    """
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1:
        return torch.linalg.svdvals(x)
    torch.set_num_threads(1)
    try:
        return torch.linalg.svdvals(x)
    finally:
        torch.set_num_threads(threads)


def unfoldings(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mode-3 (``C_in x C_out k_h k_w``) and mode-4 (``C_out x C_in k_h k_w``) unfoldings of a conv weight.

    A Linear weight (``C_out x C_in``) is the 1x1 conv it equals: its unfoldings are ``W^T`` and ``W``.
    """
    if weight.ndim not in (2, 4):
        raise ValueError(f"a conv weight has 4 dims and a Linear weight 2, got shape {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    return weight.transpose(0, 1).reshape(c_in, -1), weight.reshape(c_out, -1)


def _unfolding_metrics(result: EVBMFResult, N: int, p: int) -> tuple[float, float, float]:
    r = result.rank
    if r == 0:
        return 0.0, 0.0, 0.0
    d = result.values
    S = float(np.sum((d / d[0]) ** p) / N)
    return S, r / N, float((d[0] / d[r - 1]) ** p)


def conv_metrics(weight: torch.Tensor, p: int = 1) -> ConvMetrics:
    """Knowledge gain, rank fraction and mapping condition of both unfoldings of one conv (or Linear) weight.

    Args:
        weight: a ``C_out x C_in x k_h x k_w`` conv weight, or a ``C_out x C_in`` Linear weight (read as a 1x1
            conv: :func:`unfoldings`).
        p: the power of the knowledge gain and mapping condition (1 or 2).

    Returns:
        ``(in_S, in_rank, in_condition, out_S, out_rank, out_condition)``.
    """
    _check_p(p)
    w = weight.detach().float()
    mode3, mode4 = unfoldings(w)
    vin = _unfolding_metrics(evbmf(mode3), mode3.shape[0], p)
    vout = _unfolding_metrics(evbmf(mode4), mode4.shape[0], p)
    return ConvMetrics(*vin, *vout)


def _check_p(p: int) -> None:
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """Every 4-D parameter of ``model`` in ``parameters()`` order (the original's definition of a conv layer)."""
    return [p for p in model.parameters() if p.ndim == 4]


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight of every ``nn.Linear`` layer of ``model``, in ``modules()`` order."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Linear)]


def metric_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights whose metrics make the response: the conv weights, or the Linear ones if there is no conv.

    A conv network's Linear classifier stays out, as in the original; an MLP has only Linear layers, which
    are 1x1 convs on a 1x1 image (see the module docstring).
    """
    return conv_weights(model) or linear_weights(model)


def network_metrics(
    model_or_weights: nn.Module | Iterable[torch.Tensor],
    p: int = 1,
    previous: NetworkMetrics | None = None,
) -> NetworkMetrics:
    """The metrics of every weight of :func:`metric_weights`, with the SVDs batched over unfoldings of one shape.

    Unfoldings are transposed to ``L <= M`` and grouped by shape; each group is one batched
    ``torch.linalg.svdvals`` call on the weights' device (float32, as the original; on one thread on the CPU,
    see :func:`_svdvals`), then the scalar EVBMF searches run on the CPU. An unfolding whose EVBMF fails
    (non-finite weights) takes the original's exception path: the layer's values of ``previous`` (the last
    epoch) or zeros when there is none.

    Args:
        model_or_weights: a network (its :func:`metric_weights` are used) or the (conv or Linear) weights.
        p: knowledge-gain power, 1 or 2.
        previous: the metrics of the previous epoch, for the exception path.
    """
    _check_p(p)
    weights = (
        metric_weights(model_or_weights)
        if isinstance(model_or_weights, nn.Module)
        else list(model_or_weights)
    )
    n = len(weights)
    out = {f: np.zeros(n) for f in ConvMetrics._fields}
    # (layer, side) -> (N, L, M); groups by (L, M) of the (possibly transposed) unfolding
    groups: dict[tuple[int, int], list[tuple[int, str, int, torch.Tensor]]] = {}
    with torch.no_grad():
        for i, w in enumerate(weights):
            for side, mat in zip(("in", "out"), unfoldings(w.detach().float()), strict=True):
                N = mat.shape[0]
                if mat.shape[0] > mat.shape[1]:
                    mat = mat.T
                groups.setdefault(tuple(mat.shape), []).append((i, side, N, mat))
        for (L, M), items in groups.items():
            stack = torch.stack([m for *_, m in items])
            finite = torch.isfinite(stack).flatten(1).all(dim=1)
            stack = torch.where(finite[:, None, None], stack, torch.zeros((), device=stack.device))
            svals = _svdvals(stack).cpu().numpy()
            finite = finite.cpu().numpy()
            for (i, side, N, _), s, ok in zip(items, svals, finite, strict=True):
                try:
                    if not ok:
                        raise ValueError("non-finite weights")
                    values = _unfolding_metrics(evbmf_from_singular_values(s, L, M), N, p)
                except ValueError as exc:
                    # the original's exception path: zeros at the first epoch, else the previous epoch's values
                    log.debug("EVBMF failed on layer %d (%s): %s", i, side, exc)
                    if previous is None:
                        values = (0.0, 0.0, 0.0)
                    else:
                        values = tuple(
                            float(getattr(previous, f"{side}_{k}")[i]) for k in ("S", "rank", "condition")
                        )
                for k, v in zip(("S", "rank", "condition"), values, strict=True):
                    out[f"{side}_{k}"][i] = v
    return NetworkMetrics(**out)


def response_value(history: Sequence[NetworkMetrics], *, float16: bool = True) -> float:
    """The response Z of one trial: the fraction of zero knowledge gains, averaged over the trial's epochs.

    Per epoch, the flags ``isclose(S, 0)`` of the concatenation ``in_S ++ out_S`` (2L values: the original
    concatenates the lists rather than adding them) are averaged; Z is the mean over all epochs, epoch 0
    included. Z = 1: no layer learned structure beyond noise (LR too small); Z = 0: every unfolding did.

    Args:
        history: one :class:`NetworkMetrics` per epoch of the trial.
        float16: round as the original does (0/1 flags cast to float16, float16 means: 1/3 -> 0.333252).

    Returns:
        Z as a Python float.
    """
    if not history:
        raise ValueError("response_value needs the metrics of at least one epoch")
    dtype = np.float16 if float16 else np.float64
    per_epoch = [np.mean(np.isclose(np.concatenate([m.in_S, m.out_S]), 0.0).astype(dtype)) for m in history]
    return float(np.mean(np.asarray(per_epoch, dtype=dtype)))
