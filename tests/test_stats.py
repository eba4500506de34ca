"""Statistics against hand-computable answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pipeline.report.stats import (
    INCONCLUSIVE,
    NO_CHANGE,
    SMALL,
    compare,
    compare_censored,
    family_level,
    median_interval,
    summarize,
)


def test_median_and_degenerate_interval() -> None:
    s = summarize([3.0, 3.0, 3.0])
    assert (s.n, s.median, s.ci_low, s.ci_high, s.stdev) == (3, 3.0, 3.0, 3.0, 0.0)


def test_median_interval_states_its_real_coverage() -> None:
    # Three runs: [min, max] is all there is, and it holds the median with probability 1 - 2/8.
    assert median_interval([5.0, 1.0, 3.0], 0.95) == (1.0, 5.0, 0.75)
    # Ten runs: x(2)..x(9) covers 1 - 2 * 11/1024 = 97.9% >= 95%; x(3)..x(8) only 89%.
    low, high, cov = median_interval(list(range(1, 11)), 0.95)
    assert (low, high) == (2, 9) and math.isclose(cov, 1 - 22 / 1024)
    s = summarize([1, 2, 3, 4, 100], 0.95)
    assert s.median == 3 and s.mean == 22 and (s.ci_low, s.ci_high) == (1, 100)
    assert math.isclose(s.stdev, 43.617656, rel_tol=1e-6) and math.isclose(s.ci_coverage, 1 - 2 / 32)


def test_median_interval_covers_as_stated() -> None:
    rng = np.random.default_rng(7)
    for n in (3, 6, 12):
        hits, cov = 0, median_interval(range(n), 0.95)[2]
        for _ in range(4000):
            low, high, _ = median_interval(rng.lognormal(0.0, 0.3, n), 0.95)
            hits += low <= 1.0 <= high  # the lognormal's median is exp(0)
        assert hits / 4000 == pytest.approx(cov, abs=0.025), n


def test_equal_samples_are_no_change() -> None:
    tight = [10.0, 10.1, 9.9, 10.05, 9.95]
    c = compare(tight, tight)
    assert c.change_pct == 0 and c.p_value == 1.0 and c.verdict == NO_CHANGE


def test_equal_but_noisy_samples_are_inconclusive() -> None:
    # Same values, but so spread that a 5% change cannot be ruled out: not "no change".
    c = compare([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert c.change_pct == 0 and c.p_value == 1.0 and c.verdict == INCONCLUSIVE
    assert c.detectable_pct > 50 and 0 < c.detectable_down_pct < c.detectable_pct  # not symmetric on logs


def test_clear_slowdown_and_its_words() -> None:
    base = [1.0, 1.1, 0.9, 1.05, 0.95]
    cand = [2.0, 2.2, 1.9, 2.1, 2.05]
    c = compare(cand, base, "boot_s")
    geo = math.exp(np.mean(np.log(cand)) - np.mean(np.log(base)))
    assert math.isclose(c.change_pct, 100 * (geo - 1)) and c.test == "welch-log"
    assert c.p_value < 0.05 and c.verdict == "slower"
    assert c.change_ci_low <= c.change_pct <= c.change_ci_high
    assert compare(base, cand, "boot_s").verdict == "faster"
    assert compare(cand, base, "host_cpu_s").verdict == "more CPU"


def test_interval_and_p_value_are_one_rule() -> None:
    """Whatever the data, 'the interval excludes 0' and 'p < level' agree (the rule the legend states)."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        c, b = rng.lognormal(rng.normal(0, 0.2), 0.15, 3), rng.lognormal(0.0, 0.15, 4)
        for level in (0.05, 0.01, 0.0025):
            comp = compare(c, b, alpha=level)
            excludes = comp.change_ci_low > 0 or comp.change_ci_high < 0
            assert excludes == (comp.p_value < level), (c, b, level, comp)


def test_welch_on_logs_with_the_tests_own_degrees_of_freedom() -> None:
    c, b = [220.5, 221.0, 219.8], [10.2, 9.3, 10.9]
    comp = compare(c, b, alpha=0.01)
    ref = sps.ttest_ind(np.log(c), np.log(b), equal_var=False)
    assert math.isclose(comp.p_value, ref.pvalue) and math.isclose(comp.dof, ref.df)
    assert 2 <= comp.dof < 4 and comp.verdict == "slower" and 2000 < comp.change_pct < 2200


def test_small_effect_is_not_a_verdict() -> None:
    base = [1.00, 1.01, 1.02, 1.03, 1.04]
    cand = [1.05, 1.06, 1.07, 1.08, 1.09]  # separated, but only ~5.0% apart
    assert compare(cand, base, min_effect_pct=10).verdict == SMALL


def test_too_few_runs() -> None:
    assert compare([1.0], [1.0, 2.0]).verdict == "too few runs"


def test_few_runs_with_overlapping_values_are_inconclusive() -> None:
    c = compare([10.1, 10.5, 9.9, 10.3], [9.3, 10.2, 10.9, 10.0], "boot_s", alpha=0.01)
    assert c.p_value > 0.1 and c.verdict == INCONCLUSIVE
    assert c.change_ci_low < -5 or c.change_ci_high > 5


def test_zero_values_fall_back_to_welch_on_raw_values() -> None:
    c = compare([0.0, 0.1, 0.05], [3.0, 3.2, 2.9], "host_cpu_s", alpha=0.01)
    assert c.test == "welch" and c.verdict == "less CPU"


def test_family_level_is_bonferroni_over_comparisons_and_looks() -> None:
    assert family_level(0.05, 4) == 0.0125 and family_level(0.05, 4, 3) == pytest.approx(0.05 / 12)
    assert family_level(0.05, 0) == 0.05  # no family (only a baseline): the level itself


def test_censored_runs_read_only_as_at_least_slower() -> None:
    """Runs stopped at 4x the reference give lower bounds: enough to call a slowdown ("at least"), never
    enough to call anything else."""
    ref = [8.1, 7.6, 8.9]
    stopped = [32.4, 32.5, 32.4]
    c = compare_censored(stopped, ref, [True] * 3, [False] * 3, alpha=0.01)
    assert c.verdict == "slower" and c.censored == 3 and math.isinf(c.change_ci_high) and c.change_pct > 280
    # The same lower bounds cannot say "no change" or "faster": a candidate stopped early is not fast.
    assert compare_censored([8.3, 8.0, 8.6], ref, [True, False, False], [False] * 3).verdict == INCONCLUSIVE
    # Lower bounds on the reference's side can show the candidate faster.
    f = compare_censored([6.0, 6.1, 5.9], stopped, [False] * 3, [True] * 3, alpha=0.01)
    assert f.verdict == "faster" and f.change_ci_low == -100.0 and f.censored == 3
    assert compare_censored(stopped, ref, [False] * 3, [False] * 3) == compare(stopped, ref)
