"""The plugins ``method=sedona`` (:data:`METHOD`) and ``method=sedona_search`` (:data:`SEARCH_METHOD`).

* ``sedona``: greedy block-wise training of ``cfg.network`` cut into K blocks (SEDONA's evaluation phase, DGL,
  PredSim); :func:`sedona.greedy_training.train_greedy`.
* ``sedona_search``: SEDONA's search for the decoupling (pretraining, meta-search, evaluation);
  :func:`sedona.meta_search.run_search`.

Their options are typed and checked by :mod:`sedona.options` (values in ``conf/method/sedona*.yaml``).
"""

from __future__ import annotations

from common.method import Method, is_image_network
from sedona.greedy_training import train_greedy
from sedona.meta_search import run_search
from sedona.options import SedonaConfig, SedonaSearchConfig

SUPPORTS_DOC = "image classifiers, cut at their blocks() or SEDONA's own VGG-19 / ResNets"


def supports(network: str) -> bool:
    """Whether ``network`` (a ``conf/network`` name) is an image net: every one here but the LSTM regressor.

    A decoupled net needs two units or more and class labels for its local heads. The sequence nets
    (``input_kind: sequence``, the LSTM regressor) are one recurrent unit and a regression head: nothing to cut.
    """
    return is_image_network(network)


METHOD = Method(
    name="sedona",
    schema=SedonaConfig,
    run=train_greedy,
    supports=supports,
    supports_doc=SUPPORTS_DOC,
)

SEARCH_METHOD = Method(
    name="sedona_search",
    schema=SedonaSearchConfig,
    run=run_search,
    supports=supports,
    supports_doc=SUPPORTS_DOC,
)

__all__ = ["METHOD", "SEARCH_METHOD", "supports"]
