"""Statistics against hand-computable answers."""
from __future__ import annotations

import math

from pipeline.report.stats import NO_CHANGE, compare, min_runs_for_significance, summarize


def test_median_and_degenerate_interval() -> None:
    s = summarize([3.0, 3.0, 3.0])
    assert (s.n, s.median, s.ci_low, s.ci_high, s.stdev) == (3, 3.0, 3.0, 3.0, 0.0)


def test_summary_of_small_sample() -> None:
    s = summarize([1, 2, 3, 4, 100])
    assert s.median == 3 and s.mean == 22
    assert 1 <= s.ci_low <= 3 <= s.ci_high <= 100
    assert math.isclose(s.stdev, 43.617656, rel_tol=1e-6)


def test_equal_samples_are_no_change() -> None:
    tight = [10.0, 10.1, 9.9, 10.05, 9.95]
    c = compare(tight, tight)
    assert c.change_pct == 0 and c.p_value == 1.0 and c.verdict == NO_CHANGE


def test_equal_but_noisy_samples_are_inconclusive() -> None:
    # Same values, but so spread that a 5% change cannot be ruled out: not "no change".
    c = compare([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert c.change_pct == 0 and c.p_value == 1.0 and c.verdict == "inconclusive"
    assert c.detectable_pct > 50


def test_clear_slowdown() -> None:
    # Fully separated samples of 5: exact two-sided MWU p = 2/C(10,5) = 0.0079.
    base = [1.0, 1.1, 0.9, 1.05, 0.95]
    cand = [2.0, 2.2, 1.9, 2.1, 2.05]
    c = compare(cand, base, "boot_s")
    assert math.isclose(c.change_pct, 105.0)
    assert c.p_value < 0.05 and c.verdict == "slower"
    assert c.change_ci_low <= c.change_pct <= c.change_ci_high
    assert compare(base, cand, "boot_s").verdict == "faster"
    assert compare(cand, base, "host_cpu_s").verdict == "more CPU"


def test_small_effect_is_not_a_verdict() -> None:
    base = [1.00, 1.01, 1.02, 1.03, 1.04]
    cand = [1.05, 1.06, 1.07, 1.08, 1.09]  # separated, but only ~5.0% apart
    assert compare(cand, base, min_effect_pct=10).verdict == NO_CHANGE


def test_too_few_runs() -> None:
    assert compare([1.0], [1.0, 2.0]).verdict == "too few runs"


def test_minimum_runs_for_alpha() -> None:
    assert min_runs_for_significance(0.05) == 4  # 2/C(8,4) = 0.029 < 0.05; 2/C(6,3) = 0.1


def test_few_long_runs_still_reach_a_strict_verdict() -> None:
    # 4 runs a side cannot reach alpha 0.01 with Mann-Whitney (smallest p 0.029): Welch's t on logs is used.
    base = [10.2, 9.3, 10.9, 10.0]
    cand = [220.5, 220.6, 220.7, 220.6]
    c = compare(cand, base, "boot_s", alpha=0.01)
    assert c.test == "welch-log" and c.p_value < 1e-4 and c.verdict == "slower"
    assert 2000 < c.change_pct < 2200


def test_few_runs_with_overlapping_values_are_inconclusive() -> None:
    # Four noisy runs a side: the interval holds both no change and a 5% change, and says so.
    c = compare([10.1, 10.5, 9.9, 10.3], [9.3, 10.2, 10.9, 10.0], "boot_s", alpha=0.01)
    assert c.test == "welch-log" and c.p_value > 0.1 and c.verdict == "inconclusive"
    assert c.change_ci_low < -5 or c.change_ci_high > 5


def test_enough_runs_use_mann_whitney() -> None:
    c = compare([2.0, 2.2, 1.9, 2.1, 2.05], [1.0, 1.1, 0.9, 1.05, 0.95], "boot_s", alpha=0.01)
    assert c.test == "mann-whitney" and math.isclose(c.p_value, 2 / 252, rel_tol=1e-9)


def test_zero_values_fall_back_to_welch_on_raw_values() -> None:
    c = compare([0.0, 0.1, 0.05], [3.0, 3.2, 2.9], "host_cpu_s", alpha=0.01)
    assert c.test == "welch" and c.verdict == "less CPU"
