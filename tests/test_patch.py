"""patch stage on small real repositories made in the test."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import git

from pipeline.config import Candidate, Change, Tree
from pipeline.fetch import checkout_worktree, fetch_tree
from pipeline.patch import PatchFailed, UnsafePatch, apply_changes, check_patch_paths, diff_paths


def worktree_for(repo: Path, cache: Path, name: str = "cand", ref: str = "master"):
    fetched = fetch_tree(Tree("small", git=str(repo), ref=ref), cache)
    return checkout_worktree(fetched, name, cache)


def make_series(repo: Path, out: Path, n: int = 2) -> list[Path]:
    """Commit n changes on a branch and export them with git format-patch."""
    git(repo, "checkout", "-q", "-b", "series")
    for i in range(n):
        f = repo / "kernel" / "rcu" / "srcutree.c"
        f.write_text(f.read_text().replace(f"line {5 + i}\n", f"line {5 + i} patched\n"))
        git(repo, "commit", "-q", "-a", "-m", f"srcu: patch number {i + 1}")
    names = git(repo, "format-patch", "-o", str(out), f"HEAD~{n}").split()
    git(repo, "checkout", "-q", "master")
    return [Path(p) for p in names]


def test_mbox_series_keeps_subject_and_author(small_repo: Path, tmp_path: Path) -> None:
    patches = make_series(small_repo, tmp_path / "out")
    wt = worktree_for(small_repo, tmp_path / "cache")
    cand = Candidate("cand", "small", tuple(Change("patch", str(p), p) for p in patches))
    patched = apply_changes(cand, wt)
    subjects = [a.subjects[0] for a in patched.applied]
    assert subjects == ["srcu: patch number 1", "srcu: patch number 2"]
    assert patched.applied[0].authors == ["Test Author <author@example.org>"]
    log = git(wt.path, "log", "--format=%s", "-3").splitlines()
    assert log[:2] == ["srcu: patch number 2", "srcu: patch number 1"]
    assert patched.commit == git(wt.path, "rev-parse", "HEAD").strip()
    assert "line 6 patched" in (wt.path / "kernel/rcu/srcutree.c").read_text()


def test_plain_diff_is_applied_and_committed(small_repo: Path, tmp_path: Path) -> None:
    diff = tmp_path / "plain.diff"
    diff.write_text("--- a/README\n+++ b/README\n@@ -1 +1 @@\n-small tree\n+small tree, patched\n")
    wt = worktree_for(small_repo, tmp_path / "cache")
    patched = apply_changes(Candidate("cand", "small", (Change("patch", "plain.diff", diff),)), wt)
    assert (wt.path / "README").read_text() == "small tree, patched\n"
    assert patched.commit != wt.base_commit
    assert patched.applied[0].subjects == ["Apply plain.diff"]


def test_revert_of_a_commit_in_history(small_repo: Path, tmp_path: Path) -> None:
    target = git(small_repo, "rev-parse", "HEAD").strip()
    wt = worktree_for(small_repo, tmp_path / "cache")
    patched = apply_changes(Candidate("cand", "small", (Change("revert", target[:12]),)), wt)
    assert "line 20\n" in (wt.path / "kernel/rcu/srcutree.c").read_text()
    assert patched.applied[0].subjects == ['Revert "change line 20"']


def test_conflicting_patch_fails_with_file_and_git_message(small_repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "conflict.patch"
    bad.write_text("From: Someone <s@example.org>\nSubject: [PATCH] conflicting\n\n---\n"
                   "diff --git a/kernel/rcu/srcutree.c b/kernel/rcu/srcutree.c\n"
                   "--- a/kernel/rcu/srcutree.c\n+++ b/kernel/rcu/srcutree.c\n"
                   "@@ -19,3 +19,3 @@\n line 19\n-line 20 original text\n+line 20 new\n line 21\n")
    wt = worktree_for(small_repo, tmp_path / "cache")
    with pytest.raises(PatchFailed) as info:
        apply_changes(Candidate("cand", "small", (Change("patch", "conflict.patch", bad),)), wt)
    assert info.value.location.startswith("kernel/rcu/srcutree.c")
    assert "patch failed" in info.value.git_message or "does not apply" in info.value.git_message
    # The worktree is left clean for the next attempt.
    assert git(wt.path, "status", "--porcelain").strip() == ""


def test_a_second_checkout_resets_the_worktree(small_repo: Path, tmp_path: Path) -> None:
    diff = tmp_path / "plain.diff"
    diff.write_text("--- a/README\n+++ b/README\n@@ -1 +1 @@\n-small tree\n+changed\n")
    wt = worktree_for(small_repo, tmp_path / "cache")
    apply_changes(Candidate("cand", "small", (Change("patch", "plain.diff", diff),)), wt)
    (wt.path / "build").mkdir()
    (wt.path / "build" / "keep.o").write_text("object")
    (wt.path / "stray.txt").write_text("x")
    wt2 = worktree_for(small_repo, tmp_path / "cache")
    assert (wt2.path / "README").read_text() == "small tree\n"
    assert not (wt2.path / "stray.txt").exists()
    assert (wt2.path / "build" / "keep.o").exists()  # build dir survives for incremental builds


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "a/../../x", ".git/hooks/pre-commit"])
def test_paths_outside_the_tree_are_refused(path: str) -> None:
    text = f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n"
    if path.startswith("/"):
        text = f"--- {path}\n+++ {path}\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(UnsafePatch):
        check_patch_paths(text, "evil.patch")


def test_symlink_creation_is_refused() -> None:
    text = ("diff --git a/link b/link\nnew file mode 120000\n--- /dev/null\n+++ b/link\n"
            "@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n")
    with pytest.raises(UnsafePatch, match="symlink"):
        check_patch_paths(text, "evil.patch")


def test_unsafe_patch_is_refused_before_git_runs(small_repo: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.patch"
    evil.write_text("--- a/../../etc/x\n+++ b/../../etc/x\n@@ -1 +1 @@\n-a\n+b\n")
    wt = worktree_for(small_repo, tmp_path / "cache")
    with pytest.raises(UnsafePatch):
        apply_changes(Candidate("cand", "small", (Change("patch", "evil.patch", evil),)), wt)
    assert git(wt.path, "rev-parse", "HEAD").strip() == wt.base_commit


def test_diff_paths_strips_prefixes() -> None:
    text = "diff --git a/x/y.c b/x/z.c\nrename from x/y.c\nrename to x/z.c\n--- a/x/y.c\n+++ b/x/z.c\n"
    assert set(diff_paths(text)) == {"x/y.c", "x/z.c"}


def test_real_patches_have_safe_paths() -> None:
    for p in sorted((Path(__file__).resolve().parent.parent / "patches").glob("*.patch")):
        check_patch_paths(p.read_text(), p.name)
        assert set(diff_paths(p.read_text())) <= {"kernel/rcu/srcutree.c", "include/linux/srcutree.h",
                                                   "include/linux/srcutiny.h", "virt/kvm/kvm_main.c"}
