"""Statistics for comparing a candidate with its reference (scipy, not hand-rolled).

One rule makes the verdict, the interval and the p-value agree: a t-test on log times (run-to-run noise
on a test host is multiplicative, and a faithful regression's minutes-long runs leave 3 a side, too few
for a rank test to reach a strict level), the more cautious of Welch's and the pooled one.  The change
is the ratio of geometric means; its interval is the test's own at the level the verdict is tested at,
so "the interval excludes 0" and "p < level" are the same statement.  Per-candidate medians carry a
distribution-free interval (order statistics) whose actual coverage is stated: with 3 runs no method
honestly covers a median 95% of the time ([min, max] covers it 75%).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np
from scipy import stats as sps


class Verdict(StrEnum):
    """Every verdict a comparison can reach.  A str, so results.json keeps the words it always had and
    a reader may compare with either."""
    FASTER = "faster"
    SLOWER = "slower"
    LESS_CPU = "less CPU"  # for CPU, "faster" reads wrong: lower is "less", higher is "more"
    MORE_CPU = "more CPU"
    LOWER = "lower"  # any other metric
    HIGHER = "higher"
    SMALL = "change below the minimum effect"  # the interval excludes 0, the change is too small to matter
    NO_CHANGE = "no significant change"  # the interval holds 0 and stays within the minimum effect
    INCONCLUSIVE = "inconclusive"  # the interval holds both no change and a change of the minimum effect
    TOO_FEW = "too few runs"
    FAILED = "failed"  # a side could not be measured
    IDENTICAL = "binary-identical"  # not measured: the same kernel, command line and workload

    @property
    def direction(self) -> int | None:
        """+1 worse (slower, more), -1 better, 0 no change that matters, None when nothing can be said."""
        return {Verdict.SLOWER: 1, Verdict.MORE_CPU: 1, Verdict.HIGHER: 1, Verdict.FASTER: -1,
                Verdict.LESS_CPU: -1, Verdict.LOWER: -1, Verdict.NO_CHANGE: 0, Verdict.SMALL: 0}.get(self)


def moved(verdict: str) -> bool:
    """A verdict that found a change that matters, either way (any other string: False)."""
    return verdict in Verdict.__members__.values() and Verdict(verdict).direction in (1, -1)


FASTER, SLOWER, NO_CHANGE, FAILED, TOO_FEW = (Verdict.FASTER, Verdict.SLOWER, Verdict.NO_CHANGE, Verdict.FAILED,
                                              Verdict.TOO_FEW)
SMALL, INCONCLUSIVE = Verdict.SMALL, Verdict.INCONCLUSIVE
WORDS = {"boot_s": (Verdict.FASTER, Verdict.SLOWER), "host_cpu_s": (Verdict.LESS_CPU, Verdict.MORE_CPU)}
POWER = 0.8  # of the "detectable change"


@dataclass(frozen=True)
class Summary:
    """One candidate's runs of a metric: median, its order-statistic interval and its real coverage."""

    n: int
    median: float
    ci_low: float
    ci_high: float
    mean: float
    stdev: float
    ci_coverage: float = math.nan  # the probability the interval [ci_low, ci_high] holds the true median

    @property
    def ci_width_pct(self) -> float:
        return 100.0 * (self.ci_high - self.ci_low) / self.median if self.median else math.inf


@dataclass(frozen=True)
class Comparison:
    """A candidate against its reference on one metric: change, interval, p, verdict and power."""

    change_pct: float
    change_ci_low: float
    change_ci_high: float
    p_value: float
    verdict: str
    test: str = "welch-log"
    detectable_pct: float = math.nan  # smallest increase (%) these runs would detect with POWER
    detectable_down_pct: float = math.nan  # smallest decrease (%, as a positive number) likewise
    level: float = math.nan  # the two-sided level tested at; the interval's coverage is 1 - level
    dof: float = math.nan  # the test's degrees of freedom
    censored: int = 0  # runs stopped unfinished (lower bounds): the change is "at least" change_pct

    def as_dict(self) -> dict:
        return asdict(self)


def median_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage): the narrowest pair of symmetric order statistics whose coverage of the
    true median is at least `level` (binomial, no assumption on the distribution); when even
    [min, max] falls short, [min, max] with the coverage it has."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    if n == 1:
        return float(x[0]), float(x[0]), 0.0
    best = (float(x[0]), float(x[-1]), 1.0 - 2.0 * float(sps.binom.cdf(0, n, 0.5)))
    for k in range(2, n // 2 + 1):  # x_(k) .. x_(n-k+1), 1-based
        coverage = 1.0 - 2.0 * float(sps.binom.cdf(k - 1, n, 0.5))
        if coverage < level:
            break
        best = (float(x[k - 1]), float(x[n - k]), coverage)
    return best


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Median with its order-statistic interval, mean and sample standard deviation."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    low, high, coverage = median_interval(arr, level)
    return Summary(len(arr), float(np.median(arr)), low, high, float(arr.mean()),
                   float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, coverage)


def compare_censored(candidate: Sequence[float], reference: Sequence[float], cand_censored: Sequence[bool],
                     ref_censored: Sequence[bool], metric: str = "boot_s", alpha: float = 0.05,
                     min_effect_pct: float = 5.0) -> Comparison:
    """compare() where some runs stopped unfinished and give only a lower bound.  Lower bounds on the
    candidate's side can show it slower (the true times are longer still), on the reference's side
    faster; any other reading of them would be a guess, so it is INCONCLUSIVE.  A slowdown read from
    them is "at least" its change: the interval's upper end is unknown."""
    k_c, k_r = sum(bool(x) for x in cand_censored), sum(bool(x) for x in ref_censored)
    comp = compare(candidate, reference, metric, alpha, min_effect_pct)
    if not k_c and not k_r:
        return comp
    lower_word, higher_word = WORDS.get(metric, (Verdict.LOWER, Verdict.HIGHER))
    if k_c and not k_r and comp.verdict == higher_word:
        return dataclasses.replace(comp, change_ci_high=math.inf, censored=k_c)
    if k_r and not k_c and comp.verdict == lower_word:
        return dataclasses.replace(comp, change_ci_low=-100.0, censored=k_r)
    return dataclasses.replace(comp, verdict=INCONCLUSIVE, censored=k_c + k_r,
                               change_ci_low=-100.0 if k_r else comp.change_ci_low,
                               change_ci_high=math.inf if k_c else comp.change_ci_high)


def compare(candidate: Sequence[float], reference: Sequence[float], metric: str = "boot_s", alpha: float = 0.05,
            min_effect_pct: float = 5.0) -> Comparison:
    """The candidate's change against its reference in %, its interval at 1 - alpha, Welch's two-sided
    p-value and the verdict the interval reads as:

      excludes 0, change >= the minimum effect  -> slower / faster (more / less CPU)
      excludes 0, change smaller                -> SMALL
      holds 0 and a change of the minimum effect -> INCONCLUSIVE
      holds 0, within +-the minimum effect      -> NO_CHANGE

    On logs when every value is positive (the change is then a ratio of geometric means), on the raw
    values otherwise (the change relative to the reference's mean)."""
    lower_word, higher_word = WORDS.get(metric, (Verdict.LOWER, Verdict.HIGHER))
    c = np.asarray(candidate, dtype=float)
    b = np.asarray(reference, dtype=float)
    if len(c) < 2 or len(b) < 2:
        return Comparison(math.nan, math.nan, math.nan, math.nan, TOO_FEW, level=alpha)
    positive = bool((c > 0).all() and (b > 0).all())
    x, y = (np.log(c), np.log(b)) if positive else (c, b)
    scale = 1.0 if positive else float(np.mean(y)) or 1.0

    def pct(d: float) -> float:
        return 100.0 * (math.exp(d) - 1.0) if positive else 100.0 * d / scale

    d = float(x.mean() - y.mean())
    se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    pooled = False
    if se == 0.0:  # two constants: no noise at all
        p, low, high, dof = (1.0 if d == 0 else 0.0), d, d, math.inf
    else:
        # The more cautious of Welch's t (right when the variances differ, liberal when the smaller side is
        # the noisier: 4x at 3 runs against 10) and the pooled t (exact when nothing changed at all, the
        # null a false verdict comes from); both intervals are centred on the same change, so the wider
        # is the one with the larger p, and interval and p still agree.
        with warnings.catch_warnings():  # a constant side (runs censored at one limit) is exact, not a loss
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
            pooled, res = max(((ev, sps.ttest_ind(x, y, equal_var=ev)) for ev in (False, True)),
                              key=lambda t: float(t[1].pvalue))
        ci = res.confidence_interval(confidence_level=1.0 - alpha)
        p, low, high, dof = float(res.pvalue), float(ci.low), float(ci.high), float(res.df)
        se = (high - low) / 2.0 / float(sps.t.ppf(1.0 - alpha / 2.0, dof))
    change, lo_pct, hi_pct = pct(d), pct(low), pct(high)
    if low > 0 or high < 0:
        verdict = (higher_word if d > 0 else lower_word) if abs(change) >= min_effect_pct else SMALL
    elif lo_pct <= -min_effect_pct or hi_pct >= min_effect_pct:
        verdict = INCONCLUSIVE
    else:
        verdict = NO_CHANGE
    up, down = detectable_change_pct(se, dof, alpha, positive, scale)
    test = ("pooled" if pooled else "welch") + ("-log" if positive else "")
    return Comparison(change, lo_pct, hi_pct, p, verdict, test, up, down, alpha, dof)


def detectable_change_pct(se: float, dof: float, alpha: float, positive: bool = True,
                          scale: float = 1.0) -> tuple[float, float]:
    """(increase, decrease) in %: the smallest changes a two-sided Welch test at `alpha` finds with
    POWER, for this standard error and these degrees of freedom (the test's own); both directions,
    since on a log scale a detectable -X% is not a detectable +X%."""
    if not se or math.isnan(se) or math.isnan(dof):
        return math.nan, math.nan
    delta = (sps.t.ppf(1 - alpha / 2, dof) + sps.t.ppf(POWER, dof)) * se
    if not positive:
        return 100.0 * delta / scale, 100.0 * delta / scale
    return 100.0 * (math.exp(delta) - 1.0), 100.0 * (1.0 - math.exp(-delta))


def family_level(alpha: float, family: int, looks: int = 1) -> float:
    """Bonferroni: the level each verdict is tested at so that the chance of any false verdict among
    `family` comparisons, each looked at up to `looks` times as runs are added, stays at most alpha."""
    return alpha / max(1, family) / max(1, looks)
