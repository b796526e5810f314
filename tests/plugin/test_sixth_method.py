"""A sixth method added without touching launch, common or conf/: one package, one yaml, one test folder.

``tests/plugin/sixth`` is the package (put on ``PYTHONPATH`` as a user's own package would be) and
``tests/plugin/conf/method/sixth.yaml`` its config (added with ``hydra.searchpath``). ``python -m launch`` finds,
checks and runs it, and calls its sweep-end hook.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.config import REPO_ROOT, ConfigError
from launch.run import run
from tests.conftest import compose_config, run_cli

HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(HERE)]), "OMP_NUM_THREADS": "1"}
SEARCHPATH = f"hydra.searchpath=[file://{HERE / 'conf'}]"


def _launch(tmp_path: Path, *args: str, multirun: bool = False):
    flags = ["-m"] if multirun else []
    return run_cli(*flags, SEARCHPATH, "debug=fast", *args, cwd=tmp_path, env=ENV, timeout=240)


def test_sixth_method_runs_through_launch(tmp_path):
    out = tmp_path / "run"
    proc = _launch(tmp_path, "method=sixth", "method.lr_scale=0.25", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["sixth/lr_scale"] == 0.25
    assert 0.0 <= results["test_acc"] <= 1.0
    # the LR it trained with is the scaled one (the first logged epoch LR of the cosine schedule)
    lrs = [json.loads(x).get("lr") for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [lr for lr in lrs if lr is not None][0] == 0.1 * 0.25  # conf/optimizer/sgd_momentum.yaml lr 0.1
    assert "Results: method=sixth" in proc.stdout


CASES = {
    ("method.lr_scale=-1",): "method.lr_scale must be in (0, 10]; got -1.0",
    ("method.note=c",): "method.note must be one of a, b; got 'c'",
    (
        "method.lr_scale=abc",
    ): "method.lr_scale: Value 'abc' of type 'str' could not be converted to Float (method=sixth)",
    ("+method.lr_scael=1",): "method.lr_scael: Key 'lr_scael' not in 'SixthConfig' (method=sixth)",
    ("method.note=b", "method.lr_scale=2"): "method.note=b needs method.lr_scale <= 1",
    ("network=resnet18",): (
        "method=sixth does not work with network=resnet18 (the two smallest nets); supported: lenet5, mlp"
    ),
}


@pytest.mark.parametrize("overrides", list(CASES), ids=lambda o: " ".join(o))
def test_sixth_method_options_are_checked_by_its_schema(overrides, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(HERE))
    cfg = compose_config(SEARCHPATH, "method=sixth", *overrides, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    assert str(info.value) == CASES[overrides]
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_a_bad_option_is_one_line_and_exit_2_before_anything_runs(tmp_path):
    for i, bad in enumerate(("method.lr_scale=-1", "network=resnet18")):
        out = tmp_path / f"bad{i}"
        proc = _launch(tmp_path, "method=sixth", bad, f"hydra.run.dir={out}")
        assert proc.returncode == 2, (bad, proc.stderr[-2000:])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0] == f"error: {CASES[(bad,)]}", proc.stderr
        assert "Traceback" not in proc.stderr
        # nothing of the run was written (Hydra's own .hydra/ and run.log aside)
        assert not (out / "meta.json").exists() and not (out / "metrics.jsonl").exists()


def test_sweep_marks_a_job_that_raises_failed_goes_on_and_calls_sweep_artifacts(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _launch(
        tmp_path, "method=sixth", "method.fail=true,false", f"hydra.sweep.dir={sweep}", multirun=True
    )
    assert proc.returncode != 0
    failure = json.loads((sweep / "0" / "failed.json").read_text())
    assert failure["error"] == "RuntimeError" and "failing as asked" in failure["message"]
    assert "Traceback" in failure["traceback"] and "sixth/task.py" in failure["traceback"]
    assert (sweep / "1" / "results.json").exists()  # the job after the failed one ran
    summary = (sweep / "summary.csv").read_text()
    assert "failed" in summary and "done" in summary
    assert "1 of 2 jobs did not finish: 0" in proc.stderr
    # the method's sweep-end hook ran over both jobs
    assert (sweep / "sixth_jobs.txt").read_text().split() == ["0", "1"]
    assert f"plot: {sweep / 'sixth_jobs.txt'}" in proc.stdout
