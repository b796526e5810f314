"""Hydra instantiates a launcher only from the ``hydra_plugins`` namespace: this names ``launch.slurm``'s launcher there.

``conf/launcher/slurm.yaml`` selects it (``hydra.launcher._target_``); all of its code is in ``launch/slurm.py``.
"""

import launch.slurm


class WatchedSlurmLauncher(launch.slurm.WatchedSlurmLauncher):
    """:class:`launch.slurm.WatchedSlurmLauncher` under a name Hydra accepts."""
