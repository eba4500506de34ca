"""A lock on the cache directory, so two runs sharing a cache cannot corrupt it."""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import InfraError


@contextmanager
def cache_lock(cache_dir: Path, owner: str, wait: bool = True) -> Iterator[None]:
    """Hold `<cache>/lock` for the duration; a second holder waits (or fails) and is told who has it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(errors="replace").strip() or "another process"
            if not wait:
                raise InfraError(f"the cache {cache_dir} is in use by {holder}; wait for it to finish, or "
                                 "give this run its own cache with KPIPE_CACHE_DIR") from None
            print(f"waiting for the cache {cache_dir}, held by {holder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        held = True
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {owner}\n".encode())
        yield
    finally:
        if held:  # a caller refused with --no-wait never wipes the holder's line
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
