"""Bisection: the search on injected outcomes, the per-step decision, and a whole bisection with
injected measurements (the real one, building and booting a history, is in test_bisect_e2e)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from pipeline.flows.bisect_search import BAD, GOOD, SKIP, decide, next_probe, search


def truth(first_bad: int, skips: frozenset[int] = frozenset()):
    calls: list[int] = []

    def classify(i: int) -> str:
        calls.append(i)
        return SKIP if i in skips else (BAD if i >= first_bad else GOOD)

    return classify, calls


@pytest.mark.parametrize("n,first_bad", [(8, 5), (8, 0), (8, 7), (1, 0), (100, 37), (2, 1)])
def test_search_finds_the_first_bad_commit_in_log2_steps(n: int, first_bad: int) -> None:
    classify, calls = truth(first_bad)
    r = search(n, classify)
    assert r.first_bad == first_bad and r.suspects == [first_bad]
    assert len(calls) <= math.ceil(math.log2(n)) if n > 1 else calls == []
    assert len(set(calls)) == len(calls)  # never measures a commit twice


def test_all_good_path_blames_the_bad_end_and_all_bad_the_first_commit() -> None:
    assert search(8, truth(7)[0]).first_bad == 7  # every commit before the bad end is good
    assert search(8, truth(0)[0]).first_bad == 0  # every commit is bad


def test_a_skipped_commit_is_stepped_around() -> None:
    classify, calls = truth(5, frozenset({3}))
    r = search(8, classify)
    assert r.first_bad == 5 and calls[0] == 3 and 3 not in calls[1:]
    assert r.order[0] == (3, SKIP)


def test_skips_that_hide_the_answer_give_the_suspects() -> None:
    classify, _ = truth(5, frozenset({4, 5}))
    r = search(8, classify)
    assert r.first_bad is None and set(r.suspects) >= {5} and 4 in r.suspects


def test_resume_uses_known_outcomes_and_measures_nothing_twice() -> None:
    classify, calls = truth(5)
    first = search(8, classify)
    known = dict(first.order[:2])
    classify2, calls2 = truth(5)
    again = search(8, classify2, known)
    assert again.first_bad == 5 and not set(calls2) & set(known)


def test_next_probe_prefers_the_middle_and_skips_skipped() -> None:
    assert next_probe(-1, 7, {}) == 3
    assert next_probe(-1, 7, {3: SKIP}) == 2
    assert next_probe(2, 4, {3: SKIP}) is None


@pytest.mark.parametrize("verdict,rounds,expect", [
    ("slower", 3, BAD), ("no significant change", 3, GOOD), ("binary-identical", 3, GOOD),
    ("faster", 3, GOOD), ("inconclusive", 3, None), ("too few runs", 3, None),
])
def test_decide(verdict: str, rounds: int, expect: str | None) -> None:
    assert decide(verdict, "slower", rounds, 7, 10.0, 7.0, 150.0)[0] == expect


def test_inconclusive_to_the_end_is_placed_by_the_nearest_end_and_says_so() -> None:
    outcome, note = decide("inconclusive", "slower", 7, 7, 120.0, 7.0, 150.0)
    assert outcome == BAD and "nearer" in note
    assert decide("inconclusive", "slower", 7, 7, 8.0, 7.0, 150.0)[0] == GOOD


def _bisector(tmp_path: Path, measure, repetitions=None):
    """A Bisector over eight fake commits with `measure` injected and no git behind it."""
    from pipeline.candidates import Candidate, Tree
    from pipeline.config import Config, KernelConfig, Repetitions
    from pipeline.flows.bisect import Bisector
    from pipeline.workloads.flash import Workload

    cfg = Config.__new__(Config)
    for f in dataclasses.fields(Config):  # the fields a bisection never reads
        object.__setattr__(cfg, f.name, None)
    for k, v in {"trees": {"t": Tree("t", git="x", ref="y")}, "runs_dir": tmp_path, "cache_dir": tmp_path,
                 "repetitions": repetitions or Repetitions(), "kernel": KernelConfig(), "workload": Workload(),
                 "baseline": "b", "candidates": (Candidate("b", "t"),)}.items():
        object.__setattr__(cfg, k, v)
    commits = [f"{i:040x}" for i in range(1, 9)]
    b = Bisector(cfg, "t", "good", "bad", folder=tmp_path / "bisect", measure=measure)
    b.store = tmp_path
    b.good, b.bad = "0" * 40, commits[-1]
    b.commits = [{"sha": c, "subject": f"commit {i + 1}"} for i, c in enumerate(commits)]
    b.resolve = lambda: None  # type: ignore[method-assign]
    b._result = lambda status, first, suspects: (status, first)  # type: ignore[method-assign,assignment,return-value]
    return b, commits


def test_noisy_steps_measure_more_rounds_before_deciding(tmp_path: Path) -> None:
    """A whole bisection with injected measurements: a step whose first rounds are inconclusive gets more."""
    commits = [f"{i:040x}" for i in range(1, 9)]
    first_bad = 5
    rounds_seen: dict[str, list[int]] = {}

    def measure(sha: str, rounds: int, resume: Path | None):
        rounds_seen.setdefault(sha, []).append(rounds)
        bad = commits.index(sha) >= first_bad
        noisy = sha == commits[3] and rounds < 5  # commit 4 needs 5 rounds
        verdict = "inconclusive" if noisy else ("slower" if bad else "no significant change")
        med = 150.0 if bad else 7.0
        row = {"name": "step", "n": rounds, "summaries": {"boot_s": {"median": med}},
               "comparisons": {"boot_s": {"verdict": verdict, "change_pct": 100 * (med / 7 - 1)}}}
        good = {"name": "good", "n": rounds, "summaries": {"boot_s": {"median": 7.0}}, "comparisons": {},
                "status": "ok"}
        results = {"candidates": {"step": {"status": "ok", "stages": {}}, "good": {"status": "ok"}}}
        return tmp_path / sha[:8], results, {"rows": [good, row]}

    b, _ = _bisector(tmp_path, measure)
    status, first = b.run()  # type: ignore[misc]
    assert status == "found" and first == commits[first_bad]
    assert rounds_seen[commits[3]] == [3, 5]
    assert all(r == [3] for sha, r in rounds_seen.items() if sha != commits[3])
    state = (tmp_path / "bisect" / "bisect.json").read_text()
    assert '"status": "found"' in state


def test_ends_that_could_not_be_measured_are_not_called_alike(tmp_path: Path) -> None:
    """The good end's runs all disturbed (an infrastructure error): the bisection stops as 'ends not
    measured', with the reason, never as 'the ends do not differ' (which reads as an answer)."""
    def measure(sha: str, rounds: int, resume: Path | None):
        results = {"candidates": {"step": {"status": "ok", "stages": {}},
                                  "good": {"status": "infra-error", "status_detail": "RunDisturbed: steal"}}}
        rows = [{"name": "good", "comparisons": {}, "summaries": {}},
                {"name": "step", "comparisons": {}, "summaries": {}}]
        return tmp_path / sha[:8], results, {"rows": rows}

    b, _ = _bisector(tmp_path, measure)
    status, first = b.run()  # type: ignore[misc]
    assert (status, first) == ("ends-not-measured", None)
    assert "the good end: infra-error: RunDisturbed: steal" in b.steps[0].note


def test_steps_keep_the_users_retry_count_and_disturbed_run_limits(tmp_path: Path) -> None:
    from pipeline.config import Repetitions

    b, commits = _bisector(tmp_path, None, Repetitions(retries=4, max_foreign_cpus=0.3, max_steal_cpus=0))
    reps = b._step_config(commits[2], rounds=5).repetitions
    assert (reps.retries, reps.max_foreign_cpus, reps.max_steal_cpus) == (4, 0.3, 0)
    assert (reps.counted, reps.max_counted, reps.warmup) == (5, 5, 0)
