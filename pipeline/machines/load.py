"""load: how much of this machine's CPU went to processes other than the run's own during a run.

A repetition is measured inside the test host, but the test host is QEMU on this machine: another
process on these two cores (a build, a second QEMU, a backup) slows it, and the measurement cannot tell.
Around every run we read the machine's busy time (/proc/stat, all CPUs) and the CPU time of the run's
own processes (QEMU, and this process); the rest is the foreign load, in CPUs over the run's wall time.
Steal (time the hypervisor gave this machine's CPUs to someone else, where it reports it) is counted
apart: it is not a process here that anyone could stop, and a machine that loses CPUs to its neighbours
loses them for the whole evaluation, not for one run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """A snapshot of the machine's CPU time and of the given processes' own (from /proc)."""

    wall: float
    busy_s: float  # every CPU's non-idle time since boot (user, nice, system, irq, softirq; not steal)
    steal_s: float
    own_s: float  # the run's own processes (their every thread) and this one


@dataclass(frozen=True)
class HostLoad:
    """The load that was not the run's own over one run."""

    wall_s: float
    foreign_cpu_s: float  # other processes on this machine
    steal_s: float  # the hypervisor's other guests

    @property
    def foreign_cpus(self) -> float:
        """Foreign CPU time per second of the run: 1.0 is one whole CPU busy with something else."""
        return self.foreign_cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steal_cpus(self) -> float:
        """Stolen CPU time per second of the run: 1.0 is one of this machine's CPUs running another guest."""
        return self.steal_s / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall_s, 2), "foreign_cpu_s": round(self.foreign_cpu_s, 2),
                "foreign_cpus": round(self.foreign_cpus, 3), "steal_s": round(self.steal_s, 2)}


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def sample(pids: tuple[int, ...]) -> CpuSample:
    """The machine's CPU counters now, and those of `pids` (the run's own QEMU), for foreign_load."""
    with open("/proc/stat", encoding="ascii") as f:
        cpu = f.readline().split()
    vals = [int(x) for x in cpu[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    own = sum(_proc_cpu_s(p) for p in pids) + _proc_cpu_s(os.getpid())
    return CpuSample(time.monotonic(), (user + nice + system + irq + softirq) / _TICK, steal / _TICK, own)


def foreign_load(before: CpuSample, after: CpuSample) -> HostLoad:
    """What others used between two samples. Tick-sampled counters: good to about 0.01 s per CPU."""
    busy = after.busy_s - before.busy_s
    own = after.own_s - before.own_s
    return HostLoad(after.wall - before.wall, max(0.0, busy - own), max(0.0, after.steal_s - before.steal_s))
