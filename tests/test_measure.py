"""The measuring rules in seconds, with fake boot and workload steps (the real ones have e2e tests):
interleaving, retries of infrastructure faults only, a panic ends the candidate, resume skips
finished rounds, a lost host hands its job to another."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.candidates import Candidate
from pipeline.config import Config, Repetitions
from pipeline.machines.pool import OK, PoolHost
from pipeline.records.results import RunFolder
from pipeline.run.measure import Measurer
from pipeline.run.repetition import Prepared
from pipeline.stages.boot import BootFailed
from pipeline.util.progress import Progress
from pipeline.workloads.flash import Workload, WorkloadFailed, WorkloadLost, WorkloadResult


@dataclass
class FakeHost:
    console_log: Path
    boot_seconds: float = 1.0
    accelerator: str = "tcg"
    info: dict[str, Any] = field(default_factory=lambda: {"uname_r": "6.1.0-test"})


class FakeExecutor:
    def __init__(self, healthy: bool = True):
        self.is_healthy = healthy

    def healthy(self) -> tuple[bool, str]:
        return self.is_healthy, "" if self.is_healthy else "connection refused"

    def close(self) -> None:
        pass


@dataclass
class Script:
    """What each boot of a candidate does, in order: 'ok', 'panic', 'timeout', 'ssh', 'watchdog', 'guest'."""

    plans: dict[str, list[str]]
    calls: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, name: str) -> str:
        with self.lock:
            plan = self.plans.get(name) or ["ok"]
            step = plan.pop(0) if len(plan) > 1 else plan[0]
            self.calls.append((name, step))
            return step


def make(tmp_path: Path, script: Script, counted: int = 3, retries: int = 2,
         hosts: int = 1, reps: Repetitions | None = None,
         boot_s: Any = None) -> tuple[Measurer, RunFolder, list[Prepared], list[str]]:
    import dataclasses

    cfg = Config.__new__(Config)
    object.__setattr__(cfg, "repetitions", reps or Repetitions(warmup=0, counted=counted, max_counted=counted,
                                                               retries=retries))
    object.__setattr__(cfg, "workload", Workload(cycles=10))
    object.__setattr__(cfg, "baseline", next(iter(script.plans)))
    object.__setattr__(cfg, "test_host", dataclasses.make_dataclass("TH", [("cpus", int)])(2))
    object.__setattr__(cfg, "report", dataclasses.make_dataclass("R", [("alpha", float), ("min_effect_pct", float)])(
        0.05, 5.0))
    folder = RunFolder.create(tmp_path / "runs")
    folder.update(candidate_order=list(script.plans), candidate_specs={n: {"role": ""} for n in script.plans})
    failures: list[str] = []
    current: dict[int, str] = {}

    @contextlib.contextmanager
    def boot(executor: Any, artifacts: Any, initramfs: Any, host: Any, cmdline: Any, run_dir: Path, tag: str,
             accel: Any) -> Iterator[FakeHost]:
        name = run_dir.name
        if not executor.is_healthy:
            raise EOFError("the link to the pool host dropped")
        step = script.next(name)
        if step == "panic":
            raise BootFailed("boot-failed", "Kernel panic - not syncing", "Kernel panic - not syncing: VFS")
        if step == "timeout":
            raise BootFailed("boot-timeout", "no SSH after 180 s", "")
        if step == "ssh":
            raise EOFError("SSH session closed")
        current[threading.get_ident()] = step
        current[("name", threading.get_ident())] = name  # type: ignore[index]
        run_dir.mkdir(parents=True, exist_ok=True)
        yield FakeHost(run_dir / f"{tag}.console.log")

    def workload(host: Any, w: Workload, cpus: int) -> WorkloadResult:
        step = current.get(threading.get_ident(), "ok")
        if step == "watchdog":
            raise WorkloadLost("workload watchdog fired after 600 s", "{}")
        if step == "guest":
            raise WorkloadFailed("workload reported guest-failed", "{}")
        value = boot_s(current.get(("name", threading.get_ident()))) if boot_s else 1.0
        if 0 < w.censor_s < value:  # as flashvmm --censor-ms: stopped at the limit
            return WorkloadResult({"status": "censored"}, {"boot_s": w.censor_s, "updates": 5.0}, censored=True)
        return WorkloadResult({"status": "ok"}, {"boot_s": value, "host_cpu_s": 0.5, "updates": 20.0})

    def fail(prep: Prepared, stage: str, status: str, message: str, excerpt: str, extra: Any = None) -> None:
        prep.alive = False
        folder.fail(prep.candidate.name, stage, status, message, excerpt, extra)
        failures.append(f"{prep.candidate.name}:{stage}:{status}")

    art = dataclasses.make_dataclass("A", [("kernel_release", str)])("6.1.0-test")
    patched = dataclasses.make_dataclass("P", [("cmdline", tuple)])(())
    preps = [Prepared(Candidate(n, "t"), patched=patched, artifacts=art) for n in script.plans]  # type: ignore[arg-type]
    pool = []
    for i in range(hosts):
        spec = dataclasses.make_dataclass("S", [("name", str), ("address", str), ("share_cpus", bool)])(
            f"h{i}", f"h{i}", False)
        pool.append(PoolHost(spec, FakeExecutor()))  # type: ignore[arg-type]
    for h in pool:
        h.status = OK
    m = Measurer(cfg, folder, Progress(quiet=True), pool, threading.Event(), fail, boot=boot, workload=workload,
                 install=lambda host, vmm: None)
    return m, folder, preps, failures


def test_rounds_are_interleaved_and_rotated(tmp_path: Path) -> None:
    script = Script({"a": ["ok"], "b": ["ok"], "c": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=3)
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert [n for n, _ in script.calls] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert failures == []
    for name in "abc":
        c = folder.candidate(name)
        assert c["status"] == "ok" and sorted(r["round"] for r in c["runs"]) == [0, 1, 2]
        assert c["stop_reason"] == "fixed count of 3"


def test_infrastructure_faults_are_retried_and_recorded_never_counted(tmp_path: Path) -> None:
    script = Script({"a": ["ssh", "timeout", "ok"], "b": ["watchdog", "ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=1, retries=2)
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert failures == []
    a, b = folder.candidate("a"), folder.candidate("b")
    assert len(a["runs"]) == 1 and [r["status"] for r in a["retries"]] == ["infra-error", "boot-timeout"]
    assert len(b["runs"]) == 1 and [r["status"] for r in b["retries"]] == ["workload-failed"]
    assert a["runs"][0]["attempt"] == 2


def test_retries_run_out_and_end_the_candidate_as_infra_error(tmp_path: Path) -> None:
    script = Script({"a": ["ssh"], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=2, retries=1)
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert failures == ["a:run:infra-error"]
    assert folder.candidate("a")["status"] == "infra-error" and len(folder.candidate("a")["retries"]) == 2
    assert len(folder.candidate("b")["runs"]) == 2  # the other candidate carries on


@pytest.mark.parametrize("step, status, stage", [("panic", "boot-failed", "boot"), ("guest", "workload-failed", "run")])
def test_a_candidates_own_failure_is_never_retried(tmp_path: Path, step: str, status: str, stage: str) -> None:
    script = Script({"a": [step], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=2, retries=2)
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert failures == [f"a:{stage}:{status}"]
    assert [s for n, s in script.calls if n == "a"] == [step]  # one attempt, then no more rounds
    assert folder.candidate("a")["stages"][stage]["status"] == "fail"
    assert len(folder.candidate("b")["runs"]) == 2


def test_resume_skips_finished_rounds(tmp_path: Path) -> None:
    script = Script({"a": ["ok"], "b": ["ok"]})
    m, folder, preps, _ = make(tmp_path, script, counted=3)
    folder.candidate("a")["runs"].append({"round": 0, "metrics": {"boot_s": 1.0}})
    folder.candidate("a")["runs"].append({"round": 1, "metrics": {"boot_s": 1.0}})
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert [r for n, r in script.calls if n == "a"] == ["ok"]  # only round 2
    assert sorted(r["round"] for r in folder.candidate("a")["runs"]) == [0, 1, 2]
    assert len(folder.candidate("b")["runs"]) == 3


def test_a_lost_host_hands_its_job_to_another(tmp_path: Path) -> None:
    script = Script({"a": ["ok"], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=2, retries=2, hosts=2)
    m.hosts[0].executor.is_healthy = False  # type: ignore[attr-defined]
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert failures == []
    assert m.hosts[0].status == "lost" and m.hosts[1].status == OK
    for name in "ab":
        c = folder.candidate(name)
        assert len(c["runs"]) == 2 and all(r["host"] == "h1" for r in c["runs"])
    lost = [r for c in "ab" for r in folder.candidate(c).get("retries", []) if r["status"] == "host-lost"]
    assert len(lost) == 1  # recorded, and not counted against the candidate


def test_nothing_is_measured_when_only_references_are_left() -> None:
    from types import SimpleNamespace

    from pipeline.run.runner import _worth_measuring

    cfg = SimpleNamespace(baseline="base")

    def prep(name: str, alive: bool, compare_to: str = "") -> Prepared:
        return Prepared(SimpleNamespace(name=name, compare_to=compare_to), alive=alive)

    # Triage of a series that does not apply: measuring the baseline alone answers nothing.
    assert not _worth_measuring(cfg, [prep("base", True), prep("series", False)])  # type: ignore[arg-type]
    assert _worth_measuring(cfg, [prep("base", True), prep("series", True)])  # type: ignore[arg-type]
    assert _worth_measuring(cfg, [prep("base", True)])  # type: ignore[arg-type]  # --only the baseline
    # A control's reference is a reference too.
    assert not _worth_measuring(cfg, [prep("base", True), prep("ref", True), prep("ctl", False, "ref")])  # type: ignore[arg-type]


def test_other_workloads_run_in_each_repetition_and_their_failure_twice_is_the_candidates(tmp_path: Path) -> None:
    from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError

    script = Script({"a": ["ok"], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=3)
    w = ExtraWorkload("stress", "kvm-selftest", "iteration_ms", test="memslot_modification_stress_test")
    object.__setattr__(m.cfg, "workloads", (w,))
    for p in preps:
        p.extras = {"stress": tmp_path / "binary"}
    seen: list[str] = []

    def extra(host: Any, wl: ExtraWorkload, path: Path) -> tuple[dict[str, float], dict[str, Any]]:
        seen.append(host.console_log.parent.name)
        if host.console_log.parent.name == "b":
            raise WorkloadOutputError("exited with status 1", "==== Test Assertion Failure ====")
        return {"iteration_ms": 2.5}, {"exit_status": 0}

    m._extra = extra
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    a = folder.candidate("a")
    assert [r["metrics"]["stress.iteration_ms"] for r in a["runs"]] == [2.5, 2.5, 2.5]
    assert a["runs"][0]["raw"]["workloads"]["stress"] == {"exit_status": 0}
    # Not retried (the selftest failing is the kernel's answer), but the flash boots already measured stay:
    # b's first failure is recorded with its run, the second ends the candidate.
    assert failures == ["b:run:workload-failed"]
    b = folder.candidate("b")
    assert len(b["runs"]) == 2 and all("boot_s" in r["metrics"] for r in b["runs"])
    assert all(r["failed_workloads"] == {"stress": "exited with status 1"} for r in b["runs"])
    assert "Test Assertion Failure" in b["stages"]["run"]["excerpt"]
    assert "failed in 2 runs" in b["stages"]["run"]["message"]
    assert [x["attempt"] for x in b["retries"]] == ["r00-a0 stress", "r01-a0 stress"]


def test_a_workload_failing_once_keeps_the_run_and_the_candidate(tmp_path: Path) -> None:
    """memslot_modification_stress_test failed an assertion once in twelve runs of the default evaluation
    (EINTR): that run's flash boot counts, its selftest figure is missing, the candidate goes on."""
    from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError

    script = Script({"a": ["ok"], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=3)
    object.__setattr__(m.cfg, "workloads", (ExtraWorkload("stress", "kvm-selftest", "iteration_ms",
                                                          test="memslot_modification_stress_test"),))
    for p in preps:
        p.extras = {"stress": tmp_path / "binary"}
    calls = {"b": 0}

    def extra(host: Any, wl: ExtraWorkload, path: Path) -> tuple[dict[str, float], dict[str, Any]]:
        name = host.console_log.parent.name
        if name == "b":
            calls["b"] += 1
            if calls["b"] == 2:
                raise WorkloadOutputError("exited with status 254", "No vm physical memory at 0x184000")
        return {"iteration_ms": 2.5}, {"exit_status": 0}

    m._extra = extra
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    b = folder.candidate("b")
    assert failures == [] and b["status"] == "ok" and len(b["runs"]) == 3
    assert [len(r["failed_workloads"]) for r in b["runs"]] == [0, 1, 0]
    assert ["stress.iteration_ms" in r["metrics"] for r in b["runs"]] == [True, False, True]
    assert "No vm physical memory" in b["retries"][0]["excerpt"]


def test_other_workloads_are_censored_at_the_factor_times_their_reference(tmp_path: Path) -> None:
    from pipeline.workloads.extra import ExtraWorkload

    reps = Repetitions(warmup=0, counted=2, max_counted=2, retries=0, censor_factor=3.0)
    script = Script({"a": ["ok"], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, reps=reps)
    object.__setattr__(m.cfg, "workloads", (ExtraWorkload("stress", "kvm-selftest", "iteration_ms",
                                                          test="memslot_modification_stress_test"),))
    for p in preps:
        p.extras = {"stress": tmp_path / "binary"}
    limits: list[tuple[str, float]] = []

    def extra(host: Any, wl: ExtraWorkload, path: Path) -> tuple[dict[str, float], dict[str, Any]]:
        name = host.console_log.parent.name
        limits.append((name, wl.censor_s))
        if name == "b" and wl.censor_s:
            return {"iteration_ms": wl.censor_s * 5, "wall_s": wl.censor_s}, {"censored": True}
        return {"iteration_ms": 2.0, "wall_s": 0.4}, {}

    m._extra = extra
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert [x for x in limits if x[0] == "a"] == [("a", 0.0), ("a", 0.0)]  # the reference is never stopped
    assert [round(s, 6) for n, s in limits if n == "b"] == [1.2, 1.2]  # 3 x the reference's median wall 0.4 s
    assert [r["censored_workloads"] for r in folder.candidate("b")["runs"]] == [["stress"], ["stress"]]


def test_the_foreign_load_estimator_against_a_known_duty_cycle(tmp_path: Path) -> None:
    """A control with a known answer: a process that burns one CPU for the whole window is about 1.0
    foreign CPU; the run's own process burning is not foreign at all."""
    import subprocess
    import sys
    import time

    from pipeline.machines.load import foreign_load, sample

    burn = [sys.executable, "-c", "import time\nt = time.monotonic() + 2.0\nwhile time.monotonic() < t: pass"]
    quiet = sample(())
    time.sleep(1.0)
    background = foreign_load(quiet, sample(())).foreign_cpus  # an idle test host of another test, say
    if background > 0.3:
        pytest.skip(f"this machine is busy ({background:.2f} CPUs of other work): the control needs it quiet")
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        before = sample((idle.pid,))
        other = subprocess.Popen(burn)
        other.wait()
        time.sleep(0.2)
        load = foreign_load(before, sample((idle.pid,)))
    finally:
        idle.kill()
        idle.wait()
    # 2.0 s of one CPU in a 2.2-2.5 s window, plus what the machine was doing anyway.
    expected = 2.0 + background * load.wall_s
    assert expected - 0.4 <= load.foreign_cpu_s <= expected + 0.5, (load, background)
    # The run's own process (QEMU) is alive when the run is sampled: burn, then stay alive to be sampled.
    own = subprocess.Popen([*burn[:2], burn[2] + "\ntime.sleep(1.5)"])
    before = sample((own.pid,))
    time.sleep(2.4)
    load = foreign_load(before, sample((own.pid,)))
    own.wait()
    # Its own process's CPU is not counted against it: only the background remains.
    assert load.foreign_cpu_s < background * load.wall_s + 0.5, (load, background)


def test_a_disturbed_run_is_retried_and_listed_with_its_load(tmp_path: Path) -> None:
    from pipeline.machines.load import HostLoad
    from pipeline.run.repetition import RunDisturbed

    script = Script({"a": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=1, retries=1)
    object.__setattr__(m.cfg, "repetitions", Repetitions(warmup=0, counted=1, max_counted=1, retries=1,
                                                         max_foreign_cpus=0.5))
    with pytest.raises(RunDisturbed, match="used 1.20 CPUs"):
        m._check_disturbed(HostLoad(10.0, 12.0, 0.0))
    m._check_disturbed(HostLoad(10.0, 2.0, 0.0))  # 0.2 CPUs: counted
    m._check_disturbed(None)  # a pool host: not measured here


def test_sequential_rule_adds_runs_where_they_are_cheap_and_stops_when_decided(tmp_path: Path) -> None:
    """Three runs a side leave a noisy 30% slowdown undecided at the family's level; the rule adds runs
    (to both sides here: same cost), up to max_counted, records why, and the verdict is reached."""
    import numpy as np

    rng = np.random.default_rng(4)
    reps = Repetitions(warmup=0, counted=3, max_counted=12, looks=4, budget_s=1000, retries=0)
    script = Script({"base": ["ok"], "slow": ["ok"]})

    first = {"base": [1.0, 1.3, 0.8], "slow": [1.2, 1.5, 1.05]}  # overlapping: undecided after look 1

    def boot_s(name: str | None) -> float:
        if first[str(name)]:
            return first[str(name)].pop(0)
        return float(np.exp(rng.normal(0.3 if name == "slow" else 0.0, 0.1)))

    m, folder, preps, _ = make(tmp_path, script, reps=reps, boot_s=boot_s)
    m.measure_all(preps, None, Path("/nonexistent"))  # type: ignore[arg-type]
    seq = folder.results["sequential"]
    n = {c: len(folder.candidate(c)["runs"]) for c in ("base", "slow")}
    assert seq["looks"] == 4 and 1 < seq["looks_made"] <= 4 and 0 < seq["spent_s"] <= 1000
    assert 3 < n["base"] <= 12 and 3 < n["slow"] <= 12
    assert "slow vs base" in seq["reasons"] and "looks" in folder.candidate("slow")["stop_reason"]
    rounds = sorted(r["round"] for r in folder.candidate("base")["runs"])
    assert rounds == list(range(len(rounds)))  # every added run in a round of its own number


def test_censored_runs_stop_at_the_factor_and_still_call_the_slowdown(tmp_path: Path) -> None:
    """censor_factor 4: once the reference has a run, a candidate's run stops at 4x its median; the
    record says so and the report reads the slowdown as 'at least'."""
    from pipeline.report.analysis import analyze

    reps = Repetitions(warmup=0, counted=3, max_counted=3, censor_factor=4.0, retries=0)
    script = Script({"base": ["ok"], "slow": ["ok"]})
    values = {"base": [1.0, 1.05, 0.95], "slow": [30.0, 31.0, 29.0]}
    m, folder, preps, _ = make(tmp_path, script, reps=reps, boot_s=lambda name: values[str(name)].pop(0))
    m.measure_all(preps, None, Path("/nonexistent"))  # type: ignore[arg-type]
    runs = folder.candidate("slow")["runs"]
    censored = [r for r in runs if r["censored"]]
    assert censored and all(r["metrics"]["boot_s"] <= 4.0 * 1.05 for r in censored)
    assert not any(r["censored"] for r in folder.candidate("base")["runs"])
    folder.update(baseline="base", settings={"alpha": 0.05, "min_effect_pct": 5.0})
    comp = analyze(folder.results)["rows"][1]["comparisons"]["boot_s"]
    assert comp["verdict"] == "slower" and comp["censored"] == len(censored) and comp["change_pct"] > 200
    from pipeline.report.render import write_report  # the page and its plots with runs that have no host CPU

    out = write_report(folder.path, tmp_path / "reports")
    assert "at least" in (out / "summary.txt").read_text() and "&ge; " in (out / "index.html").read_text()


def test_controls_run_the_other_workloads_only_when_they_say_so(tmp_path: Path) -> None:
    """A control checks the flash workload's method; its kernel and command line are a candidate's, so its
    other workloads would repeat that one's figures: they run for it only with `controls: true`."""
    import dataclasses

    from pipeline.workloads.extra import ExtraWorkload

    script = Script({"a": ["ok"], "b": ["ok"]})
    m, folder, preps, failures = make(tmp_path, script, counted=2)
    plain = ExtraWorkload("stress", "kvm-selftest", "iteration_ms", test="memslot_modification_stress_test")
    also = dataclasses.replace(plain, name="ovmf", controls=True)
    object.__setattr__(m.cfg, "workloads", (plain, also))
    for p in preps:
        p.extras = {"stress": tmp_path / "binary", "ovmf": tmp_path / "binary"}
        if p.candidate.name == "b":
            p.candidate = dataclasses.replace(p.candidate, role="control")
    ran: list[tuple[str, str]] = []

    def extra(host: Any, wl: ExtraWorkload, path: Path) -> tuple[dict[str, float], dict[str, Any]]:
        ran.append((host.console_log.parent.name, wl.name))
        return {"iteration_ms": 2.0}, {}

    m._extra = extra
    m.measure_all(preps, None, tmp_path / "vmm")  # type: ignore[arg-type]
    assert sorted(set(ran)) == [("a", "ovmf"), ("a", "stress"), ("b", "ovmf")]
    assert all("stress.iteration_ms" not in r["metrics"] for r in folder.candidate("b")["runs"])


def test_a_stopped_run_skips_the_other_workloads_when_told_to(tmp_path: Path) -> None:
    """Triage's rule: a run stopped at the factor has answered, so its other workloads are not run; runs
    measured to their end run them as always. Without the setting (the default evaluation) they run."""
    from pipeline.workloads.extra import ExtraWorkload

    for skip in (True, False):
        reps = Repetitions(warmup=0, counted=2, max_counted=2, censor_factor=4.0, retries=0,
                           skip_others_when_censored=skip)
        script = Script({"base": ["ok"], "slow": ["ok"]})
        values = {"base": [1.0, 1.05], "slow": [30.0, 31.0]}
        m, folder, preps, _ = make(tmp_path / str(skip), script, reps=reps,
                                   boot_s=lambda name, v=values: v[str(name)].pop(0))
        object.__setattr__(m.cfg, "workloads", (ExtraWorkload("stress", "kvm-selftest", "iteration_ms",
                                                              test="memslot_modification_stress_test"),))
        for p in preps:
            p.extras = {"stress": tmp_path / "binary"}
        ran: list[str] = []

        def extra(host: Any, wl: ExtraWorkload, path: Path, ran: list[str] = ran) -> tuple[dict, dict]:
            ran.append(host.console_log.parent.name)
            return {"iteration_ms": 2.0}, {}

        m._extra = extra
        m.measure_all(preps, None, Path("/nonexistent"))  # type: ignore[arg-type]
        stopped = [r["censored"] for r in folder.candidate("slow")["runs"]]
        assert any(stopped)
        expect = ["base", "base"] + (["slow"] * stopped.count(False) if skip else ["slow", "slow"])
        assert sorted(ran) == sorted(expect), (skip, stopped, ran)
