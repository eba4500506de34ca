"""fetch stage: tarball imports are deterministic and reused; git URLs and paths; clear errors."""
from __future__ import annotations

import tarfile
import time
from pathlib import Path

import pytest
from conftest import git

from pipeline.candidates import Tree
from pipeline.errors import UserError
from pipeline.stages.fetch import fetch_tree


def make_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "linux-source-0.1"
    (src / "kernel").mkdir(parents=True)
    (src / "kernel" / "a.c").write_text("int a;\n")
    (src / "Makefile").write_text("all:\n")
    (src / "scripts").mkdir()
    (src / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (src / "scripts" / "run.sh").chmod(0o755)
    # Debian's tarball ignores everything at the top level; the import must not care.
    (src / ".gitignore").write_text("/*\n")
    tb = tmp_path / "linux-source-0.1.tar.xz"
    with tarfile.open(tb, "w:xz") as tf:
        tf.add(src, arcname="linux-source-0.1")
    return tb


def test_tarball_import_is_deterministic_and_reused(tmp_path: Path) -> None:
    tb = make_tarball(tmp_path)
    first = fetch_tree(Tree("t", tarball=tb), tmp_path / "cache1")
    again = fetch_tree(Tree("t", tarball=tb), tmp_path / "cache1")
    elsewhere = fetch_tree(Tree("t", tarball=tb), tmp_path / "cache2")
    assert not first.reused and again.reused
    assert first.commit == again.commit == elsewhere.commit
    assert git(first.store, "show", f"{first.commit}:kernel/a.c") == "int a;\n"
    assert git(first.store, "ls-tree", first.commit, "scripts/run.sh").startswith("100755")


def test_git_url_and_ref(small_repo: Path, tmp_path: Path) -> None:
    v1 = git(small_repo, "rev-parse", "v1").strip()
    fetched = fetch_tree(Tree("s", git=f"file://{small_repo}", ref="v1"), tmp_path / "cache")
    assert fetched.commit == v1
    by_sha = fetch_tree(Tree("s2", git=str(small_repo), ref=v1), tmp_path / "cache")
    assert by_sha.commit == v1 and by_sha.reused


def test_unreachable_url_names_tree_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        fetch_tree(Tree("mainline", git=str(tmp_path / "no-such-repo"), ref="v6.1"), tmp_path / "cache")
    assert "trees.mainline" in str(info.value) and "Check the URL" in str(info.value)


def test_unknown_ref_is_a_clear_error(small_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot fetch 'v9.9'"):
        fetch_tree(Tree("s", git=str(small_repo), ref="v9.9"), tmp_path / "cache")


@pytest.mark.slow
def test_real_linux_source_import_and_srcutree_patch(tmp_path: Path) -> None:
    """Import Debian's linux-source-6.1 and apply the regression candidate to kernel/rcu/srcutree.c."""
    from pipeline.candidates import Candidate, Change
    from pipeline.stages.patch import apply_changes

    tb = Path("/usr/src/linux-source-6.1.tar.xz")
    if not tb.exists():
        pytest.skip("apt-get install linux-source-6.1")
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    fetched = fetch_tree(Tree("debian-6.1", tarball=tb), cache)
    first_s = time.monotonic() - t0
    again = fetch_tree(Tree("debian-6.1", tarball=tb), cache)
    assert again.reused and again.commit == fetched.commit
    print(f"import {first_s:.1f} s, reuse {again.seconds:.2f} s")
    patch = Path(__file__).resolve().parent.parent / "patches" / "0001-srcu-v5.19-rc1-expedited-policy-regression.patch"
    patched = apply_changes(Candidate("regression", "debian-6.1", (Change("patch", patch.name, patch),)), fetched)
    assert patched.applied[0].subjects[0].startswith("srcu: bring back the v5.19-rc1")
    print(f"patch stage on the real tree: {patched.seconds:.2f} s")
    text = git(fetched.store, "show", f"{patched.commit}:kernel/rcu/srcutree.c")
    assert "#define SRCU_MAX_NODELAY_PHASE\t1" in text


def test_the_first_build_slot_takes_over_the_imported_tree_and_later_slots_check_out(tmp_path: Path) -> None:
    """The tree extracted for an import becomes the first slot's checkout (a rename, no second write of
    the files); the slot is then exactly the commit, clean, with a working index; a second slot for the
    same commit checks it out from the store as before."""
    from pipeline.stages.fetch import seed_path
    from pipeline.stages.slots import checkout_slot

    tb = make_tarball(tmp_path)
    fetched = fetch_tree(Tree("t", tarball=tb), tmp_path / "cache")
    seed = seed_path(fetched.store, fetched.commit)
    assert (seed / "kernel" / "a.c").is_file()
    marker = (seed / "kernel" / "a.c").stat().st_ino
    src, switched = checkout_slot(tmp_path / "slot1", fetched.store, fetched.commit)
    assert not switched and not seed.exists()
    assert (src / "kernel" / "a.c").stat().st_ino == marker  # the same file, moved, not written again
    assert git(src, "status", "--porcelain", "--untracked-files=all", "--ignored=no") == ""
    assert git(src, "rev-parse", "HEAD").strip() == fetched.commit
    assert (src / "scripts" / "run.sh").stat().st_mode & 0o111
    other, _ = checkout_slot(tmp_path / "slot2", fetched.store, fetched.commit)
    assert (other / "kernel" / "a.c").read_text() == "int a;\n"
    assert git(other, "status", "--porcelain") == ""


def test_a_seed_no_slot_took_is_removed_an_hour_later(tmp_path: Path) -> None:
    import os

    from pipeline.stages.fetch import SEED_TTL_S, seed_path

    tb = make_tarball(tmp_path)
    fetched = fetch_tree(Tree("t", tarball=tb), tmp_path / "cache")
    seed = seed_path(fetched.store, fetched.commit)
    fetch_tree(Tree("t", tarball=tb), tmp_path / "cache")
    assert seed.is_dir()  # young: kept for the slot that will come
    old = time.time() - SEED_TTL_S - 60
    os.utime(seed, (old, old))
    fetch_tree(Tree("t", tarball=tb), tmp_path / "cache")
    assert not seed.exists()
