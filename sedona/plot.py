"""The figure of a SEDONA search: the cut probability p_l at every decoupling point, with the head it would use.

``method=sedona_search`` writes it as ``<run>/cut_probabilities.png`` from ``decoupling.json`` (the dict of
:func:`sedona.meta_search.decoupling_result`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["cut_probability_figure", "plot_cut_probabilities"]


def cut_probability_figure(result: dict[str, Any]) -> Figure:
    """Bar chart of p_l per unit, labelled with argmax β (the head a cut there would use) or the fixed head."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    p = result["cut_probability"]
    if result.get("head_weights") is None:  # --no-beta: one head everywhere
        heads = [result["candidates"][0]] * len(p)
    else:
        heads = [result["candidates"][max(range(len(w)), key=w.__getitem__)] for w in result["head_weights"]]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(p) + 2), 3.2))
    ax.bar(range(len(p)), p, color="tab:blue")
    for i, (v, h) in enumerate(zip(p, heads, strict=True)):
        ax.text(i, v + 0.02, h.replace("conv", "d").replace("mlp_sr", "mlp"), ha="center", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("decoupling point (after unit l)")
    ax.set_ylabel("p_l = softmax(α_l)_0")
    how = (
        "dK = argmax β" if result.get("head_weights") is not None else f"fixed head {result['candidates'][0]}"
    )
    ax.set_title(f"SEDONA search ({result.get('objective', '')}): cut probabilities, {how}")
    fig.tight_layout()
    return fig


def plot_cut_probabilities(result: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`cut_probability_figure` to ``path``; returns the path."""
    import matplotlib.pyplot as plt

    fig = cut_probability_figure(result)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
