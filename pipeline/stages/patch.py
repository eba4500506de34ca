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
from pathlib import Path

from pipeline.candidates import Candidate, Change
from pipeline.errors import UserError
from pipeline.stages.fetch import IMPORT_DATE, FetchedTree
from pipeline.stages.patchcheck import check_change_set, check_changes, is_mbox, read_patch
from pipeline.util.gitutil import git
from pipeline.util.proc import CommandResult

GIT_TIMEOUT_S = 300  # each git call of the patch stage on one series
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


@dataclass
class AppliedChange:
    """A change as applied: its kind and value, the commit it made and the files it touched."""

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
