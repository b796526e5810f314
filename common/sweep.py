"""The job folders of a Hydra sweep and the overrides each was run with.

Shared by ``launch.collect`` (the sweep's table), the LR plot (:mod:`common.plots`) and the methods' sweep-end
artifacts, so all of them list the same jobs in the same order and read overrides the same way.
"""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["job_dirs", "job_overrides"]


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job folders (those holding ``.hydra/config.yaml``) under ``sweep_dir``, in job-number order.

    Numbered folders sort numerically (``2`` before ``10``); shallower folders come first.
    """
    sweep_dir = Path(sweep_dir)
    return sorted(
        (p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml")),
        key=lambda p: (len(p.parts), int(p.name) if p.name.isdigit() else 0, str(p)),
    )


def job_overrides(job_dir: str | Path) -> dict[str, str]:
    """``{key: value}`` of the command-line overrides a job ran with (``+``/``~`` prefixes dropped)."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out
