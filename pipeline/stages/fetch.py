"""fetch: kernel trees into one shared git object store (checked out only by the build slots).

A tree is a git URL or local path plus a ref, or a source tarball (Debian's
linux-source) imported into git once, deterministically: the same tarball
always yields the same commit ID, kept under refs/kpipe/tarballs/<sha256>.

The tree extracted for an import is kept as that commit's *seed*
(`<cache>/git/seeds/<commit>`): the first build slot made for the commit takes
it over by renaming instead of checking 1.5 GB out of the store again (33 s of
a cold run on this machine). A seed no slot took is removed an hour later.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import git as gitpython

from pipeline.candidates import Tree
from pipeline.errors import UserError
from pipeline.util.gitutil import git
from pipeline.util.proc import CommandFailed, run

log = logging.getLogger(__name__)

IMPORT_DATE = "2000-01-01T00:00:00+0000"  # fixed, so an import is reproducible
SEED_TTL_S = 3600  # a seed no build slot took over within this long is removed


@dataclass(frozen=True)
class FetchedTree:
    """A tree in the shared object store: its commit, where it came from and whether it is trusted."""

    name: str
    commit: str
    store: Path
    origin: str  # URL, path or tarball, for the report
    seconds: float
    reused: bool
    trusted: bool = True  # the config's own tree (Tree.trusted)


def object_store(cache_dir: Path) -> Path:
    """The bare repository every tree and candidate shares; created on first use."""
    store = cache_dir / "git" / "store.git"
    if not (store / "HEAD").exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        gitpython.Repo.init(store, bare=True)
        # gc runs only when we say so (never in the middle of a run).
        with gitpython.Repo(store).config_writer() as cw:
            cw.set_value("gc", "auto", "0")
            cw.set_value("core", "logAllRefUpdates", "false")
    return store


def retire_old_layout(cache_dir: Path) -> None:
    """Caches made before build slots held one 1.5 GB worktree per candidate: remove them once."""
    old = cache_dir / "worktrees"
    if old.is_dir():
        log.info("removing %s (one checkout per candidate is no longer used)", old)
        shutil.rmtree(old, ignore_errors=True)
        store = cache_dir / "git" / "store.git"
        if (store / "HEAD").exists():
            git(["worktree", "prune"], store, check=False)


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seed_path(store: Path, commit: str) -> Path:
    """Where the tree extracted for `commit`'s import waits for the first build slot (see the module doc)."""
    return store.parent / "seeds" / commit


def _drop_stale_seeds(store: Path) -> None:
    seeds = store.parent / "seeds"
    if not seeds.is_dir():
        return
    now = time.time()
    for seed in seeds.iterdir():
        with contextlib.suppress(OSError):
            if now - seed.lstat().st_mtime > SEED_TTL_S:
                log.info("removing %s: no build slot took it over", seed)
                shutil.rmtree(seed, ignore_errors=True)


def fetch_tree(tree: Tree, cache_dir: Path, log_file: Path | None = None) -> FetchedTree:
    """Make `tree` available in the shared store and return its commit."""
    store = object_store(cache_dir)
    _drop_stale_seeds(store)
    start = time.monotonic()
    if tree.tarball:
        commit, reused = _import_tarball(tree, store, log_file)
        origin = str(tree.tarball)
    else:
        commit, reused = _fetch_git(tree, store, log_file)
        origin = f"{tree.git} {tree.ref}"
    return FetchedTree(tree.name, commit, store, origin, time.monotonic() - start, reused, tree.trusted)


def _fetch_git(tree: Tree, store: Path, log_file: Path | None) -> tuple[str, bool]:
    assert tree.git and tree.ref
    repo = gitpython.Repo(store)
    ref = f"refs/kpipe/trees/{tree.name}"
    # A full SHA already present needs no network at all.
    if len(tree.ref) == 40:
        try:
            return repo.commit(tree.ref).hexsha, True
        except (gitpython.BadName, ValueError):
            pass
    try:
        git(["fetch", "--no-tags", "--force", "--", tree.git, f"{tree.ref}:{ref}"], store, log_file, timeout=3600)
    except CommandFailed as exc:
        raise UserError(f"trees.{tree.name}: cannot fetch {tree.ref!r} from {tree.git}: "
                        f"{exc.result.tail(3)}\nCheck the URL or path and the ref (branch, tag or SHA); "
                        "without network, point 'git' at a local clone or use a 'tarball'.") from None
    return repo.commit(ref).hexsha, False


def _import_tarball(tree: Tree, store: Path, log_file: Path | None) -> tuple[str, bool]:
    assert tree.tarball
    digest = sha256_file(tree.tarball)
    ref = f"refs/kpipe/tarballs/{digest}"
    repo = gitpython.Repo(store)
    try:
        return repo.commit(ref).hexsha, True
    except (gitpython.BadName, ValueError):
        pass
    log.info("importing %s into git (once per tarball)", tree.tarball)
    with tempfile.TemporaryDirectory(prefix="kpipe-import-", dir=store.parent) as tmp:
        tmpdir = Path(tmp)
        top = _extract(tree.tarball, tmpdir)
        env = {"GIT_DIR": str(store), "GIT_WORK_TREE": str(top), "GIT_INDEX_FILE": str(tmpdir / "index")}
        # -f: Debian's tarball ships a .gitignore that ignores everything at the top.
        git(["add", "-f", "-A", "."], top, log_file, env=env)
        tree_id = git(["write-tree"], top, env=env).output.strip()
        dated = {**env, "GIT_AUTHOR_DATE": IMPORT_DATE, "GIT_COMMITTER_DATE": IMPORT_DATE}
        message = f"Import {tree.tarball.name}\n\nsha256: {digest}\n"
        commit = git(["commit-tree", tree_id, "-m", message], top, env=dated).output.strip()
        seed = seed_path(store, commit)
        seed.parent.mkdir(exist_ok=True)
        shutil.rmtree(seed, ignore_errors=True)
        top.rename(seed)  # the checkout the first build slot would make again (same filesystem: a rename)
        os.utime(seed)  # its age counts from now (see _drop_stale_seeds)
        git(["update-ref", ref, commit], store, log_file)
    return commit, False


def _extract(tarball: Path, dest: Path) -> Path:
    """Extract with tar (fast) after checking no member escapes dest; return the top directory."""
    with tarfile.open(tarball) as tf:
        first = None
        for member in tf:
            name = member.name
            if name.startswith("/") or ".." in Path(name).parts:
                raise UserError(f"{tarball}: member {name!r} points outside the tree; refusing it")
            first = first or name.split("/")[0]
            break
    run(["tar", "-xf", tarball, "-C", dest, "--no-same-owner", "--no-same-permissions"])
    tops = [p for p in dest.iterdir() if p.is_dir() and p.name != "index"]
    if len(tops) == 1 and first and tops[0].name == first:
        return tops[0]
    return dest
