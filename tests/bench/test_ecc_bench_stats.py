"""bench.ecc's significance test (paired by seed) and the latency part's data set overrides, against hand values."""

from __future__ import annotations

import math
import random

import pytest

from bench.ecc import MID, latency_overrides, paired_test, significance


def t_quantile_df2(q: float) -> float:
    # Student's t with 2 degrees of freedom has a closed-form quantile: (2q - 1) / sqrt(2 q (1 - q))
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def test_paired_test_matches_hand_computation():
    # differences 0.10, 0.05, 0.05: mean 1/15, std 0.05 / sqrt(3), so t = (1/15) / (0.05 / 3) = 4 exactly;
    # with 2 degrees of freedom the two-sided p is 1 - t / sqrt(2 + t^2) = 1 - 4 / sqrt(18)
    a, b = [0.80, 0.75, 0.70], [0.70, 0.70, 0.65]
    res = paired_test(a, b)
    sem = 0.05 / 3
    assert res["n"] == 3
    assert res["mean diff"] == pytest.approx(1 / 15, rel=1e-12)
    assert res["t"] == pytest.approx(4.0, rel=1e-9)
    assert res["p"] == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-9)
    assert res["p"] > 0.05  # t = 4 on 3 seeds is not significant at 5 %
    assert t_quantile_df2(0.975) == pytest.approx(4.302653, rel=1e-6)  # the textbook t(0.975, df 2)
    half = t_quantile_df2(0.975) * sem
    assert res["ci low"] == pytest.approx(1 / 15 - half, rel=1e-9)
    assert res["ci high"] == pytest.approx(1 / 15 + half, rel=1e-9)
    # swapping the sides flips the sign of t, the difference and the interval, not p
    back = paired_test(b, a)
    assert back["t"] == pytest.approx(-4.0, rel=1e-9)
    assert back["p"] == pytest.approx(res["p"], rel=1e-12)
    assert back["ci low"] == pytest.approx(-res["ci high"], rel=1e-9)


def test_paired_test_degenerate_cases():
    one = paired_test([0.9], [0.8])
    assert one["mean diff"] == pytest.approx(0.1) and math.isnan(one["p"]) and math.isnan(one["ci low"])
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean diff"] == 0 and math.isnan(same["t"]) and math.isnan(same["p"])
    shifted = paired_test([0.75, 0.5, 0.25], [0.5, 0.25, 0.0])  # exact binary fractions: d = 0.25 each
    assert shifted["t"] == math.inf and shifted["p"] == 0.0
    assert shifted["ci low"] == shifted["ci high"] == 0.25
    with pytest.raises(ValueError, match="as many"):
        paired_test([0.1, 0.2], [0.1])


def test_significance_pairs_by_seed_and_words_the_verdict():
    ecc = {0: 0.80, 1: 0.75, 2: 0.70}
    rows = [{"budget": 0.5, "seed": s, "method": "ECC", "test acc": v} for s, v in ecc.items()]
    # "close" is the hand case above (t = 4, p = 0.057); "far" is ECC minus 0.10 / 0.11 / 0.12 (t = 19.05)
    rows += [
        {"budget": 0.5, "seed": s, "method": "close", "test acc": v} for s, v in zip(ecc, (0.70, 0.70, 0.65))
    ]
    rows += [
        {"budget": 0.5, "seed": s, "method": "far", "test acc": ecc[s] + d}
        for s, d in zip(ecc, (-0.10, -0.11, -0.12))
    ]
    rows += [{"budget": 0.5, "seed": 9, "method": "far", "test acc": 0.0}]  # no ECC run for seed 9: left out
    random.Random(0).shuffle(rows)  # pairing is by seed, not by row order
    out = {r["comparison"]: r for r in significance(rows)}
    assert set(out) == {"ECC - close", "ECC - far"}
    close, far = out["ECC - close"], out["ECC - far"]
    assert close["n"] == 3 and close["t"] == pytest.approx(4.0, rel=1e-9)
    assert close["verdict"] == "not significant (p > 0.05)"
    assert far["n"] == 3 and far["mean diff"] == pytest.approx(0.11, rel=1e-9)
    assert far["t"] == pytest.approx(0.11 / (0.01 / math.sqrt(3)), rel=1e-6)
    assert far["p"] < 0.01 and far["verdict"] == "ECC better (p <= 0.05)"
    worse = significance([{**r, "test acc": -r["test acc"]} for r in rows])
    assert {r["comparison"]: r["verdict"] for r in worse}["ECC - far"] == "ECC worse (p <= 0.05)"


def test_latency_overrides():
    assert latency_overrides() == MID  # digits: today's overrides, unchanged
    shapes = latency_overrides("shapes", train_size=4000, test_size=1000)
    assert "dataset=shapes" in shapes and "dataset=digits" not in shapes
    assert shapes[-2:] == ("dataset.train_size=4000", "dataset.test_size=1000")
    assert len(shapes) == len(MID) + 2
    assert latency_overrides("shapes", batch_size=32)[-1] == "dataset.batch_size=32"
    with pytest.raises(ValueError, match="fixed split"):
        latency_overrides("digits", train_size=100)
    with pytest.raises(ValueError, match="must be one of"):
        latency_overrides("mnist")
