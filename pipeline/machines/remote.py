"""RemoteExecutor: test hosts run by QEMU on another machine, reached over SSH (fabric).

Everything crosses one SSH connection per pool host:
- artifacts (kernel, initramfs) go over SFTP once per content, named by sha256;
- QEMU runs under a small shell tether on an SSH channel: when the channel's
  stdin closes (we terminate, or our connection dies, even by SIGKILL of the
  pipeline), the tether kills QEMU, so no QEMU outlives the run on any host;
- the test host's own SSH port is forwarded on the remote's loopback and
  reached through this connection (a direct-tcpip channel, `gateway=`);
- console and QEMU logs are copied back into the local run folder.

Every remote command is built from fixed words plus `shlex.quote`d values;
nothing from a patch is part of any of them.
"""
from __future__ import annotations

import hashlib
import logging
import random
import shlex
import stat
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fabric
import paramiko

from pipeline.errors import InfraError
from pipeline.machines.probe import PROBE, parse_probe
from pipeline.machines.spec import HostSpec
from pipeline.machines.sshlink import TETHER, RemoteProcess, connect, describe, file_digest

log = logging.getLogger(__name__)

@dataclass
class RemoteExecutor:
    """One pool host over SSH. Used by one worker thread at a time."""

    spec: HostSpec
    conn: fabric.Connection | None = None
    qemu: str = "qemu-system-x86_64"
    _live: set[RemoteProcess] = field(default_factory=set)
    _uploaded: set[str] = field(default_factory=set)
    _made: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    # -- connection --------------------------------------------------------
    def open(self) -> fabric.Connection:
        if self.aborted:
            raise InfraError(f"{self.name}: the run is stopping")
        if self.conn is None or not self.conn.is_connected:
            self.conn = connect(self.spec)
            self._made.clear()
        return self.conn

    def close(self) -> None:
        for proc in list(self._live):
            proc.terminate(grace_s=1.0)
        self._drop()

    def abort(self) -> None:
        """From another thread: drop the link (the tethers kill every QEMU of ours there) and
        never connect again, so a worker cannot start a test host after the run was stopped."""
        self.aborted = True
        self._drop()

    def _drop(self) -> None:
        """Close the socket even when paramiko already thinks the transport is inactive (fabric's
        close() then does nothing, and an open socket keeps the remote session, and QEMU, alive)."""
        if self.conn is not None:
            try:
                self.conn.close()
                self.conn.client.close()
            except Exception:  # noqa: BLE001 - closing a dead link
                pass

    def healthy(self, timeout: float = 15.0) -> tuple[bool, str]:
        """Can we still run a command there? Reconnects once."""
        for attempt in range(2):
            try:
                if attempt:
                    if self.conn is not None:
                        self.conn.close()
                    self.conn = None
                res = self.open().run("true", hide=True, warn=True, timeout=timeout, in_stream=False)
                if res.ok:
                    return True, "answers"
            except Exception as exc:  # noqa: BLE001 - any failure here means the host is unusable
                why = describe(exc)
                continue
            why = f"'true' exited {res.exited}"
        return False, why

    def run(self, argv: Sequence[str], timeout: float = 120) -> Any:
        return self.open().run(shlex.join(argv), hide=True, warn=True, timeout=timeout, in_stream=False)

    def probe(self) -> dict[str, str]:
        res = self.run(["sh", "-c", PROBE, "kpipe-probe", self.spec.workdir], timeout=60)
        facts = parse_probe(res.stdout)
        if facts.get("qemu"):
            self.qemu = facts["qemu"]  # the binary the probe found there
        return facts

    # -- Executor interface -------------------------------------------------
    def _mkdir(self, path: str) -> None:
        if path not in self._made:
            res = self.run(["mkdir", "-p", path], timeout=60)
            if not res.ok:
                raise InfraError(f"{self.name}: cannot create {path}: {res.stderr.strip()}")
            self._made.add(path)

    def qemu_binary(self) -> str:
        return self.qemu

    def path_for(self, local: Path) -> str:
        """Copy an artifact over SFTP once per content; return its path there."""
        digest = file_digest(local)
        adir = f"{self.spec.workdir}/artifacts"
        remote = f"{adir}/{digest[:20]}-{local.name}"
        if remote in self._uploaded:
            return remote
        self._mkdir(adir)
        sftp = self.open().sftp()
        size = local.stat().st_size
        try:
            st = sftp.lstat(remote)
            if stat.S_ISREG(st.st_mode or 0) and st.st_size == size and self._remote_sha256(remote) == digest:
                self._uploaded.add(remote)
                return remote
        except OSError:
            pass
        tmp = f"{remote}.tmp-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        sftp.put(str(local), tmp)
        sftp.posix_rename(tmp, remote)
        log.info("%s: uploaded %s (%d bytes) in %.1f s", self.name, local.name, size, time.monotonic() - t0)
        self._uploaded.add(remote)
        return remote

    def _remote_sha256(self, remote: str) -> str:
        res = self.run(["sha256sum", "--", remote], timeout=120)
        return res.stdout.split()[0] if res.ok and res.stdout.strip() else ""

    def log_path(self, local: Path) -> str:
        """Where a log that belongs at `local` is written there (collected back afterwards)."""
        sub = hashlib.sha1(str(local.parent).encode()).hexdigest()[:12]
        rdir = f"{self.spec.workdir}/logs/{sub}"
        self._mkdir(rdir)
        return f"{rdir}/{local.name}"

    def collect(self, remote: str, local: Path) -> None:
        """Copy a log back into the run folder and remove it there; a lost link leaves what we have."""
        try:
            sftp = self.open().sftp()
            local.parent.mkdir(parents=True, exist_ok=True)
            if not stat.S_ISREG(sftp.lstat(remote).st_mode or 0):
                raise InfraError(f"{remote} is not a regular file; not collected")
            sftp.get(remote, str(local))
            sftp.remove(remote)
        except (OSError, EOFError, paramiko.SSHException, InfraError) as exc:
            log.debug("%s: cannot collect %s: %s", self.name, remote, exc)

    def spawn(self, argv: Sequence[str], log_file: Path) -> RemoteProcess:
        remote_log = self.log_path(log_file)
        transport = self.open().client.get_transport()
        if transport is None:
            raise InfraError(f"{self.name}: SSH transport is closed")
        channel = transport.open_session(timeout=30)
        header = f"$ {shlex.join(argv)}\n"
        cmd = shlex.join(["sh", "-c", f"printf %s {shlex.quote(header)} >> \"$1\"\n" + TETHER,
                          "kpipe-tether", remote_log, *argv])
        channel.exec_command(cmd)
        proc = RemoteProcess(channel, self._live)
        with self._lock:
            self._live.add(proc)
        return proc

    def free_port(self) -> int:
        """A TCP port nothing listens on there (from /proc/net/tcp*), for QEMU's hostfwd."""
        used: set[int] = set()
        sftp = self.open().sftp()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with sftp.open(table) as f:
                    text = f.read().decode()
            except OSError:
                continue
            for line in text.splitlines()[1:]:
                parts = line.split()
                if len(parts) > 3:
                    used.add(int(parts[1].rsplit(":", 1)[1], 16))
        while True:
            port = random.randint(20000, 59999)
            if port not in used:
                return port

    def read_text(self, path: str) -> str:
        return self.read_bytes(path, 0, 4 * 1024 * 1024).decode("utf-8", errors="replace")

    def read_bytes(self, path: str, offset: int, limit: int) -> bytes:
        """At most `limit` bytes of the remote file from `offset` (b"" when it does not exist yet)."""
        try:
            with self.open().sftp().open(path) as f:
                f.seek(offset)
                return bytes(f.read(limit))
        except FileNotFoundError:
            return b""
        except OSError as exc:
            if getattr(exc, "errno", None) == 2 or "No such file" in str(exc):
                return b""
            raise

    def gateway(self) -> fabric.Connection | None:
        return self.open()
