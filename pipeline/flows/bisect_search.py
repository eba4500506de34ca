"""bisect's search on commit indices, and one step's good/bad decision from its verdict: pure functions,
tested without a kernel (tests/test_bisect.py)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.report.stats import Verdict, moved

GOOD, BAD, SKIP = "good", "bad", "skip"
INCONCLUSIVE_WORD = "inconclusive"


# -- the search, on indices ---------------------------------------------------------------------

def next_probe(lo: int, hi: int, tested: dict[int, str]) -> int | None:
    """The untested index strictly between lo (last good; -1 is the good end) and hi (first known bad)
    nearest to the middle, or None when every one there has been skipped."""
    mid = (lo + hi) // 2
    choices = [i for i in range(lo + 1, hi) if tested.get(i) != SKIP]
    return min(choices, key=lambda i: (abs(i - mid), i)) if choices else None


@dataclass
class SearchResult:
    """What the search found: the first bad index (or None), the suspects and the test order."""

    first_bad: int | None  # index into the commit list; None when skipped commits hide it
    suspects: list[int]  # the commits it may be (one when found)
    order: list[tuple[int, str]]  # (index, outcome) in the order they were tested


def search(n: int, classify: Callable[[int], str], known: dict[int, str] | None = None) -> SearchResult:
    """Bisect commits 0..n-1, where n-1 (the bad end) is bad and the good end (index -1) is good.
    `classify(i)` returns good, bad or skip; `known` holds outcomes already measured (resume)."""
    tested = dict(known or {})
    order: list[tuple[int, str]] = []
    lo, hi = -1, n - 1
    for j, outcome in sorted(tested.items()):
        if outcome == GOOD and lo < j < hi:
            lo = j
    for j, outcome in sorted(tested.items()):
        if outcome == BAD and lo < j < hi:
            hi = j
    while hi - lo > 1:
        probe = next_probe(lo, hi, tested)
        if probe is None:
            return SearchResult(None, list(range(lo + 1, hi + 1)), order)
        if probe not in tested:
            tested[probe] = classify(probe)
            order.append((probe, tested[probe]))
        if tested[probe] == GOOD:
            lo = probe
        elif tested[probe] == BAD:
            hi = probe
    return SearchResult(hi, [hi], order)


# -- one step's decision ------------------------------------------------------------------------

def decide(verdict: str, bad_word: str, rounds: int, max_rounds: int, step_median: float, good_median: float,
           bad_median: float) -> tuple[str | None, str]:
    """good / bad from a step's verdict against the good end; None means measure more rounds."""
    if verdict == bad_word:
        return BAD, f"{bad_word} than the good end"
    if verdict in (Verdict.NO_CHANGE, Verdict.IDENTICAL, Verdict.SMALL):
        return GOOD, "no significant change from the good end" if verdict != Verdict.IDENTICAL else \
            "binary-identical to the good end's kernel"
    if moved(verdict):
        return GOOD, f"{verdict} than the good end, the other way from the bad end"
    if rounds < max_rounds:
        return None, ""
    ok = all(x > 0 and not math.isnan(x) for x in (step_median, good_median, bad_median))
    if not ok:
        return SKIP, f"{verdict} after {rounds} rounds and no medians to place it by: skipped"
    nearer_bad = abs(math.log(step_median / bad_median)) < abs(math.log(step_median / good_median))
    return (BAD if nearer_bad else GOOD), (f"{verdict} after {rounds} rounds; classified {BAD if nearer_bad else GOOD} "
                                           "as its median is nearer that end (log scale)")
