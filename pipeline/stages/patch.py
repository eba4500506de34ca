"""patch: apply a candidate's ordered changes as commits in the object store, without a checkout.

Patches are untrusted (they may come from a mailing list). They are applied
with git plumbing into a private index (mailsplit, mailinfo, apply --cached,
commit-tree): no worktree is written, so a one-file series costs well under a
second however large the tree. Every path a diff names is checked before git
sees it, and the resulting change set is checked again as git sees it (no
symlinks, no submodules, nothing under .git), whatever the mail's encoding was.
git runs without the user's config, and nothing from a patch reaches a shell.
"""
from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.config import Candidate, Change
from pipeline.errors import UserError
from pipeline.stages.fetch import IMPORT_DATE, FetchedTree
from pipeline.util.gitutil import git
from pipeline.util.proc import CommandResult

MAX_PATCH_BYTES = 20 * 1024 * 1024
# A "GIT binary patch" says how large each file it carries is once inflated; a zlib bomb can say 16 GiB in
# a 20 MiB mail. Kernel series carry no binary larger than a small firmware blob.
MAX_BINARY_BYTES = 2 * 1024 * 1024
MAX_BINARY_TOTAL = 8 * 1024 * 1024
GIT_TIMEOUT_S = 300  # each git call of the patch stage on one series
_BINARY_SIZE = re.compile(r"^(?:literal|delta) (\d{1,20})$", re.M)

_DIFF_PATH_LINES = re.compile(
    r"^(?:diff --git (?P<a>\S+) (?P<b>\S+)|--- (?P<old>\S+)|\+\+\+ (?P<new>\S+)|"
    r"(?:rename|copy) (?:from|to) (?P<rn>.+))$", re.M)
_SYMLINK_MODE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode) 1[26]0000$", re.M)
_INDEX_SPECIAL_MODE = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+ 1[26]0000$", re.M)
_FAILED_AT = re.compile(r"(?:error: patch failed: (\S+):(\d+))|(?:error: (\S+): does not exist in index)"
                        r"|(?:Patch failed at \d+ (.+))")
_SPECIAL_MODES = {"120000": "a symlink", "160000": "a submodule"}


class PatchFailed(UserError):
    """A change did not apply; carries git's message and where it failed."""

    def __init__(self, change: Change, message: str, location: str = ""):
        self.change = change
        self.location = location
        self.git_message = message
        super().__init__(f"{change.kind} {change.value} does not apply"
                         + (f" at {location}" if location else "") + f":\n{message}")


class UnsafePatch(UserError):
    """A patch touches paths outside the tree (absolute, '..', .git, symlinks)."""


@dataclass
class AppliedChange:
    kind: str
    source: str
    subjects: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "patches": [
            {"subject": s, "author": a, "commit": c}
            for s, a, c in zip(self.subjects, self.authors, self.commits, strict=True)]}


@dataclass(frozen=True)
class PatchedTree:
    """A candidate's source: a commit in the shared object store (nothing checked out)."""

    tree: FetchedTree
    commit: str
    applied: tuple[AppliedChange, ...]
    config_fragments: tuple[Path, ...]
    cmdline: tuple[str, ...]
    seconds: float = 0.0

    @property
    def base_commit(self) -> str:
        return self.tree.commit

    @property
    def trusted(self) -> bool:
        """Exactly a commit of a tree the config names: nothing from a patch is in it."""
        return self.tree.trusted and self.commit == self.tree.commit

    def as_dict(self) -> dict:
        return {"base_commit": self.base_commit, "commit": self.commit,
                "changes": [a.as_dict() for a in self.applied],
                "config_fragments": [str(p) for p in self.config_fragments],
                "cmdline": list(self.cmdline)}


def diff_paths(text: str) -> list[str]:
    """Every path a diff names, with a/ b/ prefixes removed."""
    paths = []
    for m in _DIFF_PATH_LINES.finditer(text):
        for key in ("a", "b", "old", "new", "rn"):
            p = m.group(key)
            if not p or p == "/dev/null":
                continue
            p = p.strip().strip('"')
            if key in ("a", "old") and p.startswith("a/"):
                p = p[2:]
            elif key in ("b", "new") and p.startswith("b/"):
                p = p[2:]
            paths.append(p)
    return paths


def check_binary_sizes(text: str, source: str) -> None:
    """Refuse binary hunks that inflate past MAX_BINARY_BYTES each or MAX_BINARY_TOTAL together."""
    sizes = [int(m.group(1)) for m in _BINARY_SIZE.finditer(text)] if "GIT binary patch" in text else []
    if any(s > MAX_BINARY_BYTES for s in sizes) or sum(sizes) > MAX_BINARY_TOTAL:
        raise UnsafePatch(f"{source}: a binary hunk inflates to {max(sizes)} bytes ({sum(sizes)} in all); "
                          f"refused (limit {MAX_BINARY_BYTES} each, {MAX_BINARY_TOTAL} in all)")


def check_patch_paths(text: str, source: str) -> None:
    """Refuse a patch with absolute paths, '..', .git paths, symlinks or oversized binary hunks."""
    check_binary_sizes(text, source)
    if _SYMLINK_MODE.search(text) or _INDEX_SPECIAL_MODE.search(text):
        raise UnsafePatch(f"{source}: creates or changes a symlink or submodule; refused (either could point out "
                          "of the tree)")
    for p in diff_paths(text):
        parts = PurePosixPath(p).parts
        if p.startswith("/") or ".." in parts or any(_is_git_dir(x) for x in parts) or "\\" in p:
            raise UnsafePatch(f"{source}: path {p!r} is outside the tree; refused")


def is_mbox(text: str) -> bool:
    head_text = text[:4096]
    return head_text.startswith("From ") or bool(re.match(r"(?s)^(?:[\w-]+: .*\n)*Subject: ", head_text))


def read_patch(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_PATCH_BYTES:
        raise UnsafePatch(f"{path}: {size} bytes is larger than the {MAX_PATCH_BYTES} byte limit")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if "\n--- " not in text and not text.startswith("--- ") and "diff --git" not in text:
        raise UnsafePatch(f"{path}: no diff found in it; is this a patch?")
    return text


def check_changes(candidate: Candidate) -> None:
    """Validate every patch of a candidate before anything runs."""
    for change in candidate.source_changes:
        if change.kind == "patch" and change.path:
            check_patch_paths(read_patch(change.path), change.value)


def _is_git_dir(part: str) -> bool:
    """'.git' as any path component, in any case and with the trailing dots or spaces some
    filesystems drop."""
    return part.rstrip(". ").lower() == ".git"


def check_change_set(store: Path, base: str, commit: str, source: str) -> None:
    """The tree's changes as git sees them after applying: refuse symlinks and submodules (added,
    retargeted or removed) and any path with a .git component. This holds whatever encoding the
    patch came in (a base64 MIME body is only decoded by git)."""
    out = git(["diff-tree", "-r", "-z", "--no-renames", "--raw", base, commit], store).output
    fields = out.split("\0")
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(":"):
            continue
        old_mode, new_mode = meta[1:].split(" ", 2)[:2]
        for mode in (old_mode, new_mode):
            if mode in _SPECIAL_MODES:
                raise UnsafePatch(f"{source}: {path!r} is {_SPECIAL_MODES[mode]} after applying; refused "
                                  "(it could point out of the tree)")
        if any(_is_git_dir(x) for x in PurePosixPath(path).parts) or path.startswith("/"):
            raise UnsafePatch(f"{source}: path {path!r} is outside the tree; refused")


class _Stage:
    """A private index over the object store: changes are applied to it and written as commits."""

    def __init__(self, store: Path, tmp: Path, commit: str, log_file: Path | None):
        self.store, self.tmp, self.commit, self.log = store, tmp, commit, log_file
        self.env = {"GIT_DIR": str(store), "GIT_INDEX_FILE": str(tmp / "index"),
                    "GIT_COMMITTER_DATE": IMPORT_DATE}  # same patches, same commit
        self.git(["read-tree", commit])

    def git(self, args: list[str], check: bool = True, env: dict[str, str] | None = None,
            input_text: str | None = None, stdin_file: Path | None = None) -> CommandResult:
        return git(args, self.tmp, self.log, check=check, env={**self.env, **(env or {})}, input_text=input_text,
                   stdin_file=stdin_file, timeout=GIT_TIMEOUT_S)

    def apply(self, patch: Path, reverse: bool = False) -> CommandResult:
        args = ["apply", "--cached", "--verbose", *(["-R"] if reverse else []), str(patch)]
        res = self.git(args, check=False)
        if res.returncode != 0:
            self.git(["read-tree", self.commit])  # back to the last good state
        return res

    def commit_staged(self, message: str, author: dict[str, str] | None = None) -> str:
        tree = self.git(["write-tree"]).output.strip()
        res = self.git(["commit-tree", tree, "-p", self.commit], env=author, input_text=message)
        self.commit = res.output.strip()
        return self.commit


def apply_changes(candidate: Candidate, fetched: FetchedTree, log_file: Path | None = None) -> PatchedTree:
    """Apply `candidate`'s changes in order on the tree's commit; raise PatchFailed on the first that
    does not apply, UnsafePatch on one that reaches out of the tree."""
    t0 = time.monotonic()
    check_changes(candidate)
    applied = []
    with tempfile.TemporaryDirectory(prefix="kpipe-patch-") as tmp:
        stage = _Stage(fetched.store, Path(tmp), fetched.commit, log_file)
        for change in candidate.changes:
            before = stage.commit
            if change.kind == "patch":
                applied.append(_apply_patch(change, stage))
            elif change.kind == "revert":
                applied.append(_revert(change, stage))
            else:
                applied.append(AppliedChange(change.kind, change.value))
                continue
            check_change_set(fetched.store, before, stage.commit, change.value)
    return PatchedTree(fetched, stage.commit, tuple(applied), candidate.config_fragments, candidate.cmdline,
                       time.monotonic() - t0)


def _failure_location(output: str) -> str:
    for m in _FAILED_AT.finditer(output):
        if m.group(1):
            return f"{m.group(1)}:{m.group(2)}"
        if m.group(3):
            return m.group(3)
        if m.group(4):
            return m.group(4).strip()
    return ""


def _mailinfo(stage: _Stage, mail: Path) -> tuple[dict[str, str], str, Path]:
    """Author, commit message and diff of one mail, the way `git am` reads them."""
    msg, diff = mail.with_suffix(".msg"), mail.with_suffix(".diff")
    info = stage.git(["mailinfo", "-u", str(msg), str(diff)], stdin_file=mail).output
    head_fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(": ")
        head_fields[key] = value.strip()
    subject = head_fields.get("Subject", "").strip() or mail.name
    body = msg.read_text(errors="replace").strip()
    author = {"GIT_AUTHOR_NAME": head_fields.get("Author") or "unknown",
              "GIT_AUTHOR_EMAIL": head_fields.get("Email") or "unknown@unknown"}
    if head_fields.get("Date"):
        author["GIT_AUTHOR_DATE"] = head_fields["Date"]
    return author, subject + ("\n\n" + body if body else "") + "\n", diff


def _apply_patch(change: Change, stage: _Stage) -> AppliedChange:
    assert change.path
    text = read_patch(change.path)
    result = AppliedChange(change.kind, change.value)
    if is_mbox(text):
        mails = stage.tmp / "mails"
        mails.mkdir(exist_ok=True)
        for old in mails.iterdir():
            old.unlink()
        # -b: a single mail without a leading "From " line is one message, as for git am.
        res = stage.git(["mailsplit", "-b", "--keep-cr", f"-o{mails}", "--", str(change.path)], check=False)
        if res.returncode != 0:
            raise PatchFailed(change, f"not a readable mailbox: {res.tail(3)}")
        for n, mail in enumerate(sorted(p for p in mails.iterdir() if p.suffix == ""), 1):
            author, message, diff = _mailinfo(stage, mail)
            subject = message.splitlines()[0]
            if not diff.read_text(errors="replace").strip():
                raise PatchFailed(change, f"Patch is empty: {subject}", f"{n:04d} {subject}")
            res = stage.apply(diff)
            if res.returncode != 0:
                raise PatchFailed(change, res.tail(15) + f"\nPatch failed at {n:04d} {subject}",
                                  _failure_location(res.output) or f"{n:04d} {subject}")
            result.commits.append(stage.commit_staged(message, author))
            result.authors.append(f"{author['GIT_AUTHOR_NAME']} <{author['GIT_AUTHOR_EMAIL']}>")
            result.subjects.append(subject)
        if not result.commits:
            raise PatchFailed(change, "no patch found in the mailbox")
    else:
        res = stage.apply(change.path)
        if res.returncode != 0:
            raise PatchFailed(change, res.tail(15), _failure_location(res.output))
        subject = f"Apply {change.path.name}"
        result.commits.append(stage.commit_staged(subject + "\n"))
        result.authors.append("kpipe <kpipe@localhost>")
        result.subjects.append(subject)
    return result


def _revert(change: Change, stage: _Stage) -> AppliedChange:
    res = stage.git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{change.value}^{{commit}}"],
                    check=False)
    if res.returncode != 0:
        raise PatchFailed(change, f"no commit {change.value!r} in the tree")
    sha = res.output.strip()
    parents = stage.git(["rev-list", "--parents", "-n1", sha]).output.split()[1:]
    if len(parents) != 1:
        raise PatchFailed(change, f"{sha[:12]} has {len(parents)} parents; only a commit with one can be reverted")
    subject = stage.git(["log", "-1", "--format=%s", sha]).output.strip()
    diff = stage.tmp / "revert.diff"
    diff.write_text(stage.git(["diff-tree", "-p", "--binary", "--full-index", parents[0], sha]).output)
    applied = stage.apply(diff, reverse=True)
    if applied.returncode != 0:
        raise PatchFailed(change, applied.tail(15), _failure_location(applied.output))
    commit = stage.commit_staged(f'Revert "{subject}"\n\nThis reverts commit {sha}.\n')
    return AppliedChange(change.kind, change.value, [f'Revert "{subject}"'], ["kpipe <kpipe@localhost>"], [commit])
