"""safefs: read what an untrusted build left behind without following anything it planted.

A confined build can leave symlinks (or FIFOs, devices, hard links to other
files of its own) where the pipeline expects its artifacts. The pipeline runs
as root afterwards, so every artifact is opened one path component at a time
with O_NOFOLLOW from a directory the pipeline chose, must be a regular file,
and is copied from that open descriptor: what is hashed is what was copied.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path, PurePosixPath

from pipeline.errors import UserError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO cannot stall us


class UnsafeArtifact(UserError):
    """A file the build should have produced is missing, a symlink, or not a regular file."""


def open_regular(root: Path, rel: str | PurePosixPath) -> int:
    """An fd for the regular file `root/rel`, no component of `rel` being a symlink. The caller closes it."""
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("..", "/", "") for p in parts):
        raise UnsafeArtifact(f"{rel}: not a relative path inside the build")
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise UnsafeArtifact(f"{root}: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise UnsafeArtifact(f"{rel}: {part}/ is {_why(exc)}") from None
            os.close(fd)
            fd = nxt
        try:
            leaf = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise UnsafeArtifact(f"{rel}: {_why(exc)}") from None
    finally:
        os.close(fd)
    st = os.fstat(leaf)
    if not stat.S_ISREG(st.st_mode):
        os.close(leaf)
        raise UnsafeArtifact(f"{rel}: not a regular file")
    return leaf


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link (refused: artifacts are taken only as regular files)"
    if exc.errno == errno.ENOTDIR:
        return "not a directory (a symbolic link or a file; refused)"
    if exc.errno == errno.ENOENT:
        return "missing"
    return exc.strerror or str(exc)


def copy_regular(root: Path, rel: str, dest: Path, max_bytes: int = 1 << 30) -> int:
    """Copy the regular file root/rel to dest (created 0644, never through a link); returns its size."""
    src = open_regular(root, rel)
    try:
        size = os.fstat(src).st_size
        if size > max_bytes:
            raise UnsafeArtifact(f"{rel}: {size} bytes, more than the {max_bytes} allowed")
        os.set_blocking(src, True)
        dest.unlink(missing_ok=True)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(src, "rb", closefd=False) as fin, os.fdopen(out, "wb", closefd=False) as fout:
                copied = 0
                while chunk := fin.read(1 << 20):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise UnsafeArtifact(f"{rel}: grew past {max_bytes} bytes while being copied")
                    fout.write(chunk)
        finally:
            os.close(out)
        return copied
    finally:
        os.close(src)


def read_regular_text(root: Path, rel: str, max_bytes: int = 16 << 20) -> str:
    """The text of the regular file root/rel (at most max_bytes), never through a link."""
    fd = open_regular(root, rel)
    try:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsafeArtifact(f"{rel}: larger than {max_bytes} bytes")
    return data.decode("utf-8", errors="replace")


def remove_tree(path: Path) -> None:
    """Remove whatever is at `path` (directory, file or link), never following a link out of it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based on Linux: a link inside is removed, not followed
    else:
        path.unlink()
