"""``python -m bench.gpu`` (issue 14): the GPU truth table runs end to end at smoke sizes on the CPU, so it cannot rot."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu
from tests.conftest import run_cli

OK_STATUSES = {"ok", "skipped", "n/a", "error"}


@pytest.fixture
def compiler_env(monkeypatch, tmp_path):
    """bench.gpu points torch.compile's caches at a temporary folder unless set: keep that out of this process."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_row(row: dict) -> None:
    assert row["status"] in OK_STATUSES, row
    if row["status"] == "ok":
        if row["goal"] is not None:
            assert _finite(row["value"]), row
            assert isinstance(row["met"], bool), row
        for key in ("a", "b"):
            if key in row:
                assert _finite(row[key]["value"]) and row[key]["value"] > 0, row
        for key in ("ips_a", "ips_b"):
            if key in row:
                assert _finite(row[key]) and row[key] > 0, row
    else:
        assert row.get("reason"), f"{row['name']}: {row['status']} without a reason"


def test_smoke_on_cpu_prints_and_saves_every_row(tmp_path):
    out = tmp_path / "t.json"
    t0 = time.monotonic()
    proc = run_cli(
        "--smoke", "--device", "cpu", "--out", str(out), cwd=tmp_path, module="bench.gpu", timeout=600
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads(out.read_text())
    rows = {r["name"]: r for r in saved["rows"]}
    assert list(rows) == gpu.ROW_NAMES
    for row in rows.values():
        check_row(row)
        assert row["status"] != "error", f"{row['name']}: {row.get('reason')}"
        assert row["name"] in proc.stdout
    # what must run on a CPU does (fused compiles are skipped at smoke size; NVML and nested pytest cannot run)
    cuda_only = ("ecc_energy_nvml", "sedona_b1024_wscap")
    must_run = [n for n in gpu.ROW_NAMES if "fused" not in n and n not in (*cuda_only, "pytest_gpu")]
    assert [n for n in must_run if rows[n]["status"] != "ok"] == []
    assert [rows[n]["status"] for n in cuda_only] == ["n/a", "n/a"]
    # the memory rows are real allocator peaks: per-block K = 4 holds less than backprop at these sizes too
    for name in ("sedona_b1024_uniform", "sedona_b256_balanced"):
        assert 0 < rows[name]["value"] < 1.0
    assert saved["meta"]["device"] == "cpu" and saved["meta"]["smoke"] is True
    assert "| row" in proc.stdout and "goal" in proc.stdout
    print(f"bench.gpu --smoke --device cpu: {elapsed:.1f} s")


def test_rows_subset(tmp_path, compiler_env):
    out = tmp_path / "sub.json"
    rc = gpu.main(
        ["--smoke", "--device", "cpu", "--rows", "sgdhd_train,sedona_b256_uniform", "--out", str(out)]
    )
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["sgdhd_train", "sedona_b256_uniform"]
    for row in rows:
        check_row(row)
        assert row["status"] == "ok", row


def test_unknown_row_is_refused(capsys):
    assert gpu.main(["--smoke", "--device", "cpu", "--rows", "harness_fp32,nope"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_device_without_cuda_is_refused(capsys):
    assert gpu.main(["--rows", "sgdhd_train"]) == 2
    assert "cuda" in capsys.readouterr().err


def test_time_budget_skips_rows(tmp_path, compiler_env):
    out = tmp_path / "b.json"
    assert gpu.main(["--smoke", "--device", "cpu", "--budget-s", "0", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == gpu.ROW_NAMES
    for row in rows:
        assert row["status"] in ("skipped", "n/a"), row
        if row["name"] not in ("pytest_gpu", "ecc_energy_nvml"):
            assert row["reason"].startswith("time budget"), row


def test_a_failing_row_is_one_error_cell(tmp_path):
    def boom(bench):
        raise ValueError("first line\nsecond line")

    spec = gpu.RowSpec("sgdhd_train", "a figure", 1.1, "<= 1.1", "", 0, boom)
    bench = gpu.Bench(torch.device("cpu"), gpu.SMOKE, tmp_path)
    row = gpu.run_row(spec, bench, budget_s=1e9, reserve_s=0, start=time.monotonic())
    assert row["status"] == "error"
    assert row["reason"] == "ValueError: first line second line"
    assert "error: ValueError" in gpu.table([row])


def test_cpu_peak_is_the_allocator_peak(tmp_path):
    size = 8 * 2**20

    def fn():
        t = torch.empty(size, dtype=torch.uint8)
        t.fill_(1)
        u = torch.empty(size // 2, dtype=torch.uint8)
        del t, u

    peak = gpu.cpu_peak_bytes(fn, tmp_path)
    assert size + size // 2 <= peak < size + size // 2 + 2**20
    assert list(tmp_path.iterdir()) == []  # the exported trace is removed


def test_pytest_summary_line(tmp_path):
    fake = "print('.F.'); print('FAILED tests/x.py::test_y - AssertionError'); print('1 failed, 7 passed in 3.21s')"
    result = gpu.run_pytest([sys.executable, "-c", fake], timeout_s=60, cwd=tmp_path)
    assert result["summary"] == "1 failed, 7 passed in 3.21s"
    assert result["all_passed"] is False
    assert result["failures"] == ["FAILED tests/x.py::test_y - AssertionError"]
    ok = gpu.run_pytest([sys.executable, "-c", "print('8 passed in 1.00s')"], timeout_s=60, cwd=tmp_path)
    assert ok["all_passed"] is True
    assert gpu.pytest_summary("===== 2 passed, 1 skipped in 4.0s =====") == "2 passed, 1 skipped in 4.0s"
    with pytest.raises(RuntimeError, match="did not finish"):
        gpu.run_pytest([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1, cwd=Path(tmp_path))


def test_the_workspace_cap_row_measures_in_a_child_that_sees_the_cap(tmp_path, monkeypatch, compiler_env):
    # on the CPU the row is n/a; made to believe it is on CUDA, it runs its child (--smoke --device cpu here)
    # and takes the child's K = 4 allocator-balanced memory row, checking the child saw CUDNN_CONV_WSCAP_DBG
    bench = gpu.Bench(torch.device("cpu"), gpu.SMOKE, tmp_path)
    with pytest.raises(gpu.RowSkipped, match="n/a on cpu"):
        gpu.row_sedona_wscap(bench)
    monkeypatch.setattr(gpu.Bench, "cuda", property(lambda self: True))
    monkeypatch.delenv("CUDNN_CONV_WSCAP_DBG", raising=False)
    row = gpu.row_sedona_wscap(bench)
    assert 0 < row["value"] < 1 and row["a"]["unit"] == "MiB" and row["b"]["value"] > row["a"]["value"]
    assert f"CUDNN_CONV_WSCAP_DBG={gpu.WSCAP_MIB}" in row["note"]
    assert "CUDNN_CONV_WSCAP_DBG" not in os.environ  # only the child had it


def test_the_largest_batch_row_searches_every_k_under_backprops_footprint(tmp_path, compiler_env):
    row = gpu.row_sedona_maxbatch(gpu.Bench(torch.device("cpu"), gpu.SMOKE, tmp_path))
    found = row["largest_batch"]
    assert sorted(found) == [1, 2, 4, 8]
    assert gpu.SMOKE.sedona_batches[0] <= found[1] < 2 * gpu.SMOKE.sedona_batches[0]  # backprop fits its own
    assert found[4] > found[1] and row["value"] == found[1] / found[4]
    assert all(b % 2 == 0 for b in found.values())
