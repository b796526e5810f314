"""The search's figure shows what ``decoupling.json`` holds: one bar per cut at p_l, each labelled with its head."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from sedona.meta_search import decoupling_result
from sedona.plot import cut_probability_figure, plot_cut_probabilities


def _bars_and_labels(fig):
    ax = fig.axes[0]
    return [b.get_height() for b in ax.patches], [t.get_text() for t in ax.texts], ax.get_title()


def test_bars_are_the_cut_probabilities_labelled_with_argmax_beta(tmp_path):
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(5, 2, generator=g, dtype=torch.float64)
    beta = torch.randn(5, 4, generator=g, dtype=torch.float64)
    kinds = ("conv1", "conv2", "conv3", "conv4")
    result = decoupling_result(alpha, beta, kinds, {"objective": "val"})
    fig = cut_probability_figure(result)
    heights, labels, title = _bars_and_labels(fig)
    plt.close(fig)
    assert heights == pytest.approx(torch.softmax(alpha, -1)[:, 0].tolist(), rel=1e-12)
    assert labels == [f"d{int(k) + 1}" for k in beta.argmax(-1)]  # conv<d> is shown as d<d>
    assert "(val)" in title and "argmax β" in title
    path = plot_cut_probabilities(result, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_beta_every_bar_names_the_fixed_head():
    alpha = torch.zeros(3, 2, dtype=torch.float64)
    result = decoupling_result(alpha, None, ("mlp_sr",), {"objective": "train_last"})
    fig = cut_probability_figure(result)
    heights, labels, title = _bars_and_labels(fig)
    plt.close(fig)
    assert heights == [0.5] * 3 and labels == ["mlp"] * 3
    assert "fixed head mlp_sr" in title
