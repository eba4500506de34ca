"""The sequential rule, unit by unit, and the whole rule simulated with the default evaluation's settings."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPO

from pipeline.report.analysis import decision_family
from pipeline.report.sequential import allocation, futile, plan_more, simulate
from pipeline.report.stats import FASTER, SLOWER, compare, family_level

SD = 0.113  # log-sd of the fast candidates' boot times in the committed reports (the review's pooled figure)


def _defaults() -> tuple[dict, float, int]:
    cfg = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    specs = {c["name"]: c for c in cfg["candidates"]}
    family = decision_family(list(specs), specs, cfg["baseline"])
    return cfg["repetitions"], float(cfg["report"]["alpha"]), len(family)


def test_the_cheap_side_collects_the_runs() -> None:
    # A tight 150 s regression against a noisy 8 s baseline: the baseline gets the runs.
    add_c, add_r = allocation([149.0, 149.3, 149.1], [7.0, 8.2, 9.1], 150.0, 8.0, 12)
    assert add_c == 0 and add_r >= 1
    # A tight expensive side against a noisy cheap one, far from decided: the cheap side gets several.
    add_c, add_r = allocation([9.0, 9.1, 8.9], [7.0, 8.2, 9.1], 150.0, 8.0, 12)
    assert add_c == 0 and add_r >= 3
    # Equal costs and noise: both sides grow alike.
    add_c, add_r = allocation([10.0, 11.0, 12.0], [10.5, 11.5, 12.5], 10.0, 10.0, 12)
    assert add_c == add_r > 0
    # Nobody grows past max_counted.
    assert allocation([1.0, 1.2, 1.1], [1.0, 1.3, 0.9], 1.0, 1.0, 3) == (0, 0)


def test_futility_spares_comparisons_that_cannot_be_decided() -> None:
    level = family_level(0.05, 5, 4)
    assert futile([8.0, 8.5, 7.6], [8.1, 7.4, 8.9], level, 5.0, 12)  # no change, too noisy to prove it
    assert not futile([10.4, 11.2, 9.9], [8.1, 7.4, 8.9], level, 5.0, 12)  # +30%: more runs can decide it


def test_plan_skips_decided_comparisons_and_respects_the_budget() -> None:
    values = {"base": [8.0, 8.4, 7.7], "reg": [150.0, 150.2, 149.9], "fix": [10.2, 10.8, 9.4]}
    costs = {"base": 10.0, "reg": 152.0, "fix": 12.0}
    plan = plan_more(values, costs, [("reg", "base"), ("fix", "base")], 0.0025, 5.0, 12, 500.0)
    assert plan.reasons["reg vs base"].startswith("decided: slower")
    assert "reg" not in plan.more and sum(plan.more.values()) > 0 and plan.cost(costs) <= 500
    assert plan_more(values, costs, [("fix", "base")], 0.0025, 5.0, 12, 5.0).more == {}  # nothing fits


def _simulate(effects: list[float], reps: dict, alpha: float, rng: np.random.Generator,
              outlier: float = 1.0) -> tuple[list[str], float]:
    verdicts, spent, _ = simulate(effects, SD, reps["counted"], reps["looks"], reps["max_counted"],
                                  reps["budget_s"], alpha, rng, outlier)
    return verdicts, spent


def test_the_default_rule_keeps_false_verdicts_under_alpha_and_finds_30_percent() -> None:
    """With pipeline.yaml's repetitions, level and family size: on null data (nothing changes) the chance
    of any false verdict in the family is at most alpha; a 30% slowdown among them is found at least
    80% of the time, within the budget."""
    reps, alpha, family = _defaults()
    assert reps["looks"] > 1 and family >= 2
    rng = np.random.default_rng(2026)
    trials = 200
    false = sum(any(v in (SLOWER, FASTER) for v in _simulate([0.0] * family, reps, alpha, rng)[0])
                for _ in range(trials))
    assert false / trials <= alpha, false
    found, spent = 0, []
    for _ in range(trials):
        verdicts, s = _simulate([0.3] + [0.0] * (family - 1), reps, alpha, rng)
        found += verdicts[0] == SLOWER
        spent.append(s)
    assert found / trials >= 0.8, found
    assert max(spent) <= reps["budget_s"]


def test_one_disturbed_baseline_run_does_not_hide_a_17x_regression() -> None:
    """A baseline run three times too slow, against a 150 s regression (17.7x, as in d16e): the cheap
    baseline collects runs and the regression is still called, every time."""
    reps, alpha, family = _defaults()
    rng = np.random.default_rng(17)
    for _ in range(50):
        verdicts, _ = _simulate([16.7] + [0.0] * (family - 1), reps, alpha, rng, outlier=3.0)
        assert verdicts[0] == SLOWER, verdicts


@pytest.mark.parametrize("n", [3, 5])
def test_the_cautious_t_test_holds_its_level_when_sizes_differ(n: int) -> None:
    """Welch's t alone is liberal when the smaller side is the noisier (4x at 3 runs against 10): the
    rule takes the more cautious of Welch's and the pooled t, and stays at its level."""
    rng = np.random.default_rng(n)
    level, trials = 0.01, 4000
    hits = sum(compare(rng.lognormal(0, 0.2, n), rng.lognormal(0, 0.2, 10), alpha=level).p_value < level
               for _ in range(trials))
    assert hits / trials <= level * 1.3, hits
