"""autoHyper: the initial learning rate found by response modelling (Tuli et al., ICLR 2021 submission).

Each search trial trains a network for a few epochs at one LR; the EVBMF low-rank metrics of its conv weights
(:mod:`autohyper.metrics`) give the response Z (the fraction of layers that learned nothing beyond noise); the
search (:mod:`autohyper.search`) walks and refines a geometric LR grid on Z. ``method=autohyper``
(:mod:`autohyper.task`) runs the search, then trains at the LR found.
"""

from autohyper.metrics import (
    ConvMetrics,
    EVBMFResult,
    NetworkMetrics,
    conv_metrics,
    evb_shrinkage,
    evbmf,
    network_metrics,
    response_value,
)
from autohyper.search import SearchResult, Step, search_lr

__all__ = [
    "ConvMetrics",
    "EVBMFResult",
    "NetworkMetrics",
    "SearchResult",
    "Step",
    "conv_metrics",
    "evb_shrinkage",
    "evbmf",
    "network_metrics",
    "response_value",
    "search_lr",
]
