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
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .boot import choose_accelerator
from .config import HostSpec
from .errors import InfraError
from .executor import Executor, LocalExecutor

log = logging.getLogger(__name__)

OK, UNUSABLE, LOST, UNUSED = "ok", "unusable", "lost", "unused"


class HostLost(Exception):
    """The host stopped answering during a job; the job is handed to another host."""


class Stopped(BaseException):
    """The run is being interrupted; a worker unwinds without recording anything."""


@dataclass
class PoolHost:
    spec: HostSpec
    executor: Executor
    status: str = OK
    reason: str = ""
    facts: dict[str, str] = field(default_factory=dict)
    accel: tuple[str, str, str] = ("tcg", "", "")
    kind: str = ""
    jobs: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def as_dict(self) -> dict[str, Any]:
        f = self.facts
        return {"name": self.name, "address": self.spec.address, "status": self.status, "reason": self.reason,
                "kind": self.kind, "accelerator": self.accel[0], "accelerator_reason": self.accel[2],
                "cpus": f.get("cpus"), "cpu_model": f.get("cpu_model"), "kernel": f.get("kernel"),
                "memory_gb": round(int(f.get("mem_kb") or 0) / 1024**2, 1),
                "free_gb": round(int(f.get("free_kb") or 0) / 1024**2, 1), "qemu": f.get("qemu_version"),
                "jobs": self.jobs}


def make_executor(spec: HostSpec, local_workdir: str) -> Executor:
    if spec.local:
        return LocalExecutor(spec.name, local_workdir)
    from .remote import RemoteExecutor

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
        from .remote import describe

        host.status, host.reason = UNUSABLE, f"unreachable: {describe(exc)}"
        return
    host.facts = facts
    problems = []
    if facts.get("error"):
        problems.append(facts["error"])
    if not facts.get("qemu"):
        problems.append("qemu-system-x86_64 is not installed there (apt-get install qemu-system-x86)")
    elif not spec.local:
        host.executor.qemu = facts["qemu"]  # type: ignore[attr-defined]
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
    host.kind = spec.kind or f"{host.accel[0]} {facts.get('machine', '?')} {facts.get('cpus', '?')}x " \
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
    kinds = Counter(h.kind for h in usable)
    if len(kinds) > 1 and not compare_across_kinds:
        chosen = max(kinds, key=lambda k: (kinds[k], -min(i for i, h in enumerate(usable) if h.kind == k)))
        for h in usable:
            if h.kind != chosen:
                h.status = UNUSED
                h.reason = (f"kind '{h.kind}' differs from '{chosen}'; runs are compared only between hosts of "
                            f"one kind (set report.compare_across_kinds: true to use it)")
    return hosts


@dataclass
class Job:
    candidate: str
    round: int
    kind: str  # "warmup" or "counted"
    alive: Callable[[], bool] = lambda: True
    payload: Any = None  # what the caller's run_job needs


def dispatch(jobs: list[Job], hosts: list[PoolHost], run_job: Callable[[PoolHost, Job], None],
             stop: threading.Event, on_lost: Callable[[PoolHost, Job], None] | None = None) -> list[Job]:
    """Run every job on some usable host; return the jobs no host was left to run."""
    queue: deque[Job] = deque(jobs)
    lock = threading.Lock()

    def take() -> Job | None:
        with lock:
            while queue:
                job = queue.popleft()
                if job.alive():
                    return job
            return None

    def worker(host: PoolHost) -> None:
        while not stop.is_set():
            job = take()
            if job is None:
                return
            try:
                run_job(host, job)
                host.jobs += 1
            except HostLost as exc:
                host.status, host.reason = LOST, str(exc)
                with lock:
                    queue.appendleft(job)
                log.warning("host %s lost: %s", host.name, exc)
                if on_lost:
                    on_lost(host, job)
                return
            except Stopped:
                return

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
