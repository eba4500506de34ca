"""patch stage on small real repositories made in the test."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import git

from pipeline.candidates import Candidate, Change, Tree
from pipeline.stages.fetch import FetchedTree, fetch_tree
from pipeline.stages.patch import PatchFailed, apply_changes
from pipeline.stages.patchcheck import UnsafePatch, check_patch_paths, diff_paths


def tree_for(repo: Path, cache: Path, ref: str = "master") -> FetchedTree:
    return fetch_tree(Tree("small", git=str(repo), ref=ref), cache)


def show(fetched: FetchedTree, commit: str, path: str) -> str:
    return git(fetched.store, "show", f"{commit}:{path}")


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
    ft = tree_for(small_repo, tmp_path / "cache")
    cand = Candidate("cand", "small", tuple(Change("patch", str(p), p) for p in patches))
    patched = apply_changes(cand, ft)
    subjects = [a.subjects[0] for a in patched.applied]
    assert subjects == ["srcu: patch number 1", "srcu: patch number 2"]
    assert patched.applied[0].authors == ["Test Author <author@example.org>"]
    log = git(ft.store, "log", "--format=%s%x00%an", "-3", patched.commit).splitlines()
    assert log[:2] == ["srcu: patch number 2\x00Test Author", "srcu: patch number 1\x00Test Author"]
    assert "line 6 patched" in show(ft, patched.commit, "kernel/rcu/srcutree.c")
    # Applied with plumbing: nothing was checked out, and the same series gives the same commit.
    assert not (tmp_path / "cache" / "worktrees").exists()
    assert apply_changes(cand, ft).commit == patched.commit


def test_plain_diff_is_applied_and_committed(small_repo: Path, tmp_path: Path) -> None:
    diff = tmp_path / "plain.diff"
    diff.write_text("--- a/README\n+++ b/README\n@@ -1 +1 @@\n-small tree\n+small tree, patched\n")
    ft = tree_for(small_repo, tmp_path / "cache")
    patched = apply_changes(Candidate("cand", "small", (Change("patch", "plain.diff", diff),)), ft)
    assert show(ft, patched.commit, "README") == "small tree, patched\n"
    assert patched.commit != patched.base_commit == ft.commit
    assert patched.applied[0].subjects == ["Apply plain.diff"]


def test_revert_of_a_commit_in_history(small_repo: Path, tmp_path: Path) -> None:
    target = git(small_repo, "rev-parse", "HEAD").strip()
    ft = tree_for(small_repo, tmp_path / "cache")
    patched = apply_changes(Candidate("cand", "small", (Change("revert", target[:12]),)), ft)
    assert "line 20\n" in show(ft, patched.commit, "kernel/rcu/srcutree.c")
    assert patched.applied[0].subjects == ['Revert "change line 20"']


@pytest.mark.parametrize("value", ["--output=/tmp/x", "no-such-commit", "HEAD~99"])
def test_revert_of_something_that_is_not_a_commit_fails_cleanly(small_repo: Path, tmp_path: Path,
                                                                   value: str) -> None:
    ft = tree_for(small_repo, tmp_path / "cache")
    with pytest.raises(PatchFailed, match="no commit"):
        apply_changes(Candidate("cand", "small", (Change("revert", value),)), ft)


def test_conflicting_patch_fails_with_file_and_git_message(small_repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "conflict.patch"
    bad.write_text("From: Someone <s@example.org>\nSubject: [PATCH] conflicting\n\n---\n"
                   "diff --git a/kernel/rcu/srcutree.c b/kernel/rcu/srcutree.c\n"
                   "--- a/kernel/rcu/srcutree.c\n+++ b/kernel/rcu/srcutree.c\n"
                   "@@ -19,3 +19,3 @@\n line 19\n-line 20 original text\n+line 20 new\n line 21\n")
    ft = tree_for(small_repo, tmp_path / "cache")
    with pytest.raises(PatchFailed) as info:
        apply_changes(Candidate("cand", "small", (Change("patch", "conflict.patch", bad),)), ft)
    assert info.value.location.startswith("kernel/rcu/srcutree.c")
    assert "patch failed" in info.value.git_message or "does not apply" in info.value.git_message
    assert "Patch failed at 0001 conflicting" in info.value.git_message


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
    ft = tree_for(small_repo, tmp_path / "cache")
    with pytest.raises(UnsafePatch):
        apply_changes(Candidate("cand", "small", (Change("patch", "evil.patch", evil),)), ft)


def test_diff_paths_strips_prefixes() -> None:
    text = "diff --git a/x/y.c b/x/z.c\nrename from x/y.c\nrename to x/z.c\n--- a/x/y.c\n+++ b/x/z.c\n"
    assert set(diff_paths(text)) == {"x/y.c", "x/z.c"}


def test_real_patches_have_safe_paths() -> None:
    for p in sorted((Path(__file__).resolve().parent.parent / "patches").glob("*.patch")):
        check_patch_paths(p.read_text(), p.name)
        assert set(diff_paths(p.read_text())) <= {"kernel/rcu/srcutree.c", "include/linux/srcutree.h",
                                                   "include/linux/srcutiny.h", "virt/kvm/kvm_main.c"}


HOSTILE = Path(__file__).resolve().parent / "data" / "hostile"


def test_base64_mail_that_creates_a_symlink_is_refused_as_git_sees_it(small_repo: Path, tmp_path: Path) -> None:
    """The text check sees only base64; git decodes it. The change set after applying is what is checked."""
    mbox = HOSTILE / "base64-symlink.mbox"
    check_patch_paths(mbox.read_text(), mbox.name)  # passes: nothing readable to check
    ft = tree_for(small_repo, tmp_path / "cache")
    with pytest.raises(UnsafePatch, match="symlink"):
        apply_changes(Candidate("cand", "small", (Change("patch", mbox.name, mbox),)), ft)


@pytest.mark.parametrize("name,match", [("git-dir-with-space.mbox", "outside the tree|invalid path"),
                                        ("submodule.mbox", "submodule|symlink")])
def test_hostile_series_are_refused(small_repo: Path, tmp_path: Path, name: str, match: str) -> None:
    ft = tree_for(small_repo, tmp_path / "cache")
    with pytest.raises((UnsafePatch, PatchFailed), match=match):
        apply_changes(Candidate("cand", "small", (Change("patch", name, HOSTILE / name),)), ft)


def test_retargeting_an_existing_symlink_is_refused(small_repo: Path, tmp_path: Path) -> None:
    (small_repo / "link").symlink_to("README")
    git(small_repo, "add", "link")
    git(small_repo, "commit", "-q", "-m", "a symlink")
    ft = tree_for(small_repo, tmp_path / "cache")
    # Only the index line carries the mode: no "new mode" line for the text check to see.
    text = ("diff --git a/link b/link\nindex 100b938..ae7b3f8 120000\n--- a/link\n+++ b/link\n"
            "@@ -1 +1 @@\n-README\n\\ No newline at end of file\n+/etc/shadow\n\\ No newline at end of file\n")
    with pytest.raises(UnsafePatch, match="symlink"):
        check_patch_paths(text, "retarget.diff")
    from pipeline.stages.patchcheck import check_change_set
    blob = git(ft.store, "hash-object", "-w", "--stdin", input="/etc/shadow").strip()
    tree = git(ft.store, "mktree", input=f"120000 blob {blob}\tlink\n").strip()
    evil = git(ft.store, "commit-tree", tree, "-p", ft.commit, "-m", "x").strip()
    with pytest.raises(UnsafePatch, match="symlink"):
        check_change_set(ft.store, ft.commit, evil, "retarget.diff")


def test_patch_stage_checks_out_nothing_on_a_big_tree(tmp_path: Path) -> None:
    """No checkout: applying a one-file patch to a tree of 20,000 files touches no file at all."""
    repo = tmp_path / "big"
    repo.mkdir()
    git(tmp_path, "init", "-q", "-b", "master", str(repo))
    for d in range(100):
        (repo / f"d{d}").mkdir()
        for f in range(200):
            (repo / f"d{d}" / f"f{f}.c").write_text(f"int x{d}_{f};\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "big")
    ft = tree_for(repo, tmp_path / "cache")
    diff = tmp_path / "one.diff"
    diff.write_text("--- a/d5/f7.c\n+++ b/d5/f7.c\n@@ -1 +1 @@\n-int x5_7;\n+int x5_7 = 1;\n")
    patched = apply_changes(Candidate("cand", "small", (Change("patch", "one.diff", diff),)), ft)
    assert show(ft, patched.commit, "d5/f7.c") == "int x5_7 = 1;\n"
    changed = git(ft.store, "diff-tree", "-r", "--name-only", ft.commit, patched.commit).split()
    assert changed == ["d5/f7.c"]
