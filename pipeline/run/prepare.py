"""fetch -> patch -> build for every candidate, recording each stage; a failure ends only that candidate."""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from pipeline.candidates import Candidate
from pipeline.config import Config, KernelConfig
from pipeline.errors import PipelineError, UserError
from pipeline.records.results import PASS, RunFolder
from pipeline.run.repetition import Prepared
from pipeline.stages.build import build_kernel, compiler_version
from pipeline.stages.fetch import FetchedTree, fetch_tree, retire_old_layout, sha256_file
from pipeline.stages.kconfig import config_differences
from pipeline.stages.patch import PatchedTree, PatchFailed, apply_changes
from pipeline.stages.patchcheck import UnsafePatch, check_changes
from pipeline.stages.slots import run_in_slot
from pipeline.stages.steps import BuildFailed
from pipeline.util.progress import Progress
from pipeline.util.safefs import UnsafeArtifact, copy_regular
from pipeline.workloads.extra import ExtraWorkload
from pipeline.workloads.kinds import KINDS
from pipeline.workloads.selftest import SelftestKind


class Preparer:
    """Fetch, patch and build every candidate, recording each stage; a failure ends only its candidate."""

    def __init__(self, cfg: Config, folder: RunFolder, progress: Progress, distcc: tuple[str, ...] = ()):
        self.cfg = cfg
        self.folder = folder
        self.progress = progress
        self.distcc = distcc
        self.trees: dict[str, FetchedTree] = {}
        retire_old_layout(cfg.cache_dir)

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
                self._check_identical(prep, preps)
        return preps

    def _check_identical(self, prep: Prepared, preps: list[Prepared]) -> None:
        """A kernel image, command line and workload identical to its reference's cannot measure
        differently: say so and do not measure it (a comment-only series answered in seconds)."""
        cand = prep.candidate
        if cand.name == self.cfg.baseline or prep.artifacts is None or not prep.artifacts.image_sha256:
            return
        ref_name = cand.compare_to or self.cfg.baseline
        ref = next((p for p in preps if p.candidate.name == ref_name and p.alive and p.artifacts), None)
        if ref is None or ref.artifacts is None or ref.artifacts.image_sha256 != prep.artifacts.image_sha256:
            return
        if cand.cmdline != ref.candidate.cmdline or self.cfg.workload_of(cand) != self.cfg.workload_of(ref.candidate):
            return
        if any(sha256_file(prep.extras[n]) != sha256_file(ref.extras[n]) for n in prep.extras):
            return  # the same kernel, but a workload built from the tree differs
        prep.alive = False
        detail = (f"binary-identical to {ref_name}: the same kernel image (sha256 {prep.artifacts.image_sha256[:16]}), "
                  f"command line and workload, so it cannot change the measurement; not measured")
        self.folder.set_status(cand.name, "identical", detail)
        self.folder.update_candidate(cand.name, identical_to=ref_name)
        self.progress.say("build", cand.name, detail)

    def _share(self, cand: Candidate, twin: Prepared) -> Prepared:
        assert twin.patched and twin.artifacts
        patched = dataclasses.replace(twin.patched, cmdline=cand.cmdline)
        prep = Prepared(cand, patched=patched, artifacts=twin.artifacts, extras=dict(twin.extras))
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
            self.fail(prep, "patch", "patch-failed", str(exc), str(exc))
            return prep
        t0 = time.monotonic()
        try:
            fetched = self.trees.get(cand.tree)
            if fetched is None:
                self.progress.say("fetch", name, f"tree {cand.tree}")
                with self.progress.heartbeat("fetch", name, f"fetching or importing tree {cand.tree}"):
                    fetched = fetch_tree(self.cfg.trees[cand.tree], self.cfg.cache_dir,
                                         self.folder.log_path("_trees", f"{cand.tree}.log"))
                self.trees[cand.tree] = fetched
                self.progress.say("fetch", name, f"tree {cand.tree} at {fetched.commit[:12]} "
                                  f"({'reused' if fetched.reused else 'imported'} in {fetched.seconds:.1f} s)")
            self.folder.record_stage(name, "fetch", {"status": PASS, "tree": cand.tree, "origin": fetched.origin,
                                                     "commit": fetched.commit, "reused": fetched.reused,
                                                     "seconds": round(fetched.seconds, 2)})
        except UserError as exc:
            self.fail(prep, "fetch", "infra-error", str(exc), str(exc))
            return prep
        try:
            prep.patched = apply_changes(cand, fetched, log_file)
        except UnsafePatch as exc:
            self.fail(prep, "patch", "patch-failed", str(exc), str(exc), {"log": self.folder.relative(log_file)})
            return prep
        except PatchFailed as exc:
            self.fail(prep, "patch", "patch-failed", str(exc), exc.git_message,
                       {"location": exc.location, "change": f"{exc.change.kind}: {exc.change.value}",
                        "log": self.folder.relative(log_file)})
            return prep
        self.folder.record_stage(name, "patch", {"status": PASS, "seconds": round(time.monotonic() - t0, 2),
                                                 "log": self.folder.relative(log_file),
                                                 **prep.patched.as_dict()})
        self.progress.say("patch", name, f"{len(cand.changes)} change(s) -> {prep.patched.commit[:12]}")
        build_log = self.folder.log_path(name, "build.log")
        self.progress.say("build", name, "building kernel (cached by content)")
        try:
            prep.artifacts = build_kernel(prep.patched, self.cfg.kernel, self.cfg.kernel.fragments,
                                          self.cfg.cache_dir, build_log, self.distcc, progress=self.progress,
                                          label=name)
        except BuildFailed as exc:
            self.fail(prep, "build", exc.status, str(exc).splitlines()[0], exc.excerpt,
                       {"log": self.folder.relative(build_log)})
            return prep
        except (PipelineError, OSError) as exc:  # the machine's (sandbox, disk, git), never the patch's
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.fail(prep, "build", "infra-error", f"{type(exc).__name__}: {message}",
                      getattr(exc, "excerpt", str(exc)), {"log": self.folder.relative(build_log)})
            return prep
        try:
            prep.extras = self._build_extras(prep, build_log)
        except UserError as exc:  # BuildFailed among them
            self.fail(prep, "build", getattr(exc, "status", "build-failed"), str(exc).splitlines()[0],
                      getattr(exc, "excerpt", str(exc)), {"log": self.folder.relative(build_log)})
            return prep
        except (PipelineError, OSError) as exc:
            self.fail(prep, "build", "infra-error", f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                      getattr(exc, "excerpt", str(exc)), {"log": self.folder.relative(build_log)})
            return prep
        art = prep.artifacts
        if art.cached and art.log.exists() and not build_log.exists():
            shutil.copy2(art.log, build_log)
        self.folder.record_stage(name, "build", {"status": PASS, **art.as_dict(),
                                                 "log": self.folder.relative(build_log)})
        how = "cached" if art.cached else f"built {'in place ' if art.in_place else ''}in {art.seconds:.0f} s"
        self.progress.say("build", name, f"{art.kernel_release}: {how}{', confined' if art.sandboxed else ''}, "
                          f"{art.warnings} warnings")
        return prep


    def _build_extras(self, prep: Prepared, log_file: Path) -> dict[str, Path]:
        """The other workloads' files for this candidate: those of kinds built from the candidate's tree (KVM
        selftests) built from its own, the others' from their kind."""
        assert prep.patched
        files: dict[str, Path] = {}
        for w in self.cfg.workloads_for(prep.candidate):
            if KINDS[w.kind].from_candidate_tree:
                self.progress.say("build", prep.candidate.name, f"workload {w.name}: {w.test} from this tree")
                with self.progress.heartbeat("build", prep.candidate.name, f"building {w.test}"):
                    files[w.name], cached = build_selftest(w, prep.patched, self.cfg.kernel,
                                                           self.cfg.kernel.fragments, self.cfg.cache_dir, log_file)
                self.progress.say("build", prep.candidate.name,
                                  f"workload {w.name}: {'cached' if cached else 'built'} {files[w.name].name}")
            else:
                files[w.name] = KINDS[w.kind].local_file(w, self.cfg.cache_dir)
        return files

    def record_config_differences(self, preps: list[Prepared]) -> None:
        """Each built candidate's final .config against the baseline's, for the report."""
        base = next((p for p in preps if p.candidate.name == self.cfg.baseline and p.artifacts), None)
        if base is None or base.artifacts is None:
            return
        for prep in preps:
            if prep.artifacts is None or prep is base:
                continue
            diff = config_differences(base.artifacts.config, prep.artifacts.config)
            self.folder.update_stage(prep.candidate.name, "build", config_diff=diff)

    def fail(self, prep: Prepared, stage: str, status: str, message: str, excerpt: str,
             extra: dict | None = None) -> None:
        """End a candidate at `stage`; later stages are recorded as skipped, the others carry on."""
        prep.alive = False
        self.folder.fail(prep.candidate.name, stage, status, message, excerpt, extra)
        self.progress.say(stage, prep.candidate.name, f"FAILED ({status}): {message.splitlines()[0][:120]}")


def build_selftest(w: ExtraWorkload, patched: PatchedTree, kernel: KernelConfig, base_fragments: tuple[Path, ...],
                   cache_dir: Path, log_file: Path) -> tuple[Path, bool]:
    """Build (or reuse) a selftest binary from the candidate's own tree, in its build slot, confined."""
    key = SelftestKind.key(w, patched.tree.store, patched.commit, compiler_version())
    dest = cache_dir / "selftests" / key[:20] / w.test
    if dest.exists():
        return dest, True
    bdir = run_in_slot(patched, kernel, base_fragments, cache_dir, log_file, "kselftest-kvm",
                       lambda src, outdir: SelftestKind.build_argv(w, src, outdir))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:  # the build's output, taken only as a regular file it made (never through a link it left)
        copy_regular(bdir, f"kselftest-kvm/{w.test}", tmp, max_bytes=256 << 20)
    except UnsafeArtifact as exc:
        raise BuildFailed(f"workloads {w.name}: {w.test} was not built as a regular file", str(exc)) from None
    os.chmod(tmp, 0o755)
    tmp.replace(dest)
    return dest, False
