"""Executors: where test hosts run. The boot stage only talks to this interface.

`LocalExecutor` runs QEMU on this machine. A remote executor (a lab machine
over SSH) implements the same four methods.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class Process(Protocol):
    pid: int

    def alive(self) -> bool: ...
    def terminate(self, grace_s: float = 5.0) -> int | None: ...


class Executor(Protocol):
    name: str

    def spawn(self, argv: Sequence[str], log_file: Path) -> Process: ...
    def free_port(self) -> int: ...
    def path_for(self, local: Path) -> str: ...
    def read_text(self, path: str) -> str: ...


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the pipeline dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class LocalProcess:
    def __init__(self, popen: subprocess.Popen, registry: set[LocalProcess]):
        self.popen = popen
        self.pid = popen.pid
        self._registry = registry

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def terminate(self, grace_s: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=grace_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        self._registry.discard(self)
        return self.popen.returncode


class LocalExecutor:
    """Runs test hosts as child processes of this one; every child is killed at exit."""

    name = "local"
    _live: set[LocalProcess] = set()
    _lock = threading.Lock()

    def spawn(self, argv: Sequence[str], log_file: Path) -> LocalProcess:
        log.info("start: %s", shlex.join(argv))
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as out:
            out.write(f"$ {shlex.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        proc = LocalProcess(popen, self._live)
        with self._lock:
            self._live.add(proc)
        return proc

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def path_for(self, local: Path) -> str:
        return str(local)

    def read_text(self, path: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @classmethod
    def kill_all(cls) -> None:
        for proc in list(cls._live):
            proc.terminate(grace_s=2.0)


atexit.register(LocalExecutor.kill_all)

EXECUTORS: dict[str, type] = {"local": LocalExecutor}


def get_executor(name: str) -> Executor:
    try:
        return EXECUTORS[name]()
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}") from None
