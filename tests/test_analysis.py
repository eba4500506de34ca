"""The comparison logic of the report: references (compare_to), controls, artefact warnings."""
from __future__ import annotations

from typing import Any

from pipeline.report.analysis import analyze


def _run(boot: float, cpu: float, kworker: float) -> dict[str, Any]:
    return {"metrics": {"boot_s": boot, "host_cpu_s": cpu, "kworker_cpu_s": kworker, "gp_ms": boot / 9.3}}


def _results(cands: dict[str, tuple[list[float], float, float]], specs: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "run_id": "t", "baseline": "base", "candidate_order": list(cands),
        "candidate_specs": specs,
        "settings": {"alpha": 0.01, "min_effect_pct": 5, "bootstrap_resamples": 200},
        "candidates": {n: {"status": "ok", "runs": [_run(b, cpu, kw) for b in boots]}
                       for n, (boots, cpu, kw) in cands.items()},
    }


def test_compare_to_changes_the_reference_and_controls_are_not_regressions() -> None:
    results = _results({
        "base": ([10.0, 10.2, 9.9, 10.1], 6.0, 4.0),
        "regr": ([150.0, 151.0, 149.5, 150.5], 0.2, 0.1),
        "base-no-reader": ([3.0, 3.1, 2.9, 3.05], 0.5, 0.1),
        "regr-no-reader": ([3.3, 3.4, 3.35, 3.3], 0.5, 0.1),
    }, {"regr-no-reader": {"role": "control", "compare_to": "base-no-reader"},
        "base-no-reader": {"role": "control"}})
    a = analyze(results)
    rows = {r["name"]: r for r in a["rows"]}
    assert rows["regr"]["compare_to"] == "base"
    assert rows["regr"]["comparisons"]["boot_s"]["verdict"] == "slower"
    assert 1380 < rows["regr"]["comparisons"]["boot_s"]["change_pct"] < 1420
    # Against base-no-reader (about 3.0 s), not against the baseline (10 s).
    chg = rows["regr-no-reader"]["comparisons"]["boot_s"]["change_pct"]
    assert 8 < chg < 14
    assert rows["regr-no-reader"]["role"] == "control"
    # base-no-reader is much faster than the baseline, but a control is never called a regression either way.
    assert a["regressions"] == ["regr"]
    assert a["warnings"] == []


def test_a_candidate_that_polls_more_and_boots_slower_is_flagged() -> None:
    results = _results({
        "base": ([10.0, 10.2, 9.9, 10.1], 6.0, 1.0),
        "poller": ([14.0, 14.5, 13.8, 14.2], 9.0, 5.0),
    }, {})
    a = analyze(results)
    assert a["regressions"] == ["poller"]
    assert len(a["warnings"]) == 1 and "poller's kworkers spend more CPU than base's" in a["warnings"][0]
    assert "starving" in a["warnings"][0]


def test_a_failed_reference_leaves_the_comparison_failed() -> None:
    results = _results({"base": ([10.0, 10.2], 6.0, 1.0), "x": ([11.0, 11.5], 6.0, 1.0)}, {})
    results["candidates"]["base"]["status"] = "build-failed"
    a = analyze(results)
    x = next(r for r in a["rows"] if r["name"] == "x")
    assert x["comparisons"]["boot_s"]["verdict"] == "failed"


def test_a_candidate_built_on_another_is_also_compared_with_it() -> None:
    results = _results({
        "base": ([10.0, 10.2, 9.9, 10.1], 6.0, 1.0),
        "regr": ([150.0, 151.0, 149.5, 150.5], 0.2, 0.1),
        "fix-on-regr": ([10.1, 10.0, 10.3, 9.8], 6.1, 1.0),
        "other-workload": ([150.0, 151.0, 149.0, 150.2], 0.2, 0.1),
    }, {"regr": {"tree": "t", "changes": [{"kind": "patch", "value": "0001"}], "workload": {"cycles": 1}},
        "fix-on-regr": {"tree": "t", "changes": [{"kind": "patch", "value": "0001"},
                                                 {"kind": "patch", "value": "0004"}], "workload": {"cycles": 1}},
        "other-workload": {"tree": "t", "changes": [{"kind": "patch", "value": "0001"},
                                                    {"kind": "cmdline", "value": "x=1"}], "workload": {"cycles": 2}}})
    rows = {r["name"]: r for r in analyze(results)["rows"]}
    [top] = rows["fix-on-regr"]["on_top_of"]
    assert top["reference"] == "regr" and top["boot_s"]["verdict"] == "faster"
    assert top["boot_s"]["change_pct"] < -90
    assert rows["other-workload"]["on_top_of"] == []  # another workload: not comparable
    assert rows["regr"]["on_top_of"] == [] and rows["base"]["on_top_of"] == []


def test_censoring_is_per_workload() -> None:
    """A run whose flash boot was stopped still measured the selftest to the end (and the other way round):
    each metric reads 'at least' only from the runs that stopped it."""
    results = _results({"base": ([10.0, 10.2, 9.9], 6.0, 4.0), "regr": ([40.0, 40.0, 40.0], 0.0, 0.0)}, {})
    results["workloads"] = [{"name": "stress", "headline": "stress.iteration_ms"}]
    for i, r in enumerate(results["candidates"]["base"]["runs"]):
        r["metrics"]["stress.iteration_ms"] = 3.0 + 0.1 * i
    for i, r in enumerate(results["candidates"]["regr"]["runs"]):
        r["metrics"]["stress.iteration_ms"] = 60.0 + i
        r["censored"] = True  # the boot stopped at 4x; the stress test ran to its end
        r["censored_workloads"] = ["stress"] if i == 0 else []
    row = {r["name"]: r for r in analyze(results)["rows"]}["regr"]
    assert row["comparisons"]["boot_s"]["censored"] == 3
    assert row["comparisons"]["stress.iteration_ms"]["censored"] == 1
    assert row["comparisons"]["stress.iteration_ms"]["verdict"] == "higher"
