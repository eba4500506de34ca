"""patch: apply a candidate's ordered changes to its worktree.

Patches are untrusted (they may come from a mailing list): every path in a
diff is checked before git sees it, git runs without the user's config, and
nothing from a patch is passed to a shell.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .config import Candidate, Change
from .errors import UserError
from .fetch import Worktree
from .gitutil import git, head

MAX_PATCH_BYTES = 20 * 1024 * 1024

_DIFF_PATH_LINES = re.compile(
    r"^(?:diff --git (?P<a>\S+) (?P<b>\S+)|--- (?P<old>\S+)|\+\+\+ (?P<new>\S+)|"
    r"(?:rename|copy) (?:from|to) (?P<rn>.+))$", re.M)
_SYMLINK_MODE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode) 120000$", re.M)
_FAILED_AT = re.compile(r"(?:error: patch failed: (\S+):(\d+))|(?:error: (\S+): does not exist in index)"
                        r"|(?:Patch failed at \d+ (.+))")


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
    worktree: Worktree
    commit: str
    applied: tuple[AppliedChange, ...]
    config_fragments: tuple[Path, ...]
    cmdline: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"base_commit": self.worktree.base_commit, "commit": self.commit,
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


def check_patch_paths(text: str, source: str) -> None:
    """Refuse a patch with absolute paths, '..', .git paths or symlinks."""
    if _SYMLINK_MODE.search(text):
        raise UnsafePatch(f"{source}: creates or changes a symlink; refused (symlinks could point out of the tree)")
    for p in diff_paths(text):
        parts = PurePosixPath(p).parts
        if p.startswith("/") or ".." in parts or (parts and parts[0] == ".git") or "\\" in p:
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


def apply_changes(candidate: Candidate, worktree: Worktree, log_file: Path | None = None) -> PatchedTree:
    """Apply `candidate`'s changes in order; raise PatchFailed on the first that does not apply."""
    check_changes(candidate)
    applied = []
    for change in candidate.changes:
        if change.kind == "patch":
            applied.append(_apply_patch(change, worktree.path, log_file))
        elif change.kind == "revert":
            applied.append(_revert(change, worktree.path, log_file))
        else:
            applied.append(AppliedChange(change.kind, change.value))
    return PatchedTree(worktree, head(worktree.path), tuple(applied), candidate.config_fragments,
                       candidate.cmdline)


def _failure_location(output: str) -> str:
    for m in _FAILED_AT.finditer(output):
        if m.group(1):
            return f"{m.group(1)}:{m.group(2)}"
        if m.group(3):
            return m.group(3)
        if m.group(4):
            return m.group(4).strip()
    return ""


def _apply_patch(change: Change, wt: Path, log_file: Path | None) -> AppliedChange:
    assert change.path
    text = read_patch(change.path)
    before = head(wt)
    if is_mbox(text):
        res = git(["am", "--no-3way", "--keep-cr", str(change.path)], wt, log_file, check=False)
        if res.returncode != 0:
            git(["am", "--abort"], wt, log_file, check=False)
            raise PatchFailed(change, res.tail(15), _failure_location(res.output))
    else:
        res = git(["apply", "--index", "--verbose", str(change.path)], wt, log_file, check=False)
        if res.returncode != 0:
            git(["reset", "--hard", "-q"], wt, log_file, check=False)
            raise PatchFailed(change, res.tail(15), _failure_location(res.output))
        subject = f"Apply {change.path.name}"
        git(["commit", "-q", "--no-verify", "-m", subject], wt, log_file)
    log_lines = git(["log", "--reverse", "--format=%H%x00%an <%ae>%x00%s", f"{before}..HEAD"], wt).output
    result = AppliedChange(change.kind, change.value)
    for line in log_lines.splitlines():
        sha, author, subject = line.split("\x00", 2)
        result.commits.append(sha)
        result.authors.append(author)
        result.subjects.append(subject)
    return result


def _revert(change: Change, wt: Path, log_file: Path | None) -> AppliedChange:
    res = git(["revert", "--no-edit", change.value], wt, log_file, check=False)
    if res.returncode != 0:
        git(["revert", "--abort"], wt, log_file, check=False)
        raise PatchFailed(change, res.tail(15), _failure_location(res.output))
    sha = head(wt)
    subject = git(["log", "-1", "--format=%s", sha], wt).output.strip()
    return AppliedChange(change.kind, change.value, [subject], ["kpipe <kpipe@localhost>"], [sha])

