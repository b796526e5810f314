"""The bilinear cost model of ECC (Yang, Zhu, Liu, CVPR 2019): E(w) = b + sum_j a_j x_j x_{j+1}.

``w = [w_0, w_1, ..., w_L, w_{L+1}]`` is the width chain of a network (input channels, the L prunable
widths, the number of classes) and ``x_j = w_j / ub_j`` its widths relative to the dense network. Term j is
weight layer j, which maps ``w_j`` channels to ``w_{j+1}``; its cost is (close to) proportional to the
product of the two widths, which is what makes the model bilinear.

For networks with coupled channels (residual adds) the widths are one variable per coupled group and the
terms are the *edges* ``(i, j)`` of the weight layers (``ecc.prune.width_edges``): E = b + sum_e a_e x_i x_j.
The chain is the special case ``edges = [(j, j + 1)]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FIT_METHODS = ("lstsq", "paper", "adam")

# The authors' shipped AlexNet / Jetson TX2 model (energymodel_alex_tx2.pkl): J per batch-1 inference.
TX2_ALEXNET_UB = (3, 64, 192, 384, 256, 256, 4096, 4096, 1000)
TX2_ALEXNET_A = (2.234e-3, 7.540e-3, 3.909e-3, 4.941e-3, 3.393e-3, 1.616e-2, 7.214e-3, 1.954e-3)
TX2_ALEXNET_B = 2.482e-3


def split_holdout(n: int, fraction: float = 0.2, seed: int = 117) -> tuple[np.ndarray, np.ndarray]:
    """The original's split: shuffle the rows with ``numpy`` seeded by ``seed``; the first ``round(f n)`` are held out.

    Args:
        n: Number of rows.
        fraction: Share of the rows held out.
        seed: The seed (the original's ``--seed`` default is 117).

    Returns:
        ``(train_idx, holdout_idx)``.
    """
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    k = int(round(fraction * n))
    return order[k:], order[:k]


def mrae(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Mean relative absolute error, mean(|y - y_hat| / |y|), the original's ``val_mre``."""
    pred = np.asarray(torch.as_tensor(pred, dtype=torch.float64).detach().cpu())
    target = np.asarray(torch.as_tensor(target, dtype=torch.float64).detach().cpu())
    return float(np.mean(np.abs(target - pred) / np.abs(target)))


class BilinearEnergyModel(torch.nn.Module):
    """E(w) = b + sum_{j=0}^{L} a_j (w_j / ub_j)(w_{j+1} / ub_{j+1}), differentiable in the widths.

    Args:
        width_upper_bounds: The dense width chain ``[ub_0, ..., ub_{L+1}]`` (input channels first, classes
            last).
        edges: The terms ``(i, j)`` (indices into the chain); None: the chain ``(j, j + 1)``.

    Attributes:
        a: The L+1 layer coefficients (float64), in the cost's units.
        b: The bias (float64 scalar).
    """

    def __init__(self, width_upper_bounds: Sequence[int], edges: Sequence[tuple[int, int]] | None = None):
        super().__init__()
        ub = torch.as_tensor([float(u) for u in width_upper_bounds], dtype=torch.float64)
        if ub.numel() < 2 or bool((ub <= 0).any()):
            raise ValueError(f"width_upper_bounds needs >= 2 positive widths, got {list(width_upper_bounds)}")
        self.register_buffer("ub", ub)
        if edges is None:
            edges = [(j, j + 1) for j in range(ub.numel() - 1)]
        e = torch.as_tensor([[int(i), int(j)] for i, j in edges], dtype=torch.long).reshape(-1, 2)
        if e.numel() and (int(e.min()) < 0 or int(e.max()) >= ub.numel()):
            raise ValueError(f"edges must index the {ub.numel()} widths, got {e.tolist()}")
        self.register_buffer("edges", e)
        self.register_buffer("a", torch.zeros(e.shape[0], dtype=torch.float64))
        self.register_buffer("b", torch.zeros((), dtype=torch.float64))
        self.meta: dict[str, Any] = {}

    @property
    def num_terms(self) -> int:
        """L + 1, the number of weight layers."""
        return int(self.a.numel())

    def features(self, widths: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
        """The products x_i x_j of the edges (adjacent for a chain), shape ``[..., num_terms]``."""
        w = torch.as_tensor(widths, dtype=torch.float64, device=self.ub.device)
        if w.shape[-1] != self.ub.numel():
            raise ValueError(
                f"widths must have {self.ub.numel()} entries (the full chain), got {w.shape[-1]}"
            )
        x = w / self.ub
        return x[..., self.edges[:, 0]] * x[..., self.edges[:, 1]]

    def predict(self, widths: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
        """E(w) for a width chain (or a batch of them); differentiable when ``widths`` requires grad."""
        return self.b + self.features(widths) @ self.a

    forward = predict

    def dense_cost(self) -> float:
        """E(ub) = b + sum(a), the cost of the dense network."""
        return float(self.predict(self.ub))

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        widths: np.ndarray | torch.Tensor,
        costs: np.ndarray | torch.Tensor,
        method: str = "lstsq",
        *,
        weight_decay: float = 1e-3,
        epochs: int = 10_000,
        lr: float = 1e-3,
    ) -> BilinearEnergyModel:
        """Fits ``a`` and ``b`` to measured ``costs`` of the width chains ``widths`` (rows).

        Args:
            widths: ``[N, L+2]`` width chains.
            costs: ``[N]`` measured costs.
            method: ``"lstsq"`` (exact least squares in float64, the default), ``"paper"`` (the original's
                ``--pinv``: float32 ridge normal equations (X^T X + wd/2 I) theta = X^T y with the bias
                penalised too) or ``"adam"`` (the original's default: full-batch Adam with coupled L2
                ``weight_decay`` on the MSE, zero-initialised, float32).
            weight_decay: The ridge / L2 weight of ``paper`` and ``adam`` (the original's ``--wd`` 1e-3).
            epochs: Full-batch Adam steps for ``adam``.
            lr: Adam's learning rate for ``adam``.

        Returns:
            ``self``.
        """
        if method not in FIT_METHODS:
            raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
        feats = self.features(widths).cpu().numpy()
        y = np.asarray(torch.as_tensor(costs, dtype=torch.float64).cpu()).reshape(-1)
        if feats.shape[0] != y.shape[0]:
            raise ValueError(f"{feats.shape[0]} width rows but {y.shape[0]} costs")
        design = np.concatenate([np.ones((feats.shape[0], 1)), feats], axis=1)
        if method == "lstsq":
            theta, *_ = np.linalg.lstsq(design, y, rcond=None)
        elif method == "paper":
            d32, y32 = design.astype(np.float32), y.astype(np.float32)
            gram = d32.T @ d32 + np.float32(0.5 * weight_decay) * np.eye(design.shape[1], dtype=np.float32)
            theta = np.linalg.solve(gram, d32.T @ y32).astype(np.float64)
        else:
            theta = self._fit_adam(design, y, weight_decay, epochs, lr)
        with torch.no_grad():
            self.b.fill_(float(theta[0]))
            self.a.copy_(torch.as_tensor(theta[1:], dtype=torch.float64))
        self.meta["fit_method"] = method
        return self

    @staticmethod
    def _fit_adam(
        design: np.ndarray, y: np.ndarray, weight_decay: float, epochs: int, lr: float
    ) -> np.ndarray:
        x = torch.as_tensor(design, dtype=torch.float32)
        target = torch.as_tensor(y, dtype=torch.float32)
        theta = torch.zeros(x.shape[1], requires_grad=True)
        # torch's Adam weight_decay is the coupled L2 of the original (it also decays the bias).
        opt = torch.optim.Adam([theta], lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.mean((x @ theta - target) ** 2)
            loss.backward()
            opt.step()
        return theta.detach().double().numpy()

    def mrae(self, widths: np.ndarray | torch.Tensor, costs: np.ndarray | torch.Tensor) -> float:
        """Mean relative absolute error of the predictions on ``(widths, costs)``."""
        with torch.no_grad():
            return mrae(self.predict(widths), costs)

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """Tensors and primitives only (loadable with ``weights_only=True``)."""
        return {
            "ub": self.ub.cpu(),
            "edges": self.edges.cpu(),
            "a": self.a.cpu(),
            "b": self.b.cpu(),
            "meta": {k: v for k, v in self.meta.items() if isinstance(v, str | int | float | bool)},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BilinearEnergyModel:
        """Rebuilds a model from :meth:`to_state`."""
        edges = state.get("edges")
        model = cls([float(u) for u in state["ub"]], None if edges is None else edges.tolist())
        with torch.no_grad():
            model.a.copy_(state["a"])
            model.b.copy_(state["b"])
        model.meta.update(state.get("meta", {}))
        return model

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model to ``path`` (a torch file of tensors and primitives)."""
        torch.save(self.to_state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BilinearEnergyModel:
        """Reads a model written by :meth:`save`."""
        return cls.from_state(torch.load(path, map_location="cpu", weights_only=True))

    @classmethod
    def tx2_alexnet(cls, width_upper_bounds: Sequence[int] = TX2_ALEXNET_UB) -> BilinearEnergyModel:
        """The authors' shipped AlexNet / Jetson TX2 energy model (J per inference, 49.8 mJ dense).

        Args:
            width_upper_bounds: The width chain the relative widths refer to; by default AlexNet's own. Give
                another 9-entry chain to apply the TX2 coefficients to the relative widths of a smaller
                AlexNet-style net (a proxy, not a measurement of that net).
        """
        if len(width_upper_bounds) != len(TX2_ALEXNET_UB):
            raise ValueError(f"the TX2 AlexNet model has 9 widths, got {list(width_upper_bounds)}")
        model = cls(width_upper_bounds)
        with torch.no_grad():
            model.a.copy_(torch.tensor(TX2_ALEXNET_A, dtype=torch.float64))
            model.b.fill_(TX2_ALEXNET_B)
        model.meta["source"] = "energymodel_alex_tx2.pkl"
        return model
