"""The SSH link to a pool host, below RemoteExecutor: connecting with the host key checked, a one-line
reason for a failed connection, digests of uploaded files, and QEMU tethered to one SSH channel so it
cannot outlive the link."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import fabric
import paramiko

from pipeline.errors import InfraError
from pipeline.machines.spec import HostSpec

# $1 = log file, the rest = the command. The command's stdin is /dev/null; a
# watcher, started first, reads the channel's stdin (fd 3) and, when it closes,
# signals this shell, whose trap stops the command. Only this shell's own
# unreaped children are ever signalled (never a stale PID), the shell kills the
# watcher before it exits, a closed channel cannot kill the shell (SIGPIPE is
# ignored), and setpriv's parent-death signal ends the command if the shell is
# killed all the same.
TETHER = r"""exec 3<&0
ulimit -f 524288 2>/dev/null  # 256 MiB in 512-byte blocks: a flooded console stops QEMU, not the disk
log=$1; shift
finished=
watcher=
stop() {
  if [ -z "$finished" ] && [ -n "$watcher" ] && [ "$!" != "$watcher" ]; then
    kill -TERM "$!" 2>/dev/null; wait "$!"
  fi
  exit 143
}
trap '' PIPE
trap stop TERM HUP
(cat <&3 >/dev/null 2>&1; kill -TERM $$) >/dev/null 2>&1 &
watcher=$!
pd=
command -v setpriv >/dev/null 2>&1 && pd="setpriv --pdeathsig KILL --"
$pd "$@" </dev/null 3<&- >>"$log" 2>&1 &
child=$!
exec 3<&-
echo "pid $child"
wait "$child"
rc=$?
finished=1
kill "$watcher" 2>/dev/null
echo "exit $rc"
exit $rc
"""

_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) for the life of the process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed connection, with the OS error where paramiko wraps it."""
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "; ".join(f"cannot connect to {addr[0]} port {addr[1]}: {getattr(err, 'strerror', None) or err}"
                         for addr, err in exc.errors.items())
    if isinstance(exc, paramiko.AuthenticationException):
        return f"SSH login refused: {exc}"
    return f"{type(exc).__name__}: {exc}"


def connect(spec: HostSpec, timeout: float = 10.0) -> fabric.Connection:
    """Open an SSH connection to a pool host, verifying its host key against known_hosts."""
    kwargs: dict[str, object] = {"look_for_keys": spec.key is None, "allow_agent": spec.key is None,
                                 "banner_timeout": timeout, "auth_timeout": timeout}
    if spec.key:  # without a key: the agent and ~/.ssh keys (paramiko refuses key_filename=None)
        kwargs["key_filename"] = str(spec.key)
    conn = fabric.Connection(spec.host, port=spec.port, user=spec.user, connect_timeout=timeout,
                             connect_kwargs=kwargs)
    conn.client.load_host_keys(str(spec.known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        conn.open()
        transport = conn.client.get_transport()
        if transport is not None:
            transport.set_keepalive(10)
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise InfraError(f"the host key of {spec.address} is not in {spec.known_hosts}; after checking it, "
                             f"add it with: ssh-keyscan -p {spec.port} {spec.host} >> {spec.known_hosts}") from None
        raise
    return conn


class RemoteProcess:
    """QEMU under the tether on one SSH channel."""

    def __init__(self, channel: paramiko.Channel, registry: set[RemoteProcess]):
        self.channel = channel
        self._registry = registry
        self.pid = 0
        deadline = time.monotonic() + 15
        buf = b""
        while b"\n" not in buf and time.monotonic() < deadline and not channel.exit_status_ready():
            if channel.recv_ready():
                buf += channel.recv(256)
            else:
                time.sleep(0.02)
        first = buf.decode(errors="replace").split("\n", 1)[0]
        if first.startswith("pid "):
            self.pid = int(first[4:])

    def alive(self) -> bool:
        return not (self.channel.closed or self.channel.exit_status_ready())

    def terminate(self, grace_s: float = 5.0) -> int | None:
        rc = None
        try:
            if not self.channel.exit_status_ready():
                self.channel.shutdown_write()  # EOF on the tether's stdin: it kills QEMU
                deadline = time.monotonic() + grace_s + 4
                while not self.channel.exit_status_ready() and time.monotonic() < deadline:
                    time.sleep(0.05)
            if self.channel.exit_status_ready():
                rc = self.channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the link is gone; the remote sshd closing the channel ends QEMU the same way
        finally:
            self.channel.close()
            self._registry.discard(self)
        return rc
