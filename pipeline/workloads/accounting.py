"""Test-host CPU from what the VMM reads in /proc, by estimators that do not depend on where ticks fall.

The test-host kernel counts busy time by sampling at each tick (CONFIG_TICK_CPU_ACCOUNTING), but idle
time exactly (NO_HZ's idle clock, which /proc/stat reports for online CPUs). A thread that wakes just
after a tick and sleeps before the next one, as SRCU's one-jiffy timers make its kworkers do, is never
sampled: tick-sampled busy time misses it entirely. So the CPU a run used is taken as

- **non-idle time**: for each CPU, the exact window between the VMM's two /proc/stat reads minus that
  CPU's idle, iowait and steal; summed over CPUs (every thread, interrupts included);
- **per thread class**: the updater's and the readers' own thread clocks (CLOCK_THREAD_CPUTIME_ID, the
  scheduler's runtime), the kworkers' utime + stime (adjusted by the kernel to add up to the same
  runtime), and "the rest" as non-idle time minus those three.

The calibration control (`flashvmm --control-duty`, a thread of known duty cycle sleeping on tick-aligned
timers) is read by the same functions; tests/test_accounting_e2e.py checks them against it.
"""
from __future__ import annotations

from typing import Any

BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")
NOT_RUNNING = ("idle", "iowait", "steal")


def _clk(raw: dict[str, Any]) -> float:
    return float(raw.get("clk_tck") or 100)


def cpu_lines(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-CPU deltas of /proc/stat (not the aggregate line)."""
    return [c for c in raw["proc_stat_delta"] if c["cpu"] != "all"]


def window_s(raw: dict[str, Any]) -> float:
    """The exact time between the two /proc/stat reads (VMM version >= 3); before that, the boot time,
    which the reads bracket to within the setup of the reader threads."""
    return float(raw.get("stat_window_ns", raw.get("boot_ns", 0))) / 1e9


def nonidle_s(raw: dict[str, Any], cpu: str | None = None) -> float:
    """Non-idle time of every test-host CPU (or of one, "cpu1"): window minus exact idle, iowait, steal."""
    clk, win = _clk(raw), window_s(raw)
    total = 0.0
    for c in cpu_lines(raw):
        if cpu is None or c["cpu"] == cpu:
            total += max(0.0, win - sum(c.get(k, 0) for k in NOT_RUNNING) / clk)
    return total


def tick_busy_s(raw: dict[str, Any], cpu: str | None = None) -> float:
    """Busy time as the kernel's tick sampling counted it (the estimator this module replaces)."""
    clk = _clk(raw)
    if cpu is None:
        line = next(c for c in raw["proc_stat_delta"] if c["cpu"] == "all")
    else:
        line = next(c for c in raw["proc_stat_delta"] if c["cpu"] == cpu)
    return sum(line.get(k, 0) for k in BUSY_FIELDS) / clk


def thread_classes(raw: dict[str, Any]) -> dict[str, float]:
    """The run's CPU split by thread class (seconds): updater, readers, kworkers, rest, and their total."""
    updater = raw.get("flash_thread_cpu_ns", 0) / 1e9
    readers = sum(s.get("cpu_ns", 0) for s in raw.get("spinners_detail", [])) / 1e9
    kworkers = raw.get("kworker_cpu_ticks", 0) / _clk(raw)
    total = nonidle_s(raw)
    return {"updater": updater, "readers": readers, "kworkers": kworkers,
            "rest": max(0.0, total - updater - readers - kworkers), "total": total}
