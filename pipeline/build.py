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
from .sandbox import BUILD_USER, INSIDE_CCACHE, INSIDE_SRC, Sandbox, forget_owner

log = logging.getLogger(__name__)
BUILD_LAYOUT_VERSION = "2"  # 2: shared in-place slots, reproducible version, sandbox paths
MIN_FREE_BYTES = 3 * 1024**3  # a tinyconfig build dir is ~170 MB; sources and ccache need the rest
_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$|^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_ERROR_RE = re.compile(r"(error:|Error \d+|undefined reference|\*\*\*)")


class BuildFailed(UserError):
    def __init__(self, message: str, excerpt: str, status: str = "build-failed"):
        self.excerpt = excerpt
        self.status = status  # build-failed, or build-timeout when it ran past kernel.build_timeout_s
        super().__init__(f"{message}\n{excerpt}")


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
    artifacts are cached; `clean=True` empties the slot's build directory first.
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
    bdir = wt / "build"
    mark = slot / "building"  # present while a build runs: a crash or failure leaves it behind
    if clean or mark.exists():
        shutil.rmtree(bdir, ignore_errors=True)
        switched = False
    bdir.mkdir(exist_ok=True)
    mark.write_text(f"{patched.commit}\n")
    box, inside = _confine(wt, bdir, cache_dir, confined)
    if box:
        distcc_hosts = ()
    else:
        (cache_dir / "ccache").mkdir(parents=True, exist_ok=True)
        forget_owner(bdir, cache_dir / "ccache")
    env, cc_args, jobs = compile_env(cache_dir, inside, kernel.make_jobs or os.cpu_count() or 1, distcc_hosts)
    if box:
        env["CCACHE_DIR"] = str(INSIDE_CCACHE)
    make = ["make", "-C", str(inside), "O=build", f"-j{jobs}", *cc_args]
    deadline = time.monotonic() + kernel.build_timeout_s
    log_file.parent.mkdir(parents=True, exist_ok=True)

    late = f"kernel build still running after kernel.build_timeout_s = {kernel.build_timeout_s} s; stopped"

    def step(argv: list[str], logf: IO[str]) -> CommandResult:
        return _run_step(argv, box, env, wt, logf, deadline, late)

    with open(log_file, "a", encoding="utf-8") as logf:
        if box:
            logf.write("# confined: bubblewrap, no network, read-only except build/ and ccache, "
                       f"as {'user ' + BUILD_USER if os.geteuid() == 0 else 'this user'}\n")
        steps = [make + [kernel.base]]
        steps.append([str(inside / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(inside / "build"),
                      str(inside / "build/.config"), *map(str, _fragment_paths(fragments, box, bdir))])
        steps.append(make + ["olddefconfig"])
        for argv in steps:
            res = step(argv, logf)
            if res.returncode != 0:
                raise BuildFailed("kernel config step failed", res.tail(20))
        final = parse_config((bdir / ".config").read_text())
        check_config(wt, final, fragments)
        res = step(make + ["bzImage"], logf)
        if res.returncode != 0:
            raise BuildFailed("kernel build failed", _error_lines(res))
        warnings = sum(1 for line in res.output.splitlines() if "warning:" in line)
        res = step(make + ["-s", "kernelrelease"], logf)
        if res.returncode != 0:
            raise BuildFailed("make kernelrelease failed", res.tail(10))
        release = res.output.strip().splitlines()[-1]
    mark.unlink()
    seconds = time.monotonic() - start
    out = cache_dir / "builds" / key[:20]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(bdir / "arch/x86/boot/bzImage", tmp / "bzImage")
    shutil.copy2(bdir / ".config", tmp / "config")
    shutil.copy2(bdir / "System.map", tmp / "System.map")
    shutil.copy2(log_file, tmp / "build.log")
    digest = sha256_file(tmp / "bzImage")
    (tmp / "meta.json").write_text(json.dumps({"kernel_release": release, "seconds": seconds,
                                               "warnings": warnings, "tree_id": tree_id, "image_sha256": digest,
                                               "sandboxed": bool(box), "in_place": switched}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return BuildArtifacts(key, out, out / "bzImage", out / "config", out / "System.map", release, seconds,
                          warnings, False, out / "build.log", digest, bool(box), switched)


def _confine(wt: Path, bdir: Path, cache_dir: Path, confined: bool) -> tuple[Sandbox | None, Path]:
    """The sandbox for a build in this slot (None when unconfined) and where the steps see the source."""
    if not confined:
        return None, wt
    box = Sandbox(wt, bdir, cache_dir / "ccache")
    box.prepare()
    return box, INSIDE_SRC


def _run_step(argv: list[str], box: Sandbox | None, env: dict[str, str], wt: Path, logf: IO[str], deadline: float,
              late: str) -> CommandResult:
    """One build step, confined when `box` is given, within what is left before `deadline`; running past
    it is BuildFailed with status build-timeout and the message `late`."""
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise CommandTimeout(CommandResult(argv, -9, ""), 0)
        return run(box.wrap(argv, env) if box else argv, cwd=wt, env=None if box else env, log_file=logf,
                   check=False, timeout=left)
    except CommandTimeout as exc:
        raise BuildFailed(late, exc.result.tail(20), "build-timeout") from None


def _error_lines(res: CommandResult) -> str:
    """The lines of a failed build that say what failed, or its tail when none does."""
    errors = [line for line in res.output.splitlines() if _ERROR_RE.search(line)]
    return "\n".join(errors[-25:]) or res.tail(25)


def _fragment_paths(fragments: tuple[Path, ...], box: Sandbox | None, bdir: Path) -> list[Path]:
    """Config fragments as the build sees them: copied into the build directory when confined
    (the sandbox shows nothing of this machine's files it does not need)."""
    if not box:
        return list(fragments)
    dest = bdir / ".kpipe-fragments"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    out = []
    for i, frag in enumerate(fragments):
        copy = dest / f"{i:02d}-{frag.name}"
        shutil.copyfile(frag, copy)
        out.append(INSIDE_SRC / "build" / ".kpipe-fragments" / copy.name)
    return out


def run_in_slot(patched: PatchedTree, kernel: KernelConfig, base_fragments: tuple[Path, ...], cache_dir: Path,
                log_file: Path, subdir: str, steps_for: Callable[[Path, Path], list[list[str]]],
                timeout_s: float = 1800) -> Path:
    """Run more build steps (a selftest, say) in the candidate's build slot, confined like the kernel build.
    `steps_for(src, out)` gets the source and an output directory under build/ as the steps see them;
    returns that output directory as this process sees it."""
    fragments = base_fragments + patched.config_fragments
    slot = slot_path(cache_dir, kernel, fragments)
    wt, _ = checkout_slot(slot, patched.tree.store, patched.commit, None)
    bdir = wt / "build"
    bdir.mkdir(exist_ok=True)
    out_real = bdir / subdir
    shutil.rmtree(out_real, ignore_errors=True)
    box, inside = _confine(wt, bdir, cache_dir, kernel.sandbox)
    env = {"LC_ALL": "C", "KBUILD_BUILD_TIMESTAMP": "2000-01-01"}
    deadline = time.monotonic() + timeout_s
    with open(log_file, "a", encoding="utf-8") as logf:
        for argv in steps_for(inside, inside / "build" / subdir):
            res = _run_step(argv, box, env, wt, logf, deadline, f"still running after {timeout_s:.0f} s; stopped")
            if res.returncode != 0:
                raise BuildFailed(f"{subdir} build failed", _error_lines(res))
    return out_real
