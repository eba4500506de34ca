"""Turn results.json into the comparison every report format renders."""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .stats import FAILED, SLOWER, compare, summarize

METRICS = {
    "boot_s": ("guest boot time", "s"),
    "host_cpu_s": ("host CPU (boot, w/o reader vCPUs)", "s"),
    "other_cpu_s": ("CPU outside the VMM (kworkers)", "s"),
    "updates_over_2ms": ("memslot updates over 2 ms", ""),
    "update_p99_us": ("memslot update p99", "us"),
}
COMPARED = ("boot_s", "host_cpu_s")


def _values(runs: list[dict[str, Any]], metric: str) -> list[float]:
    return [float(r["metrics"][metric]) for r in runs if metric in r.get("metrics", {})]


def reference_kind(results: dict[str, Any]) -> str | None:
    """The host kind comparisons are made on: the one most of the baseline's runs ran on.

    None when every run was on one kind (or runs carry no kind) or when the
    settings allow comparing across kinds.
    """
    if results.get("settings", {}).get("compare_across_kinds"):
        return None
    cands = results.get("candidates", {})
    kinds = Counter(r.get("host_kind") for c in cands.values() for r in c.get("runs", []))
    if len(kinds) <= 1:
        return None
    base = Counter(r.get("host_kind") for r in cands.get(results.get("baseline", ""), {}).get("runs", []))
    return (base or kinds).most_common(1)[0][0]


def analyze(results: dict[str, Any]) -> dict[str, Any]:
    settings = results.get("settings", {})
    alpha = float(settings.get("alpha", 0.05))
    min_effect = float(settings.get("min_effect_pct", 5.0))
    resamples = int(settings.get("bootstrap_resamples", 2000))
    baseline = results.get("baseline", "")
    cands = results.get("candidates", {})
    order = results.get("candidate_order") or list(cands)
    ref_kind = reference_kind(results)

    def usable(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return runs if ref_kind is None else [r for r in runs if r.get("host_kind") == ref_kind]

    base_runs = usable(cands.get(baseline, {}).get("runs", []))
    rows = []
    for name in order:
        c = cands.get(name, {"status": "pending", "runs": []})
        all_runs = c.get("runs", [])
        runs = usable(all_runs)
        summaries = {m: summarize(_values(runs, m), resamples) for m in METRICS}
        comparisons = {}
        ok = c.get("status") == "ok" and len(runs) > 0
        for m in COMPARED:
            if name == baseline:
                continue
            if not ok or not base_runs:
                comparisons[m] = {"change_pct": math.nan, "change_ci_low": math.nan, "change_ci_high": math.nan,
                                  "p_value": math.nan, "verdict": FAILED}
            else:
                comparisons[m] = compare(_values(runs, m), _values(base_runs, m), m, alpha, min_effect,
                                         resamples).as_dict()
        rows.append({
            "name": name,
            "is_baseline": name == baseline,
            "status": c.get("status", "pending"),
            "status_detail": c.get("status_detail", ""),
            "n": len(runs),
            "excluded_other_kind": len(all_runs) - len(runs),
            "hosts": dict(Counter(str(r.get("host", "local")) for r in all_runs)),
            "warmups": len(c.get("warmup_runs", [])),
            "retries": len(c.get("retries", [])),
            "stop_reason": c.get("stop_reason", ""),
            "summaries": {m: vars(s) | {"ci_width_pct": s.ci_width_pct} for m, s in summaries.items()},
            "comparisons": comparisons,
        })
    regressions = [r["name"] for r in rows if r["comparisons"].get("boot_s", {}).get("verdict") == SLOWER]
    failed = [r["name"] for r in rows if r["status"] not in ("ok", "pending")]
    return {"baseline": baseline, "rows": rows, "regressions": regressions, "failed": failed,
            "reference_kind": ref_kind, "hosts": results.get("hosts", []),
            "alpha": alpha, "min_effect_pct": min_effect, "headline": _headline(rows, baseline)}


def _headline(rows: list[dict[str, Any]], baseline: str) -> str:
    parts = []
    for r in rows:
        if r["is_baseline"]:
            continue
        comp = r["comparisons"].get("boot_s", {})
        if comp.get("verdict") == FAILED:
            parts.append(f"{r['name']}: {r['status']}")
        elif comp.get("verdict") in (None, "too few runs"):
            parts.append(f"{r['name']}: too few runs")
        else:
            cpu = r["comparisons"].get("host_cpu_s", {})
            parts.append(f"{r['name']}: boot {comp['change_pct']:+.0f}% ({comp['verdict']}), "
                         f"host CPU {cpu.get('change_pct', math.nan):+.0f}%")
    return f"vs {baseline}: " + "; ".join(parts) if parts else f"only the baseline ({baseline}) was measured"


def fmt_num(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.4f}" if p >= 0.0001 else f"{p:.1e}"
