"""The run folder's lock: a second writer into the folder is refused (RunLockedError; exit 4 on the CLI)."""

from __future__ import annotations

import fcntl
import subprocess
import sys

import pytest

from launch.run import RunLockedError, run, run_lock
from tests.conftest import run_cli


def test_lock_is_exclusive_and_released(tmp_path):
    with run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip().isdigit()  # the holder's pid
        # flock locks belong to an open file: a second open of the same lock file is a second writer
        pid = (tmp_path / ".lock").read_text()
        with pytest.raises(RunLockedError, match="another process is running in"), run_lock(tmp_path):
            pass
        assert (tmp_path / ".lock").read_text() == pid  # the refused one did not empty the holder's pid
    with run_lock(tmp_path):  # released on exit, also after a refusal
        pass


def test_lock_held_by_another_process(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()",
            str(tmp_path / ".lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=str(tmp_path)):
            with run_lock(tmp_path):
                pass
    finally:
        holder.communicate("", timeout=30)  # closing its stdin ends it, which releases the lock
    with run_lock(tmp_path):
        pass


def test_run_into_a_locked_folder_writes_nothing(cfg_factory, tmp_path):
    cfg = cfg_factory(name="run")
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RunLockedError):
            run(cfg)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_cli_locked_folder_exits_4_with_one_line(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = run_cli("debug=fast", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: another process is running in {out}; wait for it or choose another hydra.run.dir"
    ]
    assert "Traceback" not in proc.stderr
    # refused before the run started: no results, no config copy
    assert not (out / "results.json").exists() and not (out / "config_resolved.yaml").exists()
