"""The runner only orders the stages: fetch -> patch -> build -> boot -> run -> report."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from . import __version__
from .boot import BootFailed, boot_test_host
from .build import BuildArtifacts, BuildFailed, build_kernel, compiler_version, parse_config
from .config import Candidate, Config
from .errors import InfraError, PipelineError, UserError
from .executor import LocalExecutor
from .fetch import FetchedTree, checkout_worktree, fetch_tree
from .initramfs import Initramfs, build_initramfs
from .lock import cache_lock
from .patch import PatchedTree, PatchFailed, UnsafePatch, apply_changes, check_changes
from .pool import LOST, OK, HostLost, Job, PoolHost, Stopped, check_pool, dispatch, distcc_hosts
from .proc import run as run_cmd
from .progress import Progress
from .results import FAIL, PASS, SKIP, STAGES, RunFolder, now_iso
from .stats import summarize
from .workload import WorkloadFailed, build_vmm, install_vmm, run_workload

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every cleanup path runs."""


@dataclass
class Prepared:
    candidate: Candidate
    patched: PatchedTree | None = None
    artifacts: BuildArtifacts | None = None
    alive: bool = True
    boots: int = 0


def _sigterm(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def _rotated(items: list[Prepared], by: int) -> list[Prepared]:
    return items[by % len(items):] + items[:by % len(items)] if items else []


def selected_candidates(cfg: Config, only: list[str] | None) -> list[Candidate]:
    if not only:
        return list(cfg.candidates)
    names = set(only) | {cfg.baseline}
    unknown = set(only) - {c.name for c in cfg.candidates}
    if unknown:
        raise UserError(f"--only: no candidate named {', '.join(sorted(unknown))}; candidates: "
                        f"{', '.join(c.name for c in cfg.candidates)}")
    names |= {c.compare_to for c in cfg.candidates if c.name in names and c.compare_to}
    return [c for c in cfg.candidates if c.name in names]


def collect_metadata(cfg: Config, accel: tuple[str, str, str], trees: dict[str, FetchedTree]) -> dict[str, Any]:
    qemu = shutil.which("qemu-system-x86_64")
    qemu_version = run_cmd([qemu, "--version"]).output.splitlines()[0] if qemu else "not installed"
    return {
        "kpipe_version": __version__,
        "config": str(cfg.source),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "python": platform.python_version(), "cpus": os.cpu_count() or 1, "machine": platform.machine()},
        "compiler": compiler_version(),
        "qemu": qemu_version,
        "accelerator": {"name": accel[0], "args": accel[1], "reason": accel[2]},
        "test_host": {"cpus": cfg.test_host.cpus, "memory_mb": cfg.test_host.memory_mb,
                      "cmdline": cfg.test_host.cmdline},
        "workload": vars(cfg.workload),
        "candidate_workloads": {c.name: vars(c.workload) for c in cfg.candidates if c.workload},
        "repetitions": vars(cfg.repetitions),
        "trees": {n: {"origin": t.origin, "commit": t.commit} for n, t in trees.items()},
        "inputs": input_hashes(cfg),
    }


def input_hashes(cfg: Config) -> dict[str, str]:
    """sha256 of every file that decides the outcome, so two runs can be told apart."""
    from .fetch import sha256_file
    from .workload import VMM_SOURCE

    files = {cfg.source, cfg.test_host.qemu_template, cfg.test_host.initramfs_recipe, VMM_SOURCE,
             *cfg.kernel.fragments}
    for c in cfg.candidates:
        files.update(ch.path for ch in c.changes if ch.path)
    out = {}
    for f in sorted(files):
        try:
            name = str(f.relative_to(cfg.root))
        except ValueError:
            name = str(f)
        out[name] = sha256_file(f)
    return out


class Runner:
    def __init__(self, cfg: Config, folder: RunFolder, progress: Progress):
        self.cfg = cfg
        self.folder = folder
        self.progress = progress
        self.trees: dict[str, FetchedTree] = {}
        self.hosts: list[PoolHost] = []
        self.stop = threading.Event()
        self.distcc: tuple[str, ...] = ()

    # -- fetch, patch, build -------------------------------------------------
    def prepare_all(self, cands: list[Candidate]) -> list[Prepared]:
        """Fetch, patch and build each candidate; one that differs from an earlier one only in its
        command line or workload shares that one's tree and kernel (no checkout, no build)."""
        preps: list[Prepared] = []
        done: dict[tuple, Prepared] = {}
        for c in cands:
            status = self.folder.candidate(c.name)["status"]
            if status not in ("pending", "ok"):
                preps.append(Prepared(c, alive=False))  # failed before an interruption: keep it
                continue
            key = (c.tree, tuple((ch.kind, ch.value) for ch in c.source_changes), c.config_fragments)
            twin = done.get(key)
            if twin and twin.patched and twin.artifacts:
                preps.append(self._share(c, twin))
                continue
            prep = self.prepare(c)
            preps.append(prep)
            if prep.alive:
                done[key] = prep
        return preps

    def _share(self, cand: Candidate, twin: Prepared) -> Prepared:
        assert twin.patched and twin.artifacts
        patched = dataclasses.replace(twin.patched, cmdline=cand.cmdline)
        prep = Prepared(cand, patched=patched, artifacts=twin.artifacts)
        name, other = cand.name, twin.candidate.name
        stages = self.folder.candidate(other)["stages"]
        for stage in ("fetch", "patch", "build"):
            if stage in stages:
                self.folder.record_stage(name, stage, {**stages[stage], "shared_with": other,
                                                       **({"cmdline": list(cand.cmdline)} if stage == "patch" else {})})
        self.progress.say("build", name, f"same tree, patches and config as {other}: its kernel, no build")
        return prep

    def prepare(self, cand: Candidate) -> Prepared:
        prep = Prepared(cand)
        name = cand.name
        log_file = self.folder.log_path(name, "patch.log")
        try:
            check_changes(cand)
        except (UnsafePatch, UserError) as exc:
            self._fail(prep, "patch", "patch-failed", str(exc), str(exc))
            return prep
        t0 = time.monotonic()
        try:
            fetched = self.trees.get(cand.tree)
            if fetched is None:
                self.progress.say("fetch", name, f"tree {cand.tree}")
                fetched = fetch_tree(self.cfg.trees[cand.tree], self.cfg.cache_dir,
                                     self.folder.log_path("_trees", f"{cand.tree}.log"))
                self.trees[cand.tree] = fetched
                self.progress.say("fetch", name, f"tree {cand.tree} at {fetched.commit[:12]} "
                                  f"({'reused' if fetched.reused else 'imported'} in {fetched.seconds:.1f} s)")
            self.folder.record_stage(name, "fetch", {"status": PASS, "tree": cand.tree, "origin": fetched.origin,
                                                     "commit": fetched.commit, "reused": fetched.reused,
                                                     "seconds": round(fetched.seconds, 2)})
            wt = checkout_worktree(fetched, name, self.cfg.cache_dir, log_file)
        except UserError as exc:
            self._fail(prep, "fetch", "infra-error", str(exc), str(exc))
            return prep
        try:
            prep.patched = apply_changes(cand, wt, log_file)
        except PatchFailed as exc:
            self._fail(prep, "patch", "patch-failed", str(exc), exc.git_message,
                       {"location": exc.location, "change": f"{exc.change.kind}: {exc.change.value}",
                        "log": self.folder.relative(log_file)})
            return prep
        self.folder.record_stage(name, "patch", {"status": PASS, "seconds": round(time.monotonic() - t0, 2),
                                                 "worktree": str(wt.path), "log": self.folder.relative(log_file),
                                                 **prep.patched.as_dict()})
        self.progress.say("patch", name, f"{len(cand.changes)} change(s) -> {prep.patched.commit[:12]}")
        build_log = self.folder.log_path(name, "build.log")
        self.progress.say("build", name, "building kernel (cached by content)")
        try:
            prep.artifacts = build_kernel(prep.patched, self.cfg.kernel, self.cfg.kernel.fragments,
                                          self.cfg.cache_dir, build_log, self.distcc)
        except BuildFailed as exc:
            self._fail(prep, "build", "build-failed", str(exc).splitlines()[0], exc.excerpt,
                       {"log": self.folder.relative(build_log)})
            return prep
        art = prep.artifacts
        if art.cached and art.log.exists() and not build_log.exists():
            shutil.copy2(art.log, build_log)
        self.folder.record_stage(name, "build", {"status": PASS, **art.as_dict(),
                                                 "log": self.folder.relative(build_log)})
        self.progress.say("build", name, f"{art.kernel_release}: "
                          f"{'cached' if art.cached else f'built in {art.seconds:.0f} s'}, {art.warnings} warnings")
        return prep

    def record_config_differences(self, preps: list[Prepared]) -> None:
        """Each built candidate's final .config against the baseline's, for the report."""
        base = next((p for p in preps if p.candidate.name == self.cfg.baseline and p.artifacts), None)
        if base is None or base.artifacts is None:
            return
        base_opts = parse_config(base.artifacts.config.read_text())
        for prep in preps:
            if prep.artifacts is None or prep is base:
                continue
            opts = parse_config(prep.artifacts.config.read_text())
            diff = [f"{k}: {base_opts.get(k, 'n')} -> {opts.get(k, 'n')}"
                    for k in sorted(set(base_opts) | set(opts)) if base_opts.get(k, "n") != opts.get(k, "n")]
            with self.folder._lock:
                self.folder.candidate(prep.candidate.name)["stages"]["build"]["config_diff"] = diff
        self.folder.save()

    def _fail(self, prep: Prepared, stage: str, status: str, message: str, excerpt: str,
              extra: dict[str, Any] | None = None) -> None:
        prep.alive = False
        self.folder.record_stage(prep.candidate.name, stage, {"status": FAIL, "message": message,
                                                              "excerpt": excerpt[-6000:], **(extra or {})})
        later = STAGES[STAGES.index(stage) + 1:]
        with self.folder._lock:
            stages = self.folder.candidate(prep.candidate.name)["stages"]
            for skipped in later:
                stages.setdefault(skipped, {"status": SKIP, "message": f"{stage} failed"})
        self.folder.set_status(prep.candidate.name, status, message.splitlines()[0][:300])
        self.progress.say(stage, prep.candidate.name, f"FAILED ({status}): {message.splitlines()[0][:120]}")

    # -- boot and run --------------------------------------------------------
    def measure_once(self, prep: Prepared, initramfs: Initramfs, vmm: Path, pool_host: PoolHost,
                     kind: str, round_idx: int) -> None:
        """Boot the candidate's kernel on a pool host, run one repetition, shut down.

        Honest infrastructure faults are retried; a fault that turns out to be
        the pool host going away raises HostLost so another host takes the job.
        """
        name = prep.candidate.name
        assert prep.artifacts and prep.patched
        c = self.folder.candidate(name)
        retries = self.cfg.repetitions.retries
        where = f" on {pool_host.name}" if len(self.hosts) > 1 else ""
        for attempt in range(retries + 1):
            tag = f"r{round_idx:02d}-a{attempt}"
            t0 = time.monotonic()
            try:
                with boot_test_host(pool_host.executor, prep.artifacts, initramfs, self.cfg.test_host,
                                    prep.patched.cmdline, self.folder.path / "logs" / name, tag,
                                    pool_host.accel) as host:
                    prep.boots += 1
                    if "boot" not in c["stages"]:
                        self.folder.record_stage(name, "boot", {
                            "status": "pass", "seconds": round(host.boot_seconds, 2), "accelerator": host.accelerator,
                            "host": pool_host.name, "uname_r": host.info.get("uname_r"),
                            "expected_release": prep.artifacts.kernel_release,
                            "console_log": self.folder.relative(host.console_log),
                            "cmdline_extra": list(prep.patched.cmdline)})
                    if host.info.get("uname_r") != prep.artifacts.kernel_release:
                        raise InfraError(f"test host runs {host.info.get('uname_r')}, "
                                         f"expected {prep.artifacts.kernel_release}")
                    install_vmm(host, vmm)
                    result = run_workload(host, self.cfg.workload_of(prep.candidate), self.cfg.test_host.cpus)
                    entry = {"round": round_idx, "kind": kind, "attempt": attempt, "finished": now_iso(),
                             "host": pool_host.name, "host_kind": pool_host.kind,
                             "boot_to_ssh_s": round(host.boot_seconds, 2),
                             "console_log": self.folder.relative(host.console_log), **result}
                with self.folder._lock:
                    c["runs" if kind == "counted" else "warmup_runs"].append(entry)
                    if c["status"] == "pending":
                        c["status"] = "ok"
                    self.folder.save()
                m = result["metrics"]
                self.progress.step_done(time.monotonic() - t0)
                self.progress.say("run", name, f"{kind} #{round_idx}{where}: guest boot {m['boot_s']:.2f} s, "
                                  f"host CPU {m['host_cpu_s']:.2f} s, {int(m['updates'])} updates, "
                                  f"{m.get('gp_ms', math.nan):.2f} ms per grace period, "
                                  f"{int(m.get('updates_over_jiffy', m['updates_over_2ms']))} over a jiffy")
                return
            except BootFailed as exc:
                self._host_check(pool_host, c, tag, exc)
                retryable = exc.status == "boot-timeout" and attempt < retries
                self._record_retry(c, tag, exc.status, str(exc), exc.excerpt)
                if not retryable:
                    self._fail(prep, "boot", exc.status, str(exc).splitlines()[0], exc.excerpt)
                    self.progress.step_done(time.monotonic() - t0)
                    return
            except WorkloadFailed as exc:
                self._host_check(pool_host, c, tag, exc)
                self._record_retry(c, tag, "workload-failed", str(exc).splitlines()[0], exc.output)
                if not (exc.infrastructure and attempt < retries):
                    self._fail(prep, "run", "workload-failed", str(exc).splitlines()[0], exc.output)
                    self.progress.step_done(time.monotonic() - t0)
                    return
            except (OSError, InfraError, paramiko.SSHException, EOFError) as exc:
                self._host_check(pool_host, c, tag, exc)
                self._record_retry(c, tag, "infra-error", f"{type(exc).__name__}: {exc}", "")
                if attempt >= retries:
                    self._fail(prep, "run", "infra-error", f"{type(exc).__name__}: {exc}", "")
                    self.progress.step_done(time.monotonic() - t0)
                    return
            self.progress.say("retry", name, f"attempt {attempt + 1} of {retries} after an infrastructure fault")

    def _host_check(self, pool_host: PoolHost, c: dict[str, Any], tag: str, exc: BaseException) -> None:
        """After a failed attempt: stop quietly if the run is being interrupted; raise HostLost if the
        pool host itself is gone (the failure is then not the candidate's)."""
        if self.stop.is_set():
            raise Stopped()
        ok, why = pool_host.executor.healthy()
        if ok:
            return
        message = f"host {pool_host.name} ({pool_host.spec.address}) stopped answering ({why}) during " \
                  f"{tag}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self._record_retry(c, f"{tag}@{pool_host.name}", "host-lost", message, "")
        self.progress.say("hosts", pool_host.name, f"LOST: {message[:200]}; its job moves to another host")
        raise HostLost(message)

    def _record_retry(self, c: dict[str, Any], tag: str, status: str, message: str, excerpt: str) -> None:
        with self.folder._lock:
            c.setdefault("retries", []).append({"attempt": tag, "status": status, "message": message[:500],
                                                "excerpt": excerpt[-3000:], "at": now_iso()})
            self.folder.save()

    def measure_all(self, preps: list[Prepared], initramfs: Initramfs, vmm: Path) -> None:
        reps = self.cfg.repetitions
        rounds = reps.warmup + reps.counted
        live = [p for p in preps if p.alive]
        done = {p.candidate.name: self._rounds_done(p.candidate.name) for p in live}
        # Interleaved (A B C, B C A, C A B, ...): every round has every candidate, and rotating the
        # order keeps a candidate off a fixed position in the round (and off a fixed pool host).
        jobs = [self._job(p, r, "warmup" if r < reps.warmup else "counted", initramfs, vmm)
                for r in range(rounds) for p in _rotated(live, r) if r not in done[p.candidate.name]]
        self.progress.plan(len(jobs))
        self._dispatch(jobs)
        # Adaptive repetitions: more rounds for candidates whose interval is still wide.
        r = max([rounds] + [max(d) + 1 for d in done.values() if d])
        while reps.target_ci_pct > 0:
            wide = [p for p in live if p.alive and self._needs_more(p)]
            if not wide or not any(h.status == OK for h in self.hosts):
                break
            self.progress.plan(self.progress.total_steps + len(wide))
            self._dispatch([self._job(p, r, "counted", initramfs, vmm) for p in wide])
            r += 1
        for prep in live:
            c = self.folder.candidate(prep.candidate.name)
            n = len(c["runs"])
            if reps.target_ci_pct <= 0:
                why = f"fixed count of {reps.counted}"
            elif n >= reps.max_counted:
                why = f"reached max_counted={reps.max_counted}"
            else:
                why = f"95% interval narrower than {reps.target_ci_pct}% of the median"
            c["stop_reason"] = why if prep.alive else "candidate failed"
        self.folder.save()

    def _job(self, prep: Prepared, round_idx: int, kind: str, initramfs: Initramfs, vmm: Path) -> Job:
        return Job(prep.candidate.name, round_idx, kind, alive=lambda: prep.alive, payload=(prep, initramfs, vmm))

    def _dispatch(self, jobs: list[Job]) -> None:
        def run_job(host: PoolHost, job: Job) -> None:
            prep, initramfs, vmm = job.payload
            self.measure_once(prep, initramfs, vmm, host, job.kind, job.round)

        left = dispatch(jobs, self.hosts, run_job, self.stop)
        self._save_hosts()
        gone = "; ".join(f"{h.name}: {h.reason}" for h in self.hosts if h.status == LOST)
        for job in left:
            prep = job.payload[0]
            if prep.alive:
                self._fail(prep, "run", "infra-error", f"no test host left to run round {job.round} ({gone}); "
                           f"measured rounds are kept, continue with --resume", gone)

    def _save_hosts(self) -> None:
        with self.folder._lock:
            self.folder.results["hosts"] = [h.as_dict() for h in self.hosts]
        self.folder.save()

    def _rounds_done(self, name: str) -> set[int]:
        c = self.folder.candidate(name)
        return {int(x["round"]) for x in c.get("runs", []) + c.get("warmup_runs", [])}

    def _needs_more(self, prep: Prepared) -> bool:
        runs = self.folder.candidate(prep.candidate.name)["runs"]
        if len(runs) >= self.cfg.repetitions.max_counted:
            return False
        s = summarize([x["metrics"]["boot_s"] for x in runs], self.cfg.report.bootstrap_resamples)
        return s.ci_width_pct > self.cfg.repetitions.target_ci_pct


def run_pipeline(cfg: Config, only: list[str] | None = None, progress: Progress | None = None,
                 run_id: str | None = None, resume: Path | None = None, wait_for_lock: bool = True) -> RunFolder:
    """Run every selected candidate through every stage; return the run folder.

    With `resume`, continue that run: finished counted and warm-up repetitions
    are kept, candidates that already failed stay failed, the rest is redone
    (fetch, patch and build come back from the caches).
    """
    progress = progress or Progress()
    if resume:
        folder = RunFolder.open(resume)
        order = folder.results.get("candidate_order", [])
        cands = [cfg.candidate(n) for n in order if n in {c.name for c in cfg.candidates}]
        folder.results.setdefault("resumed", []).append(now_iso())
        folder.results["status"] = "running"
    else:
        cands = selected_candidates(cfg, only)
        folder = RunFolder.create(cfg.runs_dir, run_id)
        folder.results.update({"baseline": cfg.baseline, "config": str(cfg.source),
                               "candidate_order": [c.name for c in cands],
                               "candidate_specs": {c.name: {"tree": c.tree, "description": c.description,
                                                            "changes": [{"kind": ch.kind, "value": ch.value}
                                                                        for ch in c.changes],
                                                            "role": c.role,
                                                            "compare_to": c.compare_to or cfg.baseline,
                                                            "workload": vars(cfg.workload_of(c))}
                                                   for c in cands},
                               "settings": {"alpha": cfg.report.alpha, "min_effect_pct": cfg.report.min_effect_pct,
                                            "bootstrap_resamples": cfg.report.bootstrap_resamples,
                                            "base_url": cfg.report.base_url,
                                            "compare_across_kinds": cfg.report.compare_across_kinds}})
        for c in cands:
            folder.candidate(c.name)
    folder.save()
    progress.say("run", "-", f"{'resuming' if resume else 'run'} {folder.run_id} in {folder.path}")
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    runner = Runner(cfg, folder, progress)
    try:
        with cache_lock(cfg.cache_dir, f"run {folder.run_id}", wait=wait_for_lock):
            runner.hosts = check_pool(cfg.hosts, cfg.test_host.accelerator, str(cfg.cache_dir),
                                      cfg.report.compare_across_kinds)
            runner._save_hosts()
            for h in runner.hosts:
                progress.say("hosts", h.name, f"{h.spec.address}: {h.status}: {h.reason}")
            usable = [h for h in runner.hosts if h.status == OK]
            if not usable:
                raise InfraError("no usable test host:\n  " + "\n  ".join(f"{h.name} ({h.spec.address}): {h.reason}"
                                                                          for h in runner.hosts))
            runner.distcc, notes = distcc_hosts(runner.hosts, compiler_version())
            for note in notes:
                progress.say("build", "-", f"distcc {note}")
            folder.results["distcc"] = {"hosts": list(runner.distcc), "notes": notes}
            accel = usable[0].accel
            progress.workers = len(usable)
            progress.say("boot", "-", f"accelerator: {accel[2]}")
            preps = runner.prepare_all(cands)
            runner.record_config_differences(preps)
            folder.write_metadata(collect_metadata(cfg, accel, runner.trees))
            if any(p.alive for p in preps):
                initramfs = build_initramfs(cfg.test_host.initramfs_recipe, cfg.cache_dir,
                                            folder.log_path("_host", "initramfs.log"))
                vmm = build_vmm(cfg.cache_dir, folder.log_path("_host", "vmm.log"))
                runner.measure_all(preps, initramfs, vmm)
        folder.results["status"] = "finished"
    except (KeyboardInterrupt, Interrupted) as exc:
        folder.results["status"] = "interrupted"
        folder.results["status_detail"] = (f"stopped by {type(exc).__name__} {exc}".strip()
                                           + f"; continue with: python -m pipeline run --resume {folder.path}")
        raise
    except PipelineError as exc:
        folder.results["status"] = "error"
        folder.results["status_detail"] = str(exc)
        raise
    finally:
        if runner.hosts:
            runner._save_hosts()
        for h in runner.hosts:
            h.executor.close()
        LocalExecutor.kill_all()
        signal.signal(signal.SIGTERM, old_term)
        folder.results["finished"] = now_iso()
        folder.save()
    return folder
