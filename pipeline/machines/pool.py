"""The pool of test machines: check each before use, then hand boot+workload jobs to free hosts.

One worker per usable host takes the next job (round-major order, so rounds
stay interleaved across candidates). A host whose link fails during a job is
taken out of the pool (`HostLost`) and the job goes back to the front of the
queue for another host. Measurements are compared only between hosts of the
same kind unless `report.compare_across_kinds` says otherwise, so by default
only the hosts of the largest kind take jobs.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InfraError
from pipeline.machines.accel import Accelerator, choose_accelerator
from pipeline.machines.executor import Executor, LocalExecutor
from pipeline.machines.remote import RemoteExecutor
from pipeline.machines.spec import HostSpec
from pipeline.machines.sshlink import describe

log = logging.getLogger(__name__)

OK, UNUSABLE, LOST, UNUSED = "ok", "unusable", "lost", "unused"


class HostLost(InfraError):
    """The host stopped answering during a job; the job is handed to another host."""


class Stopped(BaseException):
    """The run is being interrupted; a worker unwinds without recording anything."""


@dataclass
class PoolHost:
    """A host of the pool: its spec, executor, accelerator, kind and whether it still answers."""

    spec: HostSpec
    executor: Executor
    status: str = OK
    reason: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    accel: Accelerator = Accelerator("tcg", "", "")
    kind: str = ""
    jobs: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def as_dict(self) -> dict[str, Any]:
        f = self.facts
        return {"name": self.name, "address": self.spec.address, "status": self.status, "reason": self.reason,
                "kind": self.kind, "accelerator": self.accel.name, "accelerator_reason": self.accel.reason,
                "cpus": f.get("cpus"), "cpu_model": f.get("cpu_model"), "kernel": f.get("kernel"),
                "memory_gb": round(int(f.get("mem_kb") or 0) / 1024**2, 1),
                "free_gb": round(int(f.get("free_kb") or 0) / 1024**2, 1), "qemu": f.get("qemu_version"),
                "machine": (f.get("boot_id") or "")[:8], "jobs": self.jobs}

    @property
    def machine(self) -> str:
        """Hosts with the same boot_id are one running kernel: one machine's CPUs."""
        return self.facts.get("boot_id") or f"host:{self.name}"


def make_executor(spec: HostSpec, local_workdir: str) -> Executor:
    """The executor of a host spec: local for this machine, RemoteExecutor over SSH otherwise."""
    if spec.local:
        return LocalExecutor(spec.name, local_workdir)

    return RemoteExecutor(spec)


def check_host(host: PoolHost, wanted_accel: str) -> None:
    """Probe the host (reachable, QEMU, free disk, /dev/kvm); set status, kind and accelerator."""
    spec = host.spec
    try:
        facts = host.executor.probe()
    except InfraError as exc:
        host.status, host.reason = UNUSABLE, str(exc)
        return
    except Exception as exc:  # noqa: BLE001 - every way of not answering is "unreachable"

        host.status, host.reason = UNUSABLE, f"unreachable: {describe(exc)}"
        return
    host.facts = facts
    problems = []
    if facts.get("error"):
        problems.append(facts["error"])
    if not facts.get("qemu"):
        problems.append("qemu-system-x86_64 is not installed there (apt-get install qemu-system-x86)")
    free_gb = int(facts.get("free_kb") or 0) / 1024**2
    if free_gb < spec.min_free_gb:
        problems.append(f"only {free_gb:.1f} GiB free in {spec.workdir}, need {spec.min_free_gb:g} GiB (min_free_gb)")
    try:
        host.accel = choose_accelerator(wanted_accel, facts)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        host.status, host.reason = UNUSABLE, "; ".join(problems)
        return
    host.kind = spec.kind or f"{host.accel.name} {facts.get('machine', '?')} {facts.get('cpus', '?')}x " \
                             f"{facts.get('cpu_model') or 'unknown CPU'}"
    host.status, host.reason = OK, f"ready: {host.kind}"


def check_pool(specs: Iterable[HostSpec], wanted_accel: str, local_workdir: str,
               compare_across_kinds: bool) -> list[PoolHost]:
    """Check every host; keep only the largest kind (unless comparing across kinds is allowed)."""
    hosts = [PoolHost(s, make_executor(s, local_workdir)) for s in specs]
    threads = [threading.Thread(target=check_host, args=(h, wanted_accel), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usable = [h for h in hosts if h.status == OK]
    by_machine: dict[str, list[PoolHost]] = {}
    for h in usable:
        by_machine.setdefault(h.machine, []).append(h)
    for group in by_machine.values():
        if len(group) > 1 and not all(h.spec.share_cpus for h in group):
            for h in group:
                others = ", ".join(o.name for o in group if o is not h)
                h.reason += (f"; same machine as {others} (same boot_id): one job at a time across them, so "
                             f"they do not compete for CPUs (share_cpus: true allows it)")
    kinds = Counter(h.kind for h in usable)
    if len(kinds) > 1 and not compare_across_kinds:
        chosen = max(kinds, key=lambda k: (kinds[k], -min(i for i, h in enumerate(usable) if h.kind == k)))
        for h in usable:
            if h.kind != chosen:
                h.status = UNUSED
                h.reason = (f"kind '{h.kind}' differs from '{chosen}'; runs are compared only between hosts of "
                            f"one kind (set report.compare_across_kinds: true to use it)")
    return hosts


def distcc_hosts(hosts: list[PoolHost], compiler: str) -> tuple[tuple[str, ...], list[str]]:
    """DISTCC_HOSTS entries of the pool hosts that offer distcc, and why others are left out.

    A host is used only if its distccd accepts a connection and its gcc is the
    one compiling here (a different compiler would change the kernel).
    """
    use, notes = [], []
    for h in hosts:
        if not h.spec.distcc or h.status not in (OK, UNUSED):
            continue
        port, jobs = h.spec.distcc.split("/")
        if h.facts.get("gcc", "") != compiler:
            notes.append(f"{h.name}: gcc there is '{h.facts.get('gcc') or 'missing'}', not '{compiler}'")
            continue
        try:
            socket.create_connection((h.spec.host, int(port)), timeout=3).close()
        except OSError as exc:
            notes.append(f"{h.name}: no distccd on port {port} ({exc.strerror or exc})")
            continue
        use.append(f"{h.spec.host}:{port}/{jobs}")
        notes.append(f"{h.name}: distccd on port {port}, {jobs} jobs")
    return tuple(use), notes


class TurnLock:
    """A lock handed to waiters in arrival order, so hosts on one machine take turns."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiting: deque[threading.Event] = deque()

    def __enter__(self) -> TurnLock:
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # ownership is handed over by __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._held = False


@dataclass
class Job:
    """One (candidate, round) repetition to dispatch; `alive` says whether its candidate is still measured."""

    candidate: str
    round: int
    kind: str  # "warmup" or "counted"
    alive: Callable[[], bool] = lambda: True
    payload: Any = None  # what the caller's run_job needs


def dispatch(jobs: list[Job], hosts: list[PoolHost], run_job: Callable[[PoolHost, Job], None],
             stop: threading.Event) -> list[Job]:
    """Run every job on some usable host; return the jobs no host was left to run."""
    queue: deque[Job] = deque(jobs)
    cv = threading.Condition()
    in_flight = 0  # jobs being run; one may come back to the queue if its host is lost

    def take() -> Job | None:
        nonlocal in_flight
        with cv:
            while not stop.is_set():
                while queue:
                    job = queue.popleft()
                    if job.alive():
                        in_flight += 1
                        return job
                if in_flight == 0:
                    return None
                cv.wait(0.5)
            return None

    def finish(job: Job, back: bool) -> None:
        nonlocal in_flight
        with cv:
            in_flight -= 1
            if back:
                queue.appendleft(job)
            cv.notify_all()

    machine_locks: dict[str, TurnLock] = {}
    for h in hosts:
        machine_locks.setdefault(h.machine, TurnLock())

    def worker(host: PoolHost) -> None:
        # One job at a time per physical machine (unless its hosts may share CPUs): a
        # measurement made while another test host competes for the CPUs is worthless.
        quiet = machine_locks[host.machine] if not host.spec.share_cpus else TurnLock()
        while not stop.is_set():
            with quiet:
                job = take()
                if job is None or not run_one(host, job):
                    return

    def run_one(host: PoolHost, job: Job) -> bool:
        """Run a job; False when this host takes no more jobs."""
        try:
            run_job(host, job)
        except HostLost as exc:
            host.status, host.reason = LOST, str(exc)
            log.warning("host %s lost: %s", host.name, exc)
            finish(job, back=True)
            return False
        except Stopped:
            finish(job, back=True)
            return False
        except Exception as exc:  # a bug must not lose the job: hand it on, take the host out
            log.exception("host %s: unexpected error in a job", host.name)
            host.status, host.reason = LOST, f"internal error: {type(exc).__name__}: {exc}"
            finish(job, back=True)
            return False
        except BaseException:
            finish(job, back=True)
            raise
        host.jobs += 1
        finish(job, back=False)
        return True

    active = [h for h in hosts if h.status == OK]
    if len(active) == 1:
        worker(active[0])  # in this thread: signals and tracebacks as without a pool
    elif active:
        threads = [threading.Thread(target=worker, args=(h,), name=f"host-{h.name}", daemon=True) for h in active]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except BaseException:
            stop.set()
            for h in active:
                h.executor.abort()  # QEMU dies with the link (remote) or is killed (local)
            for t in threads:
                t.join(30)
            raise
    return [j for j in queue if j.alive()]
