"""jobs: what a runtime's jobs cost beyond the measurement they made (a LAVA lab's: the queue, the
device's time for each job, its test host's boot), read from the runs' records."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from pipeline.records.results import RunRecord


def job_overheads(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """What the runtime's jobs cost beyond the measurement (runs whose raw has the runtime's "job" record,
    LAVA's): medians of the time queued, of the device's time for the job, and of that time less the
    guest boot it measured (the test host's boot, the downloads, LAVA's own actions). {} without jobs."""
    jobs = [(r.raw["job"], r.metrics.get("boot_s", math.nan)) for r in runs if isinstance(r.raw.get("job"), dict)]
    if not jobs:
        return {}

    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    return {"runtime": str(jobs[0][0].get("runtime", "")), "n": len(jobs),
            "queued_s": median([float(j.get("queued_s", math.nan)) for j, _ in jobs]),
            "job_s": median([float(j.get("job_s", math.nan)) for j, _ in jobs]),
            "boot_to_shell_s": median([float(j.get("boot_to_shell_s", math.nan)) for j, _ in jobs]),
            "overhead_s": median([float(j.get("job_s", math.nan)) - b for j, b in jobs])}


def job_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The text summary's line for each analysed candidate whose runs were jobs."""
    return [f"{r['name']}: {j['n']} {str(j['runtime']).upper()} jobs, medians queued {j['queued_s']:.1f} s, "
            f"{j['job_s']:.1f} s on the device, {j['overhead_s']:.1f} s of it beyond the guest boot measured."
            for r in rows if (j := r.get("jobs"))]
