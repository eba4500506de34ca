"""Measuring: interleaved repetitions of boot + workload on the pool's test hosts, with retries.

The rules live here and nowhere else: which failures are retried (infrastructure
faults, by exception type), which end a candidate (a panic, a guest check that
fails), when a lost pool host hands its job to another, how many rounds run and
which are skipped on --resume.  The boot and workload steps are injected, so the
rules are tested in seconds with fakes beside the real end-to-end tests.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from pipeline.config import Config
from pipeline.errors import InfraError
from pipeline.machines.executor import LocalProcess
from pipeline.machines.hostcmd import RemoteTimeout
from pipeline.machines.load import HostLoad, foreign_load, sample
from pipeline.machines.pool import LOST, OK, HostLost, Job, PoolHost, Stopped, dispatch
from pipeline.records.results import RetryRecord, RunFolder, RunRecord, now_iso
from pipeline.report.analysis import decision_family
from pipeline.report.sequential import Plan, plan_more
from pipeline.report.stats import family_level, summarize
from pipeline.stages.boot import BootFailed, boot_test_host
from pipeline.stages.build import BuildArtifacts
from pipeline.stages.initramfs import Initramfs
from pipeline.stages.patch import PatchedTree
from pipeline.util.progress import Progress
from pipeline.workloads.flash import WorkloadFailed, WorkloadResult, install_vmm, run_workload
from pipeline.workloads.kinds import ExtraWorkload, WorkloadOutputError, run_extra


class RunDisturbed(InfraError):
    """Something else on this machine used the CPUs the test host needed: the run is not counted."""


# What a broken link or a dead test host looks like when it reaches us: retried, never the candidate's fault.
INFRA_FAULTS: tuple[type[BaseException], ...] = (OSError, InfraError, paramiko.SSHException, EOFError)


BootStep = Callable[..., AbstractContextManager[Any]]
WorkloadStep = Callable[[Any, Any, int], WorkloadResult]
InstallStep = Callable[[Any, Path], None]
ExtraStep = Callable[[Any, ExtraWorkload, Path], tuple[dict[str, float], dict[str, Any]]]


@dataclass
class Prepared:
    """A candidate after fetch, patch and build; `alive` turns False when it fails."""

    candidate: Any
    patched: PatchedTree | None = None
    artifacts: BuildArtifacts | None = None
    alive: bool = True
    boots: int = 0
    extras: dict[str, Path] = field(default_factory=dict)  # extra workload name -> file for the test host


def rotated(items: list[Prepared], by: int) -> list[Prepared]:
    return items[by % len(items):] + items[:by % len(items)] if items else []


class Measurer:
    def __init__(self, cfg: Config, folder: RunFolder, progress: Progress, hosts: list[PoolHost],
                 stop: threading.Event, fail: Callable[..., None], boot: BootStep = boot_test_host,
                 workload: WorkloadStep = run_workload, install: InstallStep = install_vmm,
                 extra: ExtraStep = run_extra):
        self.cfg, self.folder, self.progress, self.hosts, self.stop = cfg, folder, progress, hosts, stop
        self._fail = fail
        self._boot, self._workload, self._install, self._extra = boot, workload, install, extra

    # -- one repetition --------------------------------------------------------------------------
    def measure_once(self, prep: Prepared, initramfs: Initramfs, vmm: Path, pool_host: PoolHost,
                     kind: str, round_idx: int) -> None:
        """Boot the candidate's kernel on a pool host, run one repetition, shut down.

        Infrastructure faults are retried; a fault that turns out to be the pool host going away
        raises HostLost so another host takes the job.
        """
        name = prep.candidate.name
        assert prep.artifacts and prep.patched
        retries = self.cfg.repetitions.retries
        where = f" on {pool_host.name}" if len(self.hosts) > 1 else ""
        for attempt in range(retries + 1):
            tag = f"r{round_idx:02d}-a{attempt}"
            t0 = time.monotonic()
            try:
                with self.progress.heartbeat("run", name, f"{kind} #{round_idx}{where} running"):
                    run, failures = self._boot_and_run(prep, initramfs, vmm, pool_host, kind, round_idx, attempt,
                                                       tag)
                self.folder.add_run(name, run)
                m = run.metrics
                self.progress.step_done(time.monotonic() - t0)
                if self._workload_failures(prep, tag, failures):
                    return
                if run.censored:
                    self.progress.say("run", name, f"{kind} #{round_idx}{where}: guest boot at least "
                                      f"{m['boot_s']:.2f} s (stopped there: censor_factor "
                                      f"{self.cfg.repetitions.censor_factor:g} x its reference)")
                    return
                self.progress.say("run", name, f"{kind} #{round_idx}{where}: guest boot {m['boot_s']:.2f} s, "
                                  f"host CPU {m['host_cpu_s']:.2f} s, {int(m['updates'])} updates, "
                                  f"{m.get('gp_ms', math.nan):.2f} ms per grace period, "
                                  f"{int(m.get('updates_over_jiffy', m.get('updates_over_2ms', 0)))} over a jiffy")
                return
            except BootFailed as exc:
                self._host_check(pool_host, name, tag, exc)
                self._retry(name, tag, exc.status, str(exc), exc.excerpt)
                if not (exc.status == "boot-timeout" and attempt < retries):
                    self._fail(prep, "boot", exc.status, str(exc).splitlines()[0], exc.excerpt)
                    self.progress.step_done(time.monotonic() - t0)
                    return
            except WorkloadFailed as exc:
                self._host_check(pool_host, name, tag, exc)
                self._retry(name, tag, "workload-failed", str(exc).splitlines()[0], exc.output)
                if not (exc.infrastructure and attempt < retries):
                    self._fail(prep, "run", "workload-failed", str(exc).splitlines()[0], exc.output)
                    self.progress.step_done(time.monotonic() - t0)
                    return
            except RemoteTimeout as exc:
                # A kernel that deadlocks KVM (or the VMM) is a real bug: retried once like any stall of the
                # nested guest, then reported as the candidate's hang, never as the pool host's loss.
                self._host_check(pool_host, name, tag, exc)
                self._retry(name, tag, "infra-error", str(exc), exc.output)
                if attempt >= retries:
                    self._fail(prep, "run", "workload-failed",
                               f"the workload hangs: {attempt + 1} attempt(s) ran past their {exc.timeout:.0f} s "
                               f"limit ({exc.command[:120]})", exc.output)
                    self.progress.step_done(time.monotonic() - t0)
                    return
            except INFRA_FAULTS as exc:
                self._host_check(pool_host, name, tag, exc)
                self._retry(name, tag, "infra-error", f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                            getattr(exc, "excerpt", ""))
                if attempt >= retries:
                    self._fail(prep, "run", "infra-error", f"{type(exc).__name__}: {exc}", "")
                    self.progress.step_done(time.monotonic() - t0)
                    return
            self.progress.say("retry", name, f"attempt {attempt + 1} of {retries} after an infrastructure fault")

    def _boot_and_run(self, prep: Prepared, initramfs: Initramfs, vmm: Path, pool_host: PoolHost, kind: str,
                      round_idx: int, attempt: int, tag: str) -> tuple[RunRecord, list[tuple[str, str, str]]]:
        assert prep.artifacts and prep.patched
        name = prep.candidate.name
        with self._boot(pool_host.executor, prep.artifacts, initramfs, self.cfg.test_host, prep.patched.cmdline,
                        self.folder.path / "logs" / name, tag, pool_host.accel) as host:
            prep.boots += 1
            if "boot" not in self.folder.candidate(name)["stages"]:
                self.folder.record_stage(name, "boot", {
                    "status": "pass", "seconds": round(host.boot_seconds, 2), "accelerator": host.accelerator,
                    "host": pool_host.name, "uname_r": host.info.get("uname_r"),
                    "expected_release": prep.artifacts.kernel_release,
                    "console_log": self.folder.relative(host.console_log),
                    "cmdline_extra": list(prep.patched.cmdline)})
            if host.info.get("uname_r") != prep.artifacts.kernel_release:
                raise InfraError(f"test host runs {host.info.get('uname_r')}, "
                                 f"expected {prep.artifacts.kernel_release}")
            self._install(host, vmm)
            # The run's own processes: its QEMU, when it runs on this machine (a pool host's load is its own).
            process = getattr(host, "process", None)
            # With share_cpus the other pool hosts on this machine are expected company: not checked.
            own = (process.pid,) if isinstance(process, LocalProcess) and not pool_host.spec.share_cpus else ()
            before = sample(own) if own else None
            workload = self.cfg.workload_of(prep.candidate)
            censor = self._censor_s(prep.candidate)
            if censor > 0:
                workload = dataclasses.replace(workload, censor_s=censor)
            result = self._workload(host, workload, self.cfg.test_host.cpus)
            load = foreign_load(before, sample(own)) if before is not None else None
            self._check_disturbed(load)
            metrics, raw = dict(result.metrics), dict(result.raw)
            stopped, failures = [], []
            for w in self.cfg.workloads:  # the other workloads, in the same booted test host
                censor_w = self._censor_s(prep.candidate, w.metric("wall_s"))
                try:
                    values, extra_raw = self._extra(host, dataclasses.replace(w, censor_s=censor_w) if censor_w
                                                    else w, prep.extras[w.name])
                except WorkloadOutputError as exc:
                    # The flash boot is measured: the run keeps it, and this workload's failure is recorded
                    # with the run (a second one ends the candidate, in measure_once).
                    failures.append((w.name, str(exc).splitlines()[0] if str(exc) else "failed", exc.output))
                    continue
                metrics.update({w.metric(k): v for k, v in values.items()})
                raw.setdefault("workloads", {})[w.name] = extra_raw
                if extra_raw.get("censored"):
                    stopped.append(w.name)
            run = RunRecord(round=round_idx, kind=kind, attempt=attempt, finished=now_iso(), host=pool_host.name,
                            host_kind=pool_host.kind, boot_to_ssh_s=round(host.boot_seconds, 2),
                            console_log=self.folder.relative(host.console_log), raw=raw,
                            metrics=metrics, argv=list(result.argv),
                            host_load=load.as_dict() if load is not None else None,
                            censored=result.censored, censored_workloads=stopped,
                            failed_workloads={n: m for n, m, _ in failures})
            return run, failures

    def _workload_failures(self, prep: Prepared, tag: str, failures: list[tuple[str, str, str]]) -> bool:
        """Record the other workloads that failed in a run whose flash boot was measured; True when one of
        them has now failed twice for this candidate, which ends it (reproducible: the candidate's)."""
        name = prep.candidate.name
        for workload, message, output in failures:
            self._retry(name, f"{tag} {workload}", "workload-failed", f"workload {workload}: {message}", output)
            times = self.folder.workload_failures(name, workload)
            self.progress.say("run", name, f"workload {workload} failed ({times} time(s)): {message[:160]}")
            if times >= 2:
                self._fail(prep, "run", "workload-failed",
                           f"workload {workload} failed in {times} runs: {message}", output)
                return True
        return False

    def _censor_s(self, cand: Any, metric: str = "boot_s") -> float:
        """When this candidate's run (or another workload's, by its wall time) may stop: censor_factor times
        its reference's median so far."""
        factor = self.cfg.repetitions.censor_factor
        ref = cand.compare_to or self.cfg.baseline
        if factor <= 0 or ref == cand.name:
            return 0.0
        values = sorted(self.folder.counted_values(ref, metric))
        return factor * values[len(values) // 2] if values else 0.0

    def _check_disturbed(self, load: HostLoad | None) -> None:
        """A run that shared this machine with a foreign load beyond the limit is not counted."""
        limit = self.cfg.repetitions.max_foreign_cpus
        if load is not None and limit > 0 and load.foreign_cpus > limit:
            raise RunDisturbed(f"disturbed run: other processes on this machine used {load.foreign_cpus:.2f} CPUs "
                               f"({load.foreign_cpu_s:.1f} s of CPU in {load.wall_s:.1f} s, steal {load.steal_s:.1f} s)"
                               f" beside the test host, over the limit of {limit} (repetitions.max_foreign_cpus); "
                               f"not counted, run again")

    def _host_check(self, pool_host: PoolHost, name: str, tag: str, exc: BaseException) -> None:
        """After a failed attempt: stop quietly if the run is being interrupted; raise HostLost if the
        pool host itself is gone (the failure is then not the candidate's)."""
        if self.stop.is_set():
            raise Stopped()
        ok, why = pool_host.executor.healthy()
        if ok:
            return
        message = f"host {pool_host.name} ({pool_host.spec.address}) stopped answering ({why}) during " \
                  f"{tag}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self._retry(name, f"{tag}@{pool_host.name}", "host-lost", message, "")
        self.progress.say("hosts", pool_host.name, f"LOST: {message[:200]}; its job moves to another host")
        raise HostLost(message)

    def _retry(self, name: str, tag: str, status: str, message: str, excerpt: str) -> None:
        self.folder.add_retry(name, RetryRecord(tag, status, message, excerpt))

    # -- all repetitions -------------------------------------------------------------------------
    def measure_all(self, preps: list[Prepared], initramfs: Initramfs, vmm: Path) -> None:
        reps = self.cfg.repetitions
        rounds = reps.warmup + reps.counted
        live = [p for p in preps if p.alive]
        done = {p.candidate.name: self.folder.rounds_done(p.candidate.name) for p in live}
        # Interleaved (A B C, B C A, C A B, ...): every round has every candidate, and rotating the
        # order keeps a candidate off a fixed position in the round (and off a fixed pool host).
        jobs = [self._job(p, r, "warmup" if r < reps.warmup else "counted", initramfs, vmm)
                for r in range(rounds) for p in rotated(live, r) if r not in done[p.candidate.name]]
        self.progress.plan(len(jobs))
        self._dispatch(jobs)
        r = max([rounds] + [max(d) + 1 for d in done.values() if d])
        if reps.looks > 1 and reps.budget_s > 0 and reps.max_counted > reps.counted:
            # On --resume the looks already made are in results.json: the rule goes on from there.
            self._sequential(live, int(self.folder.results.get("sequential", {}).get("looks_made", 1)), r,
                             initramfs, vmm)
        else:
            self._until_narrow(live, r, initramfs, vmm)
        for prep in live:
            n = len(self.folder.candidate(prep.candidate.name)["runs"])
            if reps.looks > 1:
                why = self.folder.candidate(prep.candidate.name).get("stop_reason") or f"{n} runs"
            elif reps.target_ci_pct <= 0:
                why = f"fixed count of {reps.counted}"
            elif n >= reps.max_counted:
                why = f"reached max_counted={reps.max_counted}"
            else:
                why = f"95% interval narrower than {reps.target_ci_pct}% of the median"
            self.folder.update_candidate(prep.candidate.name, stop_reason=why if prep.alive else "candidate failed")

    def _until_narrow(self, live: list[Prepared], r: int, initramfs: Initramfs, vmm: Path) -> None:
        """More rounds for candidates whose interval is still wider than target_ci_pct."""
        while self.cfg.repetitions.target_ci_pct > 0:
            wide = [p for p in live if p.alive and self._needs_more(p)]
            if not wide or not any(h.status == OK for h in self.hosts):
                break
            self.progress.plan(self.progress.total_steps + len(wide))
            self._dispatch([self._job(p, r, "counted", initramfs, vmm) for p in wide])
            r += 1

    def _sequential(self, live: list[Prepared], look: int, r: int, initramfs: Initramfs, vmm: Path) -> None:
        """The sequential rule (pipeline/report/sequential.py): after look 1 (the first rounds), each look
        adds the runs that narrow the undecided comparisons at the least test-host time."""
        reps, res = self.cfg.repetitions, self.folder.results
        family = decision_family(res.get("candidate_order", []), res.get("candidate_specs", {}), self.cfg.baseline)
        level = family_level(self.cfg.report.alpha, len(family), reps.looks)
        by_name = {p.candidate.name: p for p in live}
        spent = float(res.get("sequential", {}).get("spent_s", 0.0))

        def plan() -> Plan:
            alive = {n for n, p in by_name.items() if p.alive}
            pairs = [(n, res["candidate_specs"].get(n, {}).get("compare_to") or self.cfg.baseline) for n in family]
            pairs = [(n, ref) for n, ref in pairs if n in alive and ref in alive]
            values = {n: self.folder.counted_values(n, "boot_s") for n in alive}
            costs = {n: self._run_cost(n) for n in alive}
            return plan_more(values, costs, pairs, level, self.cfg.report.min_effect_pct, reps.max_counted,
                             reps.budget_s - spent)

        def record(reasons: dict[str, str]) -> None:
            self.folder.update(sequential={"looks_made": look, "looks": reps.looks, "budget_s": reps.budget_s,
                                           "spent_s": round(spent, 1), "level": level, "family": family,
                                           "reasons": reasons})

        nxt = plan()
        while look < reps.looks and nxt.more and any(h.status == OK for h in self.hosts):
            look += 1
            self.progress.say("repeat", ", ".join(f"{n} +{k}" for n, k in nxt.more.items()),
                              f"look {look} of {reps.looks}: comparisons undecided at level {level:.4f}")
            self.progress.plan(self.progress.total_steps + sum(nxt.more.values()))
            rounds = max(nxt.more.values())
            names = [by_name[n] for n in nxt.more]
            self._dispatch([self._job(p, r + i, "counted", initramfs, vmm) for i in range(rounds)
                            for p in rotated(names, i) if nxt.more[p.candidate.name] > i])
            spent += sum(k * self._run_cost(n) for n, k in nxt.more.items())
            r += rounds
            record(dict(nxt.reasons))
            nxt = plan()
        # What the last look left: each comparison's standing when the rule stopped.
        record({k: v if v.startswith("decided") or not nxt.more else v + " (looks used up)"
                for k, v in nxt.reasons.items()})
        for n in by_name:
            k = len(self.folder.counted_values(n, "boot_s"))
            self.folder.update_candidate(n, stop_reason=f"{k} runs after {look} of {reps.looks} looks "
                                                        f"(sequential rule, {spent:.0f} of {reps.budget_s:.0f} s "
                                                        f"of extra runs)")

    def _run_cost(self, name: str) -> float:
        """Seconds one more run of this candidate is expected to take: its median boot, test host included."""
        runs = self.folder.candidate(name)["runs"]
        costs = [float(x["metrics"].get("boot_s", 0.0)) + float(x.get("boot_to_ssh_s", 0.0) or 0.0) for x in runs]
        return float(sorted(costs)[len(costs) // 2]) if costs else 1.0

    def _job(self, prep: Prepared, round_idx: int, kind: str, initramfs: Initramfs, vmm: Path) -> Job:
        return Job(prep.candidate.name, round_idx, kind, alive=lambda: prep.alive, payload=(prep, initramfs, vmm))

    def _dispatch(self, jobs: list[Job]) -> None:
        def run_job(host: PoolHost, job: Job) -> None:
            prep, initramfs, vmm = job.payload
            self.measure_once(prep, initramfs, vmm, host, job.kind, job.round)

        left = dispatch(jobs, self.hosts, run_job, self.stop)
        self.save_hosts()
        gone = "; ".join(f"{h.name}: {h.reason}" for h in self.hosts if h.status == LOST)
        for job in left:
            prep = job.payload[0]
            if prep.alive:
                self._fail(prep, "run", "infra-error", f"no test host left to run round {job.round} ({gone}); "
                           f"measured rounds are kept, continue with --resume", gone)

    def save_hosts(self) -> None:
        self.folder.update(hosts=[h.as_dict() for h in self.hosts])

    def _needs_more(self, prep: Prepared) -> bool:
        values = self.folder.counted_values(prep.candidate.name, "boot_s")
        if len(values) >= self.cfg.repetitions.max_counted:
            return False
        return summarize(values).ci_width_pct > \
            self.cfg.repetitions.target_ci_pct
