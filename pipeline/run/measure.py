"""Measuring: interleaved rounds of repetitions on the pool's test hosts, then the sequential rule's
looks (or rounds until the interval is narrow), dispatched to the pool; how many rounds run and which
are skipped on --resume. One repetition's rules are RepetitionRunner's (pipeline/run/repetition.py).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.machines.pool import LOST, OK, Job, PoolHost, dispatch
from pipeline.report.analysis import decision_family
from pipeline.report.sequential import Plan, plan_more
from pipeline.report.stats import family_level, summarize
from pipeline.run.repetition import Prepared, RepetitionRunner, rotated
from pipeline.stages.initramfs import Initramfs


class Measurer(RepetitionRunner):
    """Every repetition of every candidate."""

    # -- all repetitions -------------------------------------------------------------------------
    def measure_all(self, preps: list[Prepared], initramfs: Initramfs, vmm: Path) -> None:
        reps = self.cfg.repetitions
        rounds = reps.warmup + reps.counted
        live = [p for p in preps if p.alive]
        done = {p.candidate.name: self.folder.rounds_done(p.candidate.name) for p in live}
        # Interleaved (A B C, B C A, C A B, ...): every round has every candidate, and rotating the
        # order keeps a candidate off a fixed position in the round (and off a fixed pool host).
        jobs = [self._job(p, r, "warmup" if r < reps.warmup else "counted", initramfs, vmm)
                for r in range(rounds) for p in rotated(live, r) if r not in done[p.candidate.name]]
        self.progress.plan(len(jobs))
        self._dispatch(jobs)
        r = max([rounds] + [max(d) + 1 for d in done.values() if d])
        if reps.looks > 1 and reps.budget_s > 0 and reps.max_counted > reps.counted:
            # On --resume the looks already made are in results.json: the rule goes on from there.
            self._sequential(live, int(self.folder.results.get("sequential", {}).get("looks_made", 1)), r,
                             initramfs, vmm)
        else:
            self._until_narrow(live, r, initramfs, vmm)
        for prep in live:
            n = len(self.folder.candidate(prep.candidate.name)["runs"])
            if reps.looks > 1:
                why = self.folder.candidate(prep.candidate.name).get("stop_reason") or f"{n} runs"
            elif reps.target_ci_pct <= 0:
                why = f"fixed count of {reps.counted}"
            elif n >= reps.max_counted:
                why = f"reached max_counted={reps.max_counted}"
            else:
                why = f"95% interval narrower than {reps.target_ci_pct}% of the median"
            self.folder.update_candidate(prep.candidate.name, stop_reason=why if prep.alive else "candidate failed")

    def _until_narrow(self, live: list[Prepared], r: int, initramfs: Initramfs, vmm: Path) -> None:
        """More rounds for candidates whose interval is still wider than target_ci_pct."""
        while self.cfg.repetitions.target_ci_pct > 0:
            wide = [p for p in live if p.alive and self._needs_more(p)]
            if not wide or not any(h.status == OK for h in self.hosts):
                break
            self.progress.plan(self.progress.total_steps + len(wide))
            self._dispatch([self._job(p, r, "counted", initramfs, vmm) for p in wide])
            r += 1

    def _sequential(self, live: list[Prepared], look: int, r: int, initramfs: Initramfs, vmm: Path) -> None:
        """The sequential rule (pipeline/report/sequential.py): after look 1 (the first rounds), each look
        adds the runs that narrow the undecided comparisons at the least test-host time."""
        reps, res = self.cfg.repetitions, self.folder.results
        family = decision_family(res.get("candidate_order", []), res.get("candidate_specs", {}), self.cfg.baseline)
        level = family_level(self.cfg.report.alpha, len(family), reps.looks)
        by_name = {p.candidate.name: p for p in live}
        spent = float(res.get("sequential", {}).get("spent_s", 0.0))

        def plan() -> Plan:
            alive = {n for n, p in by_name.items() if p.alive}
            pairs = [(n, res["candidate_specs"].get(n, {}).get("compare_to") or self.cfg.baseline) for n in family]
            pairs = [(n, ref) for n, ref in pairs if n in alive and ref in alive]
            values = {n: self.folder.counted_values(n, "boot_s") for n in alive}
            costs = {n: self._run_cost(n) for n in alive}
            return plan_more(values, costs, pairs, level, self.cfg.report.min_effect_pct, reps.max_counted,
                             reps.budget_s - spent)

        def record(reasons: dict[str, str]) -> None:
            self.folder.update(sequential={"looks_made": look, "looks": reps.looks, "budget_s": reps.budget_s,
                                           "spent_s": round(spent, 1), "level": level, "family": family,
                                           "reasons": reasons})

        nxt = plan()
        while look < reps.looks and nxt.more and any(h.status == OK for h in self.hosts):
            look += 1
            self.progress.say("repeat", ", ".join(f"{n} +{k}" for n, k in nxt.more.items()),
                              f"look {look} of {reps.looks}: comparisons undecided at level {level:.4f}")
            self.progress.plan(self.progress.total_steps + sum(nxt.more.values()))
            rounds = max(nxt.more.values())
            names = [by_name[n] for n in nxt.more]
            self._dispatch([self._job(p, r + i, "counted", initramfs, vmm) for i in range(rounds)
                            for p in rotated(names, i) if nxt.more[p.candidate.name] > i])
            spent += sum(k * self._run_cost(n) for n, k in nxt.more.items())
            r += rounds
            record(dict(nxt.reasons))
            nxt = plan()
        # What the last look left: each comparison's standing when the rule stopped.
        record({k: v if v.startswith("decided") or not nxt.more else v + " (looks used up)"
                for k, v in nxt.reasons.items()})
        for n in by_name:
            k = len(self.folder.counted_values(n, "boot_s"))
            self.folder.update_candidate(n, stop_reason=f"{k} runs after {look} of {reps.looks} looks "
                                                        f"(sequential rule, {spent:.0f} of {reps.budget_s:.0f} s "
                                                        f"of extra runs)")

    def _run_cost(self, name: str) -> float:
        """Seconds one more run of this candidate is expected to take: its median boot, test host included."""
        runs = self.folder.candidate(name)["runs"]
        costs = [float(x["metrics"].get("boot_s", 0.0)) + float(x.get("boot_to_ssh_s", 0.0) or 0.0) for x in runs]
        return float(sorted(costs)[len(costs) // 2]) if costs else 1.0

    def _job(self, prep: Prepared, round_idx: int, kind: str, initramfs: Initramfs, vmm: Path) -> Job:
        return Job(prep.candidate.name, round_idx, kind, alive=lambda: prep.alive, payload=(prep, initramfs, vmm))

    def _dispatch(self, jobs: list[Job]) -> None:
        def run_job(host: PoolHost, job: Job) -> None:
            prep, initramfs, vmm = job.payload
            self.measure_once(prep, initramfs, vmm, host, job.kind, job.round)

        left = dispatch(jobs, self.hosts, run_job, self.stop)
        self.save_hosts()
        gone = "; ".join(f"{h.name}: {h.reason}" for h in self.hosts if h.status == LOST)
        for job in left:
            prep = job.payload[0]
            if prep.alive:
                self._fail(prep, "run", "infra-error", f"no test host left to run round {job.round} ({gone}); "
                           f"measured rounds are kept, continue with --resume", gone)

    def save_hosts(self) -> None:
        self.folder.update(hosts=[h.as_dict() for h in self.hosts])

    def _needs_more(self, prep: Prepared) -> bool:
        values = self.folder.counted_values(prep.candidate.name, "boot_s")
        if len(values) >= self.cfg.repetitions.max_counted:
            return False
        return summarize(values).ci_width_pct > \
            self.cfg.repetitions.target_ci_pct
