"""A run folder's record is never rewritten by another command (issue: first contact, item 8)."""

from __future__ import annotations

import json

import pytest

from launch.run import FolderConfigError, run, run_lock
from tests.conftest import run_cli


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_process_refused_by_the_lock_touches_nothing(tmp_path):
    out = tmp_path / "job"
    first = run_cli("debug=fast", f"hydra.run.dir={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _snapshot(out)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "run.log"} <= set(before)
    with run_lock(out):  # stands for a first process still running in the folder
        second = run_cli("debug=fast", "optimizer=adam", f"hydra.run.dir={out}", cwd=tmp_path)
    assert second.returncode == 4, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another process is running in" in errors[0]
    assert _snapshot(out) == before  # not .hydra/, not run.log, not results.json


def test_a_finished_folder_rerun_with_another_config_is_refused(tmp_path):
    out = tmp_path / "job"
    assert run_cli("debug=fast", f"hydra.run.dir={out}", cwd=tmp_path).returncode == 0
    before = _snapshot(out)
    proc = run_cli("debug=fast", "optimizer.lr=0.05", "seed=3", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "optimizer.lr (0.1 -> 0.05)" in errors[0] and "seed (0 -> 3)" in errors[0]
    assert "Results:" not in proc.stdout  # the old results are not printed under the new config's title
    assert _snapshot(out) == before
    # the same config again is the finished job: its results, nothing rewritten
    again = run_cli("debug=fast", "trainer.progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert again.returncode == 0 and "Results: method=train" in again.stdout
    assert _snapshot(out) == before


def test_resume_refuses_a_changed_config_but_may_grow_epochs(cfg_factory, tmp_path):
    out = tmp_path / "run"
    run(cfg_factory("trainer.epochs=1"))
    (out / "results.json").unlink()  # an unfinished run: its checkpoint is resumed
    with pytest.raises(FolderConfigError, match=r"optimizer.lr \(0.1 -> 0.2\)"):
        run(cfg_factory("trainer.epochs=1", "optimizer.lr=0.2"))
    assert not (out / "results.json").exists()
    results = run(cfg_factory("trainer.epochs=2"))
    assert results["epochs"] == 2
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["epochs_extended"] == [{"from": 1, "to": 2}] and len(meta["resumes"]) == 1
    )  # the refused attempt left no trace
    # restarting from scratch with another config is explicit
    results = run(cfg_factory("trainer.epochs=1", "optimizer.lr=0.2", "trainer.resume=false"))
    assert json.loads((out / "results.json").read_text()) == results
