"""rederive: a finished run's flash-workload figures computed again from the raw output each run kept.

The VMM's JSON is stored whole beside the metrics derived from it, so a better estimator (exact host
CPU instead of tick samples, say) can be applied to runs already made, without re-running anything.
Metrics of the other workloads (names with a '.') are kept as they are."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.records.results import read_results, write_json_atomic
from pipeline.workloads.flash_metrics import derive_metrics


def rederived_runs(results: dict[str, Any]) -> int:
    """Replace, in place, the flash metrics of every run that kept its raw output; return how many changed."""
    changed = 0
    for cand in results.get("candidates", {}).values():
        for key in ("runs", "warmup_runs"):
            for run in cand.get(key, []):
                raw = run.get("raw")
                if not isinstance(raw, dict) or raw.get("tool") != "flashvmm" or raw.get("status") != "ok":
                    continue
                old = run.get("metrics", {})
                new = derive_metrics(raw) | {k: v for k, v in old.items() if "." in k}
                if new != old:
                    run["metrics"] = new
                    changed += 1
    return changed


def rederive(run_dir: Path) -> int:
    """Re-derive a run folder's results.json (atomically); return how many runs changed."""
    results = read_results(run_dir)
    changed = rederived_runs(results)
    if changed:
        write_json_atomic(run_dir / "results.json", results)
    return changed
