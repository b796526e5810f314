"""The response Z against the LR (log x) of a search, for ``search/response.png``.

Each evaluated trial is a dot coloured by the branch the search took after it (so its decisions can be read
off the plot); the chosen LR is a vertical line.
"""

from __future__ import annotations

import math
from pathlib import Path

from autohyper.lr_search import SearchResult

_COLOURS = {
    "nothing": "0.2",
    "all-zero": "0.6",
    "early-cross": "tab:green",
    "reach-100": "tab:orange",
    "plateau": "tab:blue",
    "diverged": "tab:red",
}


def plot_response(result: SearchResult, path: str | Path) -> Path:
    """Draw Z against log LR for every evaluated trial of ``result`` and write it to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [(t.lr, t.z, t.branch) for t in result.trials if math.isfinite(t.z) and t.lr > 0]
    for branch in dict.fromkeys(b for _, _, b in points):
        xs = [lr for lr, _, b in points if b == branch]
        ys = [z for _, z, b in points if b == branch]
        ax.scatter(xs, ys, s=18, color=_COLOURS.get(branch, "k"), label=branch)
    if math.isfinite(result.lr) and result.lr > 0:
        ax.axvline(result.lr, color="tab:cyan", label=f"chosen lr {result.lr:.3g}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("response Z (fraction of zero knowledge gains)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
