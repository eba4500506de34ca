"""Exit codes a script can trust, one rule for every command.

    0   no regression, and every candidate was measured
    3   regression: a candidate boots the guest significantly slower than its reference
    4   incomplete: no regression found, but a candidate could not be evaluated
        (its patch did not apply, or it did not build or boot)
    5   undecided: no regression found, but a candidate's guest boot time is slower by
        at least the minimum effect and the runs do not decide it (run more repetitions)
    64  usage or configuration error (argparse's own usage errors included)
    70  the pipeline or its infrastructure failed, or the run was interrupted

None is argparse's 2.  For `git bisect run`: 0 is good, 3 is bad, anything else
should be skip (125), since the commit could not be judged.
"""
from __future__ import annotations

from typing import Any

OK = 0
REGRESSION = 3
INCOMPLETE = 4
UNDECIDED = 5
USAGE = 64
FAILURE = 70

MEASURED = frozenset({OK, REGRESSION, UNDECIDED})
"""A run that measured every candidate, whatever its verdicts."""


def for_analysis(analysis: dict[str, Any]) -> int:
    """The exit code of a finished run: a regression outranks an undecided slowdown, which outranks a
    candidate that could not be evaluated."""
    if analysis["regressions"]:
        return REGRESSION
    if analysis.get("undecided"):
        return UNDECIDED
    if analysis["failed"]:
        return INCOMPLETE
    return OK


def for_bisect(code: int) -> int:
    """Map a kpipe exit code onto `git bisect run`'s good (0), bad (1) and skip (125)."""
    return {OK: 0, REGRESSION: 1}.get(code, 125)
