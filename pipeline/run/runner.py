"""The runner only orders the stages: fetch -> patch -> build -> boot -> run, and resumes a run.

What each stage does lives in its own module (prepare, measure, metadata); the
run folder (results) owns what is recorded.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

from pipeline.candidates import Candidate
from pipeline.config import Config
from pipeline.errors import InfraError, PipelineError, UserError
from pipeline.machines.executor import LocalExecutor
from pipeline.machines.pool import OK, PoolHost, check_pool, distcc_hosts
from pipeline.records.results import RunFolder, now_iso
from pipeline.run.lava_runtime import lava_pool
from pipeline.run.measure import Measurer
from pipeline.run.metadata import collect_metadata
from pipeline.run.prepare import Preparer
from pipeline.stages.build import compiler_version
from pipeline.stages.initramfs import build_initramfs
from pipeline.util.lock import cache_lock
from pipeline.util.progress import Progress
from pipeline.workloads.flash import build_vmm


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so every cleanup path runs."""


def _on_sigterm(hosts: list[PoolHost]) -> Callable[[int, object], None]:
    """SIGTERM ends the test hosts first, then unwinds: a command running in a test host (fabric waits
    for its output) ends with its host instead of holding the interruption up for minutes."""

    def handler(signum: int, frame: object) -> None:
        LocalExecutor.kill_now()
        for h in list(hosts):
            if not isinstance(h.executor, LocalExecutor):
                h.executor.abort()  # drops the link; the tether ends QEMU there
        raise Interrupted(f"signal {signum}")

    return handler


def selected_candidates(cfg: Config, only: list[str] | None) -> list[Candidate]:
    """The candidates `--only` names (their references added), in config order; all by default."""
    if not only:
        return list(cfg.candidates)
    names = set(only) | {cfg.baseline}
    unknown = set(only) - {c.name for c in cfg.candidates}
    if unknown:
        raise UserError(f"--only: no candidate named {', '.join(sorted(unknown))}; candidates: "
                        f"{', '.join(c.name for c in cfg.candidates)}")
    names |= {c.compare_to for c in cfg.candidates if c.name in names and c.compare_to}
    return [c for c in cfg.candidates if c.name in names]




def _worth_measuring(cfg: Config, preps: list) -> bool:
    """False when every candidate that is not only a reference (the baseline, a compare_to target) has
    failed: measuring the references alone would answer nothing (triage of a series that does not apply)."""
    references = {cfg.baseline} | {p.candidate.compare_to for p in preps if p.candidate.compare_to}
    subjects = [p for p in preps if p.candidate.name not in references]
    return not subjects or any(p.alive for p in subjects)


def _new_folder(cfg: Config, cands: list[Candidate], run_id: str | None) -> RunFolder:
    folder = RunFolder.create(cfg.runs_dir, run_id)
    folder.update(
        baseline=cfg.baseline, config=str(cfg.source), candidate_order=[c.name for c in cands],
        candidate_specs={c.name: {"tree": c.tree, "description": c.description,
                                  "changes": [{"kind": ch.kind, "value": ch.value} for ch in c.changes],
                                  "role": c.role, "compare_to": c.compare_to or cfg.baseline,
                                  "workload": vars(cfg.workload_of(c))} for c in cands},
        settings={"alpha": cfg.report.alpha, "min_effect_pct": cfg.report.min_effect_pct,
                  "looks": cfg.repetitions.looks, "censor_factor": cfg.repetitions.censor_factor,
                  "base_url": cfg.report.base_url,
                  "compare_across_kinds": cfg.report.compare_across_kinds},
        workloads=[w.as_dict() for w in cfg.workloads])
    for c in cands:
        folder.candidate(c.name)
    return folder


def _usable_hosts(cfg: Config, progress: Progress) -> list[PoolHost]:
    if cfg.runtime == "lava":
        hosts = lava_pool(cfg)
        for h in hosts:
            progress.say("hosts", h.name, f"{cfg.lava.url}: {h.status}: {h.reason or h.accel.reason}")
        return hosts
    hosts = check_pool(cfg.hosts, cfg.test_host.accelerator, str(cfg.cache_dir), cfg.report.compare_across_kinds)
    for h in hosts:
        progress.say("hosts", h.name, f"{h.spec.address}: {h.status}: {h.reason}")
    return hosts


def run_pipeline(cfg: Config, only: list[str] | None = None, progress: Progress | None = None,
                 run_id: str | None = None, resume: Path | None = None, wait_for_lock: bool = True) -> RunFolder:
    """Run every selected candidate through every stage; return the run folder.

    With `resume`, continue that run: finished counted and warm-up repetitions
    are kept, candidates that already failed stay failed, the rest is redone
    (fetch, patch and build come back from the caches). The cache lock is taken
    before the run folder is read, so a resume that waits for another run never
    writes back a stale copy of it.
    """
    progress = progress or Progress()
    with cache_lock(cfg.cache_dir, f"run {resume.name if resume else (run_id or 'new')}", wait=wait_for_lock):
        if resume:
            folder = RunFolder.open(resume)
            order = folder.results.get("candidate_order", [])
            cands = [cfg.candidate(n) for n in order if n in {c.name for c in cfg.candidates}]
            folder.update(resumed=folder.results.get("resumed", []) + [now_iso()], status="running")
        else:
            cands = selected_candidates(cfg, only)
            folder = _new_folder(cfg, cands, run_id)
        progress.say("run", "-", f"{'resuming' if resume else 'run'} {folder.run_id} in {folder.path}")
        _run_locked(cfg, folder, cands, progress)
    return folder


def _run_locked(cfg: Config, folder: RunFolder, cands: list[Candidate], progress: Progress) -> None:
    hosts: list[PoolHost] = []
    old_term = signal.signal(signal.SIGTERM, _on_sigterm(hosts))
    try:
        hosts.extend(_usable_hosts(cfg, progress))  # the same list the SIGTERM handler sees
        folder.update(hosts=[h.as_dict() for h in hosts])
        usable = [h for h in hosts if h.status == OK]
        if not usable:
            raise InfraError("no usable test host:\n  " + "\n  ".join(f"{h.name} ({h.spec.address}): {h.reason}"
                                                                      for h in hosts))
        distcc, notes = distcc_hosts(hosts, compiler_version())
        for note in notes:
            progress.say("build", "-", f"distcc {note}")
        folder.update(distcc={"hosts": list(distcc), "notes": notes})
        accel = usable[0].accel
        progress.workers = len(usable)
        progress.say("boot", "-", f"accelerator: {accel.reason}")
        preparer = Preparer(cfg, folder, progress, distcc)
        measurer = Measurer(cfg, folder, progress, hosts, threading.Event(), preparer.fail)
        preps = preparer.prepare_all(cands)
        preparer.record_config_differences(preps)
        folder.write_metadata(collect_metadata(cfg, accel, preparer.trees))
        if not _worth_measuring(cfg, preps):
            progress.say("run", "-", "no candidate besides the references can be measured: nothing to compare, "
                                     "the references are not measured either")
        elif any(p.alive for p in preps):
            with progress.heartbeat("build", "-", "the test host's initramfs and the workload's VMM"):
                initramfs = build_initramfs(cfg.test_host.initramfs_recipe, cfg.cache_dir,
                                            folder.log_path("_host", "initramfs.log"))
                vmm = build_vmm(cfg.cache_dir, folder.log_path("_host", "vmm.log"))
            progress.say("build", "-", "test host's initramfs and the VMM ready; measuring")
            measurer.measure_all(preps, initramfs, vmm)
        folder.update(status="finished")
    except (KeyboardInterrupt, Interrupted) as exc:
        folder.update(status="interrupted",
                      status_detail=(f"stopped by {type(exc).__name__} {exc}".strip()
                                     + f"; continue with: python -m pipeline run --resume {folder.path}"))
        raise
    except PipelineError as exc:
        folder.update(status="error", status_detail=str(exc))
        raise
    finally:
        if hosts:
            folder.update(hosts=[h.as_dict() for h in hosts])
        for h in hosts:
            h.executor.close()  # a local executor stops the test hosts it started, and only those
        signal.signal(signal.SIGTERM, old_term)
        folder.update(finished=now_iso())
