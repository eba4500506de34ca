"""Executors: where test hosts run. The boot stage only talks to this interface.

`LocalExecutor` runs QEMU on this machine; `remote.RemoteExecutor` runs it on
a pool host over SSH and implements the same methods.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import InfraError
from pipeline.machines.probe import local_probe

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class Process(Protocol):
    """A QEMU process wherever it runs: alive, and terminated gracefully then by force."""

    pid: int

    def alive(self) -> bool: ...
    def terminate(self, grace_s: float = 5.0) -> int | None: ...


class Executor(Protocol):
    """Where test hosts run (this machine, or a pool host over SSH): what boot and measure call."""

    @property
    def name(self) -> str: ...

    def spawn(self, argv: Sequence[str], log_file: Path) -> Process: ...
    def free_port(self) -> int: ...
    def path_for(self, local: Path) -> str: ...
    def log_path(self, local: Path) -> str: ...
    def collect(self, remote: str, local: Path) -> None: ...
    def read_text(self, path: str) -> str: ...
    def read_bytes(self, path: str, offset: int, limit: int) -> bytes: ...
    def qemu_binary(self) -> str: ...
    def gateway(self) -> Any: ...
    def healthy(self) -> tuple[bool, str]: ...
    def probe(self) -> dict[str, str]: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


# Largest file QEMU may write (its console log above all): a kernel that floods its serial port stops
# there (SIGXFSZ ends QEMU) instead of filling the disk; boot.py reports it as the candidate's.
QEMU_FILE_LIMIT_BYTES = 256 * 1024 * 1024


def _die_with_parent() -> None:
    """In the child: get SIGKILL if the pipeline dies, even by SIGKILL; files bounded in size."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (QEMU_FILE_LIMIT_BYTES, QEMU_FILE_LIMIT_BYTES))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class LocalProcess:
    """QEMU on this machine, in its own process group, killed with the run at the latest."""

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

    _live: set[LocalProcess] = set()
    _lock = threading.Lock()

    poll_s = 0.05  # reading the console log here is cheap: SSH-ready is seen within 50 ms

    def __init__(self, name: str = "local", workdir: str = "/var/tmp/kpipe"):
        self._name = name
        self.workdir = workdir
        self._mine: set[LocalProcess] = set()  # what close() stops: this executor's own test hosts

    @property
    def name(self) -> str:
        return self._name

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
            self._mine.add(proc)
        return proc

    def free_port(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def path_for(self, local: Path) -> str:
        return str(local)

    def log_path(self, local: Path) -> str:
        return str(local)

    def collect(self, remote: str, local: Path) -> None:
        pass  # written in place

    def qemu_binary(self) -> str:
        qemu = shutil.which("qemu-system-x86_64")
        if not qemu:
            raise InfraError("qemu-system-x86_64 not found; install it with 'apt-get install qemu-system-x86'")
        return qemu

    def gateway(self) -> None:
        return None

    def healthy(self) -> tuple[bool, str]:
        return True, "this machine"

    def probe(self) -> dict[str, str]:
        return local_probe(self.workdir)

    def close(self) -> None:
        """Stop every test host this executor started that is still running (a run's end); test hosts of
        other executors in this process (another run's, a test session's) are left alone."""
        with self._lock:
            mine, self._mine = list(self._mine), set()
        for proc in mine:
            if proc.alive():
                proc.terminate(grace_s=2.0)

    def abort(self) -> None:
        self.kill_all()

    @classmethod
    def kill_now(cls) -> None:
        """From a signal handler: SIGKILL every test host of ours at once, taking no lock and waiting for
        nothing (the handler may have interrupted a thread holding the lock); reaping comes later."""
        for p in list(cls._live):
            try:
                os.killpg(p.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def read_text(self, path: str) -> str:
        return self.read_bytes(path, 0, 4 * 1024 * 1024).decode("utf-8", errors="replace")

    def read_bytes(self, path: str, offset: int, limit: int) -> bytes:
        """At most `limit` bytes of the file from `offset` (b"" when it does not exist yet)."""
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    @classmethod
    def kill_all(cls) -> None:
        for proc in list(cls._live):
            proc.terminate(grace_s=2.0)


atexit.register(LocalExecutor.kill_all)

