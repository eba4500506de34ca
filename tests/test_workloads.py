"""The workload plug-ins: settings checked with key and line, outputs parsed as the tests print them."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.report.analysis import analyze
from pipeline.workloads import kinds
from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError
from pipeline.workloads.kinds import CommandKind
from pipeline.workloads.selftest import SelftestKind

REPO = Path(__file__).resolve().parent.parent

# As memslot_perf_test.c prints them (pr_info formats "Done %"PRIu64" iterations, avg %ld.%.9lds each",
# "Best runtime result was %ld.%.9lds per iteration (with %"PRIu64" iterations)").
PERF_OUTPUT = """Testing map performance with 1 runs, 2 seconds each
Test took 0.123456789s for slot setup + 2.000123456s all iterations
Done 120 iterations, avg 0.016667695s each
Best runtime result was 0.016667695s per iteration (with 120 iterations)
"""


def config_with(tmp_path: Path, workloads: str) -> Path:
    p = tmp_path / "pipeline.yaml"
    p.write_text(f"trees: {{s: {{git: /nonexistent}}}}\nbaseline: a\ncandidates: [{{name: a, tree: s}}]\n{workloads}")
    return p


def test_workloads_load_with_defaults_and_example_command(tmp_path: Path) -> None:
    cfg = load_config(config_with(tmp_path, f"""workloads:
  - {{name: stress, kind: kvm-selftest}}
  - {{kind: command, path: {REPO}/vm-templates/workloads/memslot-timing.sh, headline: elapsed_ms, args: ["200"]}}
"""))
    stress, cmd = cfg.workloads
    assert stress.test == "memslot_modification_stress_test" and stress.headline == "iteration_ms"
    assert "-i" in stress.args and stress.metric("iteration_ms") == "stress.iteration_ms"
    assert cmd.name == "command" and cmd.args == ("200",) and cmd.path and cmd.path.name == "memslot-timing.sh"


@pytest.mark.parametrize("text,where", [
    ("workloads:\n  - {kind: nope}\n", "workloads[0].kind"),
    ("workloads:\n  - {kind: kvm-selftest, test: rm_-rf}\n", "workloads[0].test"),
    ("workloads:\n  - {kind: kvm-selftest, args: ['; reboot']}\n", "workloads[0].args[0]"),
    ("workloads:\n  - {kind: command, headline: x}\n", "workloads[0]"),
    ("workloads:\n  - {kind: kvm-selftest}\n  - {kind: kvm-selftest}\n", "workloads[1].name"),
    ("workloads:\n  - {kind: kvm-selftest, colour: red}\n", "workloads[0].colour"),
])
def test_bad_workload_settings_name_key_and_line(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(config_with(tmp_path, text))
    assert str(info.value).startswith(where) and info.value.line is not None


def test_memslot_perf_test_output_is_parsed() -> None:
    w = ExtraWorkload("perf", "kvm-selftest", "best_iteration_ms", test="memslot_perf_test")
    m = SelftestKind.parse(w, PERF_OUTPUT, 3.0)
    assert m["best_iteration_ms"] == pytest.approx(16.667695)
    assert m["avg_iteration_ms"] == pytest.approx(16.667695) and m["best_iterations"] == 120
    with pytest.raises(WorkloadOutputError):
        SelftestKind.parse(w, "Testing map performance with 1 runs\n", 3.0)


def test_stress_test_is_timed_per_iteration() -> None:
    w = ExtraWorkload("s", "kvm-selftest", "iteration_ms", test="memslot_modification_stress_test",
                      args=("-v", "1", "-i", "200"))
    out = "Finished creating vCPUs\nStarted all vCPUs\nAll vCPU threads joined\n"
    assert SelftestKind.parse(w, out, 4.0)["iteration_ms"] == pytest.approx(20.0)
    with pytest.raises(WorkloadOutputError):
        SelftestKind.parse(w, "Finished creating vCPUs\n", 4.0)


@pytest.mark.parametrize("out", ['noise\n{"elapsed_ms": 12.5, "flag": true, "name": "x"}\n',
                                 "elapsed_ms=12.5\nother = 3\nnot a metric line\n"])
def test_command_output_json_or_key_value(out: str) -> None:
    w = ExtraWorkload("c", "command", "elapsed_ms")
    m = CommandKind.parse(w, out, 1.0)
    assert m["elapsed_ms"] == 12.5 and "flag" not in m and "name" not in m
    with pytest.raises(WorkloadOutputError, match="elapsed_ms"):
        CommandKind.parse(w, "nothing\n", 1.0)


def _results(base: list[tuple[float, float]], cand: list[tuple[float, float]]) -> dict:
    def runs(pairs: list[tuple[float, float]]) -> list[dict]:
        return [{"round": i, "metrics": {"boot_s": b, "host_cpu_s": 1.0, "stress.iteration_ms": s}}
                for i, (b, s) in enumerate(pairs)]
    return {"baseline": "base", "candidate_order": ["base", "cand"],
            "settings": {"alpha": 0.01, "min_effect_pct": 5.0, "bootstrap_resamples": 200},
            "workloads": [{"name": "stress", "kind": "kvm-selftest", "headline": "stress.iteration_ms",
                           "test": "memslot_modification_stress_test"}],
            "candidates": {"base": {"status": "ok", "runs": runs(base)}, "cand": {"status": "ok", "runs": runs(cand)}}}


def test_agreement_between_the_workloads() -> None:
    base = [(7.0, 2.0), (7.2, 2.1), (7.1, 2.05), (6.9, 1.95), (7.05, 2.02)]
    slower_both = [(150.0, 45.0), (148.0, 44.0), (151.0, 46.0), (149.0, 45.5), (150.5, 44.5)]
    a = analyze(_results(base, slower_both))
    row = next(r for r in a["rows"] if r["name"] == "cand")
    assert row["comparisons"]["stress.iteration_ms"]["verdict"] == "higher"
    assert row["agreement"][0]["agrees"] is True
    assert a["metric_labels"]["stress.iteration_ms"] == ("stress: iteration_ms", "ms")
    faster_stress = [(150.0, 1.0), (148.0, 1.01), (151.0, 0.99), (149.0, 1.005), (150.5, 1.02)]
    row = next(r for r in analyze(_results(base, faster_stress))["rows"] if r["name"] == "cand")
    assert row["agreement"][0]["agrees"] is False and "disagrees" in row["agreement"][0]["text"]
    assert not math.isnan(row["agreement"][0]["change_pct"])


class _ShellHost:
    """A test host stand-in that runs the commands on this machine (the remote folder mapped into tmp):
    the timing and stopping shell snippet is the real one."""

    def __init__(self, root: Path):
        self.root = root

    def _map(self, arg: str) -> str:
        return arg.replace(kinds.REMOTE_DIR, str(self.root))

    def run(self, argv: list[str], timeout: float) -> Any:
        import subprocess
        import types

        p = subprocess.run([self._map(a) for a in argv], capture_output=True, text=True, timeout=timeout)
        return types.SimpleNamespace(exited=p.returncode, stdout=p.stdout, stderr=p.stderr)

    def put(self, local: str, remote: str) -> None:
        import shutil

        shutil.copy(local, self._map(remote))


def test_a_stopped_stress_test_reads_as_a_lower_bound(tmp_path: Path) -> None:
    """Censored at 1 s, a stress test that would run 30 s is killed there and reads 'at least' its wall per
    iteration; one that finishes first is read as usual; a kind with no bound is not stopped at all."""
    slow = tmp_path / "slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")  # exec: no orphan keeps the output open
    fast = tmp_path / "fast"
    fast.write_text("#!/bin/sh\necho 'All vCPU threads joined'\n")
    host = _ShellHost(tmp_path / "remote")
    host.root.mkdir()
    w = ExtraWorkload("stress", "kvm-selftest", "iteration_ms", test="memslot_modification_stress_test",
                      args=("-i", "200"), censor_s=1.0, timeout_s=60)
    values, raw = kinds.run_extra(host, w, slow)
    assert raw["censored"] is True
    assert 1.0 <= values["wall_s"] < 5.0
    assert values["iteration_ms"] == pytest.approx(1000 * values["wall_s"] / 200)
    values, raw = kinds.run_extra(host, w, fast)
    assert "censored" not in raw and values["wall_s"] < 1.0
    perf = ExtraWorkload("perf", "kvm-selftest", "best_iteration_ms", test="memslot_perf_test", censor_s=0.5,
                         timeout_s=60)
    printing = tmp_path / "perf"
    printing.write_text("#!/bin/sh\nsleep 1\necho 'Best runtime result was 0.001000000s per iteration "
                        "(with 5 iterations)'\n")
    values, raw = kinds.run_extra(host, perf, printing)  # no bound to read from a stopped one: runs to the end
    assert "censored" not in raw and values["best_iteration_ms"] == pytest.approx(1.0)
