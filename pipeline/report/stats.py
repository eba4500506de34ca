"""Statistics for comparing a candidate with the baseline (scipy, not hand-rolled)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

FASTER, SLOWER, NO_CHANGE, FAILED, TOO_FEW = ("faster", "slower", "no significant change", "failed",
                                              "too few runs")
INCONCLUSIVE = "inconclusive"  # the interval holds both "no change" and a change of the minimum effect
# For CPU, "faster" reads wrong: lower is "less", higher is "more".
WORDS = {"boot_s": ("faster", "slower"), "host_cpu_s": ("less CPU", "more CPU")}


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    ci_low: float
    ci_high: float
    mean: float
    stdev: float

    @property
    def ci_width_pct(self) -> float:
        return 100.0 * (self.ci_high - self.ci_low) / self.median if self.median else math.inf


@dataclass(frozen=True)
class Comparison:
    change_pct: float
    change_ci_low: float
    change_ci_high: float
    p_value: float
    verdict: str
    test: str = "mann-whitney"
    detectable_pct: float = math.nan  # smallest change this many runs with this noise would detect (80% power)

    def as_dict(self) -> dict:
        return asdict(self)


def _bootstrap_ci(samples: Sequence[Any], statistic: Any, resamples: int, seed: int) -> tuple[float, float]:
    data = tuple(np.asarray(s, dtype=float) for s in samples)
    if any(len(d) < 2 for d in data) or all(np.ptp(d) == 0 for d in data):
        value = float(statistic(*data))
        return value, value
    res = sps.bootstrap(data, statistic, n_resamples=resamples, confidence_level=0.95, method="percentile",
                        vectorized=False, random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float], resamples: int = 2000, seed: int = 1) -> Summary:
    """Median with a bootstrap 95% interval, mean and sample standard deviation."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    low, high = _bootstrap_ci([arr], np.median, resamples, seed)
    return Summary(len(arr), float(np.median(arr)), low, high, float(arr.mean()),
                   float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)


def compare(candidate: Sequence[float], baseline: Sequence[float], metric: str = "boot_s", alpha: float = 0.05,
            min_effect_pct: float = 5.0, resamples: int = 2000, seed: int = 1) -> Comparison:
    """Change of the median against the baseline in %, its bootstrap interval and a two-sided p-value.

    The p-value is Mann-Whitney U's when both sides have enough runs for that
    exact test to reach `alpha` at all (5 each for alpha 0.01); with fewer runs,
    which a faithful regression's minutes-long runs force, it is Welch's t-test
    on the logarithms (a ratio scale: run-to-run noise is multiplicative), so a
    large, consistent effect can still be called at a strict alpha.
    """
    lower_word, higher_word = WORDS.get(metric, ("lower", "higher"))
    c = np.asarray(candidate, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if len(c) < 2 or len(b) < 2:
        return Comparison(math.nan, math.nan, math.nan, math.nan, TOO_FEW)
    b_med = float(np.median(b))
    change = 100.0 * (float(np.median(c)) / b_med - 1.0) if b_med else math.nan

    def rel(x: np.ndarray, y: np.ndarray) -> float:
        my = np.median(y)
        return 100.0 * (np.median(x) / my - 1.0) if my else math.nan

    low, high = _bootstrap_ci([c, b], rel, resamples, seed)
    test = "mann-whitney" if min(len(c), len(b)) >= min_runs_for_significance(alpha) else "welch-log"
    if np.array_equal(np.sort(c), np.sort(b)):
        p = 1.0
    elif test == "mann-whitney":
        p = float(sps.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    else:
        positive = bool((c > 0).all() and (b > 0).all())
        x, y = (np.log(c), np.log(b)) if positive else (c, b)
        if np.ptp(x) == 0 and np.ptp(y) == 0:
            p = 0.0  # two different constants: no noise at all
        else:
            p = float(sps.ttest_ind(x, y, equal_var=False).pvalue)
        test = "welch-log" if positive else "welch"
    detectable = detectable_change_pct(c, b, alpha)
    if p < alpha and abs(change) >= min_effect_pct:
        verdict = higher_word if change > 0 else lower_word
    elif low <= 0 <= high and (low <= -min_effect_pct or high >= min_effect_pct):
        verdict = INCONCLUSIVE  # the data allow both no change and a change that would matter
    elif not low <= 0 <= high and abs(change) >= min_effect_pct:
        verdict = INCONCLUSIVE  # a large change the interval excludes 0 from, but the test does not reach alpha
    else:
        verdict = NO_CHANGE
    return Comparison(change, low, high, p, verdict, test, detectable)


def detectable_change_pct(c: np.ndarray, b: np.ndarray, alpha: float, power: float = 0.8) -> float:
    """The smallest change (%) a two-sided test at `alpha` would find with `power`, given these run
    counts and the spread seen on the log scale (normal approximation with t quantiles)."""
    if len(c) < 2 or len(b) < 2 or (c <= 0).any() or (b <= 0).any():
        return math.nan
    lc, lb = np.log(c), np.log(b)
    se = math.sqrt(lc.var(ddof=1) / len(lc) + lb.var(ddof=1) / len(lb))
    dof = max(1, len(lc) + len(lb) - 2)
    delta = (sps.t.ppf(1 - alpha / 2, dof) + sps.t.ppf(power, dof)) * se
    return 100.0 * (math.exp(delta) - 1.0)


def min_runs_for_significance(alpha: float) -> int:
    """Smallest n per group for which an exact two-sided Mann-Whitney test can reach alpha."""
    for n in range(2, 20):
        if 2.0 / math.comb(2 * n, n) < alpha:
            return n
    return 20
