"""One repetition and its rules: which failures are retried (infrastructure faults, by exception type),
which end a candidate (a panic, a guest check that fails, a workload failing twice), when a run is
censored, when a lost pool host hands its job to another. The boot and workload steps are injected, so
the rules are tested in seconds with fakes beside the real end-to-end tests (tests/test_measure.py)."""
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

from pipeline.config import Config
from pipeline.errors import InfraError
from pipeline.machines.executor import LocalProcess
from pipeline.machines.hostcmd import LINK_FAULTS, RemoteTimeout
from pipeline.machines.load import HostLoad, foreign_load, sample
from pipeline.machines.pool import HostLost, PoolHost, Stopped
from pipeline.records.results import RetryRecord, RunFolder, RunRecord, now_iso
from pipeline.run.lava_runtime import LavaRuntime
from pipeline.run.runtime import QemuRuntime, Runtime
from pipeline.stages.boot import BootFailed, boot_test_host
from pipeline.stages.build import BuildArtifacts
from pipeline.stages.initramfs import Initramfs
from pipeline.stages.patch import PatchedTree
from pipeline.util.progress import Progress
from pipeline.workloads.extra import ExtraWorkload, WorkloadOutputError
from pipeline.workloads.flash import (
    REMOTE_VMM,
    WorkloadFailed,
    WorkloadLost,
    WorkloadResult,
    install_vmm,
    run_workload,
    vmm_argv,
)
from pipeline.workloads.kinds import run_extra


class RunDisturbed(InfraError):
    """Something else on this machine used the CPUs the test host needed: the run is not counted."""


# What a broken link or a dead test host looks like when it reaches us: retried, never the candidate's fault.
# The test host's link converts its faults to InfraError (machines.hostcmd); a pool host's may still raise
# the link's own (LINK_FAULTS, named by the machines layer), and OSError covers this machine's disk.
INFRA_FAULTS: tuple[type[BaseException], ...] = (InfraError, *LINK_FAULTS)


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
    """`items` rotated left by `by`: the order of round `by` (A B C, B C A, ...)."""
    return items[by % len(items):] + items[:by % len(items)] if items else []


class RepetitionRunner:
    """One repetition: boot a candidate's kernel on a pool host, run the workloads, retry what the
    infrastructure broke, end the candidate on what is its own."""

    def __init__(self, cfg: Config, folder: RunFolder, progress: Progress, hosts: list[PoolHost],
                 stop: threading.Event, fail: Callable[..., None], boot: BootStep = boot_test_host,
                 workload: WorkloadStep = run_workload, install: InstallStep = install_vmm,
                 extra: ExtraStep = run_extra):
        self.cfg, self.folder, self.progress, self.hosts, self.stop = cfg, folder, progress, hosts, stop
        self._fail = fail
        self._workload, self._install, self._extra = workload, install, extra
        # Where test hosts run (run/runtime.py): QEMU here or on a pool host, or a LAVA lab's job per repetition.
        self.runtime: Runtime = LavaRuntime(cfg, folder, stop) if cfg.runtime == "lava" else QemuRuntime(cfg, boot)

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
                    rate = (f", {m['gp_ms']:.2f} ms per grace period over its {int(m['grace_periods'])}"
                            if "gp_ms" in m and "grace_periods" in m else "")
                    self.progress.say("run", name, f"{kind} #{round_idx}{where}: guest boot at least "
                                      f"{m['boot_s']:.2f} s (stopped there: censor_factor "
                                      f"{self.cfg.repetitions.censor_factor:g} x its reference){rate}")
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
            except (WorkloadFailed, WorkloadLost) as exc:
                # The candidate's at once, or (lost: a stuck nested vCPU, output cut short) after the retries.
                self._host_check(pool_host, name, tag, exc)
                self._retry(name, tag, "workload-failed", str(exc).splitlines()[0], exc.output)
                if not (isinstance(exc, WorkloadLost) and attempt < retries):
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
        workload = self.cfg.workload_of(prep.candidate)
        censor = self._censor_s(prep.candidate)
        if censor > 0:
            workload = dataclasses.replace(workload, censor_s=censor)
        logdir = self.folder.path / "logs" / name
        commands = [vmm_argv(REMOTE_VMM, workload, self.cfg.test_host.cpus)]
        with self.runtime.session(prep, vmm, tag, logdir, commands, pool_host, initramfs) as host:
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
            result = self._workload(host, workload, self.cfg.test_host.cpus)
            load = foreign_load(before, sample(own)) if before is not None else None
            self._check_disturbed(load)
            metrics, raw = dict(result.metrics), dict(result.raw)
            if host.info.get("job"):  # the runtime's record of the job that ran it (LAVA: id, queue, device time)
                raw["job"] = host.info["job"]
            stopped, failures = [], []
            skip = result.censored and self.cfg.repetitions.skip_others_when_censored
            for w in () if skip else self.cfg.workloads_for(prep.candidate):  # in the same booted test host
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
        """A run that shared this machine with a foreign load, or lost its CPUs to the hypervisor, beyond
        the limits is not counted."""
        reps = self.cfg.repetitions
        if load is None:
            return
        if reps.max_foreign_cpus > 0 and load.foreign_cpus > reps.max_foreign_cpus:
            raise RunDisturbed(f"disturbed run: other processes on this machine used {load.foreign_cpus:.2f} CPUs "
                               f"({load.foreign_cpu_s:.1f} s of CPU in {load.wall_s:.1f} s) beside the test host, "
                               f"over the limit of {reps.max_foreign_cpus} (repetitions.max_foreign_cpus); "
                               f"not counted, run again")
        if reps.max_steal_cpus > 0 and load.steal_cpus > reps.max_steal_cpus:
            raise RunDisturbed(f"disturbed run: the hypervisor took {load.steal_cpus:.2f} of this machine's CPUs "
                               f"for other guests (steal {load.steal_s:.1f} s in {load.wall_s:.1f} s), over the "
                               f"limit of {reps.max_steal_cpus} (repetitions.max_steal_cpus); not counted, run again")

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
