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

Builds run confined (pipeline.sandbox) unless the config says the patches
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

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .config import KernelConfig
from .errors import InfraError, UserError
from .fetch import sha256_file
from .gitutil import git
from .patch import PatchedTree
from .proc import CommandResult, CommandTimeout, run
from .safefs import UnsafeArtifact, copy_regular, read_regular_text, remove_tree
from .sandbox import BUILD_USER, INSIDE_FRAGMENTS, INSIDE_SRC, Sandbox, forget_owner, remove_planted_config

log = logging.getLogger(__name__)
BUILD_LAYOUT_VERSION = "3"  # 2: shared in-place slots, reproducible version, sandbox paths; 3: trust boundary
MIN_FREE_BYTES = 3 * 1024**3  # a tinyconfig build dir is ~170 MB; sources and ccache need the rest
_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$|^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_ERROR_RE = re.compile(r"(error:|Error \d+|undefined reference|\*\*\*)")


class BuildFailed(UserError):
    def __init__(self, message: str, excerpt: str, status: str = "build-failed"):
        self.excerpt = excerpt
        self.status = status  # build-failed, or build-timeout when it ran past kernel.build_timeout_s
        super().__init__(f"{message}\n{excerpt}")


class BuildInfraFailed(InfraError):
    """The build failed because the machine did (out of disk, out of memory, processes killed): not the
    patch's fault, so never reported as build-failed."""

    status = "infra-error"

    def __init__(self, message: str, excerpt: str):
        self.excerpt = excerpt
        super().__init__(f"{message}\n{excerpt}")


# What a compiler or make prints when the machine, not the source, failed.
_INFRA_RE = re.compile(r"(No space left on device|Disk quota exceeded|Killed signal terminated program|"
                       r"virtual memory exhausted|Cannot allocate memory|out of memory allocating|"
                       r"fork: Resource temporarily unavailable|cannot fork)")
LOW_DISK_BYTES = 512 * 1024**2


class ConfigOptionDropped(BuildFailed):
    """olddefconfig silently dropped options the fragments asked for."""


@dataclass(frozen=True)
class BuildArtifacts:
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


def config_differences(base_config: Path, config: Path) -> list[str]:
    """Options whose value differs between two final .config files, as 'CONFIG_X: old -> new'."""
    base = parse_config(base_config.read_text())
    other = parse_config(config.read_text())
    return [f"{k}: {base.get(k, 'n')} -> {other.get(k, 'n')}"
            for k in sorted(set(base) | set(other)) if base.get(k, "n") != other.get(k, "n")]


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X -> value ('n' for 'is not set')."""
    out = {}
    for line in text.splitlines():
        m = _OPTION_RE.match(line.strip())
        if m:
            if m.group(1):
                out[m.group(1)] = m.group(2)
            else:
                out[m.group(3)] = "n"
    return out


def compiler_version() -> str:
    return run(["gcc", "--version"]).output.splitlines()[0]


def build_key(tree_id: str, kernel: KernelConfig, fragments: tuple[Path, ...], compiler: str) -> str:
    h = hashlib.sha256()
    for part in (BUILD_LAYOUT_VERSION, tree_id, kernel.base, compiler):
        h.update(part.encode() + b"\0")
    for frag in fragments:
        h.update(frag.read_bytes() + b"\0")
    return h.hexdigest()


def _unmet_dependency(worktree: Path, option: str) -> str:
    """The `depends on` lines of an option's Kconfig entry, to explain why it was dropped."""
    sym = option.removeprefix("CONFIG_")
    res = git(["grep", "-n", "-A12", f"^config {sym}$", "--", "*Kconfig*"], worktree, check=False)
    deps = []
    for line in res.output.splitlines()[1:]:
        body = line.split("-", 2)[-1].strip() if "-" in line else line
        if body.startswith(("config ", "menuconfig ", "endmenu", "choice")):
            break
        if body.startswith("depends on"):
            deps.append(body)
    return "; ".join(deps) or "no 'depends on' found; it may be selected by another option or be a choice"


def check_config(worktree: Path, final: dict[str, str], fragments: tuple[Path, ...]) -> None:
    """Every option a fragment sets must survive olddefconfig."""
    dropped = []
    for frag in fragments:
        for opt, want in parse_config(frag.read_text()).items():
            have = final.get(opt, "n")
            if have != want:
                dropped.append(f"{opt}={want} (got {have}) from {frag.name}: {_unmet_dependency(worktree, opt)}")
    if dropped:
        raise ConfigOptionDropped("kernel config: options dropped by olddefconfig", "\n".join(dropped))


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


def slot_path(cache_dir: Path, kernel: KernelConfig, fragments: tuple[Path, ...]) -> Path:
    """The build slot shared by every candidate built with this config, whatever its tree or commit
    (they all live in one object store): switching between commits of one history rebuilds only what
    differs, so a bisection builds each step in place."""
    h = hashlib.sha256()
    for part in (BUILD_LAYOUT_VERSION, kernel.base):
        h.update(part.encode() + b"\0")
    for frag in fragments:
        h.update(frag.read_bytes() + b"\0")
    return cache_dir / "slots" / h.hexdigest()[:16]


def checkout_slot(slot: Path, store: Path, commit: str, log_file: Path | None = None) -> tuple[Path, bool]:
    """Point the slot's source at `commit`, rewriting only the files that differ (make then rebuilds
    only what depends on them). Returns the source path and whether it held another commit."""
    src = slot / "src"
    if (src / ".git").is_file():
        previous = git(["rev-parse", "HEAD"], src, check=False).output.strip()
        gitdir = git(["rev-parse", "--absolute-git-dir"], src, check=False).output.strip()
        if gitdir:
            # A checkout killed midway leaves its lock; the slot is ours alone (the cache lock), so it is stale.
            Path(gitdir, "index.lock").unlink(missing_ok=True)
        res = git(["checkout", "--quiet", "--force", "--detach", commit], src, log_file, check=False)
        if res.returncode == 0:
            git(["clean", "-ffdqx", "-e", "/build/"], src, log_file)
            return src, previous != commit
        log.warning("build slot %s: checkout failed (%s); making it again", slot, res.tail(2))
    if src.exists():
        shutil.rmtree(src)
    git(["worktree", "prune"], store, log_file)
    slot.mkdir(parents=True, exist_ok=True)
    git(["worktree", "add", "--quiet", "--force", "--detach", str(src), commit], store, log_file)
    return src, False


def cached_artifacts(cache_dir: Path, key: str) -> BuildArtifacts | None:
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
                 sandbox: bool | None = None, reuse: bool = True, clean: bool = False) -> BuildArtifacts:
    """Build (or reuse) the kernel for a patched tree. Raises BuildFailed with the error lines.

    distcc_hosts ("HOST:PORT/JOBS") spread compiles over the pool; they do not
    change the artifact key, since the same compiler version is required there.
    `sandbox` defaults to kernel.sandbox; distcc needs the network, so it is
    used only for unconfined builds. `reuse=False` builds even when the
    artifacts are cached; `clean=True` starts from an empty build directory.
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
    wt, switched = checkout_slot(slot, store, patched.commit, None)
    place = _place(slot, wt, cache_dir, confined, patched.trusted or not confined, patched.commit, fragments,
                   clean, switched)
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

    def step(argv: list[str], logf: IO[str]) -> CommandResult:
        return _run_step(argv, box, env, wt, logf, deadline, late)

    with open(log_file, "a", encoding="utf-8") as logf:
        if box:
            who = "user " + BUILD_USER if os.geteuid() == 0 else "this user"
            logf.write(f"# confined: bubblewrap, no network, only the toolchain and this tree visible, as {who}; "
                       + ("trusted: its build directory and ccache are shared\n" if place.trusted else
                          "untrusted: a private copy of the build directory, the ccache read-only\n"))
        steps = [make + [kernel.base]]
        steps.append([str(place.inside / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(place.inside / "build"),
                      str(place.inside / "build/.config"), *map(str, place.fragment_paths)])
        steps.append(make + ["olddefconfig"])
        for argv in steps:
            res = step(argv, logf)
            if res.returncode != 0:
                raise BuildFailed("kernel config step failed", _error_lines(res, 20))
        final = parse_config(_artifact_text(bdir, ".config"))
        check_config(wt, final, fragments)
        res = step(make + ["bzImage"], logf)
        if res.returncode != 0:
            raise BuildFailed("kernel build failed", _error_lines(res))
        warnings = res.warnings
        res = step(make + ["-s", "kernelrelease"], logf)
        if res.returncode != 0:
            raise BuildFailed("make kernelrelease failed", res.tail(10))
        release = (res.output.strip().splitlines() or [""])[-1]
        if not re.fullmatch(r"[A-Za-z0-9._+~-]{1,64}", release):
            raise BuildFailed("make kernelrelease printed no kernel release", res.tail(5))
    seconds = time.monotonic() - start
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


def _artifact_text(bdir: Path, rel: str) -> str:
    try:
        return read_regular_text(bdir, rel)
    except UnsafeArtifact as exc:
        raise BuildFailed("the build did not leave its artifacts as regular files", str(exc)) from None


@dataclass(frozen=True)
class _Place:
    """Where one build runs: its build directory as this process sees it, the sandbox (None when
    unconfined), where the steps see the source, and the config fragments as they see them."""

    slot: Path
    bdir: Path
    box: Sandbox | None
    inside: Path
    trusted: bool
    in_place: bool
    fragment_paths: tuple[Path, ...]

    def done(self) -> None:
        """The build succeeded: a trusted build directory is clean again (an untrusted one never counts)."""
        if self.trusted:
            (self.slot / "building").unlink(missing_ok=True)


def _place(slot: Path, wt: Path, cache_dir: Path, confined: bool, trusted: bool, commit: str,
           fragments: tuple[Path, ...], clean: bool, switched: bool) -> _Place:
    """Choose and ready the build directory. Trusted builds use the slot's own (`src/build`, in place, a
    failure marks it so the next trusted build starts empty); untrusted ones a fresh private copy of it
    (`scratch/`), so whatever they leave reaches no other build."""
    mark = slot / "building"
    trusted_dir = wt / "build"
    ccache = cache_dir / "ccache"
    if trusted:
        if clean or mark.exists():
            remove_tree(trusted_dir)
            forget_owner(slot / "build.owner")
            switched = False
        trusted_dir.mkdir(exist_ok=True)
        mark.write_text(f"{commit}\n")
        bdir = trusted_dir
    else:
        trusted_dir.mkdir(exist_ok=True)  # the mount point the private copy is bound on
        bdir = slot / "scratch"
        switched = _seed_scratch(trusted_dir, bdir, not clean and not mark.exists())
        forget_owner(slot / "scratch.owner")
        (slot / "scratch.commit").write_text(f"{commit}\n")
    if not confined:
        ccache.mkdir(parents=True, exist_ok=True)
        remove_planted_config(ccache)
        forget_owner(slot / "build.owner", cache_dir / "ccache.owner")
        return _Place(slot, bdir, None, wt, True, switched, fragments)
    frag_dir = slot / "fragments"
    remove_tree(frag_dir)
    frag_dir.mkdir(parents=True)
    inside_frags = []
    for i, frag in enumerate(fragments):
        name = f"{i:02d}-{frag.name}"
        shutil.copyfile(frag, frag_dir / name)
        inside_frags.append(INSIDE_FRAGMENTS / name)
    frag_dir.chmod(0o755)
    box = Sandbox(wt, bdir, ccache, ccache_writable=trusted, fragments=frag_dir, hide=(cache_dir.resolve(),))
    box.prepare(slot / ("build.owner" if trusted else "scratch.owner"), cache_dir / "ccache.owner")
    return _Place(slot, bdir, box, INSIDE_SRC, trusted, switched, tuple(inside_frags))


def _seed_scratch(trusted_dir: Path, scratch: Path, seed: bool) -> bool:
    """A private build directory for an untrusted build: a copy of the trusted one (mtimes kept, so make
    rebuilds only what the candidate's checkout rewrote) or, with `seed` False, an empty one."""
    remove_tree(scratch)
    if seed and trusted_dir.is_dir() and any(trusted_dir.iterdir()):
        run(["cp", "-a", "--reflink=auto", "--no-target-directory", str(trusted_dir), str(scratch)], timeout=600)
        return True
    scratch.mkdir()
    return False


def _run_step(argv: list[str], box: Sandbox | None, env: dict[str, str], wt: Path, logf: IO[str], deadline: float,
              late: str) -> CommandResult:
    """One build step, confined when `box` is given, within what is left before `deadline`; running past
    it is BuildFailed with status build-timeout and the message `late`. A step that failed because the
    machine did (disk full, memory exhausted, compilers killed) raises BuildInfraFailed instead."""
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise CommandTimeout(CommandResult(argv, -9, ""), 0)
        res = run(box.wrap(argv, env) if box else argv, cwd=wt, env=None if box else env, log_file=logf,
                  check=False, timeout=left, keep_lines=5000)
    except CommandTimeout as exc:
        raise BuildFailed(late, exc.result.tail(20), "build-timeout") from None
    if res.returncode != 0:
        free = shutil.disk_usage(wt).free
        hit = _INFRA_RE.search(res.output)
        if free < LOW_DISK_BYTES or hit or res.returncode in (-9, 137):
            why = (f"only {free / 1024**2:.0f} MiB free on the build's disk" if free < LOW_DISK_BYTES else
                   f"'{hit.group(1)}'" if hit else "the build was killed (SIGKILL: out of memory?)")
            raise BuildInfraFailed(f"the build failed because the machine did ({why}); not the patch's fault, "
                                   f"free space or memory and run again", _error_lines(res, 15))
    return res


def _error_lines(res: CommandResult, lines: int = 25) -> str:
    """The lines of a failed build that say what failed, or its tail when none does."""
    errors = [line for line in res.output.splitlines() if _ERROR_RE.search(line)]
    return "\n".join(errors[-lines:]) or res.tail(lines)


def run_in_slot(patched: PatchedTree, kernel: KernelConfig, base_fragments: tuple[Path, ...], cache_dir: Path,
                log_file: Path, subdir: str, steps_for: Callable[[Path, Path], list[list[str]]],
                timeout_s: float = 1800) -> Path:
    """Run more build steps (a selftest, say) in the candidate's build slot, confined and trusted exactly as
    its kernel build is (an untrusted candidate's steps run in its own private copy of the build directory).
    `steps_for(src, out)` gets the source and an output directory under build/ as the steps see them;
    returns the build directory as this process sees it (the output is `subdir` in it: take files from it
    with safefs, never by path)."""
    fragments = base_fragments + patched.config_fragments
    slot = slot_path(cache_dir, kernel, fragments)
    wt, switched = checkout_slot(slot, patched.tree.store, patched.commit, None)
    trusted = patched.trusted or not kernel.sandbox
    if trusted:
        bdir = wt / "build"
        bdir.mkdir(exist_ok=True)
        box, inside = (None, wt) if not kernel.sandbox else (
            Sandbox(wt, bdir, cache_dir / "ccache", fragments=None, hide=(cache_dir.resolve(),)), INSIDE_SRC)
        if box:
            box.prepare(slot / "build.owner", cache_dir / "ccache.owner")
        else:
            forget_owner(slot / "build.owner")
    else:
        mine = (slot / "scratch.commit").read_text().strip() if (slot / "scratch.commit").exists() else ""
        if mine != patched.commit or not (slot / "scratch").is_dir():
            _place(slot, wt, cache_dir, True, False, patched.commit, fragments, False, switched)
        bdir = slot / "scratch"
        box = Sandbox(wt, bdir, cache_dir / "ccache", ccache_writable=False, hide=(cache_dir.resolve(),))
        box.prepare(slot / "scratch.owner", cache_dir / "ccache.owner")
        inside = INSIDE_SRC
    remove_tree(bdir / subdir)
    env = {"LC_ALL": "C", "KBUILD_BUILD_TIMESTAMP": "2000-01-01"}
    deadline = time.monotonic() + timeout_s
    with open(log_file, "a", encoding="utf-8") as logf:
        for argv in steps_for(inside, inside / "build" / subdir):
            res = _run_step(argv, box, env, wt, logf, deadline, f"still running after {timeout_s:.0f} s; stopped")
            if res.returncode != 0:
                raise BuildFailed(f"{subdir} build failed", _error_lines(res))
    return bdir
