"""ECCO-DNN (Fiscko, Agarwal et al., arXiv 2310.13901): training as forward-Euler integration of a controlled
gradient flow, with each tensor's step size set by a local-truncation-error tolerance ``eta``.

``from ecco import ECCO``: the optimizer (``mode="improved"`` default, ``mode="paper"`` for the original's
arithmetic), with optional activation limiting (``limit_activations=model`` or a list of layers).
``ecco.build`` is the Hydra target of ``conf/optimizer/ecco.yaml``; ``ecco.task.METHOD`` is
``method=ecco_robustness``, the paper's random-search robustness study (its draws: ``ecco.draws``).
See ``ecco/README.md``.
"""

from ecco.limiting import find_limitable_layers
from ecco.optimizer import ECCO, build

__all__ = ["ECCO", "build", "find_limitable_layers"]
