"""build: configure and build a candidate's kernel, out of tree, cached by content.

The build directory is `<worktree>/build`, so kbuild sees the source tree as
`..` and ccache hits across candidates' worktrees. Artifacts are cached under
`<cache>/builds/<key>/`, where the key covers everything that decides them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .config import KernelConfig
from .errors import InfraError, UserError
from .gitutil import git
from .patch import PatchedTree
from .proc import run

BUILD_LAYOUT_VERSION = "1"
MIN_FREE_BYTES = 3 * 1024**3  # a tinyconfig build dir is ~170 MB; sources and ccache need the rest
_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$|^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_ERROR_RE = re.compile(r"(error:|Error \d+|undefined reference|\*\*\*)")


class BuildFailed(UserError):
    def __init__(self, message: str, excerpt: str):
        self.excerpt = excerpt
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

    def as_dict(self) -> dict:
        return {"key": self.key, "dir": str(self.dir), "bzimage": str(self.bzimage),
                "kernel_release": self.kernel_release, "seconds": round(self.seconds, 2),
                "warnings": self.warnings, "cached": self.cached, "log": str(self.log)}


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


def compile_env(cache_dir: Path, worktree: Path, local_jobs: int,
                distcc_hosts: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str], int]:
    """Environment, make arguments and -j for compiling in `worktree`: ccache always (when installed),
    distcc behind it when pool hosts offer it (ccache hits never leave this machine)."""
    env = {
        "CCACHE_DIR": str(cache_dir / "ccache"),
        "CCACHE_BASEDIR": str(worktree),
        "CCACHE_NOHASHDIR": "1",
        "CCACHE_MAXSIZE": "5G",
        "KBUILD_BUILD_TIMESTAMP": "2000-01-01",
        "KBUILD_BUILD_USER": "kpipe",
        "KBUILD_BUILD_HOST": "kpipe",
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


def build_kernel(patched: PatchedTree, kernel: KernelConfig, base_fragments: tuple[Path, ...],
                 cache_dir: Path, log_file: Path, distcc_hosts: tuple[str, ...] = ()) -> BuildArtifacts:
    """Build (or reuse) the kernel for a patched tree. Raises BuildFailed with the error lines.

    distcc_hosts ("HOST:PORT/JOBS") spread compiles over the pool; they do not
    change the artifact key, since the same compiler version is required there.
    """
    wt = patched.worktree.path
    fragments = base_fragments + patched.config_fragments
    tree_id = git(["rev-parse", "HEAD^{tree}"], wt).output.strip()
    key = build_key(tree_id, kernel, fragments, compiler_version())
    out = cache_dir / "builds" / key[:20]
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return BuildArtifacts(key, out, out / "bzImage", out / "config", out / "System.map",
                              meta["kernel_release"], meta["seconds"], meta["warnings"], True, out / "build.log")
    _check_disk(cache_dir)
    start = time.monotonic()
    bdir = wt / "build"
    bdir.mkdir(exist_ok=True)
    env, cc_args, jobs = compile_env(cache_dir, wt, kernel.make_jobs or os.cpu_count() or 1, distcc_hosts)
    make = ["make", "-C", str(wt), "O=build", f"-j{jobs}", *cc_args]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8") as logf:
        steps = [make + [kernel.base]]
        steps.append([str(wt / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(bdir),
                      str(bdir / ".config"), *map(str, fragments)])
        steps.append(make + ["olddefconfig"])
        for argv in steps:
            res = run(argv, cwd=wt, env=env, log_file=logf, check=False)
            if res.returncode != 0:
                raise BuildFailed("kernel config step failed", res.tail(20))
        final = parse_config((bdir / ".config").read_text())
        check_config(wt, final, fragments)
        res = run(make + ["bzImage"], cwd=wt, env=env, log_file=logf, check=False)
        if res.returncode != 0:
            errors = [line for line in res.output.splitlines() if _ERROR_RE.search(line)]
            raise BuildFailed("kernel build failed", "\n".join(errors[-25:]) or res.tail(25))
        warnings = sum(1 for line in res.output.splitlines() if "warning:" in line)
        release = run(make + ["-s", "kernelrelease"], cwd=wt, env=env).output.strip().splitlines()[-1]
    seconds = time.monotonic() - start
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(bdir / "arch/x86/boot/bzImage", tmp / "bzImage")
    shutil.copy2(bdir / ".config", tmp / "config")
    shutil.copy2(bdir / "System.map", tmp / "System.map")
    shutil.copy2(log_file, tmp / "build.log")
    (tmp / "meta.json").write_text(json.dumps({"kernel_release": release, "seconds": seconds,
                                               "warnings": warnings, "tree_id": tree_id}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return BuildArtifacts(key, out, out / "bzImage", out / "config", out / "System.map", release, seconds,
                          warnings, False, out / "build.log")
