"""The whole product: every method x every network, under ``debug=fast``.

A pair a method cannot work with is refused when the config is checked, in one line naming the supported
networks, before anything runs (:data:`REFUSED`). Every other pair runs end to end (``results.json``) in under
a minute on 2 CPU cores: ``debug=fast`` bounds the trainer (a few batches, 2 evaluation batches) and
``conf/method_debug/<method>_fast.yaml`` each method's own phases (searches, trials, cost data, ADMM, ...).
The small networks run in the fast tier; the big ones are marked slow (``make test-slow``) and hold the same
time limit. Image nets train on digits (resized to their ``min_input_size``), the LSTM on a small
household_power file written here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONF_DIR, ConfigError
from common.method import load_method, network_names
from launch.run import run
from tests.common.test_data import write_power
from tests.conftest import compose_config, run_cli

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
NETWORKS = network_names()

# the pairs that cannot work, and why: ECC prunes channels (no grouped convolutions, no recurrent layers);
# autoHyper's metrics are those of conv or Linear layers of image nets; SEDONA cuts an image classifier
REFUSED = {
    ("autohyper", "lstm"),
    ("ecc", "lstm"),
    ("ecc", "resnext29"),
    ("ecc_cost_data", "lstm"),
    ("ecc_cost_data", "resnext29"),
    ("sedona", "lstm"),
    ("sedona_search", "lstm"),
}
# the networks whose debug=fast runs of every method fit the fast tier together (a few seconds each)
FAST_NETWORKS = ("mlp", "lenet5", "lstm")
# what one debug=fast run may take: a command adds about 5-10 s of interpreter start and imports to the
# in-process run timed here, and the product's promise is under a minute a command
LIMIT_S = 50.0
# a run far past the limit fails at this time (pytest-timeout) instead of holding the tier for many minutes
HARD_STOP_S = 300
# ECC's budget is relative to the dense net's measured cost; with the default latency_cpu the tiny nets
# (mlp, lenet5) cost little more than a forward's fixed overhead, so no width meets half of it (the run says
# so in one line, exit 2). MACs are exactly what the widths change, and deterministic on a shared machine.
EXTRA = {"ecc": ("method.cost=macs",)}


def _plugin(method: str):
    raw = OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml")
    plugin = raw.get("plugin") or raw.get("method", {}).get("plugin")
    return load_method(str(plugin))


def _data(network: str, tmp_path: Path) -> list[str]:
    if OmegaConf.load(CONF_DIR / "network" / f"{network}.yaml").get("input_kind") == "sequence":
        write_power(tmp_path)
        return [
            "dataset=household_power", f"paths.data_dir={tmp_path}", "dataset.resample=null",
            "dataset.window=8",
        ]  # fmt: skip
    return ["dataset=digits"]


def test_the_refused_pairs_are_what_the_methods_say():
    found = {(m, n) for m in METHODS for n in NETWORKS if not (_plugin(m).supports or (lambda _: True))(n)}
    assert found == REFUSED


@pytest.mark.parametrize(("method", "network"), sorted(REFUSED), ids=lambda v: str(v))
def test_a_refused_pair_is_one_line_before_anything_runs(method, network, tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(f"method={method}", f"network={network}", *_data(network, tmp_path), output_dir=out)
    with pytest.raises(ConfigError) as info:
        run(cfg)
    message = str(info.value)
    supported = [n for n in NETWORKS if (method, n) not in REFUSED]
    assert message.startswith(f"method={method} does not work with network={network} (")
    assert message.endswith(f"; supported: {', '.join(supported)}") and "\n" not in message
    assert not out.exists()


def test_a_refused_pair_on_the_command_line_is_exit_2_and_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("method=ecc", "network=resnext29", "debug=fast", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: method=ecc does not work with network=resnext29")
    assert "Traceback" not in proc.stderr
    assert not (out / "meta.json").exists()


def _pairs() -> list:
    pairs = []
    for method in METHODS:
        for network in NETWORKS:
            if (method, network) in REFUSED:
                continue
            marks = () if network in FAST_NETWORKS else (pytest.mark.slow,)
            pairs.append(pytest.param(method, network, marks=marks, id=f"{method}-{network}"))
    return pairs


# what each method's results.json must hold besides whatever else it reports
REPORTS = {"ecc_cost_data": "holdout_mrae", "ecco_robustness": "trials", "ecc": "budget_ratio"}


@pytest.mark.timeout(HARD_STOP_S)
@pytest.mark.parametrize(("method", "network"), _pairs())
def test_every_supported_pair_runs_under_debug_fast_in_under_a_minute(method, network, tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(
        f"method={method}", f"network={network}", *_data(network, tmp_path), *EXTRA.get(method, ()),
        output_dir=out,
    )  # fmt: skip
    start = time.monotonic()
    try:
        results = run(cfg)
        elapsed = time.monotonic() - start
        assert set(json.loads((out / "results.json").read_text())) == set(results)
    finally:
        # a big net's folder holds GBs of checkpoints (a sedona_search run on wrn28_10: 4 GB); pytest keeps
        # every test's tmp_path until the session ends, and 158 pairs filled the disk
        shutil.rmtree(out, ignore_errors=True)
    assert REPORTS.get(method, "test_loss") in results, sorted(results)
    assert elapsed < LIMIT_S, f"method={method} network={network} debug=fast took {elapsed:.1f} s"
