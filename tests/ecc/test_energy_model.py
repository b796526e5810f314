"""BilinearEnergyModel: planted recovery, the original's fits, differentiability, persistence, the TX2 anchor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecc.cost import sample_widths
from ecc.energy_model import BilinearEnergyModel, mrae, split_holdout

UB = [3, 16, 24, 32, 10]


def _planted(n=200, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 2.0, len(UB) - 1), 0.3
    inner = sample_widths(UB[1:-1], n, seed=seed)
    widths = np.concatenate([np.full((n, 1), UB[0]), inner, np.full((n, 1), UB[-1])], axis=1)
    x = widths / np.array(UB, dtype=float)
    y = b + (x[:, :-1] * x[:, 1:]) @ a
    return widths, y * (1 + noise * rng.standard_normal(n)), a, b


def test_lstsq_recovers_planted_coefficients():
    widths, y, a, b = _planted()
    model = BilinearEnergyModel(UB).fit(widths, y)
    np.testing.assert_allclose(model.a.numpy(), a, rtol=1e-9)
    assert float(model.b) == pytest.approx(b, rel=1e-9)
    assert model.mrae(widths, y) < 1e-12


def test_paper_ridge_solves_its_normal_equations():
    widths, y, _, _ = _planted()
    model = BilinearEnergyModel(UB).fit(widths, y, method="paper", weight_decay=1e-3)
    x = np.concatenate([np.ones((len(y), 1)), model.features(widths).numpy()], axis=1)
    theta = np.concatenate([[float(model.b)], model.a.numpy()])
    lhs = (x.T @ x + 0.5e-3 * np.eye(x.shape[1])) @ theta
    np.testing.assert_allclose(lhs, x.T @ y, rtol=1e-4)
    assert model.mrae(widths, y) < 1e-2


def test_adam_fit_approaches_least_squares():
    widths, y, _, _ = _planted()
    model = BilinearEnergyModel(UB).fit(widths, y, method="adam", weight_decay=0.0, epochs=3000, lr=1e-2)
    assert model.mrae(widths, y) < 2e-2


def test_predict_is_differentiable_with_the_closed_form_gradient():
    model = BilinearEnergyModel(UB)
    model.a.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    model.b.fill_(0.5)
    w = torch.tensor([3.0, 8.0, 12.0, 16.0, 10.0], dtype=torch.float64, requires_grad=True)
    model.predict(w).backward()
    ub = torch.tensor(UB, dtype=torch.float64)
    x = w.detach() / ub
    # dE/dw_j = (a_{j-1} x_{j-1} + a_j x_{j+1}) / ub_j
    expect = torch.zeros(5, dtype=torch.float64)
    for j in range(5):
        if j > 0:
            expect[j] += model.a[j - 1] * x[j - 1]
        if j < 4:
            expect[j] += model.a[j] * x[j + 1]
    torch.testing.assert_close(w.grad, expect / ub)
    assert model.dense_cost() == pytest.approx(10.5)


def test_save_load_round_trip(tmp_path):
    widths, y, _, _ = _planted()
    model = BilinearEnergyModel(UB).fit(widths, y)
    model.save(tmp_path / "m.pt")
    back = BilinearEnergyModel.load(tmp_path / "m.pt")
    assert torch.equal(back.a, model.a) and torch.equal(back.b, model.b) and torch.equal(back.ub, model.ub)
    assert back.meta["fit_method"] == "lstsq"


def test_holdout_split_and_mrae_by_hand():
    train, hold = split_holdout(10, 0.2, seed=117)
    assert len(hold) == 2 and sorted([*train, *hold]) == list(range(10))
    assert np.array_equal(split_holdout(10)[1], hold)
    assert mrae(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == pytest.approx((0.5 + 0.25) / 2)


def test_tx2_alexnet_reproduces_the_shipped_figures():
    model = BilinearEnergyModel.tx2_alexnet()
    dense = model.dense_cost()
    assert dense == pytest.approx(49.827e-3, rel=1e-12)
    a = model.a.numpy()
    assert a[5:].sum() / dense == pytest.approx(0.508, abs=1e-3)  # the fc terms: about half
    assert a[5] / dense == pytest.approx(0.3243, abs=1e-3)  # fc6 alone: about 32 %
    assert float(model.b) / dense == pytest.approx(0.0498, abs=1e-3)  # the bias: about 5 %


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="width_upper_bounds"):
        BilinearEnergyModel([3])
    with pytest.raises(ValueError, match="method"):
        BilinearEnergyModel(UB).fit(np.ones((3, 5)), np.ones(3), method="sgd")
    with pytest.raises(ValueError, match="entries"):
        BilinearEnergyModel(UB).predict([1.0, 2.0])
