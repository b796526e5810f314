"""Learning rates tuned online by hypergradients: HD, RTHO and MARTHE (Donini et al., IJCAI 2020).

* :class:`SGDHD`, :class:`AdamHD`: hypergradient descent on the training loss (Baydin et al., ICLR 2018),
  as ``torch.optim`` optimizers.
* :class:`MARTHE` (and :class:`RTHO`, μ = 1): a wrapper around ``torch.optim.SGD``/``Adam``/``AdamW`` that keeps
  the forward-mode tangent Z_{t+1} = μ A_t Z_t + B_t of the optimizer state w.r.t. the learning rate and steps the
  LR on the validation hypergradient ⟨∇E(w_{t+1}), Z_{t+1}⟩; μ = 0 is HD on the validation loss.
* ``adatune.task.METHOD``: the ``method=adatune`` plugin (``method.algorithm=hd|hd_val|rtho|marthe``), its options
  typed by ``adatune.task.AdaTuneConfig``.
"""

from adatune.hd import SGDHD, AdamHD
from adatune.marthe import MARTHE, RTHO, StepInfo

__all__ = ["SGDHD", "AdamHD", "MARTHE", "RTHO", "StepInfo"]
