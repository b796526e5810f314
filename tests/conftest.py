"""Shared fixtures: compose the real ``conf/`` tree (``debug=fast``, ``logger=none``, a temporary output folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from common.config import CONF_DIR, REPO_ROOT

# wandb must never try the network in tests
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


def compose_config(*overrides: str, output_dir: str | Path | None = None, fast: bool = True) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` (Hydra's global state is cleared before and after)."""
    base = ["logger=none"] + (["debug=fast"] if fast else [])
    if output_dir is not None:
        base.append(f"paths.output_dir={output_dir}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[*base, *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, then the count before: on a small, shared machine two OpenMP threads
    that wait for each other while another process holds a core make small ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cfg_factory(tmp_path: Path) -> Callable[..., DictConfig]:
    """``cfg_factory(*overrides, name="run")`` → a composed config writing into ``tmp_path/name``."""

    def make(*overrides: str, name: str = "run", fast: bool = True) -> DictConfig:
        return compose_config(*overrides, output_dir=tmp_path / name, fast=fast)

    return make


def run_cli(
    *args: str, cwd: str | Path, timeout: float = 300, env: dict | None = None, module: str = "launch"
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` (default ``launch``) in a subprocess started in ``cwd``."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


class Crash(BaseException):
    """Stands for a kill: a BaseException, so that nothing on the way catches it."""


def crash_on_call(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, at: int, exc: type[BaseException] = Crash
) -> Callable[[], None]:
    """Make ``owner.name`` raise ``exc`` on its ``at``-th call; returns a function that restores the original."""
    real = getattr(owner, name)
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == at:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return lambda: monkeypatch.setattr(owner, name, real)
