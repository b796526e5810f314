"""ECC: energy-constrained compression (Yang, Zhu, Liu, CVPR 2019).

Measure a network's cost at random layer widths (:mod:`ecc.cost`), fit the bilinear model
E(w) = b + sum_j a_j x_j x_{j+1} (:class:`BilinearEnergyModel`), train under a budget with the ADMM /
group-prox iteration (:mod:`ecc.admm`), remove the zeroed channels (:mod:`ecc.prune`) and fine-tune
(:mod:`ecc.task`, ``method=ecc``).
"""

from ecc.admm import ECCState, ECCStep, group_prox
from ecc.cost import CostBackendUnavailable, collect_cost_data, make_backend
from ecc.energy_model import BilinearEnergyModel
from ecc.prune import slim, slim_masked, width_chain, width_slots

__all__ = [
    "BilinearEnergyModel",
    "CostBackendUnavailable",
    "ECCState",
    "ECCStep",
    "collect_cost_data",
    "group_prox",
    "make_backend",
    "slim",
    "slim_masked",
    "width_chain",
    "width_slots",
]
