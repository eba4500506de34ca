"""results.json read back into typed records: every committed run reads, a run written today reads back
as the record that wrote it, and what an older or newer kpipe wrote reads with defaults."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.records.read import CandidateStatus, Results, run_from_json
from pipeline.records.results import RunRecord

REPO = Path(__file__).resolve().parent.parent


def test_a_run_record_reads_back_as_written() -> None:
    run = RunRecord(round=2, kind="counted", attempt=1, finished="2026-12-02T10:00:00+00:00", host="local",
                    host_kind="tcg x86_64", boot_to_ssh_s=1.5, console_log="logs/a/r02-a1.console.log",
                    raw={"status": "ok"}, metrics={"boot_s": 8.0, "stress.iteration_ms": 3.0},
                    argv=["/tmp/flashvmm"], host_load={"foreign_cpus": 0.01}, censored=False,
                    censored_workloads=["stress"], failed_workloads={})
    back = run_from_json(json.loads(json.dumps(run.as_dict())))
    assert back == run
    assert back.stopped("stress.iteration_ms") and not back.stopped("boot_s")


def test_every_committed_run_reads_into_records() -> None:
    for path in sorted((REPO / "reports").glob("2026*/results.json")):
        data = json.loads(path.read_text())
        res = Results.from_json(data)
        assert res.baseline in res.candidates, path
        for name, c in data["candidates"].items():
            typed = res.candidate(name)
            assert typed.status == c["status"] and len(typed.runs) == len(c.get("runs", [])), (path, name)
            assert all(r.metrics == {k: float(v) for k, v in raw["metrics"].items()}
                       for r, raw in zip(typed.runs, c.get("runs", []), strict=True))


def test_what_another_version_wrote_reads_with_defaults() -> None:
    res = Results.from_json({"baseline": "a", "candidates": {
        "a": {"status": "ok", "runs": [{"metrics": {"boot_s": 8}}]},
        "b": {"status": "a-status-of-2027", "runs": [], "new_key": 1}}})
    assert res.order == ("a", "b") and res.settings.alpha == 0.05 and res.settings.looks == 1
    assert res.candidate("a").runs[0].metrics == {"boot_s": 8.0} and res.candidate("a").runs[0].host == "local"
    assert res.candidate("b").status is CandidateStatus.PENDING  # unknown: not evaluated, never "ok"
    assert res.candidate("never-reached").status is CandidateStatus.PENDING
    assert res.reference("b") == "a"
    assert CandidateStatus.BUILD_FAILED.failed and not CandidateStatus.IDENTICAL.failed


def test_a_stopped_runs_rates_are_measured_its_totals_are_lower_bounds() -> None:
    from pipeline.records.results import RATE_METRICS, RunRecord, metric_censored

    run = RunRecord(round=0, kind="counted", attempt=0, finished="", host="local", host_kind="", boot_to_ssh_s=1.0,
                    console_log="", raw={}, metrics={"boot_s": 30.0, "gp_ms": 15.7}, argv=[], censored=True)
    assert run.stopped("boot_s") and run.stopped("host_cpu_s") and run.stopped("grace_periods")
    assert not any(run.stopped(m) for m in RATE_METRICS)
    assert not metric_censored({"censored": True}, "gp_ms") and metric_censored({"censored": True}, "boot_s")
    whole = RunRecord(round=0, kind="counted", attempt=0, finished="", host="local", host_kind="", boot_to_ssh_s=1.0,
                      console_log="", raw={}, metrics={"boot_s": 5.0}, argv=[])
    assert not whole.stopped("boot_s") and not whole.stopped("gp_ms")


def test_censored_rates_read_only_what_the_vmm_said() -> None:
    from pipeline.workloads.flash_metrics import censored_rates

    raw = {"done_delete": {"n": 100, "sum": 3_000_000_000}, "done_create": {"n": 100, "sum": 1_500_000_000}}
    rates = censored_rates(raw)
    assert rates["grace_periods"] == 300 and abs(rates["gp_ms"] - 15.0) < 1e-9
    assert abs(rates["delete_mean_ms"] - 30.0) < 1e-9 and abs(rates["create_mean_ms"] - 15.0) < 1e-9
    assert censored_rates({}) == {}  # an older VMM's censored report
    assert censored_rates({"done_delete": {"n": "x", "sum": 1}, "done_create": {"n": 1, "sum": 1}}) == {}
    assert censored_rates({"done_delete": {"n": 0, "sum": 0}, "done_create": {"n": 0, "sum": 0}}) == {}
