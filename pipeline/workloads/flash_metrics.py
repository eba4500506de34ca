"""flash_metrics: the figures the report compares, read from the flash VMM's JSON: a whole run's
(derive_metrics) and a stopped run's rates (censored_rates)."""
from __future__ import annotations

from typing import Any

from pipeline.workloads.accounting import thread_classes, tick_busy_s


def derive_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """The figures the report compares, from the VMM's JSON (workloads/accounting.py says how CPU is read)."""
    clk = float(raw.get("clk_tck") or 100)
    total = next(c for c in raw["proc_stat_delta"] if c["cpu"] == "all")
    idle_s = (total.get("idle", 0) + total.get("iowait", 0)) / clk
    ru = raw["rusage"]
    vmm_s = (ru["user_us"] + ru["system_us"]) / 1e6
    cls = thread_classes(raw)
    spin_s, nonidle = cls["readers"], cls["total"]
    upd = raw["update_ns"]
    gp = _grace_period_metrics(raw)
    if gp.get("grace_periods"):
        gp["host_cpu_per_gp_ms"] = max(0.0, nonidle - spin_s) * 1e3 / gp["grace_periods"]
    return gp | {
        "boot_s": raw["boot_ns"] / 1e9,
        "flash_s": raw["flash_ns"] / 1e9,
        "setup_s": raw["setup_ns"] / 1e9,
        # Test-host CPU spent on the boot: every CPU's non-idle time, without the reader vCPUs' own guest
        # spinning (which only lasts as long as the boot does).
        "host_cpu_s": max(0.0, nonidle - spin_s),
        "host_nonidle_s": nonidle,
        # The same by the kernel's tick samples, kept to show what they miss (not compared).
        "host_cpu_ticks_s": max(0.0, tick_busy_s(raw) - spin_s),
        "host_busy_s": tick_busy_s(raw),
        "host_idle_s": idle_s,
        "vmm_cpu_s": vmm_s,
        "flash_thread_cpu_s": cls["updater"],
        "spinner_cpu_s": spin_s,
        "rest_cpu_s": cls["rest"],
        "other_cpu_s": max(0.0, nonidle - vmm_s),  # outside the VMM: kworkers and the rest
        "updates": float(raw["updates"]),
        "update_p50_us": upd["p50"] / 1e3,
        "update_p90_us": upd["p90"] / 1e3,
        "update_p99_us": upd["p99"] / 1e3,
        "update_max_us": upd["max"] / 1e3,
        "update_sum_s": upd["sum"] / 1e9,
        "updates_over_2ms": float(upd["over_2ms"]),
    }


def _grace_period_metrics(raw: dict[str, Any]) -> dict[str, float]:
    """Per-kind latencies, cost per expedited grace period, readers' exits, kworker CPU (VMM version >= 2);
    the updater's preemptions and the kworkers' sleeps per grace period (version >= 3)."""
    if "update_delete_ns" not in raw:
        return {}
    dele, cre = raw["update_delete_ns"], raw["update_create_ns"]
    gps = raw.get("gp_per_delete", 2) * dele["n"] + raw.get("gp_per_create", 1) * cre["n"]
    readers = raw.get("spinners_detail", [])
    reader_exits = sum(max(0, s.get("kvm_exits", 0)) for s in readers)
    flash_s = raw["flash_ns"] / 1e9
    kworker_s = raw.get("kworker_cpu_ticks", 0) / float(raw.get("clk_tck") or 100)
    out = {
        "gp_ms": (dele["sum"] + cre["sum"]) / 1e6 / gps if gps else 0.0,
        "grace_periods": float(gps),
        "delete_p50_us": dele["p50"] / 1e3,
        "delete_p99_us": dele["p99"] / 1e3,
        "create_p50_us": cre["p50"] / 1e3,
        "create_p99_us": cre["p99"] / 1e3,
        "delete_mean_ms": dele["sum"] / 1e6 / dele["n"] if dele["n"] else 0.0,
        "create_mean_ms": cre["sum"] / 1e6 / cre["n"] if cre["n"] else 0.0,
        "updates_over_jiffy": float(dele["over_jiffy"] + cre["over_jiffy"]),
        "jiffy_ms": raw["jiffy_ns"] / 1e6,
        "kworker_cpu_s": kworker_s,
        "reader_exits": float(reader_exits),
        "reader_exits_per_s": reader_exits / flash_s if flash_s else 0.0,
    }
    if not gps:
        return out
    out |= {
        "kworker_cpu_per_gp_ms": kworker_s * 1e3 / gps,
        # Involuntary switches of the whole VMM (every thread) per grace period.
        "vmm_preempted_per_gp": raw["rusage"].get("nivcsw", 0) / gps,
    }
    if "flash_thread_nivcsw" in raw:
        out |= {
            # The updater's own preemptions: one per grace period is what makes a v5.19-rc1 GP sleep
            # with no reader vCPU (its srcu_read_lock() in srcu_gp_start_if_needed(), preempted).
            "updater_preempted_per_gp": raw["flash_thread_nivcsw"] / gps,
            # A kworker that sleeps (a delayed work's timer) switches out voluntarily; one that polls
            # (zero-delay requeue) runs on without switching: CPU per sleep grows with polling.
            "kworker_sleeps_per_gp": raw.get("kworker_nvcsw", 0) / gps,
            # CPU a kworker spends between two sleeps: the wake-up and one work item for a sleeper,
            # growing with every zero-delay poll for a poller.
            "kworker_ms_per_sleep": kworker_s * 1e3 / raw["kworker_nvcsw"] if raw.get("kworker_nvcsw") else 0.0,
        }
    if raw.get("params", {}).get("spin_mode") == "block":
        out |= {"reader_blocks": float(raw.get("reader_blocks", 0)),
                "reader_blocked_s": raw.get("reader_blocked_ns", 0) / 1e9,
                "reader_blocked_frac": raw.get("reader_blocked_ns", 0) / raw["flash_ns"] if raw["flash_ns"] else 0.0}
    return out


def censored_rates(raw: dict[str, Any]) -> dict[str, float]:
    """What a censored run still measures exactly: the cost per grace period (and per delete and create)
    of the updates it made before it stopped. A rate, not a lower bound (RATE_METRICS); nothing when the
    VMM did not say (older versions) or made no update."""
    try:
        dele, cre = raw["done_delete"], raw["done_create"]
        n_d, n_c, s_d, s_c = (int(x) for x in (dele["n"], cre["n"], dele["sum"], cre["sum"]))
    except (KeyError, TypeError, ValueError):
        return {}
    gps = 2 * n_d + n_c
    if not gps or min(n_d, n_c, s_d, s_c) < 0:
        return {}
    out = {"gp_ms": (s_d + s_c) / 1e6 / gps, "grace_periods": float(gps)}
    if n_d:
        out["delete_mean_ms"] = s_d / 1e6 / n_d
    if n_c:
        out["create_mean_ms"] = s_c / 1e6 / n_c
    return out
