"""``bench.sedona.paired_comparison`` (issue 17): the seed-paired t-test of the accuracy benchmark's verdict."""

from __future__ import annotations

import math

import pytest

from bench.sedona import paired_comparison


def test_paired_t_statistic_p_and_interval_match_the_hand_computation():
    # d = a - b = (0.02, 0.05, 0.04): mean 11/300, sd(d) = sqrt(7/3)/100, so t = mean / (sd/sqrt 3) = 11/sqrt 7.
    # With 2 df the t distribution has closed forms: P(|T| > t) = 1 - t/sqrt(2 + t^2) = 1 - 11/sqrt(135), and the
    # 0.975 quantile is 0.95/sqrt(2 * 0.975 * 0.025).
    a = [0.80, 0.85, 0.90]
    b = [0.78, 0.80, 0.86]
    r = paired_comparison(a, b)
    mean = 11 / 300
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * math.sqrt(7) / 3 / 100
    assert r["n"] == 3
    assert r["mean_diff"] == pytest.approx(mean)
    assert r["t"] == pytest.approx(11 / math.sqrt(7))
    assert r["p"] == pytest.approx(1 - 11 / math.sqrt(135))  # 0.0533: just not significant
    assert r["p"] > 0.05
    assert r["ci_low"] == pytest.approx(mean - half)
    assert r["ci_high"] == pytest.approx(mean + half)
    assert r["ci_low"] < 0 < r["ci_high"]  # the 95% interval holds 0 exactly when p > 0.05


def test_the_sign_is_a_minus_b_and_the_pairing_is_by_position():
    a = [0.80, 0.85, 0.90]
    b = [0.78, 0.80, 0.86]
    ab, ba = paired_comparison(a, b), paired_comparison(b, a)
    assert ba["mean_diff"] == pytest.approx(-ab["mean_diff"])
    assert ba["t"] == pytest.approx(-ab["t"])
    assert (ba["ci_low"], ba["ci_high"]) == pytest.approx((-ab["ci_high"], -ab["ci_low"]))
    # the same values paired differently: the mean difference stays, the spread (hence t and p) does not
    shuffled = paired_comparison(a, [0.86, 0.78, 0.80])
    assert shuffled["mean_diff"] == pytest.approx(ab["mean_diff"])
    assert shuffled["p"] > 0.5 > ab["p"]


def test_a_consistent_gap_is_significant():
    # d = (0.05, 0.06, 0.04): mean 0.05, sd 0.01, t = 5 sqrt 3; p = 1 - t/sqrt(2 + t^2) = 1 - sqrt(75/77)
    r = paired_comparison([0.95, 0.96, 0.94], [0.90, 0.90, 0.90])
    assert r["t"] == pytest.approx(5 * math.sqrt(3))
    assert r["p"] == pytest.approx(1 - math.sqrt(75 / 77))
    assert r["p"] < 0.05
    assert r["ci_low"] > 0


def test_degenerate_inputs():
    one = paired_comparison([0.9], [0.8])
    assert one["mean_diff"] == pytest.approx(0.1)
    assert all(math.isnan(one[k]) for k in ("t", "p", "ci_low", "ci_high"))
    # no spread of the differences: no test, the interval is the point
    same = paired_comparison([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same["mean_diff"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0
    assert math.isnan(same["p"]) and math.isnan(same["t"])
    # the same gap on every seed, as floats give it (differences equal only to ~1e-16): no test either
    gap = paired_comparison([0.9, 0.8, 0.7], [0.85, 0.75, 0.65])
    assert math.isnan(gap["p"]) and math.isnan(gap["t"])
    assert gap["ci_low"] == gap["ci_high"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="one value per seed"):
        paired_comparison([0.9, 0.8], [0.9])


def test_the_memory_table_prints_saved_and_allocator_peaks_for_every_split(capsys):
    from bench.sedona import memory

    memory(batch=4, iters=1)
    out = capsys.readouterr().out
    peaks, _, caps = out.partition("largest batch under a cap of")
    rows = [line.split() for line in peaks.splitlines() if line.strip()[:1].isdigit()]
    names = [(int(r[0]), r[1]) for r in rows]
    assert names == [(1, "uniform"), (1, "uniform"), *[(k, n) for k in (2, 4, 8)
                     for n in ("uniform", "uniform", "balanced", "balanced-a")]]  # fmt: skip
    for r in rows:
        saved, saved_ratio, alloc, alloc_ratio, secs = map(float, r[-5:])
        assert saved > 0 and alloc > 0 and secs > 0 and saved_ratio > 0 and alloc_ratio > 0
    # the second table: the largest batch of every split under the memory backprop needs at batch 4
    rows = [line.split() for line in caps.splitlines()[1:] if line.strip()[:1].isdigit()]
    assert [(int(r[0]), r[1]) for r in rows] == [(1, "uniform"), *[(k, n) for k in (2, 4, 8)
                                                  for n in ("uniform", "balanced", "balanced-a")]]  # fmt: skip
    batch, ratio, tries = int(rows[0][-4]), float(rows[0][-3]), int(rows[0][-2])
    assert 4 <= batch < 8 and ratio == 1.0 and tries >= 2  # backprop fits its own batch, not twice it
    for r in rows[1:]:
        b, ratio = int(r[-4]), float(r[-3])
        assert 0 <= b <= 64 and ratio == pytest.approx(b / batch, abs=0.006)
