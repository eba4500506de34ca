"""build: configure and build a candidate's kernel, incrementally in place, cached by content.

Candidates built with the same kernel config share one build slot,
`<cache>/slots/<id>/`: a checkout of the object store (`src/`) with the build
directory inside it (`src/build`, so kbuild sees the source as `..`). Switching
the slot to a candidate's commit rewrites only the files that differ, so make
recompiles only what depends on them. A build that fails or is interrupted
leaves a mark and the next build in that slot starts from an empty build
directory (ccache makes that cheap), so a broken series never poisons the
next. The build settings are reproducible (timestamp, user, host, version),
so a kernel built in place is byte for byte the one a clean build gives.

Artifacts are cached under `<cache>/builds/<key>/`, where the key covers
everything that decides them: a candidate whose source tree, config and
compiler were built before needs no checkout at all.

Builds run confined (pipeline.stages.sandbox) unless the config says the patches
are trusted.

The trust boundary. A build is *trusted* when it is unconfined (the config
says its patches are trusted) or when its source is exactly a commit of a
tree the config names, unpatched. Every other build is untrusted, and
nothing it writes is later executed, followed or read as configuration by
anything outside it, nor by another candidate's build:

- it builds in a private copy of the slot's build directory (`scratch/`,
  seeded from the trusted one, so a one-file series still compiles one
  file); the trusted build directory (`src/build`) is not even visible to it;
- it reads the shared ccache and adds nothing to it (read-only mount,
  CCACHE_READONLY); ccache's configuration is pinned for every build
  (CCACHE_CONFIGPATH), never read from the cache directory;
- its artifacts are taken only as regular files, opened component by
  component without following links, hashed after the copy (safefs);
- the stamps and marks the pipeline keeps live outside every directory a
  build can write.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.config import KernelConfig
from pipeline.errors import InfraError
from pipeline.stages.fetch import sha256_file
from pipeline.stages.kconfig import check_config, configured_commit, parse_config
from pipeline.stages.patch import PatchedTree
from pipeline.stages.sandbox import (
    BUILD_USER,
)
from pipeline.stages.slots import BUILD_LAYOUT_VERSION, checkout_slot, place_build, slot_path
from pipeline.stages.steps import BuildFailed, error_lines, run_step
from pipeline.util.gitutil import git
from pipeline.util.proc import CommandResult, run
from pipeline.util.progress import BuildCounter, Progress
from pipeline.util.safefs import UnsafeArtifact, copy_regular, read_regular_text, remove_tree

log = logging.getLogger(__name__)

# Steps and seconds of a cold build of the shipped configs (named by slot id), so even the first build on
# a new machine says how far it is: tinyconfig + kvm-host.config on linux-source-6.1 (6.1.192), here.
KNOWN_BUILDS = Path(__file__).parent / "known-builds"
MIN_FREE_BYTES = 3 * 1024**3  # a tinyconfig build dir is ~170 MB; sources and ccache need the rest

@dataclass(frozen=True)
class BuildArtifacts:
    """What a build left that the run uses: bzImage, .config, System.map, release, warnings, digest."""

    key: str
    dir: Path
    bzimage: Path
    config: Path
    system_map: Path
    kernel_release: str
    seconds: float
    warnings: int
    cached: bool
    log: Path
    image_sha256: str = ""
    sandboxed: bool = False
    in_place: bool = False  # built incrementally in a slot that held another commit

    def as_dict(self) -> dict:
        return {"key": self.key, "dir": str(self.dir), "bzimage": str(self.bzimage),
                "kernel_release": self.kernel_release, "seconds": round(self.seconds, 2),
                "warnings": self.warnings, "cached": self.cached, "log": str(self.log),
                "image_sha256": self.image_sha256, "sandboxed": self.sandboxed, "in_place": self.in_place}

def compiler_version() -> str:
    """The compiler's first version line: part of every build key."""
    return run(["gcc", "--version"]).output.splitlines()[0]

def build_key(tree_id: str, kernel: KernelConfig, fragments: tuple[Path, ...], compiler: str) -> str:
    """The content key of a build: tree, kernel config and fragments' bytes, and compiler."""
    h = hashlib.sha256()
    for part in (BUILD_LAYOUT_VERSION, tree_id, kernel.base, compiler):
        h.update(part.encode() + b"\0")
    for frag in fragments:
        h.update(frag.read_bytes() + b"\0")
    return h.hexdigest()

def _check_disk(path: Path) -> None:
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise InfraError(f"only {free / 1024**3:.1f} GiB free under {path}; a kernel build needs about "
                         f"{MIN_FREE_BYTES / 1024**3:.0f} GiB (free space or move the cache with KPIPE_CACHE_DIR)")

def compile_env(cache_dir: Path, src: Path, local_jobs: int,
                distcc_hosts: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str], int]:
    """Environment, make arguments and -j for compiling the source at `src` (as the build sees it):
    ccache always (when installed), distcc behind it when pool hosts offer it (ccache hits never
    leave this machine). Reproducible: fixed timestamp, user, host and build number."""
    env = {
        "CCACHE_DIR": str(cache_dir / "ccache"),
        "CCACHE_CONFIGPATH": "/dev/null",  # never a ccache.conf from the (build-writable) cache directory
        "CCACHE_BASEDIR": str(src),
        "CCACHE_NOHASHDIR": "1",
        # Depend mode: a miss runs the compiler once and takes the header list from its -MMD output, where
        # the default mode runs the preprocessor first, twice on a miss (cold compiles of kernel/ and mm/
        # on this machine: 58.6-61.7 s against 41.1-44.2 s plain make, 44.8-48.6 s in depend mode; warm:
        # 99.6% hits either way).
        "CCACHE_DEPEND": "1",
        "CCACHE_MAXSIZE": "5G",
        "KBUILD_BUILD_TIMESTAMP": "2000-01-01",
        "KBUILD_BUILD_USER": "kpipe",
        "KBUILD_BUILD_HOST": "kpipe",
        "KBUILD_BUILD_VERSION": "1",
        "LC_ALL": "C",
    }
    have_ccache = shutil.which("ccache") is not None
    cc = "ccache gcc" if have_ccache else "gcc"
    jobs = local_jobs
    if distcc_hosts:
        if not shutil.which("distcc"):
            raise InfraError("distcc is configured for the pool but not installed here: apt-get install distcc")
        env["DISTCC_HOSTS"] = " ".join(([f"localhost/{local_jobs}"] if local_jobs else []) + list(distcc_hosts))
        env["DISTCC_DIR"] = str(cache_dir / "distcc")  # locks and back-off state; distcc needs it to exist
        (cache_dir / "distcc").mkdir(parents=True, exist_ok=True)
        if have_ccache:
            env["CCACHE_PREFIX"] = "distcc"
        else:
            cc = "distcc gcc"
        jobs = local_jobs + sum(int(h.rsplit("/", 1)[1]) for h in distcc_hosts)
    return env, [f"CC={cc}", "HOSTCC=gcc"], max(1, jobs)

def cached_artifacts(cache_dir: Path, key: str) -> BuildArtifacts | None:
    """The artifacts cached under `key`, or None when any is missing or its digest differs."""
    out = cache_dir / "builds" / key[:20]
    meta_path = out / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None  # a torn entry from an old crash: built again
    return BuildArtifacts(key, out, out / "bzImage", out / "config", out / "System.map", meta["kernel_release"],
                          meta["seconds"], meta["warnings"], True, out / "build.log",
                          meta.get("image_sha256", ""), meta.get("sandboxed", False), meta.get("in_place", False))

def build_kernel(patched: PatchedTree, kernel: KernelConfig, base_fragments: tuple[Path, ...],
                 cache_dir: Path, log_file: Path, distcc_hosts: tuple[str, ...] = (), *,
                 sandbox: bool | None = None, reuse: bool = True, clean: bool = False,
                 progress: Progress | None = None, label: str = "") -> BuildArtifacts:
    """Build (or reuse) the kernel for a patched tree. Raises BuildFailed with the error lines.

    distcc_hosts ("HOST:PORT/JOBS") spread compiles over the pool; they do not
    change the artifact key, since the same compiler version is required there.
    `sandbox` defaults to kernel.sandbox; distcc needs the network, so it is
    used only for unconfined builds. `reuse=False` builds even when the
    artifacts are cached; `clean=True` starts from an empty build directory.
    `progress` gets a line every 10 s while make runs (steps compiled, of the total a build of this
    config from an empty directory took, with an ETA), labelled `label`.
    """
    confined = kernel.sandbox if sandbox is None else sandbox
    fragments = base_fragments + patched.config_fragments
    store = patched.tree.store
    tree_id = git(["rev-parse", f"{patched.commit}^{{tree}}"], store).output.strip()
    key = build_key(tree_id, kernel, fragments, compiler_version())
    hit = cached_artifacts(cache_dir, key) if reuse else None
    if hit:
        return hit
    _check_disk(cache_dir)
    start = time.monotonic()
    slot = slot_path(cache_dir, kernel, fragments)
    # A cold slot's checkout (and an untrusted build's private copy) takes seconds: said, not silent.
    ready = progress.heartbeat("build", label, "checking out the tree into its build slot") if progress \
        else contextlib.nullcontext()
    with ready:
        wt, switched = checkout_slot(slot, store, patched.commit, None)
        place = place_build(slot, wt, cache_dir, confined, patched.trusted or not confined, patched.commit,
                            fragments, clean, switched)
    bdir, box = place.bdir, place.box
    if box:
        distcc_hosts = ()
    env, cc_args, jobs = compile_env(cache_dir, place.inside, kernel.make_jobs or os.cpu_count() or 1, distcc_hosts)
    if box:
        env.update(box.ccache_env())
    make = ["make", "-C", str(place.inside), "O=build", f"-j{jobs}", *cc_args]
    deadline = time.monotonic() + kernel.build_timeout_s
    log_file.parent.mkdir(parents=True, exist_ok=True)

    late = f"kernel build still running after kernel.build_timeout_s = {kernel.build_timeout_s} s; stopped"

    counter = BuildCounter(*_expected_steps(slot, place.in_place))
    if progress:  # the slot took seconds; the first heartbeat comes 8 s from now: say where it stands
        progress.say("build", label, f"build directory ready in {time.monotonic() - start:.0f} s{counter.plan()}")

    def step(argv: list[str], logf: IO[str]) -> CommandResult:
        return run_step(argv, box, env, wt, logf, deadline, late, counter.line)

    live = bool(progress and progress.live)
    beat = progress.heartbeat("build", label, "compiling" + (" in place" if place.in_place else ""),
                              detail=lambda: counter.detail(bar=live)) if progress else contextlib.nullcontext()
    with beat, open(log_file, "a", encoding="utf-8") as logf:
        if box:
            who = "user " + BUILD_USER if os.geteuid() == 0 else "this user"
            logf.write(f"# confined: bubblewrap, no network, only the toolchain and this tree visible, as {who}; "
                       + ("trusted: its build directory and ccache are shared\n" if place.trusted else
                          "untrusted: a private copy of the build directory, the ccache read-only\n"))
        configured = configured_commit(slot, store, patched.commit) if place.in_place else None
        if configured:
            logf.write(f"# .config kept: made for {configured[:12]}, and no Kconfig file, config fragment or "
                       "script differs from it (make bzImage re-syncs it all the same)\n")
        else:
            steps = [make + [kernel.base]]
            steps.append([str(place.inside / "scripts/kconfig/merge_config.sh"), "-m", "-O",
                          str(place.inside / "build"), str(place.inside / "build/.config"),
                          *map(str, place.fragment_paths)])
            steps.append(make + ["olddefconfig"])
            for argv in steps:
                res = step(argv, logf)
                if res.returncode != 0:
                    raise BuildFailed("kernel config step failed", error_lines(res, 20))
            if place.trusted:
                (slot / "config.commit").write_text(patched.commit + "\n")
        final = parse_config(_artifact_text(bdir, ".config"))
        check_config(wt, final, fragments)
        res = step(make + ["bzImage"], logf)
        if res.returncode != 0:
            raise BuildFailed("kernel build failed", error_lines(res))
        warnings = res.warnings
        res = step(make + ["-s", "kernelrelease"], logf)
        if res.returncode != 0:
            raise BuildFailed("make kernelrelease failed", res.tail(10))
        release = (res.output.strip().splitlines() or [""])[-1]
        if not re.fullmatch(r"[A-Za-z0-9._+~-]{1,64}", release):
            raise BuildFailed("make kernelrelease printed no kernel release", res.tail(5))
    seconds = time.monotonic() - start
    if not place.in_place:  # what the next build of this config from an empty directory will take
        (slot / "clean-build.json").write_text(json.dumps({"steps": counter.count, "seconds": round(seconds, 1)}))
    out = cache_dir / "builds" / key[:20]
    tmp = out.with_name(out.name + ".tmp")
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    try:
        for rel, name in (("arch/x86/boot/bzImage", "bzImage"), (".config", "config"), ("System.map", "System.map")):
            copy_regular(bdir, rel, tmp / name)
    except UnsafeArtifact as exc:
        remove_tree(tmp)
        raise BuildFailed("the build did not leave its artifacts as regular files", str(exc)) from None
    place.done()
    shutil.copyfile(log_file, tmp / "build.log")
    digest = sha256_file(tmp / "bzImage")
    (tmp / "meta.json").write_text(json.dumps({"kernel_release": release, "seconds": seconds,
                                               "warnings": warnings, "tree_id": tree_id, "image_sha256": digest,
                                               "sandboxed": bool(box), "in_place": place.in_place,
                                               "trusted": place.trusted}))
    remove_tree(out)
    os.replace(tmp, out)
    return BuildArtifacts(key, out, out / "bzImage", out / "config", out / "System.map", release, seconds,
                          warnings, False, out / "build.log", digest, bool(box), place.in_place)

def _expected_steps(slot: Path, in_place: bool) -> tuple[int, float]:
    """(steps, seconds) of the last build of this slot's config from an empty directory; (0, 0) when
    unknown, or for an in-place build (which compiles only what changed)."""
    if in_place:
        return 0, 0.0
    for known in (slot / "clean-build.json", KNOWN_BUILDS / f"{slot.name}.json"):
        try:
            data = json.loads(known.read_text())
            return int(data["steps"]), float(data["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0, 0.0


def _artifact_text(bdir: Path, rel: str) -> str:
    try:
        return read_regular_text(bdir, rel)
    except UnsafeArtifact as exc:
        raise BuildFailed("the build did not leave its artifacts as regular files", str(exc)) from None
