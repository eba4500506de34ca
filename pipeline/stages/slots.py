"""slots: where kernels are built. One slot per kernel config (`<cache>/slots/<id>/`): a checkout of the
object store (`src/`), the trusted build directory inside it (`src/build`) and, for untrusted builds, a
private copy of it (`scratch/`); see build.py for the trust boundary these places draw."""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import KernelConfig
from pipeline.stages.fetch import seed_path
from pipeline.stages.patch import PatchedTree
from pipeline.stages.sandbox import INSIDE_FRAGMENTS, INSIDE_SRC, Sandbox, forget_owner, remove_planted_config
from pipeline.stages.steps import BuildFailed, error_lines, run_step
from pipeline.util.gitutil import git
from pipeline.util.proc import run
from pipeline.util.safefs import remove_tree

log = logging.getLogger(__name__)

BUILD_LAYOUT_VERSION = "3"  # 2: shared in-place slots, reproducible version, sandbox paths; 3: trust boundary

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
    seed = seed_path(store, commit)
    if not seed.is_dir() or (seed / ".git").exists():  # git add never took a .git: not the commit's tree
        git(["worktree", "add", "--quiet", "--force", "--detach", str(src), commit], store, log_file)
        return src, False
    # The tree extracted when the tarball was imported is this commit's files already: moved in, and the
    # index made from the commit and refreshed against them (hashing is quicker than writing 1.5 GB).
    git(["worktree", "add", "--quiet", "--force", "--no-checkout", "--detach", str(src), commit], store, log_file)
    for entry in seed.iterdir():
        entry.rename(src / entry.name)
    seed.rmdir()
    git(["reset", "--quiet", "--mixed", commit], src, log_file)
    dirty = git(["status", "--porcelain", "--untracked-files=no", "--ignored=no"], src, log_file).output.strip()
    if dirty:  # never expected: the seed is the import's own tree; a checkout makes it exact all the same
        log.warning("build slot %s: the imported tree differs from its commit (%s); checking it out", slot,
                    dirty.splitlines()[0])
        git(["checkout", "--quiet", "--force", "--detach", commit], src, log_file)
        git(["clean", "-ffdqx", "-e", "/build/"], src, log_file)
    return src, False

@dataclass(frozen=True)
class Place:
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

def place_build(slot: Path, wt: Path, cache_dir: Path, confined: bool, trusted: bool, commit: str,
           fragments: tuple[Path, ...], clean: bool, switched: bool) -> Place:
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
        switched = seed_scratch(trusted_dir, bdir, not clean and not mark.exists())
        forget_owner(slot / "scratch.owner")
        (slot / "scratch.commit").write_text(f"{commit}\n")
    if not confined:
        ccache.mkdir(parents=True, exist_ok=True)
        remove_planted_config(ccache)
        forget_owner(slot / "build.owner", cache_dir / "ccache.owner")
        return Place(slot, bdir, None, wt, True, switched, fragments)
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
    return Place(slot, bdir, box, INSIDE_SRC, trusted, switched, tuple(inside_frags))

def seed_scratch(trusted_dir: Path, scratch: Path, seed: bool) -> bool:
    """A private build directory for an untrusted build: a copy of the trusted one (mtimes kept, so make
    rebuilds only what the candidate's checkout rewrote) or, with `seed` False, an empty one."""
    remove_tree(scratch)
    if seed and trusted_dir.is_dir() and any(trusted_dir.iterdir()):
        run(["cp", "-a", "--reflink=auto", "--no-target-directory", str(trusted_dir), str(scratch)], timeout=600)
        return True
    scratch.mkdir()
    return False

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
            place_build(slot, wt, cache_dir, True, False, patched.commit, fragments, False, switched)
        bdir = slot / "scratch"
        box = Sandbox(wt, bdir, cache_dir / "ccache", ccache_writable=False, hide=(cache_dir.resolve(),))
        box.prepare(slot / "scratch.owner", cache_dir / "ccache.owner")
        inside = INSIDE_SRC
    remove_tree(bdir / subdir)
    env = {"LC_ALL": "C", "KBUILD_BUILD_TIMESTAMP": "2000-01-01"}
    deadline = time.monotonic() + timeout_s
    with open(log_file, "a", encoding="utf-8") as logf:
        for argv in steps_for(inside, inside / "build" / subdir):
            res = run_step(argv, box, env, wt, logf, deadline, f"still running after {timeout_s:.0f} s; stopped")
            if res.returncode != 0:
                raise BuildFailed(f"{subdir} build failed", error_lines(res))
    return bdir
