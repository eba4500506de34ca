"""bisect: find the first commit whose measurement differs from the good end's, by the report's verdict rule.

Every step is an ordinary run of two candidates, the good end's kernel and the
step's, measured in interleaved rounds (`run_pipeline`), so each step has its
own results.json and everything a run has: builds in place in the shared slot,
binary-identical kernels recognised without a boot, retries of infrastructure
faults. A step starts with `start_rounds` rounds and adds two at a time while
its verdict is inconclusive, up to `max_rounds`; a step that stays
inconclusive is classified by the end its median is nearer to (on a log scale)
and says so. A commit that does not apply, build or boot is skipped, as with
`git bisect skip`. The state (`bisect.json`) is written after every step;
`--resume` replays the finished steps and continues.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.candidates import Candidate
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.flows.bisect_search import BAD, GOOD, SKIP, decide, search
from pipeline.records.read import CandidateStatus, Results
from pipeline.records.results import new_run_id, write_json_atomic
from pipeline.report.stats import moved
from pipeline.stages.fetch import fetch_tree
from pipeline.util.gitutil import git

# -- the bisection of a real history ------------------------------------------------------------

@dataclass
class Step:
    """One tested commit of a bisection: its verdict against the good end, outcome, medians and cost."""

    index: int  # into commits; -2 for the check of the ends
    commit: str
    subject: str
    outcome: str
    note: str
    verdict: str = ""
    change_pct: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    p_value: float = math.nan
    median: float = math.nan
    good_median: float = math.nan
    n: int = 0
    rounds: int = 0
    run: str = ""
    seconds: float = 0.0
    build_seconds: float = 0.0


@dataclass
class BisectResult:
    """A finished (or stopped) bisection: the first bad commit or the suspects, and every step."""

    folder: Path
    first_bad: str | None
    suspects: list[str]
    steps: list[Step]
    commits: list[dict[str, str]]
    status: str
    metric: str
    extra: dict[str, Any] = field(default_factory=dict)


Measure = Callable[[str, int, Path | None], tuple[Path, dict[str, Any], dict[str, Any]]]


class Bisector:
    """Bisects `good..bad` of `tree` with `cfg`'s kernel config, test host, workload and statistics."""

    def __init__(self, cfg: Config, tree: str, good: str, bad: str, metric: str = "boot_s",
                 start_rounds: int = 3, max_rounds: int = 7, folder: Path | None = None,
                 progress: Any = None, measure: Measure | None = None):
        if tree not in cfg.trees:
            raise UserError(f"--tree: no tree named {tree!r}; trees: {', '.join(cfg.trees)}")
        self.cfg, self.tree, self.metric = cfg, cfg.trees[tree], metric
        self.start_rounds, self.max_rounds = max(2, start_rounds), max(start_rounds, max_rounds)
        self.folder = folder or (cfg.runs_dir / "bisect" / new_run_id())
        self.progress = progress
        self._measure = measure or self._measure_with_runs
        self.good_ref, self.bad_ref = good, bad
        self.steps: list[Step] = []
        self.commits: list[dict[str, str]] = []
        self.good = self.bad = ""
        self.bad_word = ""
        self.bad_median = self.good_median = math.nan

    # -- history ---------------------------------------------------------------------------------
    def resolve(self) -> None:
        fetched = fetch_tree(self.tree, self.cfg.cache_dir)
        self.store = fetched.store

        def rev(ref: str, what: str) -> str:
            res = git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"], self.store,
                      check=False)
            if res.returncode != 0:
                raise UserError(f"--{what} {ref!r}: no such commit in tree {self.tree.name} (its history is "
                                f"{fetched.origin})")
            return res.output.strip()

        self.good, self.bad = rev(self.good_ref, "good"), rev(self.bad_ref, "bad")
        if git(["merge-base", "--is-ancestor", self.good, self.bad], self.store, check=False).returncode != 0:
            raise UserError(f"--good {self.good_ref} is not an ancestor of --bad {self.bad_ref}")
        out = git(["rev-list", "--reverse", "--first-parent", "--format=%H%x00%s", f"{self.good}..{self.bad}"],
                  self.store).output
        self.commits = [{"sha": line.split("\0")[0], "subject": line.split("\0", 1)[1]}
                        for line in out.splitlines() if "\0" in line]
        if not self.commits:
            raise UserError("--good and --bad are the same commit: nothing to bisect")

    # -- measuring one commit against the good end --------------------------------------------------
    def _step_config(self, sha: str, rounds: int) -> Config:
        trees = {"good": dataclasses.replace(self.tree, name="good", git=str(self.store), ref=self.good,
                                             tarball=None),
                 "step": dataclasses.replace(self.tree, name="step", git=str(self.store), ref=sha, tarball=None)}
        # Every step may be looked at after start_rounds, +2, ... up to max_rounds: the verdicts are tested
        # at the level that keeps the chance of a false one over all those looks at most alpha.
        looks = 1 + math.ceil((self.max_rounds - self.start_rounds) / 2)
        # The user's retry count and disturbed-run limits carry over; the counts are the bisection's.
        reps = dataclasses.replace(self.cfg.repetitions, warmup=0, counted=rounds, max_counted=rounds,
                                   target_ci_pct=0, looks=looks, budget_s=0.0, censor_factor=0.0)
        return dataclasses.replace(self.cfg, trees=trees, baseline="good",
                                   candidates=(Candidate("good", "good"), Candidate("step", "step")),
                                   repetitions=reps, runs_dir=self.folder / "steps")

    def _measure_with_runs(self, sha: str, rounds: int, resume: Path | None) -> tuple[Path, dict, dict]:
        from pipeline.report.analysis import analyze
        from pipeline.report.render import load_run
        from pipeline.run.runner import run_pipeline

        folder = run_pipeline(self._step_config(sha, rounds), progress=self.progress, resume=resume)
        results, _ = load_run(folder.path)
        return folder.path, results, analyze(results)

    def _classify(self, index: int, sha: str, subject: str) -> Step:
        t0 = time.monotonic()
        rounds, run_dir = self.start_rounds, None
        while True:
            run_dir, results, a = self._measure(sha, rounds, run_dir)
            row = next(r for r in a["rows"] if r["name"] == "step")
            good = next(r for r in a["rows"] if r["name"] == "good")
            res = Results.from_json(results)
            cand, good_end = res.candidate("step"), res.candidate("good")
            build = cand.stages.get("build", {})
            step = Step(index, sha, subject, "", "", run=str(run_dir), rounds=rounds,
                        build_seconds=float(build.get("seconds", 0.0) or 0.0))
            status = cand.status
            if status == CandidateStatus.IDENTICAL and index != -2:
                step.outcome, step.note, step.verdict = GOOD, "binary-identical to the good end's kernel: not booted", \
                    "binary-identical"
                break
            if status != CandidateStatus.OK or good_end.status != CandidateStatus.OK:
                who = status if status != CandidateStatus.OK else f"the good end: {good_end.status}"
                detail = cand.status_detail if status != CandidateStatus.OK else good_end.status_detail
                step.outcome, step.note = SKIP, f"{who}: {detail[:200]}"
                break
            c = row["comparisons"].get(self.metric, {})
            step.verdict = c.get("verdict", "")
            step.change_pct, step.p_value = c.get("change_pct", math.nan), c.get("p_value", math.nan)
            step.ci = (c.get("change_ci_low", math.nan), c.get("change_ci_high", math.nan))
            step.median = row["summaries"].get(self.metric, {}).get("median", math.nan)
            step.good_median = good["summaries"].get(self.metric, {}).get("median", math.nan)
            step.n = row["n"]
            if index == -2:  # the ends: the bad end must differ from the good one
                step.outcome = BAD if moved(step.verdict) else SKIP
                if step.outcome == SKIP and rounds < self.max_rounds:
                    rounds += 2
                    continue
                step.note = (f"the bad end is {step.verdict} than the good end" if step.outcome == BAD else
                             f"the bad end is not measurably different from the good end ({step.verdict})")
                break
            outcome, note = decide(step.verdict, self.bad_word, rounds, self.max_rounds, step.median,
                                   step.good_median, self.bad_median)
            if outcome is None:
                rounds = min(self.max_rounds, rounds + 2)
                self._say(subject, f"{step.verdict} after {step.rounds} rounds: {rounds} rounds")
                continue
            step.outcome, step.note = outcome, note
            break
        step.seconds = time.monotonic() - t0
        return step

    def _say(self, who: str, text: str) -> None:
        if self.progress:
            self.progress.say("bisect", who[:40], text)

    # -- state -------------------------------------------------------------------------------------
    def _save(self, status: str, result: dict[str, Any] | None = None) -> None:
        write_json_atomic(self.folder / "bisect.json", {
            "tree": self.tree.name, "good": self.good, "bad": self.bad, "metric": self.metric,
            "start_rounds": self.start_rounds, "max_rounds": self.max_rounds, "commits": self.commits,
            "bad_word": self.bad_word, "bad_median": self.bad_median, "good_median": self.good_median,
            "steps": [dataclasses.asdict(s) for s in self.steps], "status": status, **(result or {})})

    def _load(self) -> None:
        path = self.folder / "bisect.json"
        if not path.exists():
            return
        data = json.loads(path.read_text())
        if (data.get("good"), data.get("bad")) != (self.good, self.bad):
            raise UserError(f"{path} bisects {data.get('good', '?')[:12]}..{data.get('bad', '?')[:12]}, "
                            f"not {self.good[:12]}..{self.bad[:12]}")
        self.steps = [Step(**{**s, "ci": tuple(s.get("ci", (math.nan, math.nan)))}) for s in data.get("steps", [])]
        self.bad_word = data.get("bad_word", "")
        self.bad_median = data.get("bad_median", math.nan)
        self.good_median = data.get("good_median", math.nan)

    # -- the whole bisection -----------------------------------------------------------------------
    def run(self) -> BisectResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.resolve()
        self._load()
        self._say("-", f"{len(self.commits)} commits between {self.good[:12]} (good) and {self.bad[:12]} (bad), "
                       f"about {max(1, math.ceil(math.log2(len(self.commits) + 1)))} steps")
        ends = next((s for s in self.steps if s.index == -2), None)
        if ends is None:
            self._say(self.commits[-1]["subject"], "the ends first: is the bad end measurably different?")
            ends = self._classify(-2, self.bad, self.commits[-1]["subject"])
            self.steps.append(ends)
            self.bad_word = ends.verdict if ends.outcome == BAD else ""
            self.bad_median, self.good_median = ends.median, ends.good_median
            self._save("running")
        if ends.outcome != BAD:
            # Not measured at all (a build, boot or infrastructure failure at either end) is not the same
            # answer as measured and found alike.
            status = "ends-do-not-differ" if ends.verdict else "ends-not-measured"
            self._save(status)
            return self._result(status, None, [])
        known = {s.index: s.outcome for s in self.steps if s.index >= 0}

        def classify(i: int) -> str:
            c = self.commits[i]
            self._say(c["subject"], f"step {len(self.steps)}: {c['sha'][:12]} ({i + 1} of {len(self.commits)})")
            step = self._classify(i, c["sha"], c["subject"])
            self.steps.append(step)
            self._save("running")
            self._say(c["subject"], f"{step.outcome}: {step.note}")
            return step.outcome

        found = search(len(self.commits), classify, known)
        status = "found" if found.first_bad is not None else "skipped-commits-hide-it"
        first = self.commits[found.first_bad]["sha"] if found.first_bad is not None else None
        suspects = [self.commits[i]["sha"] for i in found.suspects]
        self._save(status, {"first_bad": first, "suspects": suspects})
        return self._result(status, first, suspects)

    def _result(self, status: str, first: str | None, suspects: list[str]) -> BisectResult:
        extra = {}
        if first:
            extra["diffstat"] = git(["show", "--stat", "--format=%H%n%an <%ae>%n%s", first], self.store).output
        return BisectResult(self.folder, first, suspects, self.steps, self.commits, status, self.metric, extra)


def tree_for_bisect(cfg: Config, tree: str | None) -> str:
    """--tree, or the baseline's tree (Bisector checks that it exists)."""
    return tree or cfg.candidate(cfg.baseline).tree
