"""Hydra instantiates a sweeper only from the ``hydra_plugins`` namespace: this names ``launch.optuna_sweeper``'s
sweeper there. ``conf/hydra/sweeper/optuna.yaml`` selects it; all of its code is in ``launch/optuna_sweeper.py``.
"""

import launch.optuna_sweeper


class OptunaSweeper(launch.optuna_sweeper.OptunaSweeper):
    """:class:`launch.optuna_sweeper.OptunaSweeper` under a name Hydra accepts."""
