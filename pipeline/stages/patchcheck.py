"""The checks a patch passes before git sees it and after it applied: sizes, paths, modes.

A patch may come from a mailing list: every path its diff names is checked
before git reads it (absolute, '..', .git in any case, symlink and submodule
modes, binary hunks that inflate past a limit), and the change set is checked
again as git sees it after applying, whatever encoding the mail used.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from pipeline.candidates import Candidate
from pipeline.errors import UserError
from pipeline.util.gitutil import git

MAX_PATCH_BYTES = 20 * 1024 * 1024
# A "GIT binary patch" says how large each file it carries is once inflated; a zlib bomb can say 16 GiB in
# a 20 MiB mail. Kernel series carry no binary larger than a small firmware blob.
MAX_BINARY_BYTES = 2 * 1024 * 1024
MAX_BINARY_TOTAL = 8 * 1024 * 1024
_BINARY_SIZE = re.compile(r"^(?:literal|delta) (\d{1,20})$", re.M)

_DIFF_PATH_LINES = re.compile(
    r"^(?:diff --git (?P<a>\S+) (?P<b>\S+)|--- (?P<old>\S+)|\+\+\+ (?P<new>\S+)|"
    r"(?:rename|copy) (?:from|to) (?P<rn>.+))$", re.M)
_SYMLINK_MODE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode) 1[26]0000$", re.M)
_INDEX_SPECIAL_MODE = re.compile(r"^index [0-9a-f]+\.\.[0-9a-f]+ 1[26]0000$", re.M)
_SPECIAL_MODES = {"120000": "a symlink", "160000": "a submodule"}


class UnsafePatch(UserError):
    """A patch touches paths outside the tree (absolute, '..', .git, symlinks)."""


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
    """Whether a patch file is a mail (From line or headers with a Subject) rather than a plain diff."""
    head_text = text[:4096]
    return head_text.startswith("From ") or bool(re.match(r"(?s)^(?:[\w-]+: .*\n)*Subject: ", head_text))


def read_patch(path: Path) -> str:
    """A patch file's text, refused when too large or when it holds no diff."""
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
