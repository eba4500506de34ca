"""Where more repetitions help: the sequential rule that adds runs to comparisons still undecided.

After the first fixed rounds (look 1), each comparison that decides the exit code and is still
undecided (inconclusive, or too few runs) gets runs for one more look, sized to cut its interval's
half-width by CUT, or only as far as deciding the change seen needs, at the least test-host time
(Neyman's allocation with costs: a side gets runs in
proportion to its noise over the square root of its cost, so a 5 s baseline collects runs where a
150 s regression keeps its 3).  A comparison that would stay undecided even at `max_counted` runs a
side, if its change and noise stayed as seen, gets none ("futile": the budget goes where it can decide
something).  Looks continue up to `looks`, `max_counted` runs a candidate and `budget_s` seconds.

Every look tests at `family_level(alpha, family, looks)` (Bonferroni over the comparisons and their
looks), so however the looks fall, the chance of any false verdict stays at most alpha;
tests/test_sequential.py simulates the whole rule to check that and its power.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from pipeline.report.stats import INCONCLUSIVE, TOO_FEW, compare, family_level

UNDECIDED_VERDICTS = (INCONCLUSIVE, TOO_FEW)
CUT = 1.6  # each look aims at an interval this many times narrower
NEED_POWER = 0.95  # "as narrow as deciding needs": with this power, were the change what it seems
FUTILITY_MARGIN = 1.5  # futile when the projected half-width at max_counted exceeds the change seen this many times


@dataclass(frozen=True)
class Plan:
    """One look's decision: how many more runs each candidate gets, and why each comparison got them."""
    more: Mapping[str, int]
    reasons: Mapping[str, str]  # "cand vs ref" -> reason

    def cost(self, costs: Mapping[str, float]) -> float:
        return sum(k * costs.get(n, 1.0) for n, k in self.more.items())


def _logs(values: Sequence[float]) -> np.ndarray | None:
    v = np.asarray(values, dtype=float)
    return np.log(v) if len(v) >= 2 and (v > 0).all() else None


def _pooled_var(lc: np.ndarray, lr: np.ndarray) -> float:
    """The two sides' log variance, pooled."""
    return float(((len(lc) - 1) * lc.var(ddof=1) + (len(lr) - 1) * lr.var(ddof=1)) / (len(lc) + len(lr) - 2))


def futile(candidate: Sequence[float], reference: Sequence[float], level: float, min_effect_pct: float,
           max_counted: int) -> bool:
    """Would the comparison stay undecided even at max_counted runs a side, if the change and the noise
    stayed as seen?  Its interval would then still hold 0 (wider than the change by FUTILITY_MARGIN)
    and still reach past the minimum effect."""
    lc, lr = _logs(candidate), _logs(reference)
    if lc is None or lr is None:
        return False
    half = float(sps.t.ppf(1.0 - level / 2.0, 2 * max_counted - 2)) * math.sqrt(_pooled_var(lc, lr) * 2.0 / max_counted)
    change = abs(float(lc.mean() - lr.mean()))
    return half >= FUTILITY_MARGIN * change and 100.0 * (math.exp(half) - 1.0) >= min_effect_pct


def allocation(candidate: Sequence[float], reference: Sequence[float], cost_c: float, cost_r: float,
               max_counted: int, level: float = 0.0025) -> tuple[int, int]:
    """Runs to add to each side so the standard error falls by CUT, or only as far as deciding the change
    seen needs, at the least cost (Neyman: n_i proportional to s_i / sqrt(cost_i)); never fewer than one
    run in all while a side is under max_counted."""
    lc, lr = _logs(candidate), _logs(reference)
    n_c, n_r = len(candidate), len(reference)
    if lc is None or lr is None:
        return max(0, 2 - n_c), max(0, 2 - n_r)
    pooled = math.sqrt(_pooled_var(lc, lr))
    s_c, s_r = (max(float(x.std(ddof=1)), 0.25 * pooled, 1e-6) for x in (lc, lr))
    # Aim at CUT narrower, or only as narrow as deciding the change seen needs (normal quantiles at
    # the level and NEED_POWER): a -88% change undecided at 2 degrees of freedom needs a run, not nine.
    need = abs(float(lc.mean() - lr.mean())) / (float(sps.norm.ppf(1.0 - level / 2.0)) +
                                                float(sps.norm.ppf(NEED_POWER)))
    target = max(math.sqrt(s_c ** 2 / n_c + s_r ** 2 / n_r) / CUT, need)
    k_c, k_r = math.sqrt(max(cost_c, 1e-3)), math.sqrt(max(cost_r, 1e-3))
    total = (s_c * k_c + s_r * k_r) / target ** 2  # Lagrange: n_i = s_i (sum_j s_j k_j) / (k_i se^2)
    want_c, want_r = (math.ceil(s * total / k) for s, k in ((s_c, k_c), (s_r, k_r)))
    add_c = max(0, min(max_counted, want_c) - n_c)
    add_r = max(0, min(max_counted, want_r) - n_r)
    if add_c + add_r == 0:  # rounding left nothing: the side where a run narrows most per second
        gain_c = s_c ** 2 / (n_c * (n_c + 1)) / k_c ** 2 if n_c < max_counted else -1.0
        gain_r = s_r ** 2 / (n_r * (n_r + 1)) / k_r ** 2 if n_r < max_counted else -1.0
        if max(gain_c, gain_r) < 0:
            return 0, 0
        return (1, 0) if gain_c >= gain_r else (0, 1)
    return add_c, add_r


def plan_more(values: Mapping[str, Sequence[float]], costs: Mapping[str, float],
              pairs: Sequence[tuple[str, str]], level: float, min_effect_pct: float, max_counted: int,
              budget_s: float) -> Plan:
    """The runs of the next look, within `budget_s`: the most promising undecided comparisons first."""
    more: dict[str, int] = {}
    reasons: dict[str, str] = {}
    wanted = []
    for cand, ref in pairs:
        key = f"{cand} vs {ref}"
        c, r = values.get(cand, ()), values.get(ref, ())
        comp = compare(c, r, "boot_s", level, min_effect_pct)
        if comp.verdict not in UNDECIDED_VERDICTS:
            reasons[key] = f"decided: {comp.verdict}"
        elif min(len(c), len(r)) >= max_counted:
            reasons[key] = f"undecided at max_counted={max_counted} runs a side"
        elif futile(c, r, level, min_effect_pct, max_counted):
            reasons[key] = (f"undecided, and would stay so at max_counted={max_counted} runs a side with the change "
                            f"and noise seen: no more runs")
        else:
            width = abs(comp.change_ci_high - comp.change_ci_low) or math.inf
            wanted.append((abs(comp.change_pct) / width, key, cand, ref))
    spent = 0.0
    for _, key, cand, ref in sorted(wanted, reverse=True):
        add_c, add_r = allocation(values.get(cand, ()), values.get(ref, ()), costs.get(cand, 1.0),
                                  costs.get(ref, 1.0), max_counted, level)
        # A side another comparison already grows counts once: the larger of the two requests.
        extra = {n: max(0, k - more.get(n, 0)) for n, k in ((cand, add_c), (ref, add_r)) if k}
        cost = sum(k * costs.get(n, 1.0) for n, k in extra.items())
        if spent + cost > budget_s:
            reasons[key] = f"undecided: the budget is spent ({budget_s:.0f} s left, {cost:.0f} s wanted)"
            continue
        for n, k in extra.items():
            more[n] = more.get(n, 0) + k
        spent += cost
        reasons[key] = f"undecided: +{add_c} {cand}, +{add_r} {ref}"
    return Plan(more, reasons)


def simulate(effects: Sequence[float], sd: float, counted: int, looks: int, max_counted: int, budget_s: float,
             alpha: float, rng: np.random.Generator, outlier: float = 1.0, base_s: float = 8.0,
             overhead_s: float = 3.0, min_effect_pct: float = 5.0) -> tuple[list[str], float, dict[str, int]]:
    """One simulated evaluation under the rule: a baseline of `base_s` and one candidate per effect
    (+0.3 = 30% slower), log-normal noise of log-sd `sd`, the first baseline run times `outlier` (one
    disturbed run).  Returns each candidate's final verdict, the extra seconds spent and the run counts
    (for tests/test_sequential.py and bench/sequential_rule.py)."""
    names = ["base"] + [f"c{i}" for i in range(len(effects))]
    mu = {"base": 0.0} | {f"c{i}": math.log1p(e) for i, e in enumerate(effects)}
    costs = {n: base_s * math.exp(mu[n]) + overhead_s for n in names}

    def draw(n: str, k: int) -> list[float]:
        return [float(x) for x in base_s * np.exp(mu[n] + rng.normal(0.0, sd, k))]

    values = {n: draw(n, counted) for n in names}
    values["base"][0] *= outlier
    pairs = [(f"c{i}", "base") for i in range(len(effects))]
    level = family_level(alpha, len(pairs), looks)
    spent = 0.0
    for _ in range(looks - 1):
        plan = plan_more(values, costs, pairs, level, min_effect_pct, max_counted, budget_s - spent)
        if not plan.more:
            break
        spent += plan.cost(costs)
        for n, k in plan.more.items():
            values[n] += draw(n, k)
    verdicts = [compare(values[c], values[r], "boot_s", level, min_effect_pct).verdict for c, r in pairs]
    return verdicts, spent, {n: len(v) for n, v in values.items()}
