"""Turn results.json into the comparison every report format renders."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.records.read import CandidateStatus, Results
from pipeline.records.results import IDENTICAL, RunRecord
from pipeline.report.jobs import job_overheads
from pipeline.report.stats import (
    FAILED,
    INCONCLUSIVE,
    SLOWER,
    Verdict,
    compare_censored,
    family_level,
    summarize,
)

IDENTICAL_VERDICT = Verdict.IDENTICAL

METRICS = {
    "boot_s": ("guest boot time", "s"),
    "host_cpu_s": ("host CPU (non-idle time, w/o reader vCPUs)", "s"),
    "gp_ms": ("time per expedited grace period", "ms"),
    "host_cpu_per_gp_ms": ("host CPU per grace period", "ms"),
    "kworker_cpu_s": ("kworkers' CPU (SRCU's work, wake-ups included)", "s"),
    "kworker_cpu_per_gp_ms": ("kworkers' CPU per grace period", "ms"),
    "kworker_sleeps_per_gp": ("kworker sleeps per grace period", ""),
    "kworker_ms_per_sleep": ("kworker CPU between two sleeps (grows with polling)", "ms"),
    "flash_thread_cpu_s": ("updater (flash vCPU) CPU", "s"),
    "spinner_cpu_s": ("reader vCPUs' CPU", "s"),
    "rest_cpu_s": ("rest of the test host's CPU", "s"),
    "updater_preempted_per_gp": ("updater preemptions per grace period", ""),
    "vmm_preempted_per_gp": ("VMM preemptions per grace period", ""),
    "reader_blocked_frac": ("share of the boot the reader was blocked", ""),
    "host_cpu_ticks_s": ("host CPU by tick samples (misses sub-tick work)", "s"),
    "updates_over_jiffy": ("memslot updates of a jiffy or more", ""),
    "delete_mean_ms": ("memslot delete, mean", "ms"),
    "create_mean_ms": ("memslot create, mean", "ms"),
    "reader_exits_per_s": ("reader vCPU exits per second", "/s"),
    "other_cpu_s": ("CPU outside the VMM", "s"),
    "updates_over_2ms": ("memslot updates over 2 ms", ""),
    "update_p99_us": ("memslot update p99", "us"),
}
COMPARED = ("boot_s", "host_cpu_s")


def _values(runs: Sequence[RunRecord], metric: str) -> list[float]:
    return [r.metrics[metric] for r in runs if metric in r.metrics]


def _censored(runs: Sequence[RunRecord], metric: str) -> list[bool]:
    return [r.stopped(metric) for r in runs if metric in r.metrics]


def _compare(runs: Sequence[RunRecord], ref_runs: Sequence[RunRecord], metric: str, level: float,
             min_effect: float) -> dict[str, Any]:
    return compare_censored(_values(runs, metric), _values(ref_runs, metric), _censored(runs, metric),
                            _censored(ref_runs, metric), metric, level, min_effect).as_dict()


def reference_kind(res: Results) -> str | None:
    """The host kind comparisons are made on: the one most of the baseline's runs ran on.

    None when every run was on one kind (or runs carry no kind) or when the
    settings allow comparing across kinds.
    """
    if res.settings.compare_across_kinds:
        return None
    kinds = Counter(r.host_kind or None for c in res.candidates.values() for r in c.runs)
    if len(kinds) <= 1:
        return None
    base = Counter(r.host_kind or None for r in res.candidate(res.baseline).runs)
    return (base or kinds).most_common(1)[0][0]


def analyze(results: Mapping[str, Any]) -> dict[str, Any]:
    """The comparisons of a run, from its results.json (read into records.read's typed records)."""
    res = Results.from_json(results)
    alpha, min_effect, baseline = res.settings.alpha, res.settings.min_effect_pct, res.baseline
    ref_kind = reference_kind(res)
    family = decision_family(list(res.order), {n: {"role": s.role} for n, s in res.specs.items()}, baseline)
    looks = res.settings.looks
    level = family_level(alpha, len(family), looks)

    def usable(runs: Sequence[RunRecord]) -> list[RunRecord]:
        return list(runs) if ref_kind is None else [r for r in runs if (r.host_kind or None) == ref_kind]

    extras = [dict(w) for w in res.workloads if w.get("headline")]
    compared = COMPARED + tuple(w["headline"] for w in extras)
    metric_names = list(METRICS) + sorted({m for c in res.candidates.values() for r in c.runs
                                           for m in r.metrics if "." in m})
    rows: list[dict[str, Any]] = []
    for name in res.order:
        reference = res.reference(name)
        ref = res.candidate(reference)
        base_runs = usable(ref.runs) if ref.status == CandidateStatus.OK else []
        c = res.candidate(name)
        runs = usable(c.runs)
        summaries = {m: summarize(_values(runs, m), 1.0 - level) for m in metric_names}
        comparisons = {}
        ok = c.status == CandidateStatus.OK and len(runs) > 0
        for m in compared:
            if name == baseline:
                continue
            if c.status == CandidateStatus.IDENTICAL:
                comparisons[m] = {"change_pct": 0.0, "change_ci_low": 0.0, "change_ci_high": 0.0,
                                  "p_value": math.nan, "verdict": IDENTICAL_VERDICT}
            elif not ok or not base_runs:
                comparisons[m] = {"change_pct": math.nan, "change_ci_low": math.nan, "change_ci_high": math.nan,
                                  "p_value": math.nan, "verdict": FAILED}
            else:
                comparisons[m] = _compare(runs, base_runs, m, level, min_effect)
        rows.append({
            "name": name,
            "is_baseline": name == baseline,
            "compare_to": reference,
            "role": res.spec(name).role,
            "status": str(c.status),
            "status_detail": c.status_detail,
            "n": len(runs),
            "excluded_other_kind": len(c.runs) - len(runs),
            "hosts": dict(Counter(r.host for r in c.runs)),
            "warmups": len(c.warmup_runs),
            "retries": len(c.retries),
            "stop_reason": c.stop_reason,
            "summaries": {m: vars(s) | {"ci_width_pct": s.ci_width_pct} for m, s in summaries.items()},
            "comparisons": comparisons,
        })
    for r in rows:
        r["agreement"] = [_agreement(r, w) for w in extras] if not r["is_baseline"] else []
        if jobs := job_overheads(res.candidate(r["name"]).runs):
            r["jobs"] = jobs
    for r in rows:
        r["on_top_of"] = _on_top_comparisons(r, res, usable, level, min_effect)
    regressions = [r["name"] for r in rows if r["comparisons"].get("boot_s", {}).get("verdict") == SLOWER
                   and r["role"] != "control"]
    failed = [r["name"] for r in rows if CandidateStatus.of(r["status"]).failed]
    undecided = [r["name"] for r in rows if _undecided_slowdown(r["comparisons"].get("boot_s", {}), min_effect)
                 and r["role"] != "control"]
    warnings = _artefact_warnings(rows)
    return {"baseline": baseline, "rows": rows, "regressions": regressions, "failed": failed,
            "undecided": undecided,
            "workloads": extras, "metric_labels": metric_labels(metric_names),
            "reference_kind": ref_kind, "hosts": [dict(h) for h in res.hosts], "warnings": warnings,
            "alpha": alpha, "level": level, "family": family, "looks": looks, "min_effect_pct": min_effect,
            "ci_label": ci_label(level), "sequential": dict(res.sequential),
            "headline": _headline(rows, baseline)}


def ci_label(level: float) -> str:
    """The change intervals' coverage, as a heading says it: 99.5%, 99.75%, 95%."""
    return f"{100.0 * (1.0 - level):.4g}%"


def decision_family(order: list[str], specs: dict[str, Any], baseline: str) -> list[str]:
    """The candidates whose boot-time verdicts decide the exit code (all but the baseline and the
    controls), fixed by the config before any run: the family the level is corrected for."""
    return [n for n in order if n != baseline and specs.get(n, {}).get("role", "") != "control"]


def metric_labels(names: list[str]) -> dict[str, tuple[str, str]]:
    """(label, unit) for every metric: the flash workload's from METRICS, the others' from their names."""
    out = dict(METRICS)
    for m in names:
        if m not in out:
            workload, _, metric = m.partition(".")
            unit = next((u for suffix, u in (("_ms", "ms"), ("_s", "s"), ("_us", "us")) if metric.endswith(suffix)), "")
            out[m] = (f"{workload}: {metric}", unit)
    return out


def _direction(verdict: str) -> int | None:
    """+1 worse (slower, more), -1 better, 0 no change that matters, None when nothing can be said."""
    try:
        return Verdict(verdict).direction
    except ValueError:
        return None


def _agreement(row: dict[str, Any], w: dict[str, Any]) -> dict[str, Any]:
    """Does the other workload's headline tell the same story as the flash workload's boot time?"""
    flash = row["comparisons"].get("boot_s", {})
    other = row["comparisons"].get(w["headline"], {})
    a, b = _direction(flash.get("verdict", "")), _direction(other.get("verdict", ""))
    agrees = None if a is None or b is None else a == b
    if agrees is None:
        text = "cannot tell (a verdict is inconclusive or missing)"
    elif agrees:
        text = "agrees (same direction and verdict)"
    else:
        text = (f"disagrees: boot {flash.get('verdict')} {flash.get('change_pct', math.nan):+.0f}%, "
                f"{w['name']} {other.get('verdict')} {other.get('change_pct', math.nan):+.0f}%")
    return {"workload": w["name"], "metric": w["headline"], "flash_verdict": flash.get("verdict"),
            "verdict": other.get("verdict"), "change_pct": other.get("change_pct", math.nan),
            "p_value": other.get("p_value", math.nan), "agrees": agrees, "text": text}


def _on_top_comparisons(row: dict[str, Any], res: Results, usable: Any, level: float,
                        min_effect: float) -> list[dict[str, Any]]:
    """Comparisons with every other candidate this one is built on: same tree and workload, and its changes
    a part of this one's (the KVM path on top of the regression against the regression: does it undo it?)."""
    name = row["name"]
    spec = res.spec(name)
    mine = list(spec.changes)
    out: list[dict[str, Any]] = []
    if row["status"] != CandidateStatus.OK or not mine:
        return out
    for other, ospec in res.specs.items():
        theirs = list(ospec.changes)
        if other in (name, row["compare_to"]) or not theirs or len(theirs) >= len(mine):
            continue
        if any(t not in mine for t in theirs) or ospec.tree != spec.tree or ospec.workload != spec.workload:
            continue
        ref = res.candidate(other)
        if ref.status != CandidateStatus.OK:
            continue
        runs, ref_runs = usable(res.candidate(name).runs), usable(ref.runs)
        out.append({"reference": other, **{m: _compare(runs, ref_runs, m, level, min_effect) for m in COMPARED}})
    return out


def _undecided_slowdown(comp: dict[str, Any], min_effect: float) -> bool:
    """A slowdown of at least the minimum effect that the runs do not decide ("inconclusive"): never a
    silent pass (its own exit code; `git bisect run` reads it as skip)."""
    return comp.get("verdict") == INCONCLUSIVE and comp.get("change_pct", math.nan) >= min_effect


def _artefact_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Orderings that point at the test host rather than the kernel: a candidate whose kworkers (where
    SRCU's grace-period work runs, polling included) spend more CPU and yet boots the guest slower than
    what it is compared with.  On a small nested test host that work competes with the vCPUs it waits
    for, which can invert the expected order."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        ref = by_name.get(r["compare_to"])
        if r["is_baseline"] or not ref or r["status"] != "ok" or ref["status"] != "ok":
            continue
        boot = r["comparisons"].get("boot_s", {})
        kw, ref_kw = r["summaries"]["kworker_cpu_s"]["median"], ref["summaries"]["kworker_cpu_s"]["median"]
        if boot.get("verdict") == SLOWER and not math.isnan(kw) and not math.isnan(ref_kw) and kw > 1.5 * ref_kw + 0.1:
            out.append(f"{r['name']}'s kworkers spend more CPU than {ref['name']}'s ({kw:.2f} s against "
                       f"{ref_kw:.2f} s) and yet it boots the guest slower: that work may be starving what it "
                       f"waits for (a reader preempted on the kworker's own CPU, or the test host's few vCPUs). "
                       f"Check with more test-host CPUs before reading this as a property of the kernel.")
    return out


def _headline(rows: list[dict[str, Any]], baseline: str) -> str:
    parts = []
    for r in rows:
        if r["is_baseline"]:
            continue
        comp = r["comparisons"].get("boot_s", {})
        if r["status"] == IDENTICAL:
            parts.append(f"{r['name']}: binary-identical to {r['compare_to']} (not measured)")
        elif comp.get("verdict") == FAILED:
            parts.append(f"{r['name']}: {r['status']}")
        elif comp.get("verdict") in (None, "too few runs"):
            parts.append(f"{r['name']}: too few runs")
        else:
            cpu = r["comparisons"].get("host_cpu_s", {})
            vs = "" if r["compare_to"] == baseline else f" vs {r['compare_to']}"
            least = "at least " if comp.get("censored") else ""
            cpu_pct = cpu.get("change_pct", math.nan)
            cost = "host CPU not measured (runs stopped)" if not is_number(cpu_pct) \
                else f"host CPU {cpu_pct:+.0f}%"
            parts.append(f"{r['name']}: boot {least}{comp['change_pct']:+.0f}%{vs} ({comp['verdict']}), {cost}")
    return f"vs {baseline}: " + "; ".join(parts) if parts else f"only the baseline ({baseline}) was measured"


def is_number(value: object) -> bool:
    """A real, non-NaN number (not a bool, None or a template's undefined value)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def fmt_num(value: float, digits: int = 2) -> str:
    """A number for a table: `digits` decimals, or an en dash for NaN."""
    if not is_number(value):
        return "-"
    return f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value for a table: 4 decimals, scientific below 0.0001, a dash when there is none."""
    if not is_number(p):
        return "-"
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"
