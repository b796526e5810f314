"""Run logging: ``metrics.jsonl`` always, wandb when ``logger=wandb``, progress bars only on a terminal."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


def progress(iterable: Iterable, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that only draws on an interactive terminal (never in log files or SLURM output)."""
    return tqdm(
        iterable, disable=not (enabled and sys.stderr.isatty()), dynamic_ncols=True, leave=False, **kwargs
    )


class RunLogger:
    """Writes metrics to ``<output_dir>/metrics.jsonl`` (one JSON object per call) and optionally to wandb.

    The wandb run id is stored in ``<output_dir>/wandb_run_id`` the first time, so a resumed (or requeued)
    run continues the same wandb run. Call :meth:`finish` in a ``finally`` block.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        logger_cfg: Mapping[str, Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        run_name: str | None = None,
        enabled: bool = True,
    ):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "metrics.jsonl"
        self.wandb_run = None
        self.enabled = enabled  # False on the other ranks of a distributed run: only rank 0 writes
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        cfg = dict(logger_cfg or {})
        if cfg.get("backend", "none") == "wandb":
            self._init_wandb(cfg, dict(run_config or {}), run_name)

    @classmethod
    def null(cls) -> RunLogger:
        """A logger that records nothing (sub-runs whose steps would collide with the run's own)."""
        return cls(".", enabled=False)

    def _run_id(self) -> str:
        id_file = self.output_dir / "wandb_run_id"
        if id_file.exists():
            return id_file.read_text().strip()
        slurm_job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if slurm_job:  # stable across requeues of the same array task
            run_id = f"{slurm_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        else:
            run_id = uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        return run_id

    def _init_wandb(self, cfg: dict[str, Any], run_config: dict[str, Any], run_name: str | None) -> None:
        import wandb  # imported only when used: it is slow to import

        self.wandb_run = wandb.init(
            project=cfg.get("project"),
            entity=cfg.get("entity"),
            group=cfg.get("group"),
            name=cfg.get("name") or run_name,
            tags=list(cfg.get("tags") or []),
            mode=cfg.get("mode", "offline"),
            dir=str(self.output_dir),
            id=self._run_id(),
            resume="allow",
            config=run_config,
        )

    def truncate_after(self, step: int) -> None:
        """Drop the lines logged after ``step`` (called on resume: those steps are about to be redone)."""
        if not self.enabled:
            return
        self._fh.close()
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", -1) <= step:
                        kept.append(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record ``metrics`` at global step ``step``."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=int(step))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in metrics.items():
                self.wandb_run.summary[k] = _jsonable(v)

    def finish(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        if not self._fh.closed:
            self._fh.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def format_table(
    rows: list[Mapping[str, Any]], columns: list[str] | None = None, floatfmt: str = ".4f"
) -> str:
    """A plain-text table (no dependency), e.g. the results printed at the end of a run or sweep."""
    if not rows:
        return "(no rows)"
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return format(value, floatfmt)
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join([line, rule, *body])


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
