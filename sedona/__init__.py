"""SEDONA (Pyeon et al., ICLR 2021): greedy block-wise learning of decoupled networks with auxiliary heads.

A network is cut into K gradient-isolated blocks; each block is trained by its own local loss (an auxiliary
head: DGL's MLP-SR, PredSim, or SEDONA's light-conv heads) with its own optimizer. ``K = 1`` is end-to-end
backprop. The decouplings the original search found are shipped as data (:func:`found_decoupling`).

Public API::

    from sedona import build_decoupled, uniform_split, select_decoupling
    net = build_decoupled("vgg19", num_classes=10, in_channels=3, feat_mult=1, aux="mlp_sr")
    dec = uniform_split(net.num_units, 4)      # block_ends (3, 7, 11, 15)
    losses = net.local_losses(x, y, dec)        # K losses, no gradient across a block boundary

``method=sedona`` (:mod:`sedona.task`) trains a decoupled network greedily from the Hydra config.
"""

from sedona.heads import HEAD_KINDS, MLPSR, LightConv, PredSim, build_head, smoothed_cross_entropy
from sedona.network import (
    DecoupledNet,
    Decoupling,
    EnsembleView,
    build_decoupled,
    found_decoupling,
    select_decoupling,
    uniform_split,
)
from sedona.relaxation import SearchNet, hypergradient
from sedona.weight_memory import WeightMemory

__all__ = [
    "HEAD_KINDS",
    "MLPSR",
    "DecoupledNet",
    "Decoupling",
    "EnsembleView",
    "LightConv",
    "PredSim",
    "SearchNet",
    "WeightMemory",
    "build_decoupled",
    "build_head",
    "found_decoupling",
    "hypergradient",
    "select_decoupling",
    "smoothed_cross_entropy",
    "uniform_split",
]
