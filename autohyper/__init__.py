"""autoHyper: the initial learning rate found by response modelling (Tuli et al., ICLR 2021 submission).

Each search trial trains a network for a few epochs at one LR; the EVBMF low-rank metrics of its conv weights
(of its Linear weights for an MLP; :mod:`autohyper.metrics`) give the response Z (the fraction of layers that
learned nothing beyond noise); the search (:mod:`autohyper.lr_search`) walks and refines a geometric LR grid on
Z. ``method=autohyper``
(:mod:`autohyper.task`) runs the search, then trains at the LR found.
"""

from autohyper.lr_search import SearchResult, Step, search_lr
from autohyper.metrics import (
    ConvMetrics,
    EVBMFResult,
    NetworkMetrics,
    conv_metrics,
    evb_shrinkage,
    evbmf,
    metric_weights,
    network_metrics,
    response_value,
)

__all__ = [
    "ConvMetrics",
    "EVBMFResult",
    "NetworkMetrics",
    "SearchResult",
    "Step",
    "conv_metrics",
    "evb_shrinkage",
    "evbmf",
    "metric_weights",
    "network_metrics",
    "response_value",
    "search_lr",
]
